"""Parsing and cleaning on realistic teacher outputs; the prompt and the rules teacher."""

import math

import numpy as np
import pytest

from distill import rules
from distill.clean import (
    DRAFT_TOO_LONG,
    MAPPED,
    NO_DRAFTS,
    NON_ENGLISH,
    PLAIN_WORD,
    SEPARATOR_ADDED,
    TRANSLITERATED,
    TRUNCATED,
    clean_answer,
    has_plain_decision,
    to_english,
)
from distill.config import DEFAULTS
from distill.parse import (
    CANARIES,
    CONDITIONAL_ONLY,
    NEGATED_ONLY,
    NO_ACTION,
    REASONS,
    REBALANCE_UNKNOWN,
    REFUSAL,
    SEVERAL_ACTIONS,
    UNDECIDED,
    UNFINISHED_THINK,
    parse_answer,
    split_think,
    to_canary,
)
from distill.prompt import MarketState, format_prompt, messages, state_from_window, system_prompt

# (raw teacher output, expected decision or None, expected amount, expected reason)
CORPUS = [
    # QwQ: the template opened <think>, the output closes it, then Chain of Draft.
    (
        "Okay, the user holds mostly USDC... let me check the trend.\n</think>\n"
        "ETH share 22%\nunderweight ETH\nuptrend +1.1%\n#### APE IN 0.75 ETH",
        "APE IN", 0.75, None,
    ),
    ("<think>\nWait, maybe sell? No, hold.\n</think>\n\nshare 50%\nflat\n#### APE NEUTRAL", "APE NEUTRAL", None, None),
    ("drafts\n#### ape out 2,5 eth", "APE OUT", 2.5, None),
    ("- share 80%\n- overweight\n#### **APE OUT** 1.2 WETH", "APE OUT", 1.2, None),
    ("share 80%\noverweight\nAPE OUT 3 ETH", "APE OUT", 3.0, None),  # no separator
    ("1. share 40%\n2. trend up\n#### APE IN", "APE IN", None, None),
    ("#### APE IN or APE OUT", None, None, "several actions"),
    ("share 50%\nflat\n####", None, None, "no action"),
    ("<think>\nI keep thinking and thinking", None, None, "unfinished think"),
    ("", None, None, "empty"),
    ("   \n ", None, None, "empty"),
    ("the market looks interesting today", None, None, "no action"),
    ("share 50%\n#### APE NEUTRAL\n#### APE IN 1 ETH", "APE IN", 1.0, None),  # last separator wins
]


@pytest.mark.parametrize("text,decision,amount,reason", CORPUS)
def test_parse_corpus(text, decision, amount, reason):
    a = parse_answer(text)
    assert a.decision == decision
    assert a.amount_eth == amount
    assert a.reason == reason
    assert a.valid == (decision is not None)


def test_parse_drafts_and_think():
    a = parse_answer("<think>\nlong thought\n</think>\n- ETH share 22%\n* underweight\n#### APE IN")
    assert a.drafts == ["ETH share 22%", "underweight"]
    assert a.thinking == "long thought"
    assert a.has_separator
    assert split_think("no think here") == ("", "no think here", False)


def test_plain_words_only_in_plain_mode():
    for text, canary in [
        ("share 20%\n#### BUY 0.5 ETH", "APE IN"),
        ("share 90%\n#### Sell 2 ETH", "APE OUT"),
        ("flat\n#### hold", "APE NEUTRAL"),
        ("flat\n#### Decision: wait", "APE NEUTRAL"),
        ("up\n#### go long", "APE IN"),
        ("down\n#### reduce exposure 1.5 ETH", "APE OUT"),
        ("x\n#### accumulate", "APE IN"),
        ("x\n#### short", "APE OUT"),
        ("x\n#### neutral", "APE NEUTRAL"),
    ]:
        assert parse_answer(text).decision is None  # strict: the student must say the canary
        a = parse_answer(text, plain=True)
        assert a.decision == canary and a.mapped, text
    a = parse_answer("x\n#### BUY 0.5 ETH", plain=True)
    assert a.amount_eth == 0.5
    assert parse_answer("x\n#### buy or sell", plain=True).reason == "several actions"
    # A canary and the same plain decision are one action.
    assert parse_answer("x\n#### APE NEUTRAL (hold)", plain=True).decision == "APE NEUTRAL"
    assert to_canary("Buy") == "APE IN" and to_canary("ape out") == "APE OUT" and to_canary("maybe") is None


def test_clean_keeps_format_and_counts_fixes():
    c = clean_answer("</think>\nETH share 22%\nunderweight\n#### BUY 0.5 ETH")
    assert c.ok and c.completion == "ETH share 22%\nunderweight\n#### APE IN 0.5 ETH"
    assert MAPPED in c.fixes
    c = clean_answer("share 80%\noverweight\nsell 3 ETH")
    assert c.ok and c.completion.endswith("#### APE OUT 3 ETH") and SEPARATOR_ADDED in c.fixes


def test_clean_mixed_languages():
    # QwQ switching to Chinese for a draft: removed; accents transliterated; full-width folded.
    c = clean_answer("ETH share 22%\n趋势向上\nvolatilité élevée\nchange ＋１．２％\n#### APE IN")
    assert c.ok, c
    assert c.completion.splitlines()[:-1] == ["ETH share 22%", "volatilite elevee", "change +1.2%"]
    assert TRANSLITERATED in c.fixes
    assert c.completion.isascii()
    # Mostly Chinese: rejected, to be re-asked.
    c = clean_answer("以太坊占比很低\n价格趋势向上，应该买入\n#### APE IN")
    assert not c.ok and c.reason == NON_ENGLISH
    assert to_english("naïve café") == ("naive cafe", 0)


def test_clean_draft_length():
    c = clean_answer("ETH share is twenty two percent today\n#### APE IN")
    assert c.ok and c.completion.splitlines()[0] == "ETH share is twenty two" and TRUNCATED in c.fixes
    prose = "The portfolio holds far too little ETH compared with the target so we should add more"
    assert clean_answer(prose + "\n#### APE IN").reason == DRAFT_TOO_LONG
    assert clean_answer(prose + "\n#### APE IN", max_draft_words=None).ok  # chain of thought
    assert clean_answer("#### APE IN").reason == NO_DRAFTS


def test_no_plain_decision_survives():
    c = clean_answer("strong buy signal\nholding too little\n#### BUY")
    assert c.ok and not has_plain_decision(c.completion)
    assert PLAIN_WORD in c.fixes
    assert has_plain_decision("#### BUY") and has_plain_decision("we sell") and not has_plain_decision("holding")


def _window(closes, swaps=10):
    closes = np.asarray(closes, dtype=np.float64)
    r = np.diff(np.log(np.concatenate([[closes[0]], closes])))
    n = len(closes)
    return {
        "close": closes, "log_return": r, "volume_eth": np.full(n, 2.0),
        "volume_usdc": np.full(n, 2.0) * closes, "swap_count": np.full(n, swaps),
        "realized_vol": np.abs(r), "tick": np.zeros(n),
    }


def test_state_and_prompt():
    cols = _window([2000.0, 2010.0, 2020.0, 2030.0])
    s = state_from_window(cols, eth_balance=1.0, usdc_balance=2030.0)
    assert s.window_minutes == 20 and s.swap_count == 40
    assert s.change_pct == pytest.approx(1.5)
    assert s.change_ticks == round(math.log(1.015) / math.log(1.0001))
    assert s.eth_share_pct == pytest.approx(50.0)
    p = format_prompt(s)
    assert "ETH share 50%" in p and "change +1.50%" in p and "last 20 min" in p
    assert MarketState.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError):
        state_from_window({"close": np.array([1.0])}, 1, 1)
    assert "5 words" in system_prompt("cod") and "full sentences" in system_prompt("cot")
    with pytest.raises(ValueError):
        system_prompt("poem")


def _state(share_pct, change_pct, vol=0.5, value=10000.0, price=2000.0):
    eth = value * share_pct / 100 / price
    return MarketState(price, change_pct, 0, 1.0, 2000.0, vol, 10, eth, value - eth * price, 60)


@pytest.mark.parametrize(
    "share,change,decision",
    [
        (20, -2.0, "APE IN"),  # underweight wins over a downtrend
        (80, 2.0, "APE OUT"),  # overweight wins over an uptrend
        (50, 0.8, "APE IN"),
        (50, -0.8, "APE OUT"),
        (50, 0.1, "APE NEUTRAL"),
        (50, 0.3, "APE NEUTRAL"),  # the threshold itself is flat
        (35, 0.0, "APE NEUTRAL"),  # band edges are inside
        (65, 0.0, "APE NEUTRAL"),
    ],
)
def test_rules_decisions(share, change, decision):
    s = _state(share, change)
    d = rules.decide(s, DEFAULTS)
    assert d["decision"] == decision
    for style in ("cod", "cot"):
        text = rules.answer(s, DEFAULTS, style)
        c = clean_answer(text, DEFAULTS["max_draft_words"] if style == "cod" else None)
        assert c.ok and c.decision == decision and c.completion == text
        assert not has_plain_decision(text)
    cod = rules.cod_answer(s, DEFAULTS).splitlines()
    band = "ETH share below 35%" if share < 35 else "ETH share above 65%" if share > 65 else "ETH share in band"
    assert cod[0] == band  # judges the prompt's share first (a judgement, not a copy)
    assert all(len(line.split()) <= 5 for line in cod[:-1])


def test_rules_amounts():
    s = _state(20, 0.0, value=10000.0, price=2000.0)  # 2000 USDC in ETH, target 5000
    assert rules.decide(s, DEFAULTS)["amount_eth"] == pytest.approx(1.5)
    s = _state(50, 1.0, vol=0.5)  # trend trade: 10% of 10000 USDC = 0.5 ETH
    assert rules.decide(s, DEFAULTS)["amount_eth"] == pytest.approx(0.5)
    s = _state(50, 1.0, vol=2.0)  # high volatility halves it
    assert rules.decide(s, DEFAULTS)["amount_eth"] == pytest.approx(0.25)
    assert rules.decide(_state(50, 0.0), DEFAULTS)["amount_eth"] is None


def test_rules_decide_on_printed_numbers():
    # 34.6% prints as "35%": the decision follows the printed value, not the hidden one.
    s = _state(34.6, 0.0)
    assert "ETH share 35%" in format_prompt(s)
    assert rules.decide(s, DEFAULTS)["decision"] == "APE NEUTRAL"


def test_cod_is_shorter_than_cot():
    s = _state(50, 0.8)
    assert len(rules.cod_answer(s, DEFAULTS).split()) * 2 < len(rules.cot_answer(s, DEFAULTS).split())
    assert set(CANARIES) == {"APE IN", "APE OUT", "APE NEUTRAL"}


def test_messages_with_and_without_the_system_prompt():
    s = MarketState(3000.0, 0.5, 50, 10.0, 30000.0, 0.4, 40, 1.0, 3000.0, 60)
    full, bare = messages(s), messages(s, system=False)
    assert [m["role"] for m in full] == ["system", "user"] and full[0]["content"] == system_prompt("cod")
    assert bare == full[1:] and bare[0]["content"] == format_prompt(s)


# --- plain mode: what a reasoning teacher writes (one focused case list per category) -------


def _plain(text, share=50.0, price=2500.0):
    return parse_answer(text, plain=True, share_pct=share, price=price)


PLAIN = {
    "negation": [
        ("x\nNow is not the moment to buy; hold.", "APE NEUTRAL"),
        ("x\nI would not sell into this dip. Stay put.", "APE NEUTRAL"),
        ("x\nThere is no reason to hold at 80% ETH: trim 0.4 ETH.", "APE OUT"),
        ("#### Not APE OUT — APE IN 0.2 ETH", "APE IN"),
        ("x\nI'm not able to recommend buying or selling.", None),
        ("#### Don't buy.", None),  # says what not to do, not what to do
    ],
    "swap": [
        ("#### Swap 2,000 USDC for ETH", "APE IN"),
        ("#### Sell 800 USDC for ETH", "APE IN"),
        ("#### Convert 0.3 ETH to USDC", "APE OUT"),
        ("#### Buy USDC with 0.2 ETH", "APE OUT"),
        ("#### Move 0.5 ETH into stablecoins", "APE OUT"),
        ("#### Rotate out of USDC", "APE IN"),
        ("#### Swap", None),
    ],
    "synonyms": [
        ("#### Accumulate", "APE IN"), ("#### Add exposure", "APE IN"), ("#### Take profit", "APE OUT"),
        ("#### De-risk", "APE OUT"), ("#### Trim", "APE OUT"), ("#### HODL", "APE NEUTRAL"),
        ("#### Sit tight", "APE NEUTRAL"), ("#### Stand pat", "APE NEUTRAL"), ("#### No trade", "APE NEUTRAL"),
        ("#### Keep the allocation", "APE NEUTRAL"), ("#### Go long", "APE IN"),
        ("x\nThe short-term trend is up. APE NEUTRAL", "APE NEUTRAL"),  # "short-term" is no sell
        ("x\nStrong buy signal but the share is fine. Hold.", "APE NEUTRAL"),
    ],
    "chinese": [
        ("#### 买入 0.2 ETH", "APE IN"), ("#### 增持", "APE IN"), ("#### 卖出", "APE OUT"),
        ("#### 减持 0.1 ETH", "APE OUT"), ("#### 持有", "APE NEUTRAL"), ("#### 观望", "APE NEUTRAL"),
        ("结论：不买也不卖，继续持有。", "APE NEUTRAL"), ("#### 把0.3 ETH换成USDC", "APE OUT"),
        ("现在买入，如果涨到3000再卖出。", "APE IN"),
    ],
    "distractor": [
        ("x\nI considered selling, but the trend is up. APE IN", "APE IN"),
        ("x\nMy first instinct was to buy. The share is 70%, so sell.", "APE OUT"),
        ("x\nBuying here would chase the move. Hold.", "APE NEUTRAL"),
        ("x\nSell? Buy? The band says hold: APE NEUTRAL.", "APE NEUTRAL"),
    ],
    "conditional": [
        ("#### Buy now; sell above 3,100.", "APE IN"),
        ("#### APE NEUTRAL for now, APE IN if it dips below 2,400", "APE NEUTRAL"),
        ("#### Sell 0.2 ETH, then hold", "APE OUT"),
        ("#### Buy if it dips below 2,400.", None),
    ],
    "format": [
        ("share 20%\nunderweight\nbuy 0.5 ETH", "APE IN"),  # no separator
        ("**Decision:** Sell", "APE OUT"),
        ("**Final Answer**\n\\boxed{APE NEUTRAL}", "APE NEUTRAL"),
        ("#### ape out", "APE OUT"),
        ("#### apein", "APE IN"),
        ("thinking with no opening tag\n</think>\n#### APE IN", "APE IN"),
        ("#### APE IN\n\n**Final Answer**\n\\boxed{APE IN}", "APE IN"),  # twice, the same
        ("#### APE IN\n\\boxed{APE OUT}", None),  # two different finals
        ("Decision: APE OUT\n\n#### APE NEUTRAL", None),
        ("#### APE IN or APE OUT", None),
    ],
    "truncated": [
        ("</think>\nshare 70%\noverweight\n#### APE", None),  # cut before the decision
        ("</think>\nshare 70%\n#### APE OUT 0.3 ETH\n\nThis brings the share ba", "APE OUT"),  # after
        ("Okay, the share is 70%, so I should sell some. Let me compute the amount: value", None),
        ("<think>\nSo APE OUT. But wait", None),
    ],
    "refusal": [
        ("I can't provide financial advice.", None),
        ("#### It depends on your risk appetite", None),
        ("Not financial advice, but: APE IN.", "APE IN"),
    ],
}


def test_plain_reads_each_category():
    for cat, cases in PLAIN.items():
        for text, want in cases:
            a = _plain(text)
            assert (a.decision if a.valid else None) == want, (cat, text, a)
            assert a.valid == (want is not None) and (a.valid or a.reason in REASONS), (cat, text)


def test_plain_reasons():
    assert _plain("#### Don't buy.").reason == NEGATED_ONLY
    assert _plain("#### Buy if it dips below 2,400.").reason == CONDITIONAL_ONLY
    assert _plain("I can't provide financial advice.").reason == REFUSAL
    assert _plain("#### It depends").reason == UNDECIDED
    assert _plain("#### APE IN\n#### APE OUT").reason == SEVERAL_ACTIONS
    assert _plain("Okay, so I should sell... let me check the value").reason == UNFINISHED_THINK
    assert _plain("#### Rebalance", share=None).reason == REBALANCE_UNKNOWN
    assert _plain("#### weather is nice").reason == NO_ACTION


def test_rebalance_direction_from_the_share():
    assert _plain("#### Rebalance toward 50/50", share=72).decision == "APE OUT"
    assert _plain("#### Rebalance toward 50/50", share=28).decision == "APE IN"
    assert not _plain("#### Rebalance toward 50/50", share=50.3).valid  # at target: no direction
    assert _plain("#### Rebalance to 60/40", share=70).decision == "APE OUT"
    assert not _plain("#### Rebalance to 60/40", share=55).valid  # between 40 and 60
    assert _plain("#### Rebalance 0.3 ETH into USDC", share=None).decision == "APE OUT"
    # Without a share from the caller, the answer's own drafts give it.
    a = _plain("ETH share 74%\n#### Rebalance", share=None)
    assert a.decision == "APE OUT" and a.via == "rebalance" and a.mapped


def test_amount_and_unit():
    a = _plain("#### APE IN 0.25 ETH")
    assert (a.amount, a.unit, a.amount_eth) == (0.25, "ETH", 0.25)
    a = _plain("#### APE IN 2,000 USDC", price=2500.0)
    assert (a.amount, a.unit, a.amount_eth) == (2000.0, "USDC", 0.8)
    a = _plain("#### APE IN 2,000 USDC", price=None)  # no price: not converted
    assert (a.amount, a.unit, a.amount_eth) == (2000.0, "USDC", None)
    assert _plain("#### APE OUT 25%").amount is None  # a share is no amount
    assert _plain("#### APE OUT at 2,500", price=2500.0).amount is None  # a price level
    assert _plain("#### APE OUT 2500 USDC", price=2500.0).amount is None  # the price, copied
    assert _plain("#### APE IN 0.3 ETH at 2,450 USDC", price=2450.0).amount_eth == 0.3
    assert _plain("#### APE IN $1,500 worth of ETH").unit == "USDC"
    assert _plain("#### APE IN 1.5k USDC").amount == 1500.0
    assert _plain("#### APE OUT 0.1-0.2 ETH").amount is None  # a range: unsure
    assert _plain("#### APE NEUTRAL 0.5 ETH").amount is None  # holding moves nothing
    assert _plain("#### Swap 1,500 USDC for 0.6 ETH").amount == 1500.0


def test_strict_mode_is_unchanged():
    # Only canaries count, the last separator wins, no reading of plain words.
    for text in ("#### Sell 1,500 USDC for ETH", "#### 买入", "#### HODL", "**Decision:** Buy"):
        assert parse_answer(text).reason == "no action", text
    assert parse_answer("#### Not APE IN").decision == "APE IN"  # no negation in strict mode
    assert parse_answer("x\n#### APE NEUTRAL\n#### APE IN 1 ETH").decision == "APE IN"
    a = parse_answer("x\n#### APE OUT 2,5 eth")
    assert (a.amount_eth, a.amount, a.unit, a.via) == (2.5, 2.5, "ETH", None)
    assert parse_answer("x\n#### APE IN 500 USDC").amount is None


def test_drafts_in_plain_mode():
    a = _plain("</think>\n- **share** 20%\n| trend | up |\n|---|---|\nDecision: APE IN\n#### APE IN")
    assert a.drafts == ["share 20%", "trend up"]  # markdown removed, the decision line left out
    a = _plain("share 70%, flat. Action: sell 0.5 ETH")  # no separator: the text before it
    assert a.drafts == ["share 70%, flat."] and a.amount_eth == 0.5


def test_clean_uses_the_market_state():
    c = clean_answer("underweight\n#### Swap 1,000 USDC for ETH", share_pct=20.0, price=2500.0)
    assert c.ok and c.completion == "underweight\n#### APE IN 0.4 ETH" and c.via == "swap"
    c = clean_answer("overweight\n#### Rebalance toward 50/50", share_pct=80.0, price=2500.0)
    assert c.ok and c.completion == "overweight\n#### APE OUT" and c.via == "rebalance"
    assert clean_answer("overweight\n#### Rebalance toward 50/50").reason == REBALANCE_UNKNOWN

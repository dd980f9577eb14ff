"""The offline analyst: a deterministic teacher that decides from the prompt's own numbers.

Decision (on the values exactly as :func:`distill.prompt.format_prompt` prints them):

1. ETH share < ``band_low`` %  -> ``APE IN``  (buy back toward 50/50)
2. ETH share > ``band_high`` % -> ``APE OUT`` (sell back toward 50/50)
3. else window change > +``trend_pct`` % -> ``APE IN``; < -``trend_pct`` % -> ``APE OUT``
4. else ``APE NEUTRAL``

Amounts: rebalancing trades move the portfolio to 50/50; trend trades move
``trade_fraction`` of the portfolio's value, halved when the window's volatility is above
``high_vol_pct`` %; a trade never exceeds what the portfolio holds.

The Chain-of-Draft rationale is categorical: each draft is the judgement of one deciding
number (share vs the band, change vs the trend threshold, volatility), not a copy of it. A
few-hundred-thousand-parameter student learns to classify digits at a fixed distance from the
end of the prompt far more easily than to copy them, and the decision follows from the drafts.
Each draft starts with the words of the prompt line it judges ("ETH share", "change",
"volatility"): a small student finds the line by matching those tokens.
"""

from __future__ import annotations

from apeagent.errors import UserError
from distill.parse import APE_IN, APE_NEUTRAL, APE_OUT, SEPARATOR, format_action, format_amount
from distill.prompt import MarketState

RULE_KEYS = ("band_low", "band_high", "trend_pct", "trade_fraction", "high_vol_pct", "drafts")
DRAFTS = ("categorical", "restated")


def _pct(x: float) -> str:
    return f"{x:g}%"


def decide(state: MarketState, cfg: dict) -> dict:
    """The decision and the facts behind it (numbers rounded as the prompt prints them)."""
    share = float(f"{state.eth_share_pct:.0f}")
    change = float(f"{state.change_pct:.2f}")
    vol = float(f"{state.volatility_pct:.2f}")
    lo, hi, trend = cfg["band_low"], cfg["band_high"], cfg["trend_pct"]
    price = state.price
    value = state.portfolio_usdc
    if share < lo:
        band, decision = "low", APE_IN
    elif share > hi:
        band, decision = "high", APE_OUT
    else:
        band = "in"
        decision = APE_IN if change > trend else APE_OUT if change < -trend else APE_NEUTRAL
    direction = "up" if change > trend else "down" if change < -trend else "flat"
    high_vol = vol > cfg["high_vol_pct"]

    amount = None
    if decision != APE_NEUTRAL and price > 0:
        if band != "in":
            eth = abs(value / 2 - state.eth_balance * price) / price
        else:
            eth = cfg["trade_fraction"] * value / price * (0.5 if high_vol else 1.0)
        limit = state.usdc_balance / price if decision == APE_IN else state.eth_balance
        eth = min(eth, limit)
        eth = round(eth, 2)  # fewer digits to learn; a trade under 0.005 ETH has no amount
        amount = eth if eth > 0 else None
    return {
        "decision": decision,
        "amount_eth": amount,
        "share": share,
        "change": change,
        "vol": vol,
        "band": band,
        "direction": direction,
        "high_vol": high_vol,
    }


def cod_answer(state: MarketState, cfg: dict) -> str:
    """Chain of Draft: three drafts of at most five words, then ``#### <action>``.

    ``distill.drafts``: ``categorical`` drafts judge each deciding number; ``restated`` ones
    first copy the number from the prompt, then judge it (a pretrained student copies easily,
    and the judgement then reads the digits right before it, not a line far back)."""
    drafts = cfg.get("drafts", "categorical")
    if drafts not in DRAFTS:
        raise UserError(f"distill.drafts: unknown {drafts!r} (known: {', '.join(DRAFTS)})")
    d = decide(state, cfg)
    lo, hi, trend = _pct(cfg["band_low"]), _pct(cfg["band_high"]), _pct(cfg["trend_pct"])
    share, change, vol = (
        (f" {d['share']:.0f}%", f" {d['change']:+.2f}%", f" {d['vol']:.2f}%")
        if drafts == "restated" else ("", "", "")
    )
    lines = [
        {
            "low": f"ETH share{share} below {lo}",
            "high": f"ETH share{share} above {hi}",
            "in": f"ETH share{share} in band",
        }[d["band"]],
        {
            "up": f"change{change} above {trend}",
            "down": f"change{change} below -{trend}",
            "flat": f"change{change} flat",
        }[d["direction"]],
        f"volatility{vol} high, half size" if d["high_vol"] else f"volatility{vol} normal",
    ]
    return "\n".join(lines) + f"\n{SEPARATOR} " + format_action(d["decision"], d["amount_eth"])


def cot_answer(state: MarketState, cfg: dict) -> str:
    """Standard chain of thought: the same reasoning in full sentences."""
    d = decide(state, cfg)
    lo, hi, trend = cfg["band_low"], cfg["band_high"], cfg["trend_pct"]
    parts = [
        f"The portfolio holds {state.eth_balance:.4f} ETH and {state.usdc_balance:.2f} USDC, "
        f"so {d['share']:.0f}% of its value is in ETH."
    ]
    if d["band"] == "low":
        parts.append(
            f"That is below the {lo:g}% lower bound of the balance band, so the portfolio is "
            "underweight ETH and should add ETH back toward an even split, whatever the trend."
        )
    elif d["band"] == "high":
        parts.append(
            f"That is above the {hi:g}% upper bound of the balance band, so the portfolio is "
            "overweight ETH and should trim ETH back toward an even split, whatever the trend."
        )
    else:
        parts.append(
            f"That is inside the {lo:g}% to {hi:g}% balance band, so balance alone does not "
            "call for a trade and the trend decides."
        )
    parts.append(
        f"Over the last {state.window_minutes} minutes the price moved {d['change']:+.2f}% "
        f"({state.change_ticks:+d} ticks) to {state.price:.2f} USDC on {state.swap_count} swaps."
    )
    parts.append(
        {
            "up": f"The move is above the {trend:g}% threshold, which is an uptrend worth following.",
            "down": f"The move is below minus {trend:g}%, which is a downtrend worth following.",
            "flat": f"The move is within {trend:g}% either way, so there is no clear trend.",
        }[d["direction"]]
    )
    parts.append(
        f"Volatility is {d['vol']:.2f}%, "
        + ("high, so a trend trade should be half its usual size." if d["high_vol"] else "normal.")
    )
    if d["decision"] == APE_NEUTRAL:
        parts.append("The best action is to wait.")
    else:
        side = "add" if d["decision"] == APE_IN else "trim"
        amount = f" about {format_amount(d['amount_eth'])} ETH" if d["amount_eth"] else ""
        parts.append(f"The best action is to {side}{amount or ' ETH'}.")
    return " ".join(parts) + f"\n{SEPARATOR} " + format_action(d["decision"], d["amount_eth"])


def answer(state: MarketState, cfg: dict, style: str = "cod") -> str:
    return cod_answer(state, cfg) if style == "cod" else cot_answer(state, cfg)

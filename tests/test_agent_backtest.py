"""Backtest accounting on hand-checked cases, and backtests on the real swaps and a tiny student."""

from __future__ import annotations

import json

import pytest
from agent_fixtures import REAL_CSV, RULES, build_student, price_path

from agent.backtest import load_rows, run_backtest
from agent.config import DEFAULTS
from agent.policies import History, HoldPolicy, ModelPolicy, RebalancePolicy, RulesPolicy, Trade
from agent.portfolio import Portfolio, gas_wei, metrics, trade
from apeagent.errors import UserError
from chain.amm import price_from_sqrt_price_x96, sqrt_price_x96_from_price
from distill.prompt import MarketState

Q96 = 1 << 96
FEE = 500
GAS = gas_wei(DEFAULTS["gas_units"], DEFAULTS["gas_price_gwei"])


def hand_buy(sqrt_p: int, liq: int, usdc_in: int) -> tuple[int, int]:
    """USDC in (exact input, oneForZero) within the range: (eth out, fee), the whitepaper way."""
    less_fee = usdc_in * (1_000_000 - FEE) // 1_000_000
    sqrt_next = (
        sqrt_p + (less_fee << 96) // liq
    )  # token1 in moves sqrtP up by dY / L (rounded down)
    eth_out = ((liq << 96) * (sqrt_next - sqrt_p) // sqrt_next) // sqrt_p  # L (1/sqrtP - 1/sqrtP')
    return eth_out, usdc_in - less_fee


def hand_sell(sqrt_p: int, liq: int, eth_in: int) -> tuple[int, int]:
    """ETH in (exact input, zeroForOne): (usdc out, fee)."""
    less_fee = eth_in * (1_000_000 - FEE) // 1_000_000
    num = (liq << 96) * sqrt_p
    den = (liq << 96) + less_fee * sqrt_p
    sqrt_next = -(-num // den)  # L*sqrtP / (L + dX*sqrtP), rounded up
    usdc_out = liq * (sqrt_p - sqrt_next) // Q96  # L (sqrtP - sqrtP')
    return usdc_out, eth_in - less_fee


def test_buy_fill_matches_hand_math():
    cfg = dict(DEFAULTS)
    sqrt_p, liq = sqrt_price_x96_from_price(3000.0), 10**17
    p = Portfolio(eth_wei=10**18, usdc=5_000 * 10**6)
    fill = trade(p, "APE IN", 0.5, sqrt_p, liq, FEE, cfg)
    price = price_from_sqrt_price_x96(sqrt_p)
    usdc_in = int(0.5 * price * 10**6)
    eth_out, fee = hand_buy(sqrt_p, liq, usdc_in)
    assert (
        fill.side == "buy"
        and fill.amount_in == usdc_in
        and fill.amount_out == eth_out
        and fill.fee == fee
    )
    assert fee == -(-usdc_in * FEE // 1_000_000)  # 0.05 % of the input, rounded up
    assert p.usdc == 5_000 * 10**6 - usdc_in
    assert p.eth_wei == 10**18 + eth_out - GAS
    assert p.fees_usdc == fee and p.gas_wei == GAS and p.trades == 1
    # Cost = fee + impact: above 5 bps, and the impact grows with size.
    assert fill.cost_bps > 5.0
    big = trade(
        Portfolio(eth_wei=10**18, usdc=10**12),
        "APE IN",
        5.0,
        sqrt_p,
        liq,
        FEE,
        {**cfg, "max_trade_eth": 10.0},
    )
    assert big.cost_bps > fill.cost_bps and big.price_after > fill.price_after > price


def test_sell_fill_matches_hand_math():
    cfg = dict(DEFAULTS)
    sqrt_p, liq = sqrt_price_x96_from_price(2500.0), 3 * 10**16
    p = Portfolio(eth_wei=2 * 10**18, usdc=0)
    fill = trade(p, "APE OUT", 0.75, sqrt_p, liq, FEE, cfg)
    usdc_out, fee = hand_sell(sqrt_p, liq, int(0.75 * 10**18))
    assert (fill.side, fill.amount_in, fill.amount_out, fill.fee) == (
        "sell",
        75 * 10**16,
        usdc_out,
        fee,
    )
    assert (
        p.eth_wei == 2 * 10**18 - 75 * 10**16 - GAS and p.usdc == usdc_out and p.fees_eth_wei == fee
    )
    assert fill.price_after < fill.price_before


def test_trade_caps_and_neutral():
    cfg = {**DEFAULTS, "max_trade_eth": 0.1}
    sqrt_p, liq = sqrt_price_x96_from_price(3000.0), 10**17
    p = Portfolio(eth_wei=10**18, usdc=10**9)
    assert trade(p, "APE NEUTRAL", 1.0, sqrt_p, liq, FEE, cfg) is None
    assert trade(p, "APE OUT", 5.0, sqrt_p, liq, FEE, cfg).amount_in == 10**17  # max_trade_eth
    broke = Portfolio(eth_wei=10**18, usdc=0)
    assert trade(broke, "APE IN", 0.5, sqrt_p, liq, FEE, cfg) is None  # no USDC to spend
    # No amount in the answer: default_trade_fraction of the value.
    q = Portfolio(eth_wei=10**18, usdc=3000 * 10**6)
    price = price_from_sqrt_price_x96(sqrt_p)
    f = trade(q, "APE OUT", None, sqrt_p, liq, FEE, {**DEFAULTS, "max_trade_eth": 10.0})
    assert f.amount_in == int(0.1 * (price + 3000.0) / price * 10**18)


def test_metrics_hand_checked():
    m = metrics([100.0, 110.0, 99.0, 120.0], [0, 3600, 7200, 10800], Portfolio(0, 0))
    assert m["total_return_pct"] == pytest.approx(20.0)
    assert m["max_drawdown_pct"] == pytest.approx(10.0)
    rets = [0.1, -0.1, 120 / 99 - 1]
    mean = sum(rets) / 3
    std = (sum((r - mean) ** 2 for r in rets) / 2) ** 0.5
    assert m["sharpe"] == pytest.approx(mean / std * (365 * 24) ** 0.5)


def test_backtest_known_sequence(tmp_path):
    """Prices 3000, 3000, 3300, 3300 (one swap per 5-minute bar); decisions at 3000, 3300, 3300."""
    rows = price_path([3000.0, 3000.0, 3300.0, 3300.0])
    cfg = {
        **DEFAULTS,
        "bar_seconds": 300,
        "window_bars": 1,
        "interval_minutes": 5,
        "holdout_frac": 1.0,
        "rebalance_band_pct": 2.0,
    }
    pols = {"hold": HoldPolicy(), "rebalance": RebalancePolicy(2.0)}
    report = run_backtest(rows, pols, cfg, tmp_path, progress=False)
    assert report["steps"] == 4
    s = [r["sqrt_price_x96"] for r in rows]
    liq = rows[0]["liquidity"]
    p = [price_from_sqrt_price_x96(x) for x in s]
    eth0, usdc0 = int(5000.0 / p[0] * 10**18), 5000 * 10**6

    hold = report["policies"]["hold"]
    assert hold["trades"] == 0 and hold["costs_usdc"] == 0
    assert hold["end_value_usdc"] == pytest.approx(eth0 / 10**18 * p[3] + 5000.0, rel=1e-12)
    assert hold["total_return_pct"] == pytest.approx(
        100 * ((eth0 / 10**18 * p[3] + 5000.0) / 10000.0 - 1), rel=1e-9
    )

    # Rebalancer by hand: at 3300 the ETH share is 52.4 % > 52: sell back to 50/50 once.
    share = eth0 / 10**18 * p[2] / (eth0 / 10**18 * p[2] + 5000.0)
    assert 0.52 < share < 0.53
    x = abs((eth0 / 10**18 * p[2] + usdc0 / 10**6) / 2 - eth0 / 10**18 * p[2]) / p[2]
    sell = int(x * 10**18)
    usdc_out, fee = hand_sell(s[2], liq, sell)
    reb = report["policies"]["rebalance"]
    assert reb["trades"] == 1
    assert reb["decisions"] == {"APE IN": 0, "APE OUT": 1, "APE NEUTRAL": 3}
    assert reb["final_eth"] == (eth0 - sell - GAS) / 10**18
    assert reb["final_usdc"] == (usdc0 + usdc_out) / 10**6
    assert reb["fees_paid_usdc"] == pytest.approx(fee / 1e18 * p[2], rel=1e-12)
    assert reb["gas_paid_usdc"] == pytest.approx(GAS / 1e18 * p[2], rel=1e-12)
    log = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    assert len(log) == 8 and [r["fill"] is not None for r in log if r["policy"] == "rebalance"] == [
        False,
        False,
        True,
        False,
    ]
    assert (tmp_path / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_backtest_window_too_short(tmp_path):
    rows = price_path([3000.0, 3001.0, 3002.0])
    with pytest.raises(UserError, match="shorter than one window"):
        run_backtest(
            rows,
            {"hold": HoldPolicy()},
            {**DEFAULTS, "holdout_frac": 1.0},
            tmp_path,
            progress=False,
        )


def test_backtest_real_swaps_holdout(tmp_path):
    if not REAL_CSV.is_file():
        pytest.skip(f"shared data not present: {REAL_CSV}")
    rows, source = load_rows(REAL_CSV)
    assert source == "real" and len(rows) == 9_965  # 10,000 rows, 35 exact duplicates kept once
    cfg = {**DEFAULTS, "interval_minutes": 60, "holdout_frac": 0.2}
    pols = {"rules": RulesPolicy(RULES), "hold": HoldPolicy(), "rebalance": RebalancePolicy(5.0)}
    report = run_backtest(rows, pols, cfg, tmp_path, source=source, progress=False)
    # The held-out part is the last 20 % in chain order: training never saw it.
    assert (
        report["holdout"]["swaps"] == 1993  # the last 20 % of 9,965 swaps
        and report["holdout"]["first_block"] == rows[9_965 - 1993]["block_number"]
    )
    assert report["steps"] >= 5
    for m in report["policies"].values():
        assert {
            "total_return_pct",
            "sharpe",
            "max_drawdown_pct",
            "trades",
            "fees_paid_usdc",
        } <= set(m)
    assert report["policies"]["rules"]["trades"] > 0
    assert report["policies"]["rules"]["fees_paid_usdc"] > 0
    saved = json.loads((tmp_path / "backtest.json").read_text())
    assert saved["policies"]["hold"]["trades"] == 0
    assert 2000 < saved["price"]["first"] < 4500


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return build_student(tmp_path_factory.mktemp("agent") / "student")


def test_backtest_student_falls_back_to_neutral(tmp_path, student):
    from chain.simulate import simulate

    rows = simulate(400, seed=3)
    cfg = {
        **DEFAULTS,
        "interval_minutes": 60,
        "holdout_frac": 0.6,
        "max_steps": 3,
        "max_tokens": 16,
    }
    logged = []
    # one answer token: no answer can hold a canary decision, so every step falls back
    pol = ModelPolicy(str(student), max_tokens=1, log=logged.append)
    report = run_backtest(
        rows,
        {"student": pol, "hold": HoldPolicy()},
        cfg,
        tmp_path,
        source="simulated",
        progress=False,
    )
    assert report["steps"] == 3
    log = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    stud = [r for r in log if r["policy"] == "student"]
    assert len(stud) == 3 and all("raw" in r for r in stud)
    invalid = [r for r in stud if not r["valid"]]
    assert report["policies"]["student"]["unparseable"] == len(invalid) == len(logged) == 3
    assert all(r["decision"] == "APE NEUTRAL" and r["fill"] is None for r in invalid)
    assert all(e["raw"] == r["raw"] for e, r in zip(logged, invalid, strict=True))


def test_stateful_prompt_fits_the_context(student):
    pol = ModelPolicy(
        str(student), max_tokens=16, stateful=True, context_tokens=400, history_trades=6
    )
    state = MarketState(3000.0, 0.5, 50, 10.0, 30000.0, 0.4, 40, 1.0, 3000.0, 60)
    h = History(start_value_usdc=6000.0)
    for i in range(12):
        h.add(Trade(1_700_000_000 + 900 * i, "APE IN" if i % 2 else "APE OUT", 0.1, 2990.0 + i))
    stateless_ids, _ = ModelPolicy.messages(pol, state, None)
    ids, detail = pol.messages(state, h)
    assert len(ids) <= 400 - 16
    assert detail < 6  # older trades were folded into the summary to fit
    assert len(ids) > len(stateless_ids)  # but some history is in the prompt
    text = pol.tokenizer.decode(ids)
    assert "earlier:" in text and "Action?" in text
    roomy = ModelPolicy(
        str(student), max_tokens=16, stateful=True, context_tokens=4096, history_trades=6
    )
    _, detail = roomy.messages(state, h)
    assert detail == 6
    d = pol.decide(state, h)
    assert d.decision in ("APE IN", "APE OUT", "APE NEUTRAL") and d.prompt_tokens == len(ids)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="model directory not found"):
        ModelPolicy(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not an MLX model dir"):
        ModelPolicy(str(tmp_path / "empty"))


def test_model_reference_typo_never_downloads(monkeypatch):
    """``in/nope`` looks like a hub id but is a (mistyped) path: refused, nothing fetched."""
    import huggingface_hub

    def no_download(*a, **k):
        raise AssertionError("a model reference without hf: reached the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    with pytest.raises(UserError, match=r"model directory not found: in/nope .*hf:org/name"):
        ModelPolicy("in/nope")
    with pytest.raises(UserError, match="a hub model is hf:org/name"):
        ModelPolicy("hf:not a repo")


def test_cli_backtest(tmp_path, student):
    from agent_fixtures import agent_app
    from typer.testing import CliRunner

    from chain.csvio import write_swaps_csv
    from chain.simulate import simulate

    csv = tmp_path / "sim.csv"
    write_swaps_csv(csv, simulate(500, seed=5))
    out = tmp_path / "bt"
    args = ["backtest", "--swaps", str(csv), "--out", str(out), "--holdout-frac", "0.5"]
    res = CliRunner().invoke(
        agent_app(),
        [*args, "--model", str(student), "--max-steps", "2", "--interval-minutes", "60"],
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "backtest.json").read_text())
    assert report["source"] == "simulated" and report["steps"] == 2
    assert set(report["policies"]) == {"student", "rules", "hold", "rebalance"}
    assert "SIMULATED" in res.output and (out / "equity.png").is_file()
    # Bad input: a clear error naming what is wrong, nothing written.
    res = CliRunner().invoke(
        agent_app(), [*args[:3], "--out", str(tmp_path / "x"), "--policies", "student"]
    )
    assert isinstance(res.exception, UserError) and "needs a model" in str(res.exception)
    res = CliRunner().invoke(agent_app(), ["backtest", "--swaps", str(tmp_path / "nope.csv")])
    assert isinstance(res.exception, UserError) and "not found" in str(res.exception)
    res = CliRunner().invoke(agent_app(), [*args[:3], "--policies", "rules,moon"])
    assert isinstance(res.exception, UserError) and "unknown policy moon" in str(res.exception)
    assert not (tmp_path / "x").exists()


def test_load_rows_from_event_store(tmp_path):
    from chain.simulate import simulate
    from chain.store import Store

    rows = simulate(120, seed=7)
    with Store(tmp_path / "swaps.db") as store:
        store.commit_chunk(rows[0]["block_number"], rows[-1]["block_number"], rows)
    loaded, source = load_rows(tmp_path / "swaps.db")
    assert source == "simulated"
    key = ("block_number", "log_index", "sqrt_price_x96", "liquidity", "amount0", "amount1")
    assert [tuple(r[k] for k in key) for r in loaded] == [tuple(r[k] for k in key) for r in rows]
    with pytest.raises(UserError, match="expected a swaps CSV"):
        load_rows(tmp_path)


def test_student_without_system_prompt_when_trained_without_one(student):
    """distill.include_system false: the student met no system prompt in training, so the agent
    sends none either (the chat is the user prompt alone)."""
    from agent.config import DEFAULTS as AGENT_DEFAULTS
    from agent.policies import make_policy
    from distill.config import DEFAULTS as DISTILL_DEFAULTS

    state = MarketState(3000.0, 0.5, 50, 10.0, 30000.0, 0.4, 40, 1.0, 3000.0, 60)
    agent = {**AGENT_DEFAULTS, "model": str(student)}
    texts = {}
    for include in (True, False):
        pol = make_policy("student", agent, {**DISTILL_DEFAULTS, "include_system": include})
        ids, _ = pol.messages(state, None)
        texts[include] = pol.tokenizer.decode(ids)
    assert "<|im_start|>system" in texts[True]
    assert "<|im_start|>system" not in texts[False]
    assert texts[False].startswith("<|im_start|>user") and texts[True].endswith(texts[False])


def test_prompt_cache_of_the_fixed_head_answers_as_without_it(student):
    """agent.prompt_cache: the prompt's fixed head (system prompt, first line) is prefilled
    once; each decision prefills only the rest, then the cache is trimmed back to the head.
    The same states get the same answers, token for token, and a prompt that does not start
    with the head (history between system and state) is answered without the cache."""
    import random

    from finetune_mlx.model_dir import answer

    rng = random.Random(7)
    states = [MarketState(rng.uniform(2500, 3500), rng.uniform(-1.5, 1.5), rng.randint(-150, 150),
                          rng.uniform(1, 300), rng.uniform(1e3, 1e6), rng.uniform(0.1, 2),
                          rng.randint(1, 900), rng.uniform(0, 3), rng.uniform(0, 9000), 60)
              for _ in range(4)]
    cached = ModelPolicy(str(student), max_tokens=12, prompt_cache=True)
    plain = ModelPolicy(str(student), max_tokens=12)
    head = cached.tokenizer.decode(cached.prefix.ids)
    assert head.endswith("ETH/USDC, last ") and cached.system in head
    for s in states:
        ids = plain.messages(s, None)[0]
        want = answer(plain.model, plain.tokenizer, ids, 12)["text"]
        assert answer(cached.model, cached.tokenizer, ids, 12, prefix=cached.prefix)["text"] == want
        assert cached.prefix.cache[0].offset == len(cached.prefix.ids)  # trimmed back
    assert cached.prefix.hits == len(states) and cached.prefix.misses == 0
    h = History(start_value_usdc=6000.0)
    h.add(Trade(1_700_000_000, "APE IN", 0.1, 2990.0))
    stateful = ModelPolicy(str(student), max_tokens=12, stateful=True, context_tokens=4096)
    ids = stateful.messages(states[0], h)[0]
    want = answer(plain.model, plain.tokenizer, ids, 12)["text"]
    assert answer(cached.model, cached.tokenizer, ids, 12, prefix=cached.prefix)["text"] == want
    assert cached.prefix.misses == 1
    assert cached.decide(states[1]).raw == plain.decide(states[1]).raw

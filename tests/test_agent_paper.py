"""The live loop in paper mode against the chain devnode (real HTTP JSON-RPC on 127.0.0.1)."""

from __future__ import annotations

import json
import time

import pytest
from agent_fixtures import RULES, agent_app, build_student, live_node
from typer.testing import CliRunner

from agent.config import DEFAULTS
from agent.live import Journal, run_agent
from agent.policies import RulesPolicy
from apeagent.config import window_minutes
from apeagent.errors import UserError
from chain.simulate import simulate


@pytest.fixture(scope="module")
def node():
    n = live_node()
    yield n
    n.stop()


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_paper_loop_journal_and_resume(node, tmp_path):
    journal = tmp_path / "journal.jsonl"
    sent_before = node.calls.get("eth_sendRawTransaction", 0)
    sleeps, said = [], []
    pol = RulesPolicy(RULES)
    s = run_agent(
        pol,
        dict(DEFAULTS),
        rpc_urls=[node.url],
        journal=journal,
        iterations=2,
        sleep=sleeps.append,
        echo=said.append,
    )
    assert s["iterations"] == 2 and sleeps == [DEFAULTS["interval_seconds"]]
    # one endpoint is enough for paper trading, and the run says so
    assert said[0].startswith(f"paper mode on one endpoint ({node.url})") and s["refused"] == 0
    run_agent(
        pol,
        dict(DEFAULTS),
        rpc_urls=[node.url],
        journal=journal,
        iterations=2,
        sleep=lambda s: None,
        echo=lambda s: None,
    )
    recs = _lines(journal)
    assert len(recs) == 4 and all(r["mode"] == "paper" and r["chain_id"] == 8453 for r in recs)
    assert all(r["price_check"]["ok"] and r["price_check"]["anchor"] is None for r in recs)
    r0 = recs[0]
    assert r0["portfolio"]["value_before_usdc"] == pytest.approx(DEFAULTS["initial_value_usdc"])
    assert set(r0["state"]) >= {
        "price",
        "change_pct",
        "volume_eth",
        "swap_count",
        "eth_balance",
        "window_minutes",
    }
    assert r0["state"]["window_minutes"] == window_minutes(DEFAULTS)
    # The devnode's pool state at its head block is what the fill used.
    last = node.rows[-1]
    from chain.amm import price_from_sqrt_price_x96

    assert r0["price"] == price_from_sqrt_price_x96(last["sqrt_price_x96"])
    # The second run resumed the paper portfolio where the first left it.
    assert recs[2]["portfolio"]["value_before_usdc"] == pytest.approx(
        recs[1]["portfolio"]["value_usdc"], rel=1e-12
    )
    assert recs[2]["state"]["eth_balance"] == pytest.approx(recs[1]["portfolio"]["eth"], rel=1e-12)
    traded = [r for r in recs if r.get("fill")]
    assert traded and all(r["decision"] in ("APE IN", "APE OUT") for r in traded)
    assert node.calls.get("eth_sendRawTransaction", 0) == sent_before  # paper never sends


def test_daily_loss_limit_halts_trading(node, tmp_path):
    journal = tmp_path / "journal.jsonl"
    # Earlier today the portfolio was worth far more: today's loss is beyond the limit.
    Journal(journal).append(
        {"time": int(time.time()), "mode": "paper", "portfolio": {"value_before_usdc": 20000.0}}
    )
    run_agent(
        RulesPolicy(RULES),
        dict(DEFAULTS),
        rpc_urls=[node.url],
        journal=journal,
        iterations=1,
        echo=lambda s: None,
    )
    rec = _lines(journal)[-1]
    assert rec["halted"] is True and "fill" not in rec


def test_unreachable_rpc(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match="cannot reach any RPC endpoint"):
        run_agent(
            RulesPolicy(RULES),
            dict(DEFAULTS),
            rpc_urls=[f"http://127.0.0.1:{port}/secret-key"],
            journal=tmp_path / "j.jsonl",
            iterations=1,
        )
    assert not (tmp_path / "j.jsonl").exists()


def test_wrong_chain_refused_unless_local_fork(tmp_path):
    other = live_node(simulate(200, seed=2), chain_id=1)
    try:
        with pytest.raises(UserError, match="chain id 1, not Base"):
            run_agent(
                RulesPolicy(RULES),
                dict(DEFAULTS),
                rpc_urls=[other.url],
                journal=tmp_path / "j.jsonl",
                iterations=1,
            )
        run_agent(
            RulesPolicy(RULES),
            dict(DEFAULTS),
            rpc_urls=[other.url],
            journal=tmp_path / "j.jsonl",
            iterations=1,
            fork=True,
            echo=lambda s: None,
        )
        assert _lines(tmp_path / "j.jsonl")[0]["chain_id"] == 1
    finally:
        other.stop()


def test_cli_paper_with_tiny_student(node, tmp_path):
    model = build_student(tmp_path / "student")
    journal = tmp_path / "journal.jsonl"
    res = CliRunner().invoke(
        agent_app(),
        [
            "trade",
            "--rpc-url",
            node.url,
            "--model",
            str(model),
            "--iterations",
            "1",
            "--journal",
            str(journal),
        ],
    )
    assert res.exit_code == 0, res.output
    (rec,) = _lines(journal)
    assert rec["policy"] == "student" and "raw" in rec  # the model's text is journaled
    if not rec["valid"]:
        assert rec["decision"] == "APE NEUTRAL" and rec["reason"]
    assert "1 decisions" in res.output


def test_cli_missing_model(node, tmp_path):
    res = CliRunner().invoke(
        agent_app(),
        [
            "trade",
            "--rpc-url",
            node.url,
            "--model",
            str(tmp_path / "none"),
            "--journal",
            str(tmp_path / "j"),
        ],
    )
    assert (
        res.exit_code != 0
        and isinstance(res.exception, UserError)
        and "model directory not found" in str(res.exception)
    )

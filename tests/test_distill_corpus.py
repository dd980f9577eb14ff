"""The parser on the project's labelled teacher-answer corpus, and the teacher report /
``--show-rejected`` that show a user what was rejected and why."""

import json
import subprocess
import sys
from pathlib import Path

from distill.parse import REASONS, format_action
from distill.prompt import MarketState

sys.path.insert(0, str(Path(__file__).parent))
import distill_corpus  # noqa: E402
from distill_fixtures import FakeOpenAI, write_windows  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_corpus_targets():
    rows = distill_corpus.load()
    assert len(rows) >= 150
    cats = {r["category"] for r in rows}
    assert cats >= {"negation", "swap", "synonyms", "rebalance", "chinese", "distractor", "conditional",
                    "no_separator", "markdown", "lowercase", "truncated", "think_close", "repeated",
                    "conflicting", "refusal", "amount"}
    result = distill_corpus.score(rows)
    m = result["categories"]
    assert m["all"]["accuracy"] >= 0.95 and m["all"]["wrong"] <= 0.01, result["failures"]
    assert m["all"]["amount_accuracy"] >= 0.95, result["failures"]
    for cat, c in m.items():  # no category may be read badly, however small
        assert c["accuracy"] >= 0.9 and c["wrong"] <= 0.05, (cat, c)


def test_the_scorer_can_fail():
    rows = distill_corpus.load()[:40]
    always_buy = distill_corpus.score(rows, lambda r: ("APE IN", None))["categories"]["all"]
    assert always_buy["accuracy"] < 0.5 and always_buy["wrong"] > 0.4
    nothing = distill_corpus.score(rows, lambda r: (None, None))["categories"]["all"]
    assert nothing["rejected"] == 1.0 and nothing["wrong"] == 0.0


def _answer(body: dict) -> str:
    """A teacher that swaps when underweight, rebalances when overweight, else hedges."""
    import re

    share = int(re.search(r"ETH share (\d+)%", body["messages"][-1]["content"]).group(1))
    if share < 35:
        return "<think>\nUnderweight.\n</think>\nunderweight ETH\n#### Swap 1,000 USDC for ETH"
    if share > 65:
        return "<think>\nToo much ETH.\n</think>\noverweight\n#### Rebalance toward 50/50"
    return "<think>\nHmm, " + "let me weigh the trend. " * 40 + "\n</think>\nIt depends on your risk tolerance."


def test_teach_reports_reasons_and_shows_rejected(tmp_path):
    windows = write_windows(tmp_path / "windows.parquet", 24, seed=3)
    server = FakeOpenAI(answer=_answer)
    try:
        out = tmp_path / "teach"
        cmd = [sys.executable, "-m", "distill", "teach", "-w", str(windows), "-o", str(out),
               "--teacher", "openai", "--base-url", server.url, "--model", "fake", "--retries", "0",
               "--show-rejected", "2"]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "teacher_report.json").read_text())
    recs = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    rejected = [x for x in recs if not x["ok"]]
    accepted = [x for x in recs if x["ok"]]
    assert rejected and accepted
    assert rep["rejections"] == {"undecided": len(rejected)} and set(rep["rejections"]) <= set(REASONS)
    assert abs(rep["rejection_rate"] - len(rejected) / len(recs)) < 1e-9
    assert rep["read_via"] == {k: sum(x["via"] == k for x in accepted) for k in ("swap", "rebalance")
                               if any(x["via"] == k for x in accepted)}
    for x in accepted:  # the direction comes from the portfolio's share; the USDC amount is converted
        state = MarketState.from_dict(x["state"])
        if x["via"] == "swap":
            assert state.eth_share_pct < 35 and x["decision"] == "APE IN"
            assert abs(x["amount_eth"] - 1000 / state.price) < 1e-6
            assert x["completion"] == "underweight ETH\n#### " + format_action("APE IN", x["amount_eth"])
        else:
            assert state.eth_share_pct > 65 and x["decision"] == "APE OUT" and x["amount_eth"] is None
    shown = r.stdout.count("rejected: undecided")
    assert shown == 2, r.stdout
    assert "It depends on your risk tolerance." in r.stdout
    assert "think block" in r.stdout and "let me weigh the trend. " * 40 not in r.stdout

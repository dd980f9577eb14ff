"""The labelled teacher-answer corpus (tests/data/teacher_answers.jsonl) and its scoring.

Each line: ``id``, ``batch`` (1: the 256 answers written before the parser was reworked,
2: 60 written afterwards in new wording, scored unseen once before the tables grew),
``category``, ``label`` (the canary a careful reader takes from the
answer, or null when the answer gives no usable decision), ``amount``/``unit`` (the amount
as written, null when there is none), ``share`` and ``price`` (the ETH share % and the
price of the market state the answer was given for, as ``ape-distill teach`` passes them)
and ``text`` (the raw answer). Shared by tests/test_distill_corpus.py and
benchmarks/bench_distill_parse.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

CORPUS = Path(__file__).parent / "data" / "teacher_answers.jsonl"
AMOUNT_RTOL = 0.02  # a USDC amount converted at the price may round differently


def load(path: Path = CORPUS) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def expected_eth(row: dict) -> float | None:
    if row["amount"] is None:
        return None
    return row["amount"] if row["unit"] == "ETH" else row["amount"] / row["price"]


def read_new(row: dict) -> tuple[str | None, float | None]:
    from distill.parse import parse_answer

    a = parse_answer(row["text"], plain=True, share_pct=row["share"], price=row["price"])
    return (a.decision, a.amount_eth) if a.valid else (None, None)


def _amount_ok(got: float | None, want: float | None) -> bool:
    if got is None or want is None:
        return got is None and want is None
    return math.isclose(got, want, rel_tol=AMOUNT_RTOL)


def score(rows: list[dict], read: Callable[[dict], tuple[str | None, float | None]] = read_new) -> dict:
    """Per category and overall: accuracy (decision right, or rightly rejected), wrong (a
    decision other than the label, or one where the label is none), rejected (no decision),
    missed (rejected although the answer states one) and amount accuracy (of the right
    decisions with a label)."""
    groups: dict[str, dict] = {}
    failures = []
    for row in rows:
        decision, amount = read(row)
        for key in (row["category"], "all"):
            g = groups.setdefault(key, dict(n=0, correct=0, wrong=0, rejected=0, missed=0, decided=0, amount_ok=0))
            g["n"] += 1
            g["rejected"] += decision is None
            g["missed"] += decision is None and row["label"] is not None
            g["wrong"] += decision is not None and decision != row["label"]
            ok = decision == row["label"]
            g["correct"] += ok
            if ok and decision is not None:
                g["decided"] += 1
                g["amount_ok"] += _amount_ok(amount, expected_eth(row))
        if decision != row["label"] or (decision and not _amount_ok(amount, expected_eth(row))):
            failures.append({"id": row["id"], "label": row["label"], "got": decision, "amount": amount,
                             "want_amount": expected_eth(row)})
    out = {}
    for key, g in sorted(groups.items(), key=lambda kv: (kv[0] == "all", kv[0])):
        out[key] = {
            "n": g["n"],
            "accuracy": g["correct"] / g["n"],
            "wrong": g["wrong"] / g["n"],
            "rejected": g["rejected"] / g["n"],
            "missed": g["missed"] / g["n"],
            "amount_accuracy": g["amount_ok"] / g["decided"] if g["decided"] else None,
        }
    return {"categories": out, "failures": failures}


def table(result: dict) -> str:
    lines = [f"{'category':<14}{'n':>5}{'accuracy':>10}{'wrong':>8}{'rejected':>10}{'missed':>8}{'amount':>8}"]
    for cat, m in result["categories"].items():
        amount = f"{m['amount_accuracy']:.0%}" if m["amount_accuracy"] is not None else "-"
        lines.append(f"{cat:<14}{m['n']:>5}{m['accuracy']:>10.1%}{m['wrong']:>8.1%}{m['rejected']:>10.1%}"
                     f"{m['missed']:>8.1%}{amount:>8}")
    return "\n".join(lines)

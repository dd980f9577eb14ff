"""Teacher-answer parsing on the project's labelled corpus (tests/data/teacher_answers.jsonl).

Per category: accuracy (the label's decision, or a rejection where the answer gives none),
wrong (a decision other than the label: the worst outcome, it trains the student to trade
the wrong way), rejected, missed (rejected although the answer states a decision) and amount
accuracy (of the right decisions: amount_eth within 2%, or rightly none). Targets: accuracy
>= 95%, wrong <= 1% overall. Each answer is parsed the way ``ape-distill teach`` does it
(plain mode, with the ETH share and price of its market state).

    python benchmarks/bench_distill_parse.py [--out runs/bench/distill_parse.json] [--failures]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import distill_corpus  # noqa: E402

from distill.parse import parse_answer  # noqa: E402

TARGET_ACCURACY, TARGET_WRONG = 0.95, 0.01


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=distill_corpus.CORPUS)
    ap.add_argument("--out", type=Path, default=ROOT / "runs/bench/distill_parse.json")
    ap.add_argument("--failures", action="store_true", help="list the answers read wrong")
    args = ap.parse_args()

    rows = distill_corpus.load(args.corpus)
    result = distill_corpus.score(rows)
    t0 = time.perf_counter()
    for r in rows:
        parse_answer(r["text"], plain=True, share_pct=r["share"], price=r["price"])
    per_answer_ms = (time.perf_counter() - t0) / len(rows) * 1000
    batches = {
        str(b): distill_corpus.score([r for r in rows if r.get("batch") == b])["categories"]["all"]
        for b in sorted({r.get("batch") for r in rows})
    }
    overall = result["categories"]["all"]
    out = {
        "corpus": str(args.corpus),
        "answers": len(rows),
        "categories": result["categories"],
        "batches": batches,
        "parse_ms_per_answer": per_answer_ms,
        "targets": {"accuracy": TARGET_ACCURACY, "wrong": TARGET_WRONG},
        "meets_targets": overall["accuracy"] >= TARGET_ACCURACY and overall["wrong"] <= TARGET_WRONG,
        "failures": result["failures"],
    }
    print(distill_corpus.table(result))
    for b, m in batches.items():
        print(f"batch {b}: n {m['n']}, accuracy {m['accuracy']:.1%}, wrong {m['wrong']:.1%}, "
              f"rejected {m['rejected']:.1%}")
    print(f"parse: {per_answer_ms:.3f} ms per answer; targets met: {out['meets_targets']}")
    if args.failures:
        for f in result["failures"]:
            print("failure:", f)
    print(json.dumps({k: v for k, v in out.items() if k != "failures"}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

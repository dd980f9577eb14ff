"""Canary evaluation on the held-out test split: base vs base+adapter vs fused, side by side.

For each model variant every test prompt (system + user, the dataset's own messages) is
answered greedily and parsed with ``distill.parse.parse_answer`` (strict: only canary words
count):

- canary compliance: answers with exactly one valid canary decision;
- format validity: drafts, the ``####`` separator and a canary decision;
- decision agreement: the student's decision equals the teacher's (parsed from the reference
  answer), with the confusion matrix (rows teacher, columns student, ``none`` = no decision);
- plain agreement: the same, reading buy/sell/hold words too (what a base model "meant");
- answer tokens, generation tokens/s and latency per answer.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from finetune_mlx.data import read_split, split_prompt

DECISIONS = ("APE IN", "APE OUT", "APE NEUTRAL")
NONE = "none"


def answer(model, tokenizer, messages: list[dict], max_tokens: int) -> dict[str, Any]:
    """One greedy answer with its token count, tokens/s and latency."""
    from mlx_lm import stream_generate

    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    text, last = "", None
    t0 = time.perf_counter()
    for last in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens):
        text += last.text
    latency = time.perf_counter() - t0
    return {
        "text": text,
        "tokens": last.generation_tokens if last else 0,
        "tokens_per_second": last.generation_tps if last else 0.0,
        "latency_s": latency,
        "finish_reason": last.finish_reason if last else None,
    }


def score(outputs: list[dict], references: list[str]) -> dict[str, Any]:
    """Metrics for one variant from its answers and the teacher's reference answers."""
    from distill.parse import parse_answer

    n = len(outputs)
    confusion = {t: {s: 0 for s in (*DECISIONS, NONE)} for t in DECISIONS}
    compliant = formatted = agree = plain_agree = 0
    for out, ref in zip(outputs, references, strict=False):
        teacher = parse_answer(ref).decision
        got = parse_answer(out["text"])
        plain = parse_answer(out["text"], plain=True)
        compliant += got.valid
        formatted += bool(got.valid and got.has_separator and got.drafts)
        agree += got.valid and got.decision == teacher
        plain_agree += plain.valid and plain.decision == teacher
        if teacher in confusion:
            confusion[teacher][got.decision if got.valid else NONE] += 1
    lat = sorted(o["latency_s"] for o in outputs)
    return {
        "n": n,
        "canary_compliance": compliant / n,
        "format_validity": formatted / n,
        "decision_agreement": agree / n,
        "plain_agreement": plain_agree / n,
        "confusion": confusion,
        "answer_tokens_mean": statistics.fmean(o["tokens"] for o in outputs),
        "tokens_per_second": statistics.fmean(o["tokens_per_second"] for o in outputs),
        "latency_s_mean": statistics.fmean(lat),
        "latency_s_p95": lat[min(n - 1, int(round(0.95 * (n - 1))))],
    }


def evaluate(
    test_file: str | Path,
    variants: dict[str, tuple[str | Path, str | Path | None]],
    max_tokens: int = 128,
    limit: int = 0,
    progress=None,
) -> dict[str, Any]:
    """``variants``: name -> (model dir, adapter dir or None). Returns the eval report."""
    from finetune_mlx.model_dir import check_adapter, check_model_dir, load

    test_file = Path(test_file)
    rows = read_split(test_file)
    if limit:
        rows = rows[:limit]
    prompts, refs = zip(*(split_prompt(r) for r in rows), strict=False)
    # Check every variant before the first answer (a bad path fails fast), but load one at a
    # time: three copies of a 3B model would not fit an 18 GB Mac.
    for model_dir, adapter in variants.values():
        check_model_dir(model_dir)
        if adapter is not None:
            check_adapter(adapter, model_dir)
    report: dict[str, Any] = {
        "test_file": str(test_file),
        "n": len(rows),
        "max_tokens": max_tokens,
        "variants": {},
        "samples": {},
    }
    for name, (model_dir, adapter) in variants.items():
        model, tokenizer = load(model_dir, adapter)
        task = progress.add_task(f"eval {name}", total=len(rows)) if progress else None
        outputs = []
        for msgs in prompts:
            outputs.append(answer(model, tokenizer, list(msgs), max_tokens))
            if progress:
                progress.advance(task)
        del model
        metrics = score(outputs, list(refs))
        metrics.update(model=str(model_dir), adapter=str(adapter) if adapter else None)
        report["variants"][name] = metrics
        report["samples"][name] = [o["text"] for o in outputs[:3]]
    return report

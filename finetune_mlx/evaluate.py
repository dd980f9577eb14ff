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

A model behind an OpenAI-compatible endpoint (``endpoint=``: ``mlx_lm.server``, llama.cpp's
server, Ollama's ``/v1``, ...) is one more variant, ``endpoint``: the same chat messages sent
through the HTTP client of ``distill.teachers`` (greedy, ``concurrency`` requests in flight,
retries), scored alike; its latency is the request's round trip.

Beside the models, the trivial baselines of :mod:`finetune_mlx.baselines` (majority class,
best single-feature rule; fit on the train split beside the test file, scored on test), the
base model's plain-word agreement, and the fused model's margin over the best trivial
baseline, in points: ``margin_points = 100 * (fused agreement - best trivial agreement)``
(and ``margin_points_in_hindsight`` over the single-feature rule that scores best on test).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from apeagent.errors import UserError
from apeagent.redact import redact_url
from distill.dataset import read_split, split_prompt

DECISIONS = ("APE IN", "APE OUT", "APE NEUTRAL")
NONE = "none"


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


def variants_for(
    base: str | Path | None, adapter: str | Path | None, fused: str | Path | None, with_base: bool = True
) -> dict[str, tuple[str | Path, str | Path | None]]:
    """The models to compare: ``base`` (unless not ``with_base``), ``base+adapter``, ``fused``."""
    out: dict[str, tuple[str | Path, str | Path | None]] = {}
    if with_base:
        out["base"] = (base, None)
    if adapter is not None:
        out["base+adapter"] = (base, adapter)
    if fused is not None:
        out["fused"] = (fused, None)
    if not out:
        raise UserError("nothing to evaluate (drop --no-base or give --adapter-path / --fused)")
    return out


def compare(report: dict[str, Any]) -> dict[str, Any]:
    """The fused (else last) model against the trivial baselines and the base's plain words."""
    base = report["variants"].get("base")
    out: dict[str, Any] = {
        "base_plain_agreement": base["plain_agreement"] if base else None,
        "best_trivial_agreement": report["baselines"].get("best_trivial_agreement"),
    }
    if report["variants"] and out["best_trivial_agreement"] is not None:
        name = "fused" if "fused" in report["variants"] else list(report["variants"])[-1]
        got = report["variants"][name]["decision_agreement"]
        out.update(model=name, margin_points=round(100 * (got - out["best_trivial_agreement"]), 2))
        hind = report["baselines"].get("best_single_feature_in_hindsight")
        if hind:
            out["margin_points_in_hindsight"] = round(100 * (got - hind["agreement"]), 2)
    return out


def evaluate(
    test_file: str | Path,
    variants: dict[str, tuple[str | Path, str | Path | None]],
    max_tokens: int = 128,
    limit: int = 0,
    progress=None,
    train_file: str | Path | None = None,
    endpoint: dict | None = None,
    batch_size: int = 1,
    base_limit: int = 0,
) -> dict[str, Any]:
    """``variants``: name -> (model dir, adapter dir or None). Returns the eval report.

    ``train_file`` (default: ``train.jsonl`` beside the test file) fits the trivial baselines.
    ``batch_size`` > 1 generates that many answers together (mlx-lm batch generation);
    ``base_limit`` > 0 scores the base on only the first that many prompts (an untuned base
    writes to ``max_tokens`` every time: the slowest variant, and its score is only a floor).
    ``endpoint``: ``{"url", "model", "cfg"}`` (``cfg``: the finetune section's endpoint keys)
    adds the variant ``endpoint``, answered by that server.
    """
    from finetune_mlx.baselines import baselines
    from finetune_mlx.model_dir import answers, check_adapter, check_model_dir, load

    test_file = Path(test_file)
    train_file = Path(train_file) if train_file else test_file.with_name("train.jsonl")
    rows = read_split(test_file)
    train_rows = read_split(train_file)
    if limit:
        rows = rows[:limit]
    prompts, refs = zip(*(split_prompt(r) for r in rows), strict=False)
    # Check every variant before the first answer (a bad path fails fast), but load one at a
    # time: three copies of a 3B model would not fit an 18 GB Mac.
    for model_dir, adapter in variants.values():
        check_model_dir(model_dir)
        if adapter is not None:
            check_adapter(adapter, model_dir)
    client = None
    if endpoint is not None:  # reachable, key rules, model name: checked before any answer
        from distill.teachers import endpoint_client

        client = endpoint_client(endpoint["url"], endpoint["model"], max_tokens, endpoint["cfg"],
                                 what="eval", section="finetune")
    report: dict[str, Any] = {
        "test_file": str(test_file),
        "train_file": str(train_file),
        "n": len(rows),
        "max_tokens": max_tokens,
        "baselines": baselines(train_rows, rows),
        "variants": {},
        "samples": {},
    }
    for name, (model_dir, adapter) in variants.items():
        model, tokenizer = load(model_dir, adapter)
        task = progress.add_task(f"eval {name}", total=len(rows)) if progress else None
        n = len(rows) if name != "base" or not base_limit else min(base_limit, len(rows))
        outputs = answers(model, tokenizer, [list(m) for m in prompts[:n]], max_tokens, batch_size,
                          on_done=(lambda k, t=task: progress.advance(t, k)) if progress else None)
        del model
        metrics = score(outputs, list(refs[:n]))
        metrics.update(model=str(model_dir), adapter=str(adapter) if adapter else None)
        report["variants"][name] = metrics
        report["samples"][name] = [o["text"] for o in outputs[:3]]
    if client is not None:
        outputs = endpoint_answers(client, [list(m) for m in prompts], progress)
        metrics = score(outputs, list(refs))
        metrics.update(model=client.model, endpoint=redact_url(client.urls[0]), adapter=None)
        report["variants"]["endpoint"] = metrics
        report["samples"]["endpoint"] = [o["text"] for o in outputs[:3]]
    report["comparison"] = compare(report)
    return report


def endpoint_answers(client, prompts: list[list[dict]], progress=None) -> list[dict]:
    """The client's greedy answers to ``prompts`` (in order), as :func:`answer`'s dicts."""
    from distill.teachers import Request

    task = progress.add_task("eval endpoint", total=len(prompts)) if progress else None
    outputs: list[dict] = [{}] * len(prompts)
    for r, g in client.generate(Request(str(i), p, None) for i, p in enumerate(prompts)):
        outputs[int(r.key)] = {
            "text": g.text,
            "tokens": g.output_tokens,
            "tokens_per_second": g.output_tokens / g.seconds if g.seconds else 0.0,
            "latency_s": g.seconds,
        }
        if progress:
            progress.advance(task)
    return outputs


def ask(model: str | Path, adapter: str | Path | None, messages: list[dict], max_tokens: int):
    """``ape-finetune generate``: one greedy answer of a model (dir or hub id) and its parse."""
    from distill.parse import parse_answer
    from finetune_mlx.model_dir import answer, load, resolve_model

    mdl, tok = load(resolve_model(model), adapter)
    out = answer(mdl, tok, messages, max_tokens)
    return out, parse_answer(out["text"])

"""``ape-distill teach``: market windows -> prompts -> teacher answers (cached) -> report.

Order of work: read and validate every windows file, build the teacher and check it (model
loads, endpoints answer, API key present), and only then open the answer cache. Each answer
is cleaned on arrival and appended to ``answers.jsonl``; rejected answers are re-asked up to
``retries`` times. ``teacher_report.json`` summarises the whole cache for these prompts.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from apeagent.errors import UserError
from apeagent.files import write_json
from apeagent.redact import redact_obj
from distill.cache import AnswerStore, answer_key, read_records
from distill.clean import clean_answer
from distill.config import STYLES
from distill.prompt import MarketState, format_prompt, system_prompt
from distill.teachers import Request, make_teacher
from distill.windows import Window, load_windows, states

ANSWERS = "answers.jsonl"
REPORT = "teacher_report.json"


@dataclass
class Item:
    key: str
    window: Window
    portfolio: int
    state: MarketState
    messages: list[dict]


def build_items(windows: list[Window], cfg: dict, teacher) -> list[Item]:
    system = system_prompt(cfg["style"])
    items: list[Item] = []
    seen: Counter = Counter()
    for w, state in states(windows, cfg):
        j = seen[w.group]
        seen[w.group] += 1
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": format_prompt(state)},
        ]
        key = answer_key(messages, teacher.name, teacher.model, teacher.settings)
        items.append(Item(key, w, j, state, messages))
    return items


def _record(item: Item, attempt: int, teacher, style: str, gen, cleaned) -> dict:
    return {
        "key": item.key,
        "attempt": attempt,
        "ok": cleaned.ok,
        "reason": cleaned.reason,
        "fixes": cleaned.fixes,
        "via": cleaned.via,
        "decision": cleaned.decision,
        "amount_eth": cleaned.amount_eth,
        "completion": cleaned.completion,
        "raw": gen.text,
        "output_tokens": gen.output_tokens,
        "seconds": round(gen.seconds, 4),
        "teacher": teacher.name,
        "model": teacher.model,
        "style": style,
        "system": item.messages[0]["content"],
        "prompt": item.messages[1]["content"],
        "state": item.state.to_dict(),
        "file": item.window.file,
        "window_id": item.window.window_id,
        "source": item.window.source,
        "order": item.window.order,
        "group": item.window.group,
        "portfolio": item.portfolio,
    }


def report(items: list[Item], store: AnswerStore, teacher, cfg: dict, extra: dict) -> dict:
    accepted, exhausted = Counter(), 0
    reasons, fixes, via = Counter(), Counter(), Counter()
    attempts = 0
    tokens_all: list[int] = []
    tokens_ok: list[int] = []
    for it in items:
        recs = store.by_key.get(it.key, [])
        attempts += len(recs)
        for r in recs:
            tokens_all.append(r["output_tokens"])
            if r["ok"]:
                tokens_ok.append(r["output_tokens"])
                fixes.update(r.get("fixes") or [])
            else:
                reasons[r["reason"]] += 1
        ok = store.accepted(it.key)
        if ok:
            accepted[ok["decision"]] += 1
            via[ok.get("via") or "unrecorded"] += 1  # caches written before "via" existed
        elif len(recs) > cfg["retries"]:
            exhausted += 1
    n_ok = sum(accepted.values())
    return {
        "teacher": teacher.name,
        "model": teacher.model,
        "style": cfg["style"],
        "settings": teacher.settings,
        "items": len(items),
        "accepted": n_ok,
        "rejected_after_retries": exhausted,
        "missing": len(items) - n_ok - exhausted,
        "attempts": attempts,
        "rejections": dict(reasons.most_common()),
        "rejection_rate": sum(reasons.values()) / attempts if attempts else 0.0,
        "read_via": dict(via.most_common()),
        "fixes": dict(fixes.most_common()),
        "decisions": {k: accepted[k] for k in ("APE IN", "APE OUT", "APE NEUTRAL")},
        "output_tokens": {
            "counter": getattr(teacher, "counter_name", ""),
            "total": int(sum(tokens_all)),
            "mean_per_attempt": sum(tokens_all) / len(tokens_all) if tokens_all else 0.0,
            "mean_accepted": sum(tokens_ok) / len(tokens_ok) if tokens_ok else 0.0,
        },
        **extra,
    }


def rejected(out_dir: str | Path, rep: dict, n: int) -> list[dict]:
    """The last ``n`` rejected attempts of this teacher/model/style in ``answers.jsonl``."""
    recs = [
        r for r in read_records(Path(out_dir) / ANSWERS)
        if not r.get("ok") and (r.get("teacher"), r.get("model"), r.get("style"))
        == (rep["teacher"], rep["model"], rep["style"])
    ]
    return recs[-n:] if n > 0 else []


def teach(
    cfg: dict,
    windows_paths: list[str | Path],
    out_dir: str | Path,
    on_answer: Callable[[int, int], None] | None = None,
) -> dict:
    """Run the teacher over every (window, portfolio); returns the report (also written)."""
    if cfg["style"] not in STYLES:
        raise UserError(f"distill.style: unknown style {cfg['style']!r} (known: cod, cot)")
    if cfg["retries"] < 0:
        raise UserError("distill.retries must be >= 0")
    windows = load_windows(windows_paths, cfg["window_bars"], cfg["max_windows"])
    teacher = make_teacher(cfg)
    items = build_items(windows, cfg, teacher)
    teacher.check()  # before anything is written

    out_dir = Path(out_dir)
    store = AnswerStore(out_dir / ANSWERS)
    by_key = {it.key: it for it in items}
    limit = cfg["retries"] + 1
    draft_words = cfg["max_draft_words"] if cfg["style"] == "cod" else None

    def todo() -> list[Item]:
        seen: set[str] = set()
        out = []
        for it in items:  # two portfolios can give one prompt: ask once
            if it.key in seen or store.accepted(it.key) or store.attempts(it.key) >= limit:
                continue
            seen.add(it.key)
            out.append(it)
        return out

    cached = sum(1 for it in items if store.accepted(it.key))
    work = todo()
    done, total = 0, len(work)
    generated, gen_tokens = 0, 0
    t0 = time.perf_counter()
    try:
        while work:
            reqs = [Request(it.key, it.messages, it.state, store.attempts(it.key)) for it in work]
            for req, gen in teacher.generate(reqs):
                item = by_key[req.key]
                cleaned = clean_answer(gen.text, draft_words, cfg["max_drafts"],
                                       share_pct=item.state.eth_share_pct, price=item.state.price)
                store.append(_record(item, req.attempt, teacher, cfg["style"], gen, cleaned))
                generated += 1
                gen_tokens += gen.output_tokens
                if cleaned.ok or req.attempt + 1 >= limit:
                    done += 1
                if on_answer:
                    on_answer(done, total)
            work = todo()
    finally:
        store.close()
        teacher.close()
    elapsed = time.perf_counter() - t0
    extra = {
        "windows_files": [str(p) for p in windows_paths],
        "windows": len(windows),
        "cached_at_start": cached,
        "generated_this_run": generated,
        "output_tokens_this_run": gen_tokens,
        "seconds_this_run": round(elapsed, 3),
        "output_tokens_per_s": gen_tokens / elapsed if elapsed > 0 and generated else None,
        "answers_file": str(out_dir / ANSWERS),
        # the keys this run asked: `ape-distill dataset` takes only these from answers.jsonl,
        # which also holds answers to prompts an earlier, larger run asked (the cache)
        "item_keys": sorted({it.key for it in items}),
    }
    if getattr(teacher, "requests_per_url", None):
        extra["requests_per_url"] = teacher.requests_per_url
    rep = report(items, store, teacher, cfg, extra)
    write_json(out_dir / REPORT, redact_obj(rep))  # base URLs without keys
    return rep

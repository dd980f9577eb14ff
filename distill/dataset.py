"""``ape-distill dataset``: accepted teacher answers -> mlx-lm train/valid/test JSONL.

- Only accepted answers; one per cache key, then one per distinct prompt (dedup).
- Split by window order (time order for real windows): the first windows train, the next
  validate, the last test; all examples of one window land in the same split.
- Every completion is re-checked: exactly one canary decision after ``####`` and no plain
  BUY/SELL/HOLD word.
- Class balance per split; ``rebalance`` (train only) down- or up-samples to equal classes.
- With a tokenizer / model dir, every example must fit ``max_seq_length`` tokens as mlx-lm
  will tokenize it (chat template included); otherwise nothing is written.

This module owns the dataset JSONL: the writer (:func:`build_dataset`), the reader
(:func:`read_split`, :func:`load_splits`) and the token lengths (:func:`token_lengths`) that
``ape-distill check`` and ``ape-finetune lora`` use.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from apeagent.errors import UserError
from apeagent.files import write_json, write_jsonl
from distill.cache import read_records
from distill.clean import has_plain_decision
from distill.config import FORMATS, REBALANCE
from distill.parse import CANARIES, parse_answer
from distill.teach import REPORT as TEACHER_REPORT

SPLITS = ("train", "valid", "test")
REPORT = "dataset_report.json"


def asked_keys(answers_path: str | Path) -> set[str] | None:
    """The keys the last ``ape-distill teach`` into this folder asked (its report's
    ``item_keys``), or None when no such report sits beside ``answers_path``."""
    path = Path(answers_path).with_name(TEACHER_REPORT)
    if not path.is_file():
        return None
    try:
        keys = json.loads(path.read_text()).get("item_keys")
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: not a teacher report ({e})") from None
    if keys is None:
        return None  # a report written before item_keys existed: every record counts
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise UserError(f"{path}: item_keys is not a list of strings")
    return set(keys)


def accepted_answers(paths: list[str | Path]) -> tuple[list[dict], dict]:
    """Accepted records, deduplicated by cache key and then by prompt, in window order.

    The answer cache keeps answers to prompts an earlier run asked (more portfolios per
    window, other windows): where the teacher report beside a file lists the keys its last
    run asked, only those count (the rest: ``stats["not asked by the last teach"]``).
    """
    if not paths:
        raise UserError("no answers file given (--answers)")
    stats = Counter()
    by_key: dict[str, dict] = {}
    for path in paths:
        asked = asked_keys(path)
        for rec in read_records(path, strict=True):  # a torn last line: a teacher run that was killed
            stats["records"] += 1
            if not rec.get("ok"):
                continue
            if asked is not None and rec["key"] not in asked:
                stats["not asked by the last teach"] += 1
                continue
            missing = [k for k in ("prompt", "completion", "group", "order") if k not in rec]
            if missing:
                raise UserError(f"{path}: record {rec['key']} lacks {', '.join(missing)}")
            if rec["key"] in by_key:
                stats["duplicate keys"] += 1
                continue
            by_key[rec["key"]] = rec
    out, seen = [], set()
    for rec in sorted(by_key.values(), key=lambda r: (r["order"], r.get("portfolio", 0))):
        ident = (rec.get("system", ""), rec["prompt"])
        if ident in seen:
            stats["duplicate prompts"] += 1
            continue
        seen.add(ident)
        out.append(rec)
    stats["accepted unique"] = len(out)
    return out, dict(stats)


def split_groups(records: list[dict], valid_fraction: float, test_fraction: float) -> dict[str, list[dict]]:
    """Contiguous split over windows in order: train | valid | test."""
    if not 0 <= valid_fraction < 1 or not 0 <= test_fraction < 1 or valid_fraction + test_fraction >= 1:
        raise UserError("distill.valid_fraction + distill.test_fraction must be in [0, 1)")
    groups: dict[str, int] = {}
    for r in records:
        groups[r["group"]] = min(groups.get(r["group"], r["order"]), r["order"])
    ordered = sorted(groups, key=lambda g: (groups[g], g))
    n = len(ordered)
    n_test = int(round(n * test_fraction))
    n_valid = int(round(n * valid_fraction))
    # Small data: still give each requested split at least one window when possible.
    if test_fraction > 0 and n_test == 0 and n >= 3:
        n_test = 1
    if valid_fraction > 0 and n_valid == 0 and n >= 3:
        n_valid = 1
    n_train = n - n_valid - n_test
    if n_train <= 0:
        raise UserError(f"too few windows ({n}) for the train/valid/test split")
    which = {}
    for i, g in enumerate(ordered):
        which[g] = "train" if i < n_train else "valid" if i < n_train + n_valid else "test"
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for r in records:
        out[which[r["group"]]].append(r)
    return out


def example(rec: dict, fmt: str, include_system: bool) -> dict:
    if fmt == "completions":
        return {"prompt": rec["prompt"], "completion": rec["completion"]}
    messages = []
    if include_system and rec.get("system"):
        messages.append({"role": "system", "content": rec["system"]})
    messages.append({"role": "user", "content": rec["prompt"]})
    messages.append({"role": "assistant", "content": rec["completion"]})
    return {"messages": messages}


def rebalance(records: list[dict], how: str, seed: int) -> list[dict]:
    if how == "none" or not records:
        return records
    rng = np.random.default_rng(seed)
    by_class = {c: [r for r in records if r["decision"] == c] for c in CANARIES}
    present = {c: rs for c, rs in by_class.items() if rs}
    target = (min if how == "downsample" else max)(len(rs) for rs in present.values())
    out = []
    for rs in present.values():
        if len(rs) >= target:
            idx = rng.choice(len(rs), size=target, replace=False)
        else:
            idx = np.concatenate([np.arange(len(rs)), rng.choice(len(rs), size=target - len(rs))])
        out.extend(rs[i] for i in sorted(idx))
    return sorted(out, key=lambda r: (r["order"], r.get("portfolio", 0)))


def load_tokenizer(path: str | Path):
    """The student's tokenizer (``transformers.AutoTokenizer``) from a model dir, with a chat template."""
    path = Path(path)
    if not (path / "tokenizer_config.json").is_file() and not (path / "tokenizer.json").is_file():
        raise UserError(f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise UserError(f"{path}: cannot load the tokenizer ({e})") from None
    if tok.chat_template is None:
        raise UserError(f"{path}: the tokenizer has no chat template")
    return tok


def example_messages(ex: dict) -> list[dict]:
    """The chat of one example of either format (``completions`` as user + assistant)."""
    if "messages" in ex:
        return ex["messages"]
    return [
        {"role": "user", "content": ex["prompt"]},
        {"role": "assistant", "content": ex["completion"]},
    ]


def split_prompt(ex: dict) -> tuple[list[dict], str]:
    """(the messages without the answer, the reference answer)."""
    msgs = example_messages(ex)
    return msgs[:-1], msgs[-1]["content"]


def token_lengths(examples: list[dict], tokenizer) -> list[int]:
    """Token counts exactly as mlx-lm's ChatDataset / CompletionsDataset compute them.

    ``tokenizer``: a loaded tokenizer (``mlx_lm.load``'s or ``AutoTokenizer``) or a model dir.
    """
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    return [len(tokenizer.apply_chat_template(example_messages(ex), return_dict=False)) for ex in examples]


def check_lengths(examples: list[dict], tokenizer, max_seq_length: int, path: Path) -> list[int]:
    """Token count of each example; the first example over ``max_seq_length`` is an error."""
    lengths = token_lengths(examples, tokenizer)
    for n, length in enumerate(lengths, 1):
        if length > max_seq_length:
            raise UserError(
                f"{path}: example {n} is {length} tokens, longer than max_seq_length={max_seq_length} "
                "(raise finetune.max_seq_length or shorten the example)"
            )
    return lengths


def _valid_example(row) -> bool:
    if not isinstance(row, dict):
        return False
    if "messages" not in row:  # completions format
        return all(isinstance(row.get(k), str) for k in ("prompt", "completion")) and bool(
            row["completion"].strip()
        )
    msgs = row["messages"]
    return (
        isinstance(msgs, list)
        and len(msgs) >= 2
        and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in msgs
        )
        and msgs[-1]["role"] == "assistant"
        and bool(msgs[-1]["content"].strip())
    )


def read_split(path: str | Path) -> list[dict]:
    """Examples of one split: ``{"messages": [..., {"role": "assistant", ...}]}`` (chat) or
    ``{"prompt": ..., "completion": ...}``; a bad line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"dataset file not found: {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not _valid_example(row):
            raise UserError(
                f'{path}:{n}: expected {{"messages": [..., {{"role": "assistant", "content": ...}}]}} '
                'or {"prompt": ..., "completion": ...}'
            )
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no valid examples")
    return rows


def load_splits(data_dir: str | Path, splits: tuple[str, ...] = SPLITS) -> dict[str, list[dict]]:
    """``{split: examples}`` of a dataset dir (``<split>.jsonl`` each)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"dataset directory not found: {data_dir}")
    return {s: read_split(data_dir / f"{s}.jsonl") for s in splits}


def answer_problem(text: str) -> str | None:
    """Why a completion is not a clean canary answer (None when it is): exactly one canary
    decision after ``####`` and no plain BUY/SELL/HOLD word."""
    ans = parse_answer(text)
    if not ans.valid or not ans.has_separator:
        return f"no single canary after #### ({ans.reason or 'no separator'})"
    if has_plain_decision(text):
        return "plain BUY/SELL/HOLD word"
    return None


def check_completion(rec: dict) -> str | None:
    problem = answer_problem(rec["completion"])
    if problem is not None:
        return problem
    decision = parse_answer(rec["completion"]).decision
    if decision != rec.get("decision"):
        return f"decision {decision} != recorded {rec.get('decision')}"
    return None


def build_dataset(
    cfg: dict, answer_paths: list[str | Path], out_dir: str | Path, tokenizer_dir: str | Path | None = None
) -> dict:
    if cfg["format"] not in FORMATS:
        raise UserError(f"distill.format: unknown format {cfg['format']!r} (known: {', '.join(FORMATS)})")
    if cfg["rebalance"] not in REBALANCE:
        raise UserError(f"distill.rebalance: unknown {cfg['rebalance']!r} (known: {', '.join(REBALANCE)})")
    records, stats = accepted_answers(answer_paths)
    if not records:
        raise UserError("no accepted answers in " + ", ".join(map(str, answer_paths)))
    for rec in records:
        problem = check_completion(rec)
        if problem:
            raise UserError(f"answer {rec['key']}: {problem}: {rec['completion']!r}")
    splits = split_groups(records, cfg["valid_fraction"], cfg["test_fraction"])
    natural_train = Counter(r["decision"] for r in splits["train"])
    splits["train"] = rebalance(splits["train"], cfg["rebalance"], cfg["seed"])
    examples = {s: [example(r, cfg["format"], cfg["include_system"]) for r in rs] for s, rs in splits.items()}

    lengths_report = None
    if tokenizer_dir:
        all_ex = [e for s in SPLITS for e in examples[s]]
        lengths = token_lengths(all_ex, tokenizer_dir)
        limit = cfg["max_seq_length"]
        over = [n for n in lengths if n > limit]
        lengths_report = {
            "tokenizer": str(tokenizer_dir),
            "max_seq_length": limit,
            "max": max(lengths),
            "mean": float(np.mean(lengths)),
            "over_limit": len(over),
        }
        if over:
            raise UserError(
                f"{len(over)} of {len(lengths)} examples exceed max_seq_length={limit} tokens "
                f"under {tokenizer_dir} (longest {max(over)}); shorten prompts or raise "
                "distill.max_seq_length"
            )

    out_dir = Path(out_dir)
    for s in SPLITS:
        write_jsonl(out_dir / f"{s}.jsonl", examples[s])
    rep = {
        "answers_files": [str(p) for p in answer_paths],
        "format": cfg["format"],
        "counts": {s: len(examples[s]) for s in SPLITS},
        "windows": {s: len({r["group"] for r in splits[s]}) for s in SPLITS},
        "classes": {s: {c: sum(r["decision"] == c for r in splits[s]) for c in CANARIES} for s in SPLITS},
        "train_before_rebalance": {c: natural_train[c] for c in CANARIES},
        "rebalance": cfg["rebalance"],
        "with_amount": sum(r.get("amount_eth") is not None for r in records),
        "teachers": dict(Counter(f"{r.get('teacher')}:{r.get('model')}" for r in records)),
        "styles": dict(Counter(r.get("style") for r in records)),
        "sources": dict(Counter(r.get("source") for r in records)),
        "stats": stats,
        "token_lengths": lengths_report,
    }
    write_json(out_dir / REPORT, rep)
    return rep


def check_dataset(dataset_dir: str | Path, tokenizer, max_seq_length: int) -> dict:
    """An existing dataset against a student's tokenizer and the canary rules, per split."""
    dataset_dir = Path(dataset_dir)
    tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    out = {}
    for s in SPLITS:
        path = dataset_dir / f"{s}.jsonl"
        # an empty split is allowed (distill.test_fraction = 0); read_split refuses one
        empty = path.is_file() and not path.read_text().strip()
        rows = [] if empty else read_split(path)
        lengths = token_lengths(rows, tokenizer)
        out[s] = {
            "examples": len(rows),
            "max_tokens": max(lengths, default=0),
            "over_limit": sum(n > max_seq_length for n in lengths),
            "bad_answers": sum(answer_problem(split_prompt(r)[1]) is not None for r in rows),
        }
    ok = not any(r["over_limit"] or r["bad_answers"] for r in out.values())
    return {"dataset": str(dataset_dir), "max_seq_length": max_seq_length, "splits": out, "ok": ok}

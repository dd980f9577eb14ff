"""The distilled dataset (``{train,valid,test}.jsonl``, mlx-lm chat format), checked up front.

mlx-lm truncates over-long examples with a warning and fails late on bad lines; here every
problem is a :class:`UserError` naming the file and line before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

from apeagent.errors import UserError

SPLITS = ("train", "valid", "test")


def read_split(path: Path) -> list[dict]:
    """Rows of one split; each must be ``{"messages": [..., {"role": "assistant", ...}]}``."""
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
        msgs = row.get("messages") if isinstance(row, dict) else None
        if (
            not isinstance(msgs, list)
            or len(msgs) < 2
            or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role")
                for m in msgs
            )
            or msgs[-1]["role"] != "assistant"
            or not msgs[-1]["content"].strip()
        ):
            raise UserError(
                f'{path}:{n}: expected {{"messages": [..., {{"role": "assistant", "content": ...}}]}}'
            )
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no valid examples")
    return rows


def load_splits(data_dir: str | Path, splits: tuple[str, ...] = SPLITS) -> dict[str, list[dict]]:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"dataset directory not found: {data_dir}")
    return {s: read_split(data_dir / f"{s}.jsonl") for s in splits}


def check_lengths(rows: list[dict], tokenizer, max_seq_length: int, path: Path) -> list[int]:
    """Token count of each example; an example over ``max_seq_length`` is an error."""
    lengths = []
    for n, row in enumerate(rows, 1):
        ids = tokenizer.apply_chat_template(row["messages"], return_dict=False)
        if len(ids) > max_seq_length:
            raise UserError(
                f"{path}: example {n} is {len(ids)} tokens, longer than max_seq_length={max_seq_length} "
                "(raise finetune.max_seq_length or shorten the example)"
            )
        lengths.append(len(ids))
    return lengths


def split_prompt(row: dict) -> tuple[list[dict], str]:
    """(messages without the answer, the reference answer)."""
    return row["messages"][:-1], row["messages"][-1]["content"]

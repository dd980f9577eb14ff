"""The answer cache: ``answers.jsonl``, one line per teacher attempt, appended as it arrives.

Keyed by a hash of (messages, teacher, model, generation settings). A re-run reads it and
skips every key that has an accepted answer (or has used up its attempts), so a killed run
loses at most the answers that were in flight. A line cut short by a kill is dropped on
open, before anything new is appended.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from apeagent.errors import UserError


def answer_key(messages: list[dict], teacher: str, model: str, settings: dict) -> str:
    blob = json.dumps(
        {"messages": messages, "teacher": teacher, "model": model, "settings": settings},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def read_records(path: str | Path, strict: bool = False) -> list[dict]:
    """All complete records of an answers file (a torn last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: answers file not found")
    out: list[dict] = []
    lines = path.read_bytes().split(b"\n")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            if i == len(lines) and not strict:
                break  # the torn tail of a killed run
            torn = " (a torn last line: was the teacher run killed? run `ape-distill teach` again)" if i == len(lines) else ""
            raise UserError(f"{path}:{i}: not a JSON line{torn}") from None
        if not isinstance(rec, dict) or "key" not in rec:
            raise UserError(f"{path}:{i}: not an answer record (no 'key')")
        for field, types in RECORD_TYPES.items():
            if field in rec and not isinstance(rec[field], types):
                raise UserError(f"{path}:{i}: field {field!r} has the wrong type ({type(rec[field]).__name__})")
        out.append(rec)
    return out


_OPT_STR = (str, type(None))
# the fields the dataset and the report read, with their JSON types (None: the field may be null)
RECORD_TYPES = {
    "key": str, "ok": bool, "decision": _OPT_STR, "amount_eth": (int, float, type(None)),
    "completion": _OPT_STR, "prompt": _OPT_STR, "system": _OPT_STR, "state": (dict, type(None)),
}


class AnswerStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.by_key: dict[str, list[dict]] = {}
        self._fh = None
        if self.path.exists():
            records = read_records(self.path)  # a bad file fails here, before it is changed
            self._repair()
            for rec in records:
                attempts = self.by_key.setdefault(rec["key"], [])
                if all(a.get("attempt") != rec.get("attempt") for a in attempts):
                    attempts.append(rec)

    def _repair(self) -> None:
        """Cut a torn last line (no newline: the process died mid-write)."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)

    def attempts(self, key: str) -> int:
        return len(self.by_key.get(key, ()))

    def accepted(self, key: str) -> dict | None:
        return next((r for r in self.by_key.get(key, ()) if r.get("ok")), None)

    def append(self, rec: dict) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._fh.flush()  # in the OS's hands now: survives a kill of this process
        self.by_key.setdefault(rec["key"], []).append(rec)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

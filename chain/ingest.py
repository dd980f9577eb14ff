"""Import a swaps CSV into the event store: an upsert by event key that never deletes silently.

* Rows are matched to stored events of the same block: by ``(block_number, log_index)`` when
  the file gives log indexes (our own export), else by content (every field but the index;
  the shared file has no log index). A match with equal content is *unchanged*, with other
  content *updated*; a CSV row without a match is *new* (without log indexes it gets the next
  free index of its block).
* Stored events in the CSV's block span that the CSV does not list are kept; ``replace=True``
  removes them (and says how many).
* Exact duplicate CSV rows are kept once and reported; timestamps must rise with blocks and fit
  Base's block time; ``dry_run=True`` computes the same summary and writes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from apeagent.errors import UserError
from chain.csvio import read_swaps_csv_report
from chain.pool import SIMULATED, check_timestamps
from chain.store import SWAP_COLUMNS, Store

# what must be equal for a CSV row to be the stored event (the key and chain-only fields aside)
CONTENT = tuple(
    c
    for c in SWAP_COLUMNS
    if c not in ("block_number", "log_index", "block_hash", "original_sender", "is_contract_sender", "tx_to")
)


def _content(r: dict[str, Any]) -> tuple:
    return tuple(r[k] for k in CONTENT)


def plan(rows: list[dict], stored: list[dict], by_index: bool) -> dict[str, Any]:
    """Resolve CSV ``rows`` against the ``stored`` events of their block span."""
    in_block: dict[int, list[dict]] = defaultdict(list)
    for r in stored:
        in_block[r["block_number"]].append(r)
    new, updated, unchanged, matched = [], [], [], set()
    if by_index:
        at = {(r["block_number"], r["log_index"]): r for r in stored}
        for r in rows:
            old = at.get((r["block_number"], r["log_index"]))
            if old is None:
                new.append(r)
            else:
                matched.add((r["block_number"], r["log_index"]))
                (unchanged if _content(old) == _content(r) else updated).append(r)
    else:
        next_index = {b: max(x["log_index"] for x in v) + 1 for b, v in in_block.items()}
        free: dict[int, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
        for r in stored:
            free[r["block_number"]][_content(r)].append(r)
        for r in rows:
            b = r["block_number"]
            hits = free[b][_content(r)] if b in free else []
            if hits:
                old = hits.pop(0)
                r = dict(r, log_index=old["log_index"])
                matched.add((b, old["log_index"]))
                unchanged.append(r)
            else:
                if b in next_index:
                    r = dict(r, log_index=next_index[b])
                    next_index[b] += 1
                new.append(r)
    others = [r for r in stored if (r["block_number"], r["log_index"]) not in matched]
    return {"new": new, "updated": updated, "unchanged": unchanged, "others": others}


def import_csv(
    csv_path: str | Path,
    db: str | Path,
    pool_id: str | None,
    replace: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Import ``csv_path`` into ``db``; returns the summary (counts, duplicates, store size)."""
    rows, report = read_swaps_csv_report(csv_path, pool=pool_id)  # every check before the store
    if not rows:
        raise UserError(f"{csv_path}: no rows")
    check_timestamps(rows, str(csv_path))
    db = Path(db)
    source = "simulated" if any(r["sender"] == SIMULATED for r in rows) else "csv"
    lo, hi = rows[0]["block_number"], rows[-1]["block_number"]
    existed = db.exists()
    if dry_run and not existed:
        stored: list[dict] = []
        total = 0
    else:
        with Store(db) as store:
            meta = store.meta()
            if existed and meta.get("source") not in (None, source):
                raise UserError(f"{db}: store holds {meta.get('source')} data; import into a new --db")
            if existed and meta.get("pool_id") not in (None, rows[0]["pool_id"]):
                raise UserError(f"{db}: store is for pool {meta['pool_id']}")
            stored = list(store.swaps(lo, hi))
            total = store.count()
    p = plan(rows, stored, report["has_log_index"])
    summary = {
        "csv": str(csv_path),
        "db": str(db),
        "source": source,
        "rows": len(rows),
        "duplicates": report["duplicates"],
        "no_final_newline": report["no_final_newline"],
        "new": len(p["new"]),
        "updated": len(p["updated"]),
        "unchanged": len(p["unchanged"]),
        "removed": len(p["others"]) if replace else 0,
        "kept": 0 if replace else len(p["others"]),
        "from_block": lo,
        "to_block": hi,
        "dry_run": dry_run,
    }
    meta = {"source": source, "pool_id": rows[0]["pool_id"], "csv": str(csv_path)}
    if not dry_run:
        with Store(db) as store:
            if replace:
                final = p["new"] + p["updated"] + p["unchanged"]
                # a CSV says nothing about blocks it does not list: no done marks
                store.commit_chunk(lo, hi, final, meta=meta, mark_done=False)
            else:
                store.upsert(p["new"] + p["updated"], meta=meta)
            total = store.count()
    else:
        total += summary["new"] - summary["removed"]
    summary["store_total"] = total
    return summary

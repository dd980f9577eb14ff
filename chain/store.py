"""SQLite event store for Swap events (WAL), keyed by (block_number, log_index).

int128 / uint160 / uint128 values do not fit SQLite's 64-bit integers, so amounts, prices and
liquidity are stored as canonical decimal TEXT (``str(int)``) and parsed back with ``int``:
lossless by construction, and readable with the sqlite3 shell.

Crash safety: a collected chunk's events, the blocks it saw and its "done" range are written
in one transaction (:meth:`Store.commit_chunk`), so a kill at any moment leaves the store
either without the chunk or with all of it; the collector then redoes exactly the blocks that
are not covered by a done range.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from apeagent.errors import UserError, os_error_text

SCHEMA = """
CREATE TABLE IF NOT EXISTS swaps (
    block_number INTEGER NOT NULL,
    log_index INTEGER NOT NULL,
    transaction_hash TEXT NOT NULL,
    block_hash TEXT,
    pool_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    amount0 TEXT NOT NULL,
    amount1 TEXT NOT NULL,
    sqrt_price_x96 TEXT NOT NULL,
    liquidity TEXT NOT NULL,
    tick INTEGER NOT NULL,
    fee INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    original_sender TEXT,
    is_contract_sender INTEGER,
    tx_to TEXT,
    PRIMARY KEY (block_number, log_index)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
    number INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    timestamp INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS done (
    from_block INTEGER PRIMARY KEY,
    to_block INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

BIG_INT_FIELDS = ("amount0", "amount1", "sqrt_price_x96", "liquidity")
SWAP_COLUMNS = (
    "block_number",
    "log_index",
    "transaction_hash",
    "block_hash",
    "pool_id",
    "sender",
    "amount0",
    "amount1",
    "sqrt_price_x96",
    "liquidity",
    "tick",
    "fee",
    "timestamp",
    "original_sender",
    "is_contract_sender",
    "tx_to",
)


def _to_db(row: dict[str, Any]) -> tuple:
    out = []
    for col in SWAP_COLUMNS:
        v = row.get(col)
        if col in BIG_INT_FIELDS:
            v = str(int(v))
        elif col == "is_contract_sender" and v is not None:
            v = int(bool(v))
        out.append(v)
    return tuple(out)


def _from_db(values: tuple) -> dict[str, Any]:
    row = dict(zip(SWAP_COLUMNS, values, strict=True))
    for col in BIG_INT_FIELDS:
        row[col] = int(row[col])
    if row["is_contract_sender"] is not None:
        row["is_contract_sender"] = bool(row["is_contract_sender"])
    return row


class Store:
    """One SQLite file. Not shared between threads: the collector writes from one thread."""

    def __init__(self, path: str | Path, readonly: bool = False):
        """``readonly``: the file must be an existing store; it is checked, never created or changed."""
        self.path = Path(path)
        try:
            if readonly:
                if not self.path.is_file() or self.path.stat().st_size == 0:
                    raise UserError(f"{self.path}: no event store here (missing or empty file)")
                # no -wal file: nothing is pending, so read the file as immutable and leave no
                # -wal/-shm behind (a read-only command must not change the folder)
                wal = self.path.with_name(self.path.name + "-wal").exists()
                uri = f"{self.path.resolve().as_uri()}?mode=ro{'' if wal else '&immutable=1'}"
                self.db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
                if self.db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    raise sqlite3.DatabaseError("quick_check failed")
                self.db.execute("SELECT 1 FROM swaps LIMIT 1").fetchall()
                return
            if self.path.is_dir():
                raise UserError(f"{self.path}: is a directory, not an event store file")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(
                "PRAGMA synchronous=NORMAL"
            )  # WAL + NORMAL: durable at checkpoints, never corrupt
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            self._close_failed()
            raise UserError(f"{self.path}: not a usable event store (damaged, truncated or not SQLite: {e})") from None
        except OSError as e:  # a file on the way to it, no permission
            self._close_failed()
            raise UserError(f"{self.path}: {os_error_text(e)}") from None

    def _close_failed(self) -> None:
        """Close the connection a failed open made: it must not leave -wal/-shm files behind."""
        db = getattr(self, "db", None)
        if db is not None:
            db.close()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ meta

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    def meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM meta").fetchall())

    # ------------------------------------------------------------ writes

    def commit_chunk(
        self,
        from_block: int,
        to_block: int,
        swaps: Iterable[dict[str, Any]],
        blocks: Iterable[tuple[int, str, int]] = (),
        meta: dict[str, str] | None = None,
        mark_done: bool = True,
        replace_range: bool = True,
    ) -> None:
        """Write a chunk's events, block hashes and its done mark atomically.

        Events already present in the range are replaced (a redo after a reorg or a crash
        between fetching and committing never duplicates); ``replace_range=False`` keeps the
        other events of the range and replaces only those with the same key (an upsert).
        """
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            if replace_range:
                cur.execute(
                    "DELETE FROM swaps WHERE block_number BETWEEN ? AND ?", (from_block, to_block)
                )
            cur.executemany(
                f"INSERT {'' if replace_range else 'OR REPLACE '}INTO swaps VALUES ({','.join('?' * len(SWAP_COLUMNS))})",
                [_to_db(s) for s in swaps],
            )
            cur.executemany("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?)", list(blocks))
            if mark_done:
                self._mark_done(cur, from_block, to_block)
            for k, v in (meta or {}).items():
                cur.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, str(v)))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def upsert(self, swaps: Iterable[dict[str, Any]], meta: dict[str, str] | None = None) -> None:
        """Insert or replace events by key (block_number, log_index), in one transaction."""
        self.commit_chunk(0, -1, swaps, meta=meta, mark_done=False, replace_range=False)

    def _mark_done(self, cur: sqlite3.Cursor, lo: int, hi: int) -> None:
        # Merge with overlapping or adjacent ranges so the table stays small.
        rows = cur.execute(
            "SELECT from_block, to_block FROM done WHERE to_block >= ? AND from_block <= ?",
            (lo - 1, hi + 1),
        ).fetchall()
        for a, b in rows:
            lo, hi = min(lo, a), max(hi, b)
        cur.executemany("DELETE FROM done WHERE from_block = ?", [(a,) for a, _ in rows])
        cur.execute("INSERT INTO done VALUES (?, ?)", (lo, hi))

    def rollback_from(self, block: int) -> int:
        """Forget everything at or after ``block`` (reorg); returns the events dropped."""
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            n = cur.execute("DELETE FROM swaps WHERE block_number >= ?", (block,)).rowcount
            cur.execute("DELETE FROM blocks WHERE number >= ?", (block,))
            cur.execute("DELETE FROM done WHERE from_block >= ?", (block,))
            cur.execute("UPDATE done SET to_block = ? WHERE to_block >= ?", (block - 1, block))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return n

    # ------------------------------------------------------------ reads

    def done_ranges(self) -> list[tuple[int, int]]:
        return [
            tuple(r)
            for r in self.db.execute("SELECT from_block, to_block FROM done ORDER BY from_block")
        ]

    def missing_ranges(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Sub-ranges of [lo, hi] not covered by a done mark, in order."""
        out, cursor = [], lo
        for a, b in self.done_ranges():
            if b < cursor:
                continue
            if a > hi:
                break
            if a > cursor:
                out.append((cursor, min(a - 1, hi)))
            cursor = max(cursor, b + 1)
            if cursor > hi:
                break
        if cursor <= hi:
            out.append((cursor, hi))
        return out

    def last_blocks(self, n: int, below: int | None = None) -> list[tuple[int, str]]:
        """The newest ``n`` stored block hashes (below ``below`` if given), newest first."""
        rows = self.db.execute(
            "SELECT number, hash FROM blocks WHERE number < ? ORDER BY number DESC LIMIT ?",
            (2**62 if below is None else below, n),
        )
        return [tuple(r) for r in rows]

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM swaps").fetchone()[0]

    def swaps(
        self, from_block: int | None = None, to_block: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Swaps in chain order: (block_number, log_index)."""
        lo = -1 if from_block is None else from_block
        hi = 2**62 if to_block is None else to_block
        cur = self.db.execute(
            f"SELECT {','.join(SWAP_COLUMNS)} FROM swaps WHERE block_number BETWEEN ? AND ? "
            "ORDER BY block_number, log_index",
            (lo, hi),
        )
        for values in cur:
            yield _from_db(values)

    def recent_swaps(self, since_timestamp: int) -> list[dict[str, Any]]:
        cur = self.db.execute(
            f"SELECT {','.join(SWAP_COLUMNS)} FROM swaps WHERE timestamp >= ? "
            "ORDER BY block_number, log_index",
            (since_timestamp,),
        )
        return [_from_db(v) for v in cur]

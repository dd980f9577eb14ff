"""The swaps CSV (the format of ``../shared/data/base_eth_usdc_v4_swaps.csv``): read, check,
order, write.

Ordering: the shared file is unsorted and has no log index. Rows are sorted by block number;
within a block the file's own relative order is kept (a stable sort) and ``log_index`` is
assigned 0, 1, 2, ... in that order. The true on-chain order of swaps from *different*
transactions in one block cannot be recovered from that file (it has neither log index nor
transaction index), so the assigned index is an ordering key, not the on-chain log index. A
file that has a ``log_index`` column (our own export) is taken as is.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from eth_utils import is_address, to_checksum_address

from apeagent.errors import UserError, reading
from apeagent.files import atomic_path
from chain.pool import ETH_USDC_POOL_ID, SIMULATED, norm_hex32

CSV_COLUMNS = (
    "block_number",
    "transaction_hash",
    "pool_id",
    "router_address",
    "original_sender",
    "is_contract_sender",
    "amount0",
    "amount1",
    "sqrt_price_x96",
    "liquidity",
    "tick",
    "fee",
    "timestamp",
)
EXPORT_COLUMNS = (*CSV_COLUMNS, "log_index")

_INT_LIMITS = {
    "block_number": (0, 2**63 - 1),
    "amount0": (-(2**127), 2**127 - 1),
    "amount1": (-(2**127), 2**127 - 1),
    "sqrt_price_x96": (0, 2**160 - 1),
    "liquidity": (0, 2**128 - 1),
    "tick": (-(2**23), 2**23 - 1),
    "fee": (0, 2**24 - 1),
    "timestamp": (0, 2**63 - 1),
    "log_index": (0, 2**63 - 1),
}


MAX_DIGITS = 80  # more than any column's range needs (2**160 has 49 digits)


def _parse_int(text: str, col: str, where: str) -> int:
    t = text.strip()
    body = t[1:] if t[:1] == "-" else t
    if not body.isdigit() or not body.isascii():
        raise UserError(f"{where}: column {col} is not an integer: {_short(text)!r}")
    if len(body) > MAX_DIGITS:
        raise UserError(f"{where}: column {col} has {len(body)} digits, out of range for its type")
    value = int(t)
    lo, hi = _INT_LIMITS[col]
    if not lo <= value <= hi:
        raise UserError(f"{where}: column {col} = {value} is out of range for its type")
    return value


def _parse_address(text: str, col: str, where: str, allow_empty: bool) -> str | None:
    t = text.strip()
    if t == "" and allow_empty:
        return None
    if t == SIMULATED:
        return SIMULATED
    if not is_address(t):
        raise UserError(f"{where}: column {col} is not an address: {_short(text)!r}")
    return to_checksum_address(t)


def _parse_bool(text: str, where: str) -> bool | None:
    t = text.strip().lower()
    if t in ("", "none"):
        return None
    if t in ("true", "1"):
        return True
    if t in ("false", "0"):
        return False
    raise UserError(f"{where}: column is_contract_sender is not True/False: {_short(text)!r}")


def parse_row(raw: dict[str, str], where: str) -> dict[str, Any]:
    """One CSV row as a store row (ints as Python ints, hashes as 0x-hex)."""
    row: dict[str, Any] = {}
    for col in (
        "block_number",
        "amount0",
        "amount1",
        "sqrt_price_x96",
        "liquidity",
        "tick",
        "fee",
        "timestamp",
    ):
        row[col] = _parse_int(raw[col] or "", col, where)
    for col in ("transaction_hash", "pool_id"):
        try:
            row[col] = norm_hex32(raw[col] or "")
        except ValueError:
            raise UserError(f"{where}: column {col} is not 32 bytes of hex: {_short(raw[col])!r}") from None
    row["sender"] = _parse_address(raw["router_address"] or "", "router_address", where, False)
    row["original_sender"] = _parse_address(
        raw["original_sender"] or "", "original_sender", where, True
    )
    row["is_contract_sender"] = _parse_bool(raw["is_contract_sender"] or "", where)
    row["block_hash"] = None
    row["tx_to"] = None
    if raw.get("log_index") not in (None, ""):
        row["log_index"] = _parse_int(raw["log_index"], "log_index", where)
    if row["sqrt_price_x96"] == 0 or row["liquidity"] == 0:
        raise UserError(f"{where}: sqrt_price_x96 and liquidity must be positive")
    return row


def read_swaps_csv(path: str | Path, pool: str | None = ETH_USDC_POOL_ID) -> list[dict[str, Any]]:
    """Read, check and order a swaps CSV (exact duplicate rows kept once). Any bad line raises
    UserError naming it."""
    return read_swaps_csv_report(path, pool)[0]


def read_swaps_csv_report(
    path: str | Path, pool: str | None = ETH_USDC_POOL_ID
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """:func:`read_swaps_csv` and what it noticed: ``duplicates`` (line numbers of exact
    duplicate rows, dropped), ``no_final_newline`` (the last line lacks its newline),
    ``has_log_index`` (the file gives log indexes)."""
    path = Path(path)
    rows: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    duplicates: list[int] = []
    header: list[str] = []
    for line, raw, row in iter_swaps_csv(path, pool):
        header = header or list(raw)
        key = tuple(raw.values())
        if key in seen:
            duplicates.append(line)
            continue
        seen.add(key)
        rows.append(row)
    with reading(path, "swaps CSV"), path.open("rb") as f:
        size = path.stat().st_size
        f.seek(max(0, size - 1))
        no_final_newline = size > 0 and f.read(1) not in (b"\n", b"\r")
    report = {
        "duplicates": duplicates,
        "no_final_newline": no_final_newline,
        "has_log_index": "log_index" in header,
    }
    return order_rows(rows, path), report


def check_swaps_csv(path: str | Path, pool: str | None = ETH_USDC_POOL_ID, rows: int = 1000) -> int:
    """Check a swaps CSV's header and its first ``rows`` rows (what the pipeline does before
    its first stage); returns how many rows were checked. Raises UserError naming the line."""
    return sum(1 for _ in iter_swaps_csv(path, pool, limit=rows))


# columns a file may add after the shared file's, in this order: our export's log index, the
# sequence id of the GAN's synthetic swaps (gan_torch/swaps.py)
OPTIONAL_COLUMNS = ("log_index", "sequence")


def check_header(header: list[str], path: str | Path) -> None:
    """The columns of the shared file, in its order, then any of :data:`OPTIONAL_COLUMNS`."""
    head, tail = tuple(header[: len(CSV_COLUMNS)]), header[len(CSV_COLUMNS):]
    if head == CSV_COLUMNS and tail == [c for c in OPTIONAL_COLUMNS if c in tail]:
        return
    expected = f"{', '.join(CSV_COLUMNS)}[, {', '.join(OPTIONAL_COLUMNS)}]"
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise UserError(f"{path}:1: missing column(s) {', '.join(missing)}")
    extra = [c for c in header if c not in (*CSV_COLUMNS, *OPTIONAL_COLUMNS)]
    if extra:
        raise UserError(f"{path}:1: unknown column(s) {', '.join(_short(c) for c in extra[:5])} (the columns are: {expected})")
    raise UserError(f"{path}:1: columns out of order or repeated (expected: {expected})")


def iter_swaps_csv(path: str | Path, pool: str | None = ETH_USDC_POOL_ID, limit: int | None = None):
    """``(line number, raw fields, parsed row)`` of each row (at most ``limit``), checked."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"swaps CSV {'is a directory' if path.is_dir() else 'not found'}: {path}")
    want_pool = norm_hex32(pool) if pool else None
    # utf-8-sig: a spreadsheet's UTF-8 BOM is not part of the first column's name
    with reading(path, "swaps CSV"), path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames or []
        except (UnicodeDecodeError, csv.Error) as e:
            raise UserError(f"{path}:1: not a text CSV file ({e})") from None
        check_header(list(header), path)
        try:
            for n, raw in enumerate(reader):
                if limit is not None and n >= limit:
                    return
                where = f"{path}:{reader.line_num}"
                if None in raw or any(raw[c] is None for c in header):
                    raise UserError(f"{where}: wrong number of fields")
                row = parse_row(raw, where)
                if want_pool and row["pool_id"] != want_pool:
                    raise UserError(f"{where}: unknown pool id {row['pool_id']} (expected {want_pool})")
                yield reader.line_num, raw, row
        except (csv.Error, UnicodeDecodeError) as e:
            raise UserError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else f"{text[:n]}… ({len(text)} characters)"


def order_rows(rows: list[dict[str, Any]], source: str | Path = "<rows>") -> list[dict[str, Any]]:
    """Chain order; assign log indexes per block in file order where the file has none."""
    has_index = [("log_index" in r) for r in rows]
    if any(has_index) and not all(has_index):
        raise UserError(f"{source}: log_index is given for some rows but not all")
    if rows and all(has_index):
        rows = sorted(rows, key=lambda r: (r["block_number"], r["log_index"]))
        for a, b in zip(rows, rows[1:], strict=False):
            if (a["block_number"], a["log_index"]) == (b["block_number"], b["log_index"]):
                raise UserError(
                    f"{source}: duplicate (block_number, log_index) {a['block_number']}, {a['log_index']}"
                )
        return rows
    rows = sorted(rows, key=lambda r: r["block_number"])  # stable: file order within a block
    prev, i = None, 0
    for r in rows:
        i = i + 1 if r["block_number"] == prev else 0
        prev = r["block_number"]
        r["log_index"] = i
    return rows


def _fmt_addr(v: str | None) -> str:
    return "" if v is None else v


def _fmt_bool(v: bool | None) -> str:
    return "" if v is None else str(bool(v))


def csv_record(row: dict[str, Any]) -> dict[str, str]:
    """A store row in the shared file's style (bare hex hashes, checksummed addresses)."""
    return {
        "block_number": str(row["block_number"]),
        "transaction_hash": row["transaction_hash"][2:],
        "pool_id": row["pool_id"][2:],
        "router_address": _fmt_addr(row["sender"]),
        "original_sender": _fmt_addr(row.get("original_sender")),
        "is_contract_sender": _fmt_bool(row.get("is_contract_sender")),
        "amount0": str(row["amount0"]),
        "amount1": str(row["amount1"]),
        "sqrt_price_x96": str(row["sqrt_price_x96"]),
        "liquidity": str(row["liquidity"]),
        "tick": str(row["tick"]),
        "fee": str(row["fee"]),
        "timestamp": str(row["timestamp"]),
        "log_index": str(row["log_index"]),
    }


def write_swaps_csv(
    path: str | Path, rows: list[dict[str, Any]], with_log_index: bool = True
) -> int:
    cols = EXPORT_COLUMNS if with_log_index else CSV_COLUMNS
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow(csv_record(r))
    return len(rows)

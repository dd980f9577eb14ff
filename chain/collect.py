"""Collect the pool's Swap events from Base RPC endpoints into the event store.

The transport (endpoints, adaptive rate, retries) is :mod:`chain.rpc`; here are the chunks:

* the block range is cut into chunks; ``concurrency`` chunks are in flight at once;
* chunk size adapts: a "range too large" / "too many results" answer splits the chunk in two
  and shrinks the size; every success grows it again (x2 up to ``max_chunk``);
* each ``eth_getLogs`` goes in one JSON-RPC batch with ``eth_blockNumber``: the answering
  endpoint's head comes with its answer, and a chunk is done only up to that head minus
  ``confirmations`` (blocks above it are asked again, of an endpoint that has them);
* every answer is validated as a whole (:func:`validate_logs`): PoolManager address, Swap
  topic, our pool id, a block inside the range, ``removed`` false, well-formed data, one hash
  (and one timestamp) per block, no repeated log. An invalid answer is discarded, counted
  against its endpoint (dropped when it keeps failing, see chain.rpc) and asked again elsewhere or
  later, with backoff;
* timestamps: the log's ``blockTimestamp`` where the provider sends it (no extra request);
  otherwise block headers of the blocks with events, batched (``timestamps: headers``), or
  Base's fixed 2-second block time checked against the headers of each chunk's first and last
  event block (``timestamps: derive``; a disagreement stops the run);
* each chunk's events, block hashes and "done" mark are one SQLite transaction, so a kill at
  any point loses at most the chunks in flight, and a restart collects exactly the missing
  blocks; before collecting, the newest stored block hashes are re-checked and anything from
  the first changed block on is dropped and redone (reorg).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_abi import decode
from eth_utils import is_address, to_checksum_address

from apeagent.errors import UserError
from apeagent.redact import redact_url
from chain.pool import (
    BASE_CHAIN_ID,
    BLOCK_SECONDS,
    ETH_USDC_POOL_ID,
    POOL_MANAGER,
    STATE_VIEW,
    SWAP_DATA_TYPES,
    SWAP_TOPIC,
    check_timestamps,
    decode_liquidity,
    decode_slot0,
    encode_get_liquidity,
    encode_get_slot0,
    norm_hex32,
)
from chain.rpc import Client, Endpoint, RangeTooLarge, RpcSettings, TransportError
from chain.store import Store

TIMESTAMP_MODES = ("auto", "headers", "derive")
MAX_AHEAD = 43_200  # blocks (a day of Base's 2-s blocks): a --to-block further above the head is refused


class CollectError(RuntimeError):
    """The run stopped; the store holds every validated chunk committed before."""


class BadAnswer(Exception):
    """An answer that fails validation: discarded whole, counted against its endpoint."""


class Redo(Exception):
    """Honest answers that disagree (a block hash changed under us): redo the chunk."""


class BeyondHead(Exception):
    """No endpoint vouches for these blocks yet (above its head minus confirmations)."""


@dataclass
class CollectSettings:
    rpc: RpcSettings
    from_block: int
    to_block: int | str = "latest"
    confirmations: int = 10
    pool_id: str = ETH_USDC_POOL_ID
    chunk_size: int = 2000
    min_chunk: int = 1
    max_chunk: int = 10_000
    concurrency: int = 4  # chunks in flight over all endpoints
    batch_size: int = 50
    timestamps: str = "auto"  # auto (log, else headers) | headers | derive (2 s blocks, checked)
    verify_empty: bool = False  # cross-check empty answers on a second endpoint
    max_redo: int = 8  # redos of one chunk whose block hash keeps changing
    with_tx: bool = False
    follow: bool = False
    poll_s: float = 4.0
    follow_polls: int | None = None  # stop after this many polls (tests); None: until killed
    allow_chain_id: int | None = None
    reorg_depth: int = 64
    progress: bool = True


@dataclass
class CollectStats:
    chunks: int = 0
    blocks: int = 0
    events: int = 0
    splits: int = 0
    redone: int = 0
    verified_empty: int = 0
    reorg_rollbacks: int = 0
    seconds: float = 0.0
    rpc: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "rpc"}
        d.update(self.rpc)
        d["blocks_per_s"] = self.blocks / self.seconds if self.seconds else 0.0
        d["events_per_s"] = self.events / self.seconds if self.seconds else 0.0
        return d


@dataclass
class Chunk:
    events: list[dict[str, Any]]
    blocks: list[tuple[int, str, int]]  # (number, hash, timestamp) of the blocks with events
    done_to: int  # the last block the answering endpoint vouches for


# ------------------------------------------------------------ answers


def _qty(v: Any, what: str) -> int:
    if not isinstance(v, str) or not v.startswith("0x") or len(v) < 3 or len(v) > 66:
        raise BadAnswer(f"{what} is not a hex quantity: {str(v)[:40]!r}")
    try:
        return int(v, 16)
    except ValueError:
        raise BadAnswer(f"{what} is not a hex quantity: {v[:40]!r}") from None


def _h32(v: Any, what: str) -> str:
    if not isinstance(v, str) or len(v) != 66 or not v.startswith("0x"):
        raise BadAnswer(f"{what} is not 32 bytes of hex: {str(v)[:70]!r}")
    try:
        return norm_hex32(v)
    except ValueError:
        raise BadAnswer(f"{what} is not 32 bytes of hex: {v!r}") from None


def validate_logs(logs: Any, lo: int, hi: int, pool_id: str) -> list[dict[str, Any]]:
    """Swap events of one ``eth_getLogs`` answer for [lo, hi]; BadAnswer if any log is wrong.

    ``timestamp`` is set where the log carries ``blockTimestamp``.
    """
    if not isinstance(logs, list):
        raise BadAnswer(f"eth_getLogs answered {type(logs).__name__}, not a list")
    events, hashes, stamps = [], {}, {}
    seen = set()
    for log in logs:
        if not isinstance(log, dict):
            raise BadAnswer("a log is not an object")
        if str(log.get("address", "")).lower() != POOL_MANAGER.lower():
            raise BadAnswer(f"log from {str(log.get('address'))[:42]}, not the PoolManager")
        topics = log.get("topics")
        if not isinstance(topics, list) or len(topics) != 3:
            raise BadAnswer(f"log with {len(topics) if isinstance(topics, list) else 'no'} topics")
        if _h32(topics[0], "topic0") != SWAP_TOPIC:
            raise BadAnswer(f"log with topic0 {topics[0][:18]}..., not Swap")
        if _h32(topics[1], "topic1") != pool_id:
            raise BadAnswer(f"log of pool {topics[1][:18]}..., not {pool_id[:18]}...")
        sender = _h32(topics[2], "topic2")
        if log.get("removed", False) is not False:
            raise BadAnswer("log with removed: true")
        n = _qty(log.get("blockNumber"), "blockNumber")
        if not lo <= n <= hi:
            raise BadAnswer(f"log of block {n} outside the requested {lo}..{hi}")
        key = (n, _qty(log.get("logIndex"), "logIndex"))
        if key in seen:
            raise BadAnswer(f"log {key[0]}:{key[1]} repeated")
        seen.add(key)
        bh = _h32(log.get("blockHash"), "blockHash")
        if hashes.setdefault(n, bh) != bh:
            raise BadAnswer(f"two block hashes for block {n}")
        data = log.get("data")
        if not isinstance(data, str) or not data.startswith("0x") or len(data) != 2 + 2 * 32 * 6:
            raise BadAnswer(f"log {key[0]}:{key[1]} data is not 6 words")
        try:
            amount0, amount1, sqrt_p, liq, tick, fee = decode(
                list(SWAP_DATA_TYPES), bytes.fromhex(data[2:]), strict=True
            )
        except Exception as e:  # eth-abi's decoding errors, bad hex
            raise BadAnswer(f"log {key[0]}:{key[1]} data does not decode: {e}") from None
        if sqrt_p == 0 or int(sender[2:26], 16):
            raise BadAnswer(f"log {key[0]}:{key[1]} has a zero price or a bad sender topic")
        e = {
            "block_number": n,
            "log_index": key[1],
            "transaction_hash": _h32(log.get("transactionHash"), "transactionHash"),
            "block_hash": bh,
            "pool_id": pool_id,
            "sender": to_checksum_address("0x" + sender[-40:]),
            "amount0": amount0,
            "amount1": amount1,
            "sqrt_price_x96": sqrt_p,
            "liquidity": liq,
            "tick": tick,
            "fee": fee,
            "original_sender": None,
            "is_contract_sender": None,
            "tx_to": None,
        }
        if log.get("blockTimestamp") is not None:
            ts = _qty(log["blockTimestamp"], "blockTimestamp")
            if stamps.setdefault(n, ts) != ts:
                raise BadAnswer(f"two timestamps for block {n}")
            e["timestamp"] = ts
        events.append(e)
    events.sort(key=lambda e: (e["block_number"], e["log_index"]))
    return events


def _header(b: Any, n: int) -> tuple[str, int] | None:
    if b is None:
        return None
    if not isinstance(b, dict) or _qty(b.get("number"), "block number") != n:
        raise BadAnswer(f"eth_getBlockByNumber({n}) answered another block")
    return _h32(b.get("hash"), "block hash"), _qty(b.get("timestamp"), "block timestamp")


class BlockCache:
    """Block number -> (hash, timestamp), fetched in batches."""

    def __init__(self, client: Client, batch_size: int, limit: int = 200_000):
        self.client, self.batch_size, self.limit = client, batch_size, limit
        self.data: dict[int, tuple[str, int]] = {}
        self.anchor: int | None = None  # timestamp - BLOCK_SECONDS * number (derive mode)

    def get(self, numbers: list[int]) -> dict[int, tuple[str, int]]:
        missing = [n for n in sorted(set(numbers)) if n not in self.data]
        for i in range(0, len(missing), self.batch_size):
            part = missing[i : i + self.batch_size]
            got, ep = self.client.batch(
                [("eth_getBlockByNumber", [hex(n), False]) for n in part],
                f"blocks {part[0]}..{part[-1]}",
            )
            try:
                headers = [_header(b, n) for n, b in zip(part, got, strict=True)]
            except BadAnswer as e:
                self.client.invalid(ep, str(e))
                raise
            if len(self.data) > self.limit:
                self.data.clear()
            for n, h in zip(part, headers, strict=True):
                if h is None:
                    raise Redo(f"block {n} not available yet")
                self.data[n] = h
        return {n: self.data[n] for n in numbers}

    def drop(self, numbers: list[int]) -> None:
        for n in numbers:
            self.data.pop(n, None)


# ------------------------------------------------------------ chain checks


def check_chain(client: Client, s: CollectSettings) -> tuple[int, int]:
    """Chain id and pool checks before anything is written. Returns (chain id, head block)."""
    chain_id = _qty(client.call("eth_chainId", []), "eth_chainId")
    allowed = {BASE_CHAIN_ID} | ({s.allow_chain_id} if s.allow_chain_id is not None else set())
    if chain_id not in allowed:
        raise UserError(
            f"RPC reports chain id {chain_id}, expected {BASE_CHAIN_ID} (Base); "
            f"pass --allow-chain-id {chain_id} to collect from it anyway"
        )
    state = pool_state(client, s.pool_id)
    if state["sqrt_price_x96"] == 0:
        raise UserError(
            f"unknown pool id {s.pool_id}: StateView.getSlot0 returns an uninitialized pool "
            f"on chain {chain_id}"
        )
    head, ep = client.request("eth_blockNumber", [])
    client.set_head(ep, _qty(head, "eth_blockNumber"))
    return chain_id, _qty(head, "eth_blockNumber")


def pool_state(client: Client, pool: str) -> dict[str, int]:
    """StateView getSlot0 + getLiquidity at the latest block."""
    (slot0, liq), _ = client.batch(
        [
            ("eth_call", [{"to": STATE_VIEW, "data": encode_get_slot0(pool)}, "latest"]),
            ("eth_call", [{"to": STATE_VIEW, "data": encode_get_liquidity(pool)}, "latest"]),
        ],
        "StateView.getSlot0 + getLiquidity",
    )
    if not (isinstance(slot0, str) and isinstance(liq, str)) or len(slot0) < 258 or len(liq) < 66:
        raise UserError(f"StateView {STATE_VIEW} returned no data: is this Base?")
    state = decode_slot0(slot0)
    state["liquidity"] = decode_liquidity(liq)
    return state


# ------------------------------------------------------------ one chunk


def _get_logs(client: Client, s: CollectSettings, lo: int, hi: int, **kw: Any):
    """(events, head, endpoint) of one validated eth_getLogs answer, the head in the same batch."""
    flt = {
        "fromBlock": hex(lo),
        "toBlock": hex(hi),
        "address": POOL_MANAGER,
        "topics": [SWAP_TOPIC, s.pool_id],
    }
    (head, logs), ep = client.batch(
        [("eth_blockNumber", []), ("eth_getLogs", [flt])], f"eth_getLogs {lo}..{hi}", **kw
    )
    if ep.dropped:  # an answer in flight when its endpoint was dropped: not trusted
        raise BadAnswer(f"{ep.name} was dropped")
    try:
        head = _qty(head, "eth_blockNumber")
        events = validate_logs(logs, lo, hi, s.pool_id)
        check_timestamps([e for e in events if "timestamp" in e], f"eth_getLogs {lo}..{hi}")
    except (BadAnswer, UserError) as e:
        client.invalid(ep, str(e))
        raise BadAnswer(f"{ep.name}: {e}") from None
    client.set_head(ep, head)
    return events, head, ep


def fetch_chunk(
    client: Client, cache: BlockCache, s: CollectSettings, lo: int, hi: int, **kw: Any
) -> Chunk:
    """One attempt at [lo, hi]. Raises RangeTooLarge, BadAnswer, Redo, BeyondHead."""
    events, head, ep = _get_logs(client, s, lo, hi, **kw)
    done_to = min(hi, head - s.confirmations)
    if done_to < lo:
        raise BeyondHead(f"{ep.name} head {head}")
    events = [e for e in events if e["block_number"] <= done_to]
    if s.verify_empty and len(client.alive()) > 1:
        events = _verify_tail(client, s, events, lo, done_to, ep)
    if ep.dropped:
        raise BadAnswer(f"{ep.name} was dropped")
    client.valid(ep)
    _timestamps(cache, s, events)
    if s.with_tx and events:
        _add_tx_info(client, s, events)
    blocks = sorted({(e["block_number"], e["block_hash"], e["timestamp"]) for e in events})
    if done_to > head - s.confirmations - s.reorg_depth and done_to not in {b[0] for b in blocks}:
        h, ts = cache.get([done_to])[done_to]  # near the head: a hash for the reorg check
        blocks.append((done_to, h, ts))
    return Chunk(events, blocks, done_to)


def _verify_tail(
    client: Client, s: CollectSettings, events: list[dict], lo: int, hi: int, ep: Endpoint
) -> list[dict]:
    """Ask a second endpoint for the empty tail of the answer (the whole chunk if empty)."""
    start = events[-1]["block_number"] + 1 if events else lo
    if start > hi:
        return events
    other, head, ep2 = _get_logs(client, s, start, hi, avoid=ep, min_head=hi + s.confirmations)
    if ep2 is ep or head - s.confirmations < hi:
        return events
    if other:
        client.invalid(ep, f"no logs in {start}..{hi}, {ep2.name} has {len(other)}")
        raise BadAnswer(f"{ep.name}: no logs in {start}..{hi}, {ep2.name} has {len(other)}")
    return events


def _timestamps(cache: BlockCache, s: CollectSettings, events: list[dict]) -> None:
    if not events:
        return
    if s.timestamps == "auto" and all("timestamp" in e for e in events):
        return
    numbers = sorted({e["block_number"] for e in events})
    if s.timestamps == "derive":
        numbers = sorted({numbers[0], numbers[-1]})
    headers = cache.get(numbers)
    for n in numbers:
        h, ts = headers[n]
        if cache.anchor is None:
            cache.anchor = ts - BLOCK_SECONDS * n
        if s.timestamps == "derive" and ts != cache.anchor + BLOCK_SECONDS * n:
            raise CollectError(
                f"block time check failed: block {n} has timestamp {ts}, the {BLOCK_SECONDS}-second "
                f"derivation gives {cache.anchor + BLOCK_SECONDS * n}; collect with --timestamps headers"
            )
    for e in events:
        n = e["block_number"]
        if n in headers:
            h, ts = headers[n]
            if h != e["block_hash"]:
                cache.drop(numbers)
                raise Redo(f"block {n} hash changed during collection")
            if e.get("timestamp", ts) != ts:
                raise Redo(f"log timestamp of block {n} disagrees with its header")
            e["timestamp"] = ts
        elif s.timestamps == "derive":
            e["timestamp"] = cache.anchor + BLOCK_SECONDS * n


def _add_tx_info(client: Client, s: CollectSettings, events: list[dict[str, Any]]) -> None:
    hashes = sorted({e["transaction_hash"] for e in events})
    txs: dict[str, Any] = {}
    for i in range(0, len(hashes), s.batch_size):
        part = hashes[i : i + s.batch_size]
        got, ep = client.batch([("eth_getTransactionByHash", [h]) for h in part], "transactions")
        for h, t in zip(part, got, strict=True):
            if not isinstance(t, dict) or not is_address(t.get("from", "")):
                client.invalid(ep, f"transaction {h} missing or malformed")
                raise BadAnswer(f"{ep.name}: transaction {h} missing or malformed")
            txs[h] = t
    senders = sorted({to_checksum_address(t["from"]) for t in txs.values()})
    codes: dict[str, bool] = {}
    for i in range(0, len(senders), s.batch_size):
        part = senders[i : i + s.batch_size]
        got, _ = client.batch([("eth_getCode", [a, "latest"]) for a in part], "eth_getCode")
        codes.update((a, isinstance(c, str) and len(c) > 2) for a, c in zip(part, got, strict=True))
    for e in events:
        t = txs[e["transaction_hash"]]
        e["original_sender"] = to_checksum_address(t["from"])
        e["tx_to"] = to_checksum_address(t["to"]) if t.get("to") else None
        e["is_contract_sender"] = codes[e["original_sender"]]


def fetch_validated(
    client: Client, cache: BlockCache, s: CollectSettings, lo: int, hi: int, **kw: Any
) -> Chunk:
    """:func:`fetch_chunk` until a valid answer, with backoff; bounded by the transport's
    time without progress (invalid answers drop their endpoint) and ``max_redo``."""
    redo = 0
    while True:
        try:
            return fetch_chunk(client, cache, s, lo, hi, **kw)
        except BeyondHead:
            if kw:
                raise
            kw = {"min_head": lo + s.confirmations}  # ask an endpoint that has the blocks
            try:
                return fetch_chunk(client, cache, s, lo, hi, **kw)
            except TransportError:
                raise BeyondHead(f"{lo}..{hi}") from None
        except BadAnswer:  # already counted against its endpoint
            pass
        except Redo as e:
            redo += 1
            if redo > s.max_redo:
                raise CollectError(f"blocks {lo}..{hi}: {e} ({redo} times)") from None
        delay = min(client.s.backoff_max_s, client.s.backoff_base_s * 2 ** min(redo, 20))
        time.sleep(client.rng.uniform(delay / 2, delay))


# ------------------------------------------------------------ ranges


def scan(
    client: Client,
    cache: BlockCache,
    s: CollectSettings,
    ranges: list[tuple[int, int]],
    on_chunk: Callable[[int, Chunk], None],
) -> list[tuple[int, int]]:
    """Fetch ``ranges`` in adaptive chunks, ``concurrency`` at once; ``on_chunk(lo, chunk)`` for
    each (in the calling thread). The one "split the range when the provider refuses" loop.
    Returns the ranges no endpoint vouches for yet (above its head minus confirmations)."""
    pending = list(ranges)
    beyond: list[tuple[int, int]] = []
    size = max(s.min_chunk, s.chunk_size)
    inflight: dict[Future, tuple[int, int]] = {}
    with ThreadPoolExecutor(max_workers=s.concurrency, thread_name_prefix="collect") as pool:
        try:
            while pending or inflight:
                while pending and len(inflight) < s.concurrency:
                    a, b = pending.pop(0)
                    end = min(b, a + size - 1)
                    if end < b:
                        pending.insert(0, (end + 1, b))
                    inflight[pool.submit(fetch_validated, client, cache, s, a, end)] = (a, end)
                finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for fut in finished:
                    a, b = inflight.pop(fut)
                    try:
                        chunk = fut.result()
                    except RangeTooLarge:
                        if b == a:
                            raise CollectError(f"provider refuses even a single block ({a})") from None
                        mid = (a + b) // 2
                        size = max(s.min_chunk, min(size, (b - a + 1) // 2))
                        pending[:0] = [(a, mid), (mid + 1, b)]
                        on_chunk(a, None)  # a split: the caller counts it
                        continue
                    except BeyondHead:
                        beyond.append((a, b))
                        continue
                    on_chunk(a, chunk)
                    if chunk.done_to < b:
                        pending.insert(0, (chunk.done_to + 1, b))  # another endpoint may have it
                    size = min(s.max_chunk, size * 2)
        except BaseException:
            for f in inflight:
                f.cancel()
            raise
    return _merge(beyond)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def recheck_reorg(client: Client, store: Store, depth: int) -> int | None:
    """Compare the newest stored block hashes with the chain; roll back from the first change.

    Hashes chain each block to its parent, so an unchanged block vouches for all below it.
    """
    rollback, below = None, None
    while True:
        stored = store.last_blocks(depth, below)  # newest first
        if not stored:
            break
        numbers = [n for n, _ in stored]
        got, _ = client.batch([("eth_getBlockByNumber", [hex(n), False]) for n in numbers], "reorg check")
        for (n, h), b in zip(stored, got, strict=True):
            if b is not None and isinstance(b, dict) and b.get("hash") == h:
                if rollback is None:
                    return None
                store.rollback_from(n + 1)  # blocks between n and the first changed one, too
                return n + 1
            rollback = n
        below = numbers[-1]  # every block on this page changed: the reorg goes deeper
    if rollback is None:
        return None
    store.rollback_from(rollback)
    return rollback


def collect(db: str | Path, s: CollectSettings, log: Callable[[str], None] = print) -> CollectStats:
    """Collect into ``db`` until ``to_block`` (or forever with ``follow``)."""
    if s.timestamps not in TIMESTAMP_MODES:
        raise UserError(f"--timestamps must be one of {', '.join(TIMESTAMP_MODES)}, got {s.timestamps!r}")
    stats = CollectStats()
    s.pool_id = norm_hex32(s.pool_id)
    if s.to_block != "latest" and int(s.to_block) < s.from_block:
        raise UserError(f"--to-block {s.to_block} is below --from-block {s.from_block}")
    try:
        client = Client(s.rpc, log=log)
        chain_id, head = check_chain(client, s)
    except TransportError as e:
        raise UserError(f"cannot use RPC {', '.join(map(redact_url, s.rpc.rpc_urls))}: {e}") from None
    if s.to_block != "latest" and not s.follow and int(s.to_block) > head + MAX_AHEAD:
        raise UserError(  # the blocks will not exist for days: refuse, do not poll for them
            f"--to-block {s.to_block} is beyond the chain: the head is {head}, more than {MAX_AHEAD} "
            f"blocks (a day) below it (at most {head - s.confirmations} with {s.confirmations} "
            "confirmations; or 'latest', or --follow to wait)"
        )
    db = Path(db)
    existed = db.exists()
    store = Store(db)
    t0 = time.monotonic()
    try:
        meta = store.meta()
        expect = {"source": "rpc", "chain_id": str(chain_id), "pool_id": s.pool_id}
        for k, v in expect.items():
            if existed and k in meta and meta[k] != v:
                raise UserError(f"{db}: store has {k}={meta[k]}, this collection is {k}={v}")
        cache = BlockCache(client, s.batch_size)
        polls = 0
        while True:
            rolled = recheck_reorg(client, store, s.reorg_depth)
            if rolled is not None:
                stats.reorg_rollbacks += 1
                log(f"reorg: stored blocks from {rolled} changed on chain; redoing them")
            target = head - s.confirmations if s.to_block == "latest" else int(s.to_block)
            if s.from_block <= target:
                beyond = _run_range(client, cache, store, s, stats, s.from_block, target, expect)
                if beyond and not s.follow:
                    heads = ", ".join(f"{e.name} at {e.head}" for e in client.alive())
                    raise CollectError(
                        f"blocks {', '.join(f'{a}..{b}' for a, b in beyond)} are above every "
                        f"endpoint's head minus {s.confirmations} confirmations ({heads}): "
                        "not marked done; run again when the endpoint has them"
                    )
            if not s.follow:
                break
            polls += 1
            if s.follow_polls is not None and polls >= s.follow_polls:
                break
            time.sleep(s.poll_s)
            head = _qty(client.call("eth_blockNumber", []), "eth_blockNumber")
    except TransportError as e:
        raise CollectError(str(e)) from None
    finally:
        stats.seconds = time.monotonic() - t0
        stats.rpc = {"requests": client.stats.requests, "retries": client.stats.retries,
                     "rate_cuts": client.stats.rate_cuts, "errors": dict(client.stats.errors)}
        store.close()
    return stats


def _run_range(
    client: Client,
    cache: BlockCache,
    store: Store,
    s: CollectSettings,
    stats: CollectStats,
    lo: int,
    hi: int,
    meta: dict[str, str],
) -> list[tuple[int, int]]:
    pending = list(store.missing_ranges(lo, hi))
    total = sum(b - a + 1 for a, b in pending)
    if total == 0:
        return []
    with _progress(s.progress) as bar:
        task = bar.add_task("collect", total=total, events=0, rate="") if bar else None

        def on_chunk(a: int, chunk: Chunk | None) -> None:
            if chunk is None:
                stats.splits += 1
                return
            store.commit_chunk(a, chunk.done_to, chunk.events, chunk.blocks, meta=meta)
            stats.chunks += 1
            stats.blocks += chunk.done_to - a + 1
            stats.events += len(chunk.events)
            if bar is not None:
                bar.update(task, advance=chunk.done_to - a + 1, events=stats.events, rate=client.rate())

        return scan(client, cache, s, pending, on_chunk)


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{(task.finished_speed or task.speed or 0.0):,.0f} blocks/s")

    return Progress(
        TextColumn("[bold]collect"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _Rate(),
        TextColumn("{task.fields[events]:,} events"),
        TextColumn("rpc {task.fields[rate]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )

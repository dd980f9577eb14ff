"""Collect the pool's Swap events from Base RPC endpoints into the event store.

web3 is the client (one ``Web3(HTTPProvider)`` per endpoint and thread, web3's own retries
off so that ours see every status). The work:

* the block range is cut into chunks; ``concurrency`` chunks are in flight at once over the
  endpoints (round robin), each endpoint behind its own token-bucket rate limit;
* chunk size adapts: a "range too large" / "too many results" answer splits the chunk in two
  and shrinks the size; every success grows it again (x2 up to ``max_chunk``);
* HTTP 429 (honouring ``Retry-After``), 5xx, timeouts, connection errors and malformed JSON
  are retried with exponential backoff and full jitter;
* block headers (timestamp, hash) come in JSON-RPC batches and are cached; the hash of every
  block with events must equal the logs' ``blockHash`` (else the chunk is redone);
* each chunk's events, block hashes and "done" mark are one SQLite transaction, so a kill at
  any point loses at most the chunks in flight, and a restart collects exactly the missing
  blocks; before collecting, the newest stored block hashes are re-checked and anything from
  the first changed block on is dropped and redone (reorg).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import requests
from eth_utils import to_checksum_address
from web3 import HTTPProvider, Web3
from web3.exceptions import Web3RPCError

from apeagent.errors import UserError
from apeagent.redact import redact_url
from chain.pool import (
    BASE_CHAIN_ID,
    ETH_USDC_POOL_ID,
    POOL_MANAGER,
    STATE_VIEW,
    SWAP_TOPIC,
    decode_liquidity,
    decode_slot0,
    decode_swap_log,
    encode_get_liquidity,
    encode_get_slot0,
    norm_hex32,
)
from chain.store import Store

RANGE_ERROR_WORDS = (
    "range too large",
    "block range",
    "too many results",
    "more than",
    "response size",
    "exceeds",
    "exceeded",
    "limit",
    "too large",
)


class RangeTooLarge(Exception):
    """The provider refused the block range or the result count: split the chunk."""


class RetryChunk(Exception):
    """Inconsistent answers (e.g. block hash changed under us): redo the chunk."""


class CollectError(RuntimeError):
    """Gave up after the configured retries."""


@dataclass
class CollectSettings:
    rpc_urls: list[str]
    from_block: int
    to_block: int | str = "latest"
    confirmations: int = 10
    pool_id: str = ETH_USDC_POOL_ID
    chunk_size: int = 2000
    min_chunk: int = 1
    max_chunk: int = 10_000
    concurrency: int = 4
    rate_limit: float | None = 25.0  # requests per second per endpoint (None: unlimited)
    timeout_s: float = 10.0
    max_retries: int = 8
    backoff_base_s: float = 0.25
    backoff_max_s: float = 30.0
    batch_size: int = 50
    with_tx: bool = False
    follow: bool = False
    poll_s: float = 4.0
    follow_polls: int | None = None  # stop after this many polls (tests); None: until killed
    allow_chain_id: int | None = None
    reorg_depth: int = 64
    progress: bool = True
    seed: int | None = None


@dataclass
class CollectStats:
    chunks: int = 0
    blocks: int = 0
    events: int = 0
    splits: int = 0
    retries: int = 0
    reorg_rollbacks: int = 0
    requests: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["blocks_per_s"] = self.blocks / self.seconds if self.seconds else 0.0
        d["events_per_s"] = self.events / self.seconds if self.seconds else 0.0
        return d


class TokenBucket:
    def __init__(self, rate: float | None, burst: int):
        self.rate, self.capacity = rate, max(1, burst)
        self.tokens = float(self.capacity)
        self.t = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        if not self.rate:
            return
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.t) * self.rate)
                self.t = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait_s = (1 - self.tokens) / self.rate
            time.sleep(wait_s)


def _retry_after(resp: requests.Response | None) -> float | None:
    if resp is None:
        return None
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _rpc_message(e: Web3RPCError) -> str:
    resp = e.rpc_response or {}
    err = resp.get("error") if isinstance(resp, dict) else None
    if isinstance(err, dict):
        return str(err.get("message", e.message))
    return str(e.message)


class Client:
    """web3 over several endpoints with rate limits and retries. Thread-safe."""

    def __init__(self, s: CollectSettings, stats: CollectStats):
        if not s.rpc_urls:
            raise UserError("no --rpc-url given")
        self.s, self.stats = s, stats
        self.buckets = {u: TokenBucket(s.rate_limit, s.concurrency) for u in s.rpc_urls}
        self.local = threading.local()
        self.rr = 0
        self.lock = threading.Lock()
        self.rng = random.Random(s.seed)

    def w3(self, url: str) -> Web3:
        cache = getattr(self.local, "w3", None)
        if cache is None:
            cache = self.local.w3 = {}
        if url not in cache:
            provider = HTTPProvider(
                url,
                request_kwargs={"timeout": self.s.timeout_s},
                exception_retry_configuration=None,
            )
            cache[url] = Web3(provider, middleware=[])
        return cache[url]

    def _next_url(self) -> str:
        with self.lock:
            self.rr += 1
            return self.s.rpc_urls[self.rr % len(self.s.rpc_urls)]

    def _count(self, key: str) -> None:
        with self.lock:
            self.stats.errors[key] = self.stats.errors.get(key, 0) + 1
            self.stats.retries += 1

    def call(self, fn: Callable[[Web3], Any], what: str, retries: int | None = None) -> Any:
        retries = self.s.max_retries if retries is None else retries
        last: str = ""
        for attempt in range(retries + 1):
            url = self._next_url()
            self.buckets[url].acquire()
            wait_s: float | None = None
            try:
                with self.lock:
                    self.stats.requests += 1
                return fn(self.w3(url))
            except requests.HTTPError as e:
                status = e.response.status_code if e.response is not None else 0
                if status == 429:
                    wait_s = _retry_after(e.response)
                    last = f"HTTP 429 from {redact_url(url)}"
                    self._count("http_429")
                elif status >= 500:
                    last = f"HTTP {status} from {redact_url(url)}"
                    self._count("http_5xx")
                else:
                    raise CollectError(f"{what}: HTTP {status} from {redact_url(url)}") from None
            except requests.Timeout:
                last = f"timeout after {self.s.timeout_s}s from {redact_url(url)}"
                self._count("timeout")
            except requests.ConnectionError:
                last = f"cannot connect to {redact_url(url)}"
                self._count("connection")
            except Web3RPCError as e:
                msg = _rpc_message(e)
                low = msg.lower()
                if "rate" in low and "limit" in low:
                    last = f"rate limited by {redact_url(url)}: {msg}"
                    self._count("rpc_rate_limit")
                elif any(w in low for w in RANGE_ERROR_WORDS):
                    raise RangeTooLarge(msg) from None
                else:
                    raise CollectError(f"{what}: RPC error from {redact_url(url)}: {msg}") from None
            except ValueError as e:  # malformed JSON body (web3 raises a ValueError subclass)
                last = f"malformed response from {redact_url(url)}: {str(e)[:80]}"
                self._count("malformed")
            if attempt == retries:
                break
            backoff = min(self.s.backoff_max_s, self.s.backoff_base_s * 2**attempt)
            delay = self.rng.uniform(0, backoff)  # full jitter
            if wait_s is not None:
                delay = max(delay, min(wait_s, self.s.backoff_max_s))
            time.sleep(delay)
        raise CollectError(f"{what}: giving up after {retries + 1} attempts ({last})")

    def batch(self, calls: list[Callable[[Web3], Any]], what: str) -> list[Any]:
        """Several requests in one JSON-RPC batch (one HTTP round trip), retried as a unit."""

        def run(w3: Web3) -> list[Any]:
            with w3.batch_requests() as b:
                for c in calls:
                    b.add(c(w3))
                return list(b.execute())

        return self.call(run, what)


class BlockCache:
    """Block number -> (hash, timestamp), fetched in batches."""

    def __init__(self, client: Client, batch_size: int, limit: int = 200_000):
        self.client, self.batch_size, self.limit = client, batch_size, limit
        self.data: dict[int, tuple[str, int]] = {}
        self.lock = threading.Lock()

    def get(self, numbers: list[int]) -> dict[int, tuple[str, int]]:
        with self.lock:
            missing = [n for n in sorted(set(numbers)) if n not in self.data]
        for i in range(0, len(missing), self.batch_size):
            part = missing[i : i + self.batch_size]
            blocks = self.client.batch(
                [lambda w3, n=n: w3.eth.get_block(n) for n in part], f"blocks {part[0]}..{part[-1]}"
            )
            with self.lock:
                if len(self.data) > self.limit:
                    self.data.clear()
                for n, b in zip(part, blocks, strict=True):
                    if b is None:
                        raise RetryChunk(f"block {n} not available yet")
                    self.data[n] = ("0x" + bytes(b["hash"]).hex(), int(b["timestamp"]))
        with self.lock:
            return {n: self.data[n] for n in numbers}

    def drop(self, numbers: list[int]) -> None:
        with self.lock:
            for n in numbers:
                self.data.pop(n, None)


def check_chain(client: Client, s: CollectSettings) -> tuple[int, int]:
    """Chain id and pool checks before anything is written. Returns (chain id, head block)."""
    chain_id = client.call(lambda w3: w3.eth.chain_id, "eth_chainId", retries=min(2, s.max_retries))
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
    return chain_id, client.call(lambda w3: w3.eth.block_number, "eth_blockNumber")


def pool_state(client: Client, pool: str) -> dict[str, int]:
    """StateView getSlot0 + getLiquidity at the latest block."""

    def call(data: str) -> bytes:
        return lambda w3: bytes(w3.eth.call({"to": STATE_VIEW, "data": data}))

    slot0_raw = client.call(call(encode_get_slot0(pool)), "StateView.getSlot0")
    liq_raw = client.call(call(encode_get_liquidity(pool)), "StateView.getLiquidity")
    if len(slot0_raw) < 128 or len(liq_raw) < 32:
        raise UserError(f"StateView {STATE_VIEW} returned no data: is this Base?")
    state = decode_slot0(slot0_raw)
    state["liquidity"] = decode_liquidity(liq_raw)
    return state


def fetch_chunk(
    client: Client, cache: BlockCache, s: CollectSettings, lo: int, hi: int
) -> tuple[list[dict[str, Any]], list[tuple[int, str, int]]]:
    logs = client.call(
        lambda w3: w3.eth.get_logs(
            {
                "fromBlock": lo,
                "toBlock": hi,
                "address": POOL_MANAGER,
                "topics": [SWAP_TOPIC, s.pool_id],
            }
        ),
        f"eth_getLogs {lo}..{hi}",
    )
    events = [decode_swap_log(log) for log in logs]
    events = [e for e in events if e["pool_id"] == s.pool_id and lo <= e["block_number"] <= hi]
    wanted = sorted({e["block_number"] for e in events} | {hi})
    headers = cache.get(wanted)
    for e in events:
        h, ts = headers[e["block_number"]]
        if h != e["block_hash"]:
            cache.drop(wanted)
            raise RetryChunk(f"block {e['block_number']} hash changed during collection")
        e["timestamp"] = ts
        e["original_sender"] = e["is_contract_sender"] = e["tx_to"] = None
    if s.with_tx and events:
        _add_tx_info(client, s, events)
    keys = {(e["block_number"], e["log_index"]) for e in events}
    if len(keys) != len(events):
        raise RetryChunk(f"duplicate log indexes in {lo}..{hi}")
    return events, [(n, headers[n][0], headers[n][1]) for n in wanted]


def _add_tx_info(client: Client, s: CollectSettings, events: list[dict[str, Any]]) -> None:
    hashes = sorted({e["transaction_hash"] for e in events})
    txs: dict[str, Any] = {}
    for i in range(0, len(hashes), s.batch_size):
        part = hashes[i : i + s.batch_size]
        got = client.batch(
            [lambda w3, h=h: w3.eth.get_transaction(h) for h in part], "transactions"
        )
        txs.update(zip(part, got, strict=True))
    senders = sorted({to_checksum_address(t["from"]) for t in txs.values()})
    codes: dict[str, bool] = {}
    for i in range(0, len(senders), s.batch_size):
        part = senders[i : i + s.batch_size]
        got = client.batch([lambda w3, a=a: w3.eth.get_code(a) for a in part], "eth_getCode")
        codes.update((a, len(bytes(c)) > 0) for a, c in zip(part, got, strict=True))
    for e in events:
        t = txs[e["transaction_hash"]]
        e["original_sender"] = to_checksum_address(t["from"])
        e["tx_to"] = to_checksum_address(t["to"]) if t.get("to") else None
        e["is_contract_sender"] = codes[e["original_sender"]]


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
        got = client.batch([lambda w3, n=n: w3.eth.get_block(n) for n in numbers], "reorg check")
        for (n, h), b in zip(stored, got, strict=True):
            if b is not None and "0x" + bytes(b["hash"]).hex() == h:
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
    stats = CollectStats()
    s.pool_id = norm_hex32(s.pool_id)
    client = Client(s, stats)
    try:
        chain_id, head = check_chain(client, s)
    except CollectError as e:
        raise UserError(f"cannot use RPC {', '.join(map(redact_url, s.rpc_urls))}: {e}") from None
    db = Path(db)
    existed = db.exists()
    store = Store(db)
    try:
        meta = store.meta()
        expect = {"source": "rpc", "chain_id": str(chain_id), "pool_id": s.pool_id}
        for k, v in expect.items():
            if existed and k in meta and meta[k] != v:
                raise UserError(f"{db}: store has {k}={meta[k]}, this collection is {k}={v}")
        cache = BlockCache(client, s.batch_size)
        t0 = time.monotonic()
        polls = 0
        while True:
            rolled = recheck_reorg(client, store, s.reorg_depth)
            if rolled is not None:
                stats.reorg_rollbacks += 1
                log(f"reorg: stored blocks from {rolled} changed on chain; redoing them")
            target = head - s.confirmations if s.to_block == "latest" else int(s.to_block)
            if s.from_block <= target:
                _run_range(client, cache, store, s, stats, s.from_block, target, expect, t0)
            stats.seconds = time.monotonic() - t0
            if not s.follow:
                break
            polls += 1
            if s.follow_polls is not None and polls >= s.follow_polls:
                break
            time.sleep(s.poll_s)
            head = client.call(lambda w3: w3.eth.block_number, "eth_blockNumber")
    finally:
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
    t0: float,
) -> None:
    pending = list(store.missing_ranges(lo, hi))
    total = sum(b - a + 1 for a, b in pending)
    if total == 0:
        return
    size = max(s.min_chunk, s.chunk_size)
    progress = _progress(s.progress, total)
    inflight: dict[Future, tuple[int, int]] = {}
    with (
        ThreadPoolExecutor(max_workers=s.concurrency, thread_name_prefix="collect") as pool,
        progress as bar,
    ):
        task = bar.add_task("collect", total=total, events=0) if bar else None
        while pending or inflight:
            while pending and len(inflight) < s.concurrency:
                a, b = pending.pop(0)
                end = min(b, a + size - 1)
                if end < b:
                    pending.insert(0, (end + 1, b))
                inflight[pool.submit(fetch_chunk, client, cache, s, a, end)] = (a, end)
            finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            for fut in finished:
                a, b = inflight.pop(fut)
                try:
                    events, blocks = fut.result()
                except RangeTooLarge:
                    stats.splits += 1
                    if b == a:
                        raise CollectError(f"provider refuses even a single block ({a})") from None
                    mid = (a + b) // 2
                    size = max(s.min_chunk, min(size, (b - a + 1) // 2))
                    pending[:0] = [(a, mid), (mid + 1, b)]
                    continue
                except RetryChunk:
                    stats.retries += 1
                    pending.insert(0, (a, b))
                    continue
                store.commit_chunk(a, b, events, blocks, meta=meta)
                size = min(s.max_chunk, size * 2)
                stats.chunks += 1
                stats.blocks += b - a + 1
                stats.events += len(events)
                if bar is not None:
                    bar.update(task, advance=b - a + 1, events=stats.events)


def _progress(enabled: bool, total: int):
    import contextlib

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
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )

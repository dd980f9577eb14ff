"""A local JSON-RPC node for Base swap data: real HTTP on 127.0.0.1, for tests and benchmarks.

It serves the Swap logs of a set of rows (the shared CSV, or the simulator's) encoded with
eth-abi exactly as PoolManager emits them, block headers with hashes and timestamps,
transactions, and StateView ``getSlot0`` / ``getLiquidity`` at the head block. The client on the
other side is the real web3 stack; nothing is mocked.

Switchable behaviour (``set_faults``):

* random faults, each a probability per HTTP request from a seeded RNG: HTTP 429 with
  ``Retry-After``, HTTP 500, responses slower than the client's timeout, malformed JSON bodies;
* a free-tier rate limit: ``rps`` requests/s (token bucket of ``rps_burst``), beyond it HTTP
  429 with ``Retry-After: retry_after``;
* provider limits: ``max_range`` (blocks per eth_getLogs), ``max_results`` (logs per answer);
* lying answers: ``forge`` (one of :data:`FORGE_KINDS`) changes an ``eth_getLogs`` answer that
  has logs with probability ``forge_p``: an extra log with another topic0 / emitter / pool id /
  a block outside the range / another block hash for a block, a log with ``removed: true`` or
  undecodable data, or a repeated log;
* ``logs_lag``: eth_getLogs sees only blocks up to head minus this (eth_blockNumber does not);
* ``log_timestamps``: logs carry ``blockTimestamp`` (newer geth/reth/Erigon, several providers);
* ``price_factor``: a *consistent* liar. Every answer about the pool's price -- StateView
  ``getSlot0``, the Swap logs (``sqrtPriceX96``, ``tick``, the USDC amount) and the V4 Quoter
  (served with :meth:`DevNode.serve_quoter`) -- describes a pool at ``price_factor`` times the
  real price, so the answers agree with each other (1.0: honest).

The clock (:meth:`DevNode.set_clock`): by default block timestamps are the rows' own (a replay
of history) and the head stays where it is put. ``set_clock()`` makes the node look live: the
head block's timestamp is the wall clock (minus ``lag_s``: a node that fell behind) and a new
empty block comes every ``BLOCK_SECONDS`` (``advance=False``: a stalled node whose head never
moves). ``chain_id`` may be changed while the node runs (a provider that fails over to another
network). Every request is counted by method in ``calls`` (``eth_sendRawTransaction`` too,
served or not).

``latency_s`` delays every request (the benchmark's 50 ms link). ``reorg(block)`` replaces the
chain from ``block`` on (new hashes, optionally new rows).

Users: ``python -m chain.devnode --csv FILE`` serves a swaps CSV as a local Base node on
127.0.0.1 (``ape-chain collect --rpc-url http://127.0.0.1:8545`` then collects it back);
``--live`` shifts its clock to now (see below), for paper trading against it.

Extending: ``node.methods["eth_sendRawTransaction"] = fn`` where ``fn(params) -> result``;
raise :class:`RpcError` for a JSON-RPC error.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import random
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eth_abi import decode, encode
from eth_utils import keccak

from chain.amm import AmmError, swap_exact_input
from chain.pool import (
    BASE_CHAIN_ID,
    BLOCK_SECONDS,
    ETH_USDC_POOL_ID,
    GET_LIQUIDITY_SELECTOR,
    GET_SLOT0_SELECTOR,
    POOL_MANAGER,
    SIMULATED,
    SIMULATED_ADDRESS,
    STATE_VIEW,
    encode_swap_log,
    norm_hex32,
)

FAULT_KEYS = {
    "rate_limit": 0.0,  # probability of HTTP 429
    "retry_after": 0.05,  # seconds in the Retry-After header
    "server_error": 0.0,  # probability of HTTP 500
    "slow": 0.0,  # probability of a response delayed by slow_s
    "slow_s": 2.0,
    "malformed": 0.0,  # probability of a 200 with a broken JSON body
    "max_range": None,  # eth_getLogs block-range limit
    "max_results": None,  # eth_getLogs result-count limit
    "rps": None,  # token-bucket rate limit (requests/s); beyond it HTTP 429 + Retry-After
    "rps_burst": 10,
    "forge": None,  # one of FORGE_KINDS
    "forge_p": 1.0,  # probability that an eth_getLogs answer with logs is forged
    "logs_lag": 0,  # eth_getLogs serves blocks up to head - logs_lag only
    "log_timestamps": False,  # logs carry blockTimestamp
    "price_factor": 1.0,  # slot0, Swap logs and the Quoter describe a pool at this times the price
    "seed": 0,
}
QUOTE_SIGNATURE = "quoteExactInputSingle(((address,address,uint24,int24,address),bool,uint128,bytes))"
QUOTE_SELECTOR = "0x" + keccak(text=QUOTE_SIGNATURE)[:4].hex()
QUOTE_ARGS = "((address,address,uint24,int24,address),bool,uint128,bytes)"
LN_TICK_BASE = math.log(1.0001)
FORGE_KINDS = ("topic0", "address", "pool", "out_of_range", "removed", "duplicate", "bad_data", "hash")


class RpcError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _hex(n: int) -> str:
    return hex(n)


def _parse_block(tag: Any, head: int) -> int:
    if tag in (None, "latest", "safe", "finalized", "pending"):
        return head
    if tag == "earliest":
        return 0
    if isinstance(tag, int):
        return tag
    return int(tag, 16)


class DevNode:
    """A running node. Thread-safe; state changes (faults, head, reorg) apply immediately."""

    def __init__(
        self,
        rows: list[dict[str, Any]],
        *,
        chain_id: int = BASE_CHAIN_ID,
        faults: dict[str, Any] | None = None,
        latency_s: float = 0.0,
        head: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.chain_id = chain_id
        self.latency_s = latency_s
        self.lock = threading.Lock()
        self.faults = dict(FAULT_KEYS)
        self._rng = random.Random(0)
        self.bucket = (0.0, time.monotonic())
        self.set_faults(**(faults or {}))
        self.epoch: dict[int, int] = {}  # block -> reorg generation (changes its hash)
        self.requests = 0
        self.calls: dict[str, int] = {}
        self.connections: set[socket.socket] = set()  # open client connections (closed by stop)
        self._load(rows)
        self.clock: dict[str, Any] | None = None  # set_clock(): {t0, head0, shift, advance}
        self.quoter: str | None = None  # serve_quoter(): the V4 Quoter's address (lowercase)
        self.head = head if head is not None else (self.last_block + 5 if rows else 100)
        self.methods: dict[str, Callable[[list], Any]] = {
            "eth_chainId": lambda p: _hex(self.chain_id),
            "net_version": lambda p: str(self.chain_id),
            "eth_blockNumber": lambda p: _hex(self.head),
            "eth_getLogs": self._get_logs,
            "eth_getBlockByNumber": self._get_block,
            "eth_getTransactionByHash": self._get_tx,
            "eth_getCode": self._get_code,
            "eth_call": self._call,
        }
        node = self

        class Handler(_Handler):
            devnode = node

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    # ------------------------------------------------------------ state

    def _load(self, rows: list[dict[str, Any]]) -> None:
        rows = sorted(rows, key=lambda r: (r["block_number"], r["log_index"]))
        self.rows = rows
        self.blocks_index = [r["block_number"] for r in rows]
        self.txs: dict[str, dict[str, Any]] = {}
        self.tx_index: dict[str, int] = {}
        per_block: dict[int, list[str]] = {}
        for r in rows:
            h = r["transaction_hash"]
            if h not in self.txs:
                self.txs[h] = r
                per_block.setdefault(r["block_number"], []).append(h)
                self.tx_index[h] = len(per_block[r["block_number"]]) - 1
        self.block_txs = per_block
        if rows:
            self.first_block, self.last_block = rows[0]["block_number"], rows[-1]["block_number"]
            self.ts_anchor = (rows[0]["block_number"], rows[0]["timestamp"])
        else:
            self.first_block = self.last_block = 0
            self.ts_anchor = (0, 1_700_000_000)
        self.block_ts = {r["block_number"]: r["timestamp"] for r in rows}

    @property
    def head(self) -> int:
        """The head block: where it was put, plus one block per ``BLOCK_SECONDS`` of wall clock
        since :meth:`set_clock` (unless the clock was set with ``advance=False``)."""
        c = self.clock
        if c is None or not c["advance"]:
            return self._head
        return self._head + int((time.time() - c["t0"]) // BLOCK_SECONDS)

    @head.setter
    def head(self, n: int) -> None:
        self._head = int(n)
        if self.clock is not None:
            self.clock["t0"] = time.time()

    def set_clock(self, *, lag_s: float = 0.0, advance: bool = True) -> None:
        """Look live from now on: the head block's timestamp is ``now - lag_s`` (every block
        shifted alike, so the swaps keep their spacing); ``advance``: a new block every
        ``BLOCK_SECONDS`` of wall clock, else the head stays (a stalled node: its head's
        timestamp then falls behind the wall clock)."""
        with self.lock:
            head = self.head
            self.clock = None
            t0 = time.time()
            shift = int(t0 - lag_s) - self.block_timestamp(head)
            self._head = head
            self.clock = {"t0": t0, "shift": shift, "advance": advance}

    def serve_quoter(self, address: str) -> None:
        """Answer ``quoteExactInputSingle`` (``eth_call`` to ``address``) as the V4 Quoter: the
        exact pool math at the head's pool state (as served: ``price_factor`` applies)."""
        self.quoter = address.lower()

    def pool_state(self) -> dict[str, Any] | None:
        """The pool as the node describes it at its head: the last swap row up to the head
        block, lying by ``price_factor`` if set; None before the first swap."""
        k = bisect.bisect_right(self.blocks_index, self.head)
        return self._served(self.rows[k - 1]) if k else None

    def _served(self, r: dict[str, Any]) -> dict[str, Any]:
        """A row as the node tells it: the price scaled by ``price_factor`` (a consistent lie)."""
        f = float(self.faults["price_factor"])
        if f == 1.0:
            return r
        return dict(
            r,
            sqrt_price_x96=int(r["sqrt_price_x96"] * math.sqrt(f)),
            tick=int(r["tick"] + round(math.log(f) / LN_TICK_BASE)),
            amount1=int(r["amount1"] * f),
        )

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def set_faults(self, **faults: Any) -> None:
        unknown = set(faults) - set(FAULT_KEYS)
        if unknown:
            raise ValueError(f"unknown fault(s): {sorted(unknown)} (known: {sorted(FAULT_KEYS)})")
        if faults.get("forge") not in (None, *FORGE_KINDS):
            raise ValueError(f"unknown forge kind {faults['forge']!r} (known: {FORGE_KINDS})")
        with self.lock:
            self.faults.update(faults)
            if "rps" in faults or "rps_burst" in faults:
                self.bucket = (float(self.faults["rps_burst"]), time.monotonic())
            if "seed" in faults:
                self._rng = random.Random(faults["seed"])

    def clear_faults(self) -> None:
        with self.lock:
            self.faults = dict(FAULT_KEYS)

    def reorg(self, from_block: int, rows: list[dict[str, Any]] | None = None) -> None:
        """Replace the chain from ``from_block``: new block hashes; ``rows`` (if given) are the
        new swaps in those blocks (the old ones there are dropped)."""
        with self.lock:
            for b in range(from_block, self.head + 1):
                self.epoch[b] = self.epoch.get(b, 0) + 1
            if rows is not None:
                keep = [r for r in self.rows if r["block_number"] < from_block]
                self._load(keep + list(rows))

    def stop(self) -> None:
        """Stop serving: the listening socket and every open (keep-alive) connection close."""
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            conns, self.connections = list(self.connections), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> DevNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ chain data

    def block_hash(self, n: int) -> str:
        e = self.epoch.get(n, 0)
        return "0x" + keccak(text=f"devnode:{self.chain_id}:{n}:{e}").hex()

    def block_timestamp(self, n: int) -> int:
        shift = self.clock["shift"] if self.clock else 0
        if n in self.block_ts:
            return self.block_ts[n] + shift
        b0, t0 = self.ts_anchor
        return t0 + (n - b0) * BLOCK_SECONDS + shift

    def _log(self, r: dict[str, Any]) -> dict[str, Any]:
        r = self._served(r)
        sender = SIMULATED_ADDRESS if r["sender"] == SIMULATED else r["sender"]
        topics, data = encode_swap_log(
            pool=r["pool_id"],
            sender=sender,
            amount0=r["amount0"],
            amount1=r["amount1"],
            sqrt_price_x96=r["sqrt_price_x96"],
            liquidity=r["liquidity"],
            tick=r["tick"],
            fee=r["fee"],
        )
        log = {
            "address": POOL_MANAGER,
            "topics": topics,
            "data": data,
            "blockNumber": _hex(r["block_number"]),
            "blockHash": self.block_hash(r["block_number"]),
            "transactionHash": r["transaction_hash"],
            "transactionIndex": _hex(self.tx_index[r["transaction_hash"]]),
            "logIndex": _hex(r["log_index"]),
            "removed": False,
        }
        if self.faults["log_timestamps"]:
            log["blockTimestamp"] = _hex(self.block_timestamp(r["block_number"]))
        return log

    def _forge(self, out: list[dict[str, Any]], hi: int) -> list[dict[str, Any]]:
        kind = self.faults["forge"]
        with self.lock:
            if not kind or not out or self._rng.random() >= self.faults["forge_p"]:
                return out
        first = out[0]
        extra = dict(first, logIndex=_hex(int(first["logIndex"], 16) + 0x10000))
        if kind == "topic0":
            extra["topics"] = ["0x" + keccak(text="Transfer(address,address,uint256)").hex(), *first["topics"][1:]]
        elif kind == "address":
            extra["address"] = "0x000000000000000000000000000000000000dEaD"
        elif kind == "pool":
            extra["topics"] = [first["topics"][0], "0x" + "ab" * 32, first["topics"][2]]
        elif kind == "out_of_range":
            extra["blockNumber"] = _hex(hi + 1)
        elif kind == "hash":
            extra["blockHash"] = "0x" + keccak(text=f"forged:{first['blockHash']}").hex()
        elif kind == "duplicate":
            extra = dict(first)
        elif kind == "removed":
            return [dict(first, removed=True), *out[1:]]
        elif kind == "bad_data":
            return [dict(first, data=first["data"][:-64]), *out[1:]]
        return [*out, extra]

    def _get_logs(self, params: list) -> list[dict[str, Any]]:
        f = params[0] if params else {}
        lo = _parse_block(f.get("fromBlock"), self.head)
        asked = _parse_block(f.get("toBlock"), self.head)
        max_range = self.faults["max_range"]
        hi = min(asked, self.head - self.faults["logs_lag"])
        if lo > hi:
            return []
        if max_range is not None and min(asked, self.head) - lo + 1 > max_range:
            raise RpcError(
                -32005, f"block range too large: query exceeds max block range of {max_range}"
            )
        addr = f.get("address")
        addrs = [addr] if isinstance(addr, str) else (addr or [])
        if addrs and POOL_MANAGER.lower() not in [a.lower() for a in addrs]:
            return []
        topics = f.get("topics") or []
        want = [None if t is None else ([t] if isinstance(t, str) else t) for t in topics]
        out = []
        i = bisect.bisect_left(self.blocks_index, lo)
        j = bisect.bisect_right(self.blocks_index, hi)
        for r in self.rows[i:j]:
            log = self._log(r)
            if all(
                w is None or log["topics"][k].lower() in [x.lower() for x in w]
                for k, w in enumerate(want)
            ):
                out.append(log)
        max_results = self.faults["max_results"]
        if max_results is not None and len(out) > max_results:
            raise RpcError(-32005, f"query returned more than {max_results} results")
        return self._forge(out, asked)

    def _get_block(self, params: list) -> dict[str, Any] | None:
        n = _parse_block(params[0], self.head)
        if n > self.head or n < 0:
            return None
        txs = self.block_txs.get(n, [])
        return {
            "number": _hex(n),
            "hash": self.block_hash(n),
            "parentHash": self.block_hash(n - 1) if n > 0 else "0x" + "00" * 32,
            "timestamp": _hex(self.block_timestamp(n)),
            "transactions": list(txs),
            "gasLimit": _hex(240_000_000),
            "gasUsed": _hex(0),
            "baseFeePerGas": _hex(10_000_000),
            "miner": "0x4200000000000000000000000000000000000011",
            "extraData": "0x",
            "logsBloom": "0x" + "00" * 256,
            "nonce": "0x0000000000000000",
            "difficulty": "0x0",
            "size": _hex(1000),
        }

    def _get_tx(self, params: list) -> dict[str, Any] | None:
        h = norm_hex32(params[0])
        r = self.txs.get(h)
        if r is None or r["block_number"] > self.head:
            return None
        frm = r.get("original_sender") or SIMULATED_ADDRESS
        frm = SIMULATED_ADDRESS if frm == SIMULATED else frm
        to = r.get("tx_to") or r["sender"]
        to = SIMULATED_ADDRESS if to == SIMULATED else to
        return {
            "hash": h,
            "from": frm,
            "to": to,
            "blockNumber": _hex(r["block_number"]),
            "blockHash": self.block_hash(r["block_number"]),
            "transactionIndex": _hex(self.tx_index[h]),
            "input": "0x",
            "value": "0x0",
            "nonce": "0x0",
            "gas": _hex(300_000),
            "gasPrice": _hex(10_000_000),
            "type": "0x2",
            "chainId": _hex(self.chain_id),
        }

    def _get_code(self, params: list) -> str:
        addr = params[0].lower()
        for r in self.txs.values():
            if (r.get("original_sender") or "").lower() == addr and r.get("is_contract_sender"):
                return "0x6080604052"
        if addr in (POOL_MANAGER.lower(), STATE_VIEW.lower()):
            return "0x6080604052"
        return "0x"

    def _call(self, params: list) -> str:
        tx = params[0]
        to = (tx.get("to") or "").lower()
        data = tx.get("data") or tx.get("input") or "0x"
        if self.quoter is not None and to == self.quoter:
            return self._quote(data)
        if to != STATE_VIEW.lower():
            return "0x"
        selector, arg = data[:10].lower(), data[10:]
        pool = "0x" + arg[:64].lower()
        state = None
        if pool == ETH_USDC_POOL_ID or any(r["pool_id"] == pool for r in self.rows[-1:]):
            state = self.pool_state()
        if selector == GET_SLOT0_SELECTOR:
            vals = (
                (state["sqrt_price_x96"], state["tick"], 0, state["fee"]) if state else (0, 0, 0, 0)
            )
            return "0x" + encode(["uint160", "int24", "uint24", "uint24"], list(vals)).hex()
        if selector == GET_LIQUIDITY_SELECTOR:
            return "0x" + encode(["uint128"], [state["liquidity"] if state else 0]).hex()
        raise RpcError(3, "execution reverted")

    def _quote(self, data: str) -> str:
        """``quoteExactInputSingle`` -> ``(amountOut, gasEstimate)`` at the served pool state."""
        if data[:10].lower() != QUOTE_SELECTOR:
            raise RpcError(3, "execution reverted")
        ((key, zero_for_one, amount, _hook),) = decode([QUOTE_ARGS], bytes.fromhex(data[10:]))
        st = self.pool_state()
        if st is None or key[2] != st["fee"]:
            raise RpcError(3, "execution reverted: pool not initialized")
        try:
            out = swap_exact_input(st["sqrt_price_x96"], st["liquidity"], amount, zero_for_one, key[2])
        except AmmError as e:
            raise RpcError(3, f"execution reverted: {e}") from None
        return "0x" + encode(["uint256", "uint256"], [out.amount_out, 120_000]).hex()

    # ------------------------------------------------------------ dispatch

    def handle(self, req: Any) -> dict[str, Any] | None:
        if not isinstance(req, dict) or "method" not in req:
            return {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": -32600, "message": "invalid request"},
            }
        method, rid = req["method"], req.get("id")
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1
        fn = self.methods.get(method)
        if fn is None:
            return {
                "jsonrpc": "2.0",
                "id": rid,
                "error": {"code": -32601, "message": f"method {method} not found"},
            }
        try:
            return {"jsonrpc": "2.0", "id": rid, "result": fn(req.get("params") or [])}
        except RpcError as e:
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": e.code, "message": e.message}}
        except Exception as e:  # a bad param from the client: answer like a node would
            return {
                "jsonrpc": "2.0",
                "id": rid,
                "error": {"code": -32602, "message": f"invalid params: {e}"},
            }

    def draw_fault(self) -> str | None:
        with self.lock:
            self.requests += 1
            f = self.faults
            if f["rps"]:
                tokens, t = self.bucket
                now = time.monotonic()
                tokens = min(float(f["rps_burst"]), tokens + (now - t) * f["rps"])
                if tokens < 1:
                    self.bucket = (tokens, now)
                    return "rate_limit"
                self.bucket = (tokens - 1, now)
            for name in ("rate_limit", "server_error", "slow", "malformed"):
                p = f[name]
                if p and self._rng.random() < p:
                    return name
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    devnode: DevNode

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.devnode.lock:
            self.devnode.connections.add(self.connection)

    def finish(self) -> None:
        with self.devnode.lock:
            self.devnode.connections.discard(self.connection)
        super().finish()

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_POST(self) -> None:
        node = self.devnode
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if node.latency_s:
            time.sleep(node.latency_s)
        fault = node.draw_fault()
        if fault == "rate_limit":
            ra = node.faults["retry_after"]
            return self._send(429, b'{"error":"rate limited"}', {"Retry-After": f"{ra:g}"})
        if fault == "server_error":
            return self._send(500, b"internal error")
        if fault == "slow":
            time.sleep(node.faults["slow_s"])
        if fault == "malformed":
            return self._send(200, b'{"jsonrpc": "2.0", "id": 1, "result": [{"blockNum')
        try:
            req = json.loads(raw)
        except ValueError:
            body = {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": -32700, "message": "parse error"},
            }
            return self._send(200, json.dumps(body).encode())
        if isinstance(req, list):
            resp: Any = [node.handle(r) for r in req]
        else:
            resp = node.handle(req)
        self._send(200, json.dumps(resp).encode())


def start_devnode(
    rows: list[dict[str, Any]],
    *,
    chain_id: int = BASE_CHAIN_ID,
    faults: dict[str, Any] | None = None,
    latency_s: float = 0.0,
    head: int | None = None,
    port: int = 0,
) -> DevNode:
    """Start a node on 127.0.0.1 (a free port unless ``port``); ``.url``, ``.stop()``."""
    return DevNode(
        rows, chain_id=chain_id, faults=faults, latency_s=latency_s, head=head, port=port
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m chain.devnode", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--csv", help="swaps CSV to serve (default: 2000 simulated swaps)")
    p.add_argument("--port", type=int, default=8545)
    p.add_argument("--chain-id", type=int, default=BASE_CHAIN_ID)
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    p.add_argument(
        "--live",
        action="store_true",
        help="look live: the head's timestamp is the wall clock and a block comes every 2 s "
        "(what `ape-agent trade` needs; without it the blocks keep the CSV's own timestamps)",
    )
    args = p.parse_args(argv)
    if args.csv:
        from chain.csvio import read_swaps_csv

        rows = read_swaps_csv(args.csv, pool=None)
    else:
        from chain.simulate import simulate

        rows = simulate(2000, seed=0)
        print("serving SIMULATED swaps (no --csv given)")
    node = start_devnode(rows, chain_id=args.chain_id, latency_s=args.latency, port=args.port)
    if args.live:
        node.set_clock()
    print(
        f"devnode on {node.url}: chain {args.chain_id}, {len(rows)} swaps, head block {node.head}",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        node.stop()


if __name__ == "__main__":
    main()

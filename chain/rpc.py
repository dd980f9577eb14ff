"""The JSON-RPC transport: several endpoints, adaptive rate, retries until time runs out.

web3's ``HTTPProvider`` carries the requests (one per endpoint and thread, web3's own retries
off so that ours see every status); answers come back as the raw JSON the endpoint sent, so
the caller validates exactly what the provider said.

Per endpoint, AIMD on the request rate and on the requests in flight: an HTTP 429 or a
"rate limit" error halves both (once per congestion event: only a request sent after the last
cut cuts again) and blocks the endpoint for ``Retry-After`` seconds; while requests succeed the
rate doubles per second back to 90 % of the rate at the last cut, then grows by ``rate_step``
requests/s (or 25 %, the larger) per second, and the window by one request per window of successes, up to ``rate_limit``
(None: no ceiling) and ``concurrency``; a cut never goes below ``min_rate``. Without a ``rate_limit`` the first cut starts from the
rate observed over the last second.

HTTP 429, 5xx, timeouts, connection errors and malformed bodies are retried with exponential
backoff and full jitter. The budget is time without progress, not a count: a request gives up
only when no request to any endpoint has succeeded for ``give_up_s`` (or after
``max_attempts``, for one-shot reads). An endpoint whose answers the caller finds invalid
(:meth:`Client.invalid`) ``max_invalid`` times (ten valid answers forgive one) is dropped with a warning; with no
endpoint left the call raises :class:`TransportError`.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from web3 import HTTPProvider

from apeagent.errors import UserError
from apeagent.redact import redact, redact_url

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


def check_rpc_urls(urls: list[str], flag: str = "--rpc-url") -> None:
    """Every endpoint an http(s) URL with a host (a URL without a scheme would reach requests'
    "No connection adapters" only at the first request); the message shows it redacted."""
    for url in urls:
        try:
            u = urlsplit(str(url).strip())
            ok = u.scheme in ("http", "https") and bool(u.hostname) and (u.port is None or u.port > 0)
        except ValueError:
            ok = False
        if not ok:
            raise UserError(f"{flag} {redact(str(url))}: not an http(s) URL (http[s]://host[:port]/...)")


class TransportError(RuntimeError):
    """No usable answer: out of time, out of endpoints, or a refusal that retrying cannot fix."""


class RangeTooLarge(Exception):
    """The provider refused the block range or the result count: split it."""


@dataclass
class RpcSettings:
    rpc_urls: list[str]
    timeout_s: float = 10.0
    rate_limit: float | None = 25.0  # ceiling (and start) in requests/s per endpoint; None: none
    concurrency: int = 4  # ceiling of requests in flight per endpoint
    rate_step: float = 2.0  # additive increase: requests/s gained per second of successes
    min_rate: float = 5.0  # a cut never goes below (Retry-After still holds the endpoint)
    give_up_s: float = 120.0  # stop when nothing succeeded for this long
    max_attempts: int | None = None  # also stop after this many attempts (one-shot reads)
    backoff_base_s: float = 0.25
    backoff_max_s: float = 30.0
    max_invalid: int = 3  # invalid answers (ten valid ones forgive one) before a drop
    seed: int | None = None


@dataclass
class RpcStats:
    requests: int = 0
    retries: int = 0
    rate_cuts: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Endpoint:
    """One URL's adaptive limits. Mutated only under the client's lock."""

    def __init__(self, url: str, s: RpcSettings):
        self.url, self.name = url, redact_url(url)
        self.max_rate, self.max_window = s.rate_limit, max(1, s.concurrency)
        self.rate: float | None = s.rate_limit
        self.window = float(self.max_window)
        self.tokens, self.t = float(self.max_window), time.monotonic()
        self.blocked_until = 0.0
        self.last_cut = 0.0
        self.peak: float | None = None  # the rate when it was last cut
        self.t_grow = time.monotonic()
        self.inflight = 0
        self.invalid = 0.0  # invalid answers, less 0.1 per valid one
        self.dropped = False
        self.head: int | None = None
        self.sent: deque[float] = deque(maxlen=4096)

    def ready(self, now: float) -> float:
        """0 if a request may go now, else seconds to wait."""
        if now < self.blocked_until:
            return self.blocked_until - now
        if self.inflight >= int(self.window):
            return 0.01
        if self.rate is None:
            return 0.0
        self.tokens = min(max(1.0, self.window), self.tokens + (now - self.t) * self.rate)
        self.t = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def observed_rate(self, now: float) -> float:
        while self.sent and self.sent[0] < now - 1.0:
            self.sent.popleft()
        return float(len(self.sent))


def retry_after(resp: requests.Response | None) -> float | None:
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


class _Retry(Exception):
    def __init__(self, kind: str, message: str, wait_s: float | None = None):
        super().__init__(message)
        self.kind, self.message, self.wait_s = kind, message, wait_s


def _rpc_error(err: Any, ep: Endpoint, what: str) -> Exception:
    msg = str(err.get("message", err)) if isinstance(err, dict) else str(err)
    low = msg.lower()
    if ("rate" in low and "limit" in low) or "too many requests" in low:
        return _Retry("rpc_rate_limit", f"rate limited by {ep.name}: {msg[:120]}", None)
    if any(w in low for w in RANGE_ERROR_WORDS):
        return RangeTooLarge(msg[:200])
    return TransportError(f"{what}: RPC error from {ep.name}: {msg[:200]}")


def _result(resp: Any, ep: Endpoint, what: str) -> Any:
    if not isinstance(resp, dict) or ("result" not in resp and "error" not in resp):
        raise _Retry("malformed", f"malformed answer from {ep.name}: {str(resp)[:80]}")
    if resp.get("error") is not None:
        raise _rpc_error(resp["error"], ep, what)
    return resp["result"]


class Client:
    """JSON-RPC over several endpoints. Thread-safe."""

    def __init__(self, s: RpcSettings, log: Callable[[str], None] = print):
        if not s.rpc_urls:
            raise TransportError("no RPC endpoint given")
        self.s, self.log = s, log
        self.stats = RpcStats()
        self.endpoints = [Endpoint(u, s) for u in s.rpc_urls]
        self.cond = threading.Condition()
        self.local = threading.local()
        self.rr = 0
        self.rng = random.Random(s.seed)
        self.last_progress = time.monotonic()

    # ------------------------------------------------------------ endpoints

    def alive(self) -> list[Endpoint]:
        with self.cond:
            return [e for e in self.endpoints if not e.dropped]

    def rate(self) -> str:
        """The current request rate per endpoint, for the progress line."""
        with self.cond:
            return " ".join(
                f"{'inf' if e.rate is None else f'{e.rate:.0f}'}/s" + (" (dropped)" if e.dropped else "")
                for e in self.endpoints
            )

    def _provider(self, ep: Endpoint) -> HTTPProvider:
        cache = getattr(self.local, "providers", None)
        if cache is None:
            cache = self.local.providers = {}
        if ep.url not in cache:
            cache[ep.url] = HTTPProvider(
                ep.url,
                request_kwargs={"timeout": self.s.timeout_s},
                exception_retry_configuration=None,
            )
        return cache[ep.url]

    def _take(self, avoid: Endpoint | None, min_head: int | None, deadline: float) -> Endpoint:
        with self.cond:
            while True:
                alive = [e for e in self.endpoints if not e.dropped]
                if not alive:
                    raise TransportError(
                        "no honest endpoint left: "
                        + ", ".join(f"{e.name} dropped" for e in self.endpoints)
                    )
                pool = [e for e in alive if min_head is None or e.head is None or e.head >= min_head]
                if not pool:
                    raise TransportError(f"no endpoint has reached block {min_head} yet")
                if avoid is not None and len(pool) > 1:
                    pool = [e for e in pool if e is not avoid]
                now = time.monotonic()
                if len(pool) > 1:  # a forced choice does not move the rotation: a chunk and
                    self.rr += 1  # its cross-check would otherwise lock every chunk to one endpoint
                order = pool[self.rr % len(pool) :] + pool[: self.rr % len(pool)]
                waits = [e.ready(now) for e in order]
                for e, w in zip(order, waits, strict=True):
                    if w == 0.0:
                        if e.rate is not None:
                            e.tokens -= 1
                        e.inflight += 1
                        e.sent.append(now)
                        self.stats.requests += 1
                        return e
                if now > deadline:
                    raise TransportError(f"nothing sent for {self.s.give_up_s:g}s: endpoints blocked")
                self.cond.wait(min(min(waits), 0.25))

    def _done(self, ep: Endpoint, sent: float, ok: bool, cut: float | None = None) -> None:
        with self.cond:
            ep.inflight -= 1
            now = time.monotonic()
            if ok:
                self.last_progress = now
                dt, ep.t_grow = now - ep.t_grow, now
                if ep.rate is not None:
                    # back to 90 % of the rate at the last cut doubling per second, then
                    # max(rate_step, 25 %) more requests/s per second
                    if ep.peak is not None and ep.rate < 0.9 * ep.peak:
                        grown = min(0.9 * ep.peak, ep.rate * 2**dt)
                    else:
                        grown = ep.rate + max(self.s.rate_step, 0.25 * ep.rate) * dt
                    ep.rate = grown if ep.max_rate is None else min(ep.max_rate, grown)
                ep.window = min(ep.max_window, ep.window + 1 / ep.window)
            elif cut is not None:  # rate limited: cut once per congestion event
                ep.blocked_until = max(ep.blocked_until, now + cut)
                if sent >= ep.last_cut:
                    base = ep.rate if ep.rate is not None else ep.observed_rate(now)
                    ep.peak = base
                    ep.rate = max(self.s.min_rate, base / 2)
                    ep.window = max(1.0, ep.window / 2)
                    ep.tokens, ep.t = 0.0, now
                    ep.last_cut = ep.t_grow = now
                    self.stats.rate_cuts += 1
            self.cond.notify_all()

    def _count(self, kind: str) -> None:
        with self.cond:
            self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1
            self.stats.retries += 1

    def invalid(self, ep: Endpoint, reason: str) -> None:
        """The caller found an answer of ``ep`` invalid: count it, drop ``ep`` if it persists."""
        with self.cond:
            self.stats.errors["invalid_answer"] = self.stats.errors.get("invalid_answer", 0) + 1
            ep.invalid += 1.0
            drop = not ep.dropped and ep.invalid >= self.s.max_invalid
            if drop:
                ep.dropped = True
            self.cond.notify_all()
        if drop:
            self.log(f"warning: dropping endpoint {ep.name}: it keeps failing validation ({reason})")

    def valid(self, ep: Endpoint) -> None:
        """A validated answer: ten of them forgive one invalid answer."""
        with self.cond:
            ep.invalid = max(0.0, ep.invalid - 0.1)

    def set_head(self, ep: Endpoint, head: int) -> None:
        with self.cond:
            ep.head = head if ep.head is None else max(ep.head, head)

    # ------------------------------------------------------------ requests

    def send(
        self,
        fn: Callable[[HTTPProvider, Endpoint], Any],
        what: str,
        avoid: Endpoint | None = None,
        min_head: int | None = None,
    ) -> tuple[Any, Endpoint]:
        """``fn(provider, endpoint)`` on some endpoint until it answers; returns (answer, endpoint)."""
        last, attempt = "", 0
        while True:
            deadline = self.last_progress + self.s.give_up_s
            ep = self._take(avoid, min_head, deadline)
            sent = time.monotonic()
            try:
                out = fn(self._provider(ep), ep)
            except _Retry as r:
                self._done(ep, sent, False, cut=self._cut(r) if r.kind in ("http_429", "rpc_rate_limit") else None)
                self._count(r.kind)
                last = r.message
            except requests.HTTPError as e:
                status = e.response.status_code if e.response is not None else 0
                if status == 429:
                    cut = retry_after(e.response)
                    self._done(ep, sent, False, cut=self._cut(None) if cut is None else cut)
                    self._count("http_429")
                    last = f"HTTP 429 from {ep.name}"
                elif status >= 500:
                    self._done(ep, sent, False)
                    self._count("http_5xx")
                    last = f"HTTP {status} from {ep.name}"
                else:
                    self._done(ep, sent, False)
                    raise TransportError(f"{what}: HTTP {status} from {ep.name}") from None
            except requests.Timeout:
                self._done(ep, sent, False)
                self._count("timeout")
                last = f"timeout after {self.s.timeout_s:g}s from {ep.name}"
            except requests.ConnectionError:
                self._done(ep, sent, False)
                self._count("connection")
                last = f"cannot connect to {ep.name}"
            except ValueError as e:  # a body that is not JSON
                self._done(ep, sent, False)
                self._count("malformed")
                last = f"malformed answer from {ep.name}: {str(e)[:80]}"
            except BaseException:
                self._done(ep, sent, False)
                raise
            else:
                self._done(ep, sent, True)
                return out, ep
            attempt += 1
            idle = time.monotonic() - self.last_progress
            if idle > self.s.give_up_s or (
                self.s.max_attempts is not None and attempt >= self.s.max_attempts
            ):
                raise TransportError(
                    f"{what}: no answer after {attempt} attempts, {idle:.0f}s without progress ({last})"
                )
            backoff = min(self.s.backoff_max_s, self.s.backoff_base_s * 2 ** min(attempt, 30))
            time.sleep(self.rng.uniform(0, backoff))

    def _cut(self, r: _Retry | None) -> float:
        """Seconds to hold an endpoint that rate-limited without saying how long."""
        return self.s.backoff_base_s if r is None or r.wait_s is None else r.wait_s

    def request(self, method: str, params: list, what: str | None = None, **kw: Any) -> tuple[Any, Endpoint]:
        """One call; returns (result, endpoint that answered)."""
        what = what or method

        def fn(p: HTTPProvider, ep: Endpoint) -> Any:
            return _result(p.make_request(method, params), ep, what)

        return self.send(fn, what, **kw)

    def call(self, method: str, params: list, what: str | None = None) -> Any:
        return self.request(method, params, what)[0]

    def batch(self, calls: list[tuple[str, list]], what: str, **kw: Any) -> tuple[list[Any], Endpoint]:
        """Several calls in one JSON-RPC batch (one HTTP round trip, one endpoint), retried whole."""

        def fn(p: HTTPProvider, ep: Endpoint) -> list[Any]:
            got = p.make_batch_request(calls)
            if isinstance(got, dict):  # the whole batch refused with one error object
                raise _rpc_error(got.get("error", got), ep, what)
            if not isinstance(got, list) or len(got) != len(calls):
                raise _Retry("malformed", f"batch answer of the wrong shape from {ep.name}")
            return [_result(r, ep, what) for r in got]

        return self.send(fn, what, **kw)

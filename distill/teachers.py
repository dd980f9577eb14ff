"""Teacher backends behind one interface, chosen by ``--teacher``.

Each teacher has ``name``, ``model``, ``settings`` (what changes its answers: part of the
cache key), ``check()`` (fails with a clear error before any work: model loadable,
endpoints reachable, API key present) and ``generate(requests)``, which yields
``(request, Generated)`` pairs as answers arrive, in any order.

- ``rules``: the deterministic offline analyst of :mod:`distill.rules`.
- ``mlx``: a local model through mlx-lm's batch generation (``batch_generate``) with the
  model's chat template; QwQ-32B-4bit by default.
- ``openai``: any OpenAI-compatible chat endpoint(s) (mlx_lm.server, OpenRouter, LM
  Studio, Ollama); requests spread over all base URLs, bounded concurrency per URL,
  retries with exponential backoff on 429 / 5xx / timeouts / refused connections.
"""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from apeagent.errors import UserError
from apeagent.redact import add_secret, add_url_secrets, redact_url, split_credentials
from distill import rules
from distill.prompt import MarketState


class TeacherError(UserError):
    """The teacher cannot go on (endpoint down, key rejected). Answers so far are kept."""


@dataclass
class Request:
    key: str
    messages: list[dict[str, str]]
    state: MarketState
    attempt: int = 0


@dataclass
class Generated:
    text: str
    output_tokens: int
    seconds: float = 0.0  # generation time attributed to this answer


# --- output token counting ---------------------------------------------------------------

_APPROX = re.compile(r"\w+|[^\w\s]")


def token_counter(tokenizer_dir: str = "") -> tuple[Callable[[str], int], str]:
    """``(count, name)``: exact with a model dir's ``tokenizer.json``, else an approximation
    (words and punctuation marks, close to a BPE count for English and numbers)."""
    if tokenizer_dir:
        path = Path(tokenizer_dir) / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"distill.tokenizer: {path} not found")
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path))
        return (lambda text: len(tok.encode(text, add_special_tokens=False).ids)), str(tokenizer_dir)
    return (lambda text: len(_APPROX.findall(text))), "approx (words + punctuation)"


# --- rules -------------------------------------------------------------------------------


class RulesTeacher:
    name = "rules"

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.style = cfg["style"]
        self.model = "rules-v1"
        self.settings = {k: cfg[k] for k in rules.RULE_KEYS}
        self.count, self.counter_name = token_counter(cfg["tokenizer"])

    def check(self) -> None:
        pass

    def generate(self, requests: Iterable[Request]) -> Iterator[tuple[Request, Generated]]:
        for r in requests:
            t0 = time.perf_counter()
            text = rules.answer(r.state, self.cfg, self.style)
            yield r, Generated(text, self.count(text), time.perf_counter() - t0)

    def close(self) -> None:
        pass


# --- mlx ---------------------------------------------------------------------------------


class MlxTeacher:
    """A local model through mlx-lm: the same code path for a tiny test model and QwQ-32B."""

    name = "mlx"

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.model = cfg["model"]
        self.settings = {k: cfg[k] for k in ("temperature", "top_p", "max_tokens", "seed")}
        self.counter_name = "model tokenizer"
        self._model = self._tokenizer = None
        self.stats: list[dict] = []

    def check(self) -> None:
        """Load the model now, so a wrong name fails before any work."""
        from mlx_lm import load

        try:
            self._model, self._tokenizer = load(self.model)
        except Exception as e:
            raise UserError(f"cannot load teacher model {self.model!r}: {e}") from None
        if getattr(self._tokenizer, "chat_template", None) is None:
            raise UserError(f"teacher model {self.model!r} has no chat template")

    def _encode(self, messages: list[dict]) -> tuple[list[int], str]:
        """Prompt token ids and the text the template already opened (QwQ: ``<think>``)."""
        tok = self._tokenizer
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok.encode(text, add_special_tokens=False)
        opened = "<think>\n" if text.rstrip().endswith("<think>") else ""
        return list(ids), opened

    def generate(self, requests: Iterable[Request]) -> Iterator[tuple[Request, Generated]]:
        import mlx.core as mx
        from mlx_lm.generate import batch_generate
        from mlx_lm.sample_utils import make_sampler

        if self._model is None:
            self.check()
        cfg = self.cfg
        bs = max(1, cfg["batch_size"])
        requests = list(requests)
        for i in range(0, len(requests), bs):
            chunk = requests[i : i + bs]
            encoded = [self._encode(r.messages) for r in chunk]
            # A re-asked answer must be able to differ: fold the attempt into the seed, and
            # sample (not greedy) on retries even at temperature 0.
            attempt = max(r.attempt for r in chunk)
            mx.random.seed(cfg["seed"] * 1_000_003 + i * 1009 + attempt)
            temp = cfg["temperature"] if cfg["temperature"] > 0 or attempt == 0 else 0.7
            sampler = make_sampler(temp=temp, top_p=cfg["top_p"])
            t0 = time.perf_counter()
            resp = batch_generate(
                self._model,
                self._tokenizer,
                [ids for ids, _ in encoded],
                max_tokens=cfg["max_tokens"],
                sampler=sampler,
                completion_batch_size=bs,
                prefill_batch_size=bs,
                return_token_ids=True,
            )
            dt = time.perf_counter() - t0
            s = resp.stats
            self.stats.append(
                {
                    "batch": len(chunk),
                    "generation_tokens": s.generation_tokens,
                    "generation_tps": s.generation_tps,
                    "prompt_tps": s.prompt_tps,
                    "seconds": dt,
                }
            )
            for r, (_, opened), text, ids in zip(chunk, encoded, resp.texts, resp.token_ids, strict=True):
                yield r, Generated(opened + text, len(ids), dt / len(chunk))

    def close(self) -> None:
        self._model = self._tokenizer = None


# --- openai-compatible -------------------------------------------------------------------

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class _Fatal(TeacherError):
    """A failure retrying cannot fix (key rejected, bad request): stop the run."""


class _Retryable(Exception):
    def __init__(self, msg: str, retry_after: float | None = None):
        super().__init__(msg)
        self.retry_after = retry_after


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_local(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private


class OpenAITeacher:
    """Chat completions over HTTP. The API key is read from ``api_key_env`` only; it is sent
    in the Authorization header and never stored, logged or put in an error message.

    The one OpenAI-compatible client of the project: the agent's endpoint policy and the
    canary eval of an endpoint use it too, with ``what`` (``"teacher"``, ``"agent"``, ...) and
    ``section`` (the config section whose keys the messages name) for their error messages.
    ``cfg`` keys: model, base_urls, temperature, top_p, max_tokens, seed, tokenizer,
    api_key_env, allow_insecure_http, concurrency, request_timeout, http_retries, backoff."""

    name = "openai"

    def __init__(self, cfg: dict, what: str = "teacher", section: str = "distill"):
        self.cfg = cfg
        self.what, self.section = what, section
        self.model = cfg["model"]
        self.urls = [u.rstrip("/") for u in cfg["base_urls"]]
        self.settings = {k: cfg[k] for k in ("temperature", "top_p", "max_tokens", "seed")}
        self.count, self.counter_name = token_counter(cfg["tokenizer"])
        self._key: str | None = None
        self.requests_per_url = dict.fromkeys(self.urls, 0)

    def check(self) -> None:
        if not self.urls:
            raise UserError(f"{self.section}: no endpoint URL given")
        for u in self.urls:
            add_url_secrets(u)  # a key in the URL is masked wherever a message quotes it
            try:
                parts = urllib.parse.urlsplit(u)
                parts.port  # noqa: B018 (a malformed port raises here, not in the first request)
            except ValueError as e:
                raise UserError(f"{self.section}: {self.what} endpoint {redact_url(u)!r}: not a URL ({e})") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise UserError(f"{self.what} endpoint {redact_url(u)!r} is not an http(s) URL")
        if not self.model:
            raise UserError(f"{self.what} endpoint: no model name given (--model NAME)")
        env = self.cfg["api_key_env"]
        self._key = os.environ.get(env) if env else None
        add_secret(self._key)  # masked in every message that could quote it
        remote = [u for u in self.urls if not _is_local(u)]
        if remote and not self._key:
            raise UserError(
                f"openai {self.what}: environment variable {env or f'({self.section}.api_key_env unset)'} "
                f"is not set; it must hold the API key for {redact_url(remote[0])}"
            )
        plain = [u for u in self.urls if urllib.parse.urlparse(u).scheme == "http" and not _is_loopback(u)]
        if self._key and plain and not self.cfg["allow_insecure_http"]:
            raise UserError(
                f"openai {self.what}: refusing to send the API key over plain http to {redact_url(plain[0])}; "
                f"use https, a loopback URL, or --allow-insecure-http ({self.section}.allow_insecure_http)"
            )
        for u in self.urls:
            self._probe(u)

    def _request_for(self, url: str, route: str, data: bytes | None = None) -> urllib.request.Request:
        """A request to ``url`` + ``route``: urllib reads no ``user:pw@`` (it would take it for
        the host), so the userinfo becomes a Basic header (the API key's Bearer one wins) and
        the endpoint's query string (``?apikey=``) goes after the route."""
        base, query, headers = split_credentials(url)
        h = {"Content-Type": "application/json", **headers}
        if self._key:
            h["Authorization"] = f"Bearer {self._key}"
        full = f"{base}{route}" + (f"?{query}" if query else "")
        return urllib.request.Request(full, data=data, headers=h)

    def _probe(self, url: str) -> None:
        req = self._request_for(url, "/models")
        try:
            with urllib.request.urlopen(req, timeout=min(10.0, self.cfg["request_timeout"])):
                pass
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise UserError(f"{redact_url(url)}: the API key was rejected (HTTP {e.code})") from None
            # Some servers have no /models; a HTTP answer still proves the endpoint is up.
        except (urllib.error.URLError, OSError, HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise UserError(f"cannot reach {self.what} endpoint {redact_url(url)}: {reason}") from None

    def _post(self, url: str, r: Request) -> Generated:
        cfg = self.cfg
        body = {
            "model": self.model,
            "messages": r.messages,
            "temperature": cfg["temperature"] if cfg["temperature"] > 0 or r.attempt == 0 else 0.7,
            "top_p": cfg["top_p"],
            "max_tokens": cfg["max_tokens"],
            "seed": cfg["seed"] + r.attempt,
        }
        req = self._request_for(url, "/chat/completions", json.dumps(body).encode())
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=cfg["request_timeout"]) as resp:
                data = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            if e.code in RETRY_STATUS:
                after = e.headers.get("Retry-After") if e.headers else None
                try:
                    after = float(after) if after is not None else None
                except ValueError:
                    after = None
                raise _Retryable(f"HTTP {e.code}", after) from None
            if e.code in (401, 403):
                raise _Fatal(f"{redact_url(url)}: the API key was rejected (HTTP {e.code})") from None
            raise _Fatal(f"{redact_url(url)}: HTTP {e.code}: {e.read()[:300]!r}") from None
        except TimeoutError as e:
            raise _Retryable(f"timeout ({e})") from None
        except (urllib.error.URLError, OSError, HTTPException, json.JSONDecodeError) as e:
            raise _Retryable(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
        try:
            msg = data["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            raise _Retryable(f"malformed response: {str(data)[:200]}") from None
        text = msg.get("content") or ""
        reasoning = msg.get("reasoning_content") or msg.get("reasoning")
        if reasoning and "</think>" not in text:
            text = f"<think>\n{reasoning}\n</think>\n{text}"  # servers that split the think block
        tokens = (data.get("usage") or {}).get("completion_tokens") or self.count(text)
        return Generated(text, int(tokens), time.perf_counter() - t0)

    def _request(self, url: str, r: Request, stop: threading.Event) -> Generated:
        cfg = self.cfg
        for k in range(cfg["http_retries"] + 1):
            try:
                return self._post(url, r)
            except _Retryable as e:
                if k == cfg["http_retries"] or stop.is_set():
                    raise TeacherError(f"{redact_url(url)}: {e} (after {k + 1} tries)") from None
                wait = e.retry_after if e.retry_after is not None else cfg["backoff"] * 2**k
                stop.wait(wait * (1.0 + 0.25 * random.random()))
        raise AssertionError("unreachable")

    def generate(self, requests: Iterable[Request]) -> Iterator[tuple[Request, Generated]]:
        """A shared queue drained by ``concurrency`` workers per URL: faster servers take
        more work; a URL that keeps failing hands its request back to the others."""
        if self._key is None and self.cfg["api_key_env"]:
            self._key = os.environ.get(self.cfg["api_key_env"])
        pending = list(requests)
        todo: queue.Queue = queue.Queue()
        for r in pending:
            todo.put(r)
        done: queue.Queue = queue.Queue()
        stop = threading.Event()
        dead: dict[str, str] = {}
        fatal: list[BaseException] = []
        lock = threading.Lock()
        state = {"alive": 0, "left": len(pending)}

        def worker(url: str) -> None:
            try:
                while not stop.is_set() and url not in dead:
                    try:
                        r = todo.get(timeout=0.05)
                    except queue.Empty:
                        with lock:
                            if state["left"] == 0:
                                return
                        continue  # others still in flight: one may come back
                    try:
                        g = self._request(url, r, stop)
                    except _Fatal as e:
                        fatal.append(e)
                        stop.set()
                        return
                    except TeacherError as e:
                        todo.put(r)
                        dead[url] = str(e)
                        return
                    with lock:
                        self.requests_per_url[url] += 1
                        state["left"] -= 1
                    done.put((r, g))
            finally:
                with lock:
                    state["alive"] -= 1
                done.put(None)  # wake the consumer

        threads = [
            threading.Thread(target=worker, args=(url,), daemon=True)
            for url in self.urls
            for _ in range(max(1, self.cfg["concurrency"]))
        ]
        state["alive"] = len(threads)
        for t in threads:
            t.start()
        received = 0
        try:
            while received < len(pending):
                item = done.get()
                if item is not None:
                    received += 1
                    yield item
                    continue
                if fatal:
                    raise fatal[0]
                with lock:
                    if state["alive"] == 0 and done.empty():
                        errors = "; ".join(dead.values()) or "workers stopped"
                        raise TeacherError(f"every {self.what} endpoint failed: {errors}")
        finally:
            stop.set()

    def close(self) -> None:
        self._key = None


ENDPOINT_KEYS = ("api_key_env", "allow_insecure_http", "concurrency", "request_timeout",
                 "http_retries", "backoff")


def endpoint_client(url: str, model: str, max_tokens: int, cfg: dict, *, what: str, section: str):
    """This module's OpenAI-compatible client (retries with backoff and
    Retry-After, bounded concurrency, key from ``cfg["api_key_env"]`` only, no key over
    plain http to a remote host), set to decode greedily (temperature 0), checked now: an
    unreachable endpoint, a rejected key or a missing model name fails before any work."""
    client = OpenAITeacher(
        {
            **{k: cfg[k] for k in ENDPOINT_KEYS},
            "model": model,
            "base_urls": [url],
            "temperature": 0.0,
            "top_p": 1.0,
            "seed": 0,
            "max_tokens": max_tokens,
            "tokenizer": cfg.get("tokenizer", ""),
        },
        what=what,
        section=section,
    )
    client.check()
    return client


def make_teacher(cfg: dict):
    teachers = {"rules": RulesTeacher, "mlx": MlxTeacher, "openai": OpenAITeacher}
    if cfg["teacher"] not in teachers:
        raise UserError(f"distill.teacher: unknown teacher {cfg['teacher']!r} (known: rules, mlx, openai)")
    return teachers[cfg["teacher"]](cfg)

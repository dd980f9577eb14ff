"""Shared helpers for the distill tests: small windows files written like ape-gan writes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LN_TICK = np.log(1.0001)


def window_rows(n_windows: int, steps: int = 12, seed: int = 0, bar_vol: float = 0.002, source: str = "synthetic") -> dict:
    """Columns of a windows.parquet: random-walk closes with consistent returns and ticks."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {k: [] for k in (
        "window_id", "step", "source", "close", "log_return", "volume_eth", "volume_usdc",
        "swap_count", "realized_vol", "tick")}
    for w in range(n_windows):
        r = rng.normal(rng.normal(0, bar_vol / 3), bar_vol, steps)
        close = 2500.0 * np.exp(rng.normal(0, 0.05)) * np.exp(np.cumsum(r))
        swaps = rng.poisson(12, steps)
        vol_eth = np.abs(rng.normal(5, 2, steps)) * (swaps > 0)
        cols["window_id"] += [w] * steps
        cols["step"] += list(range(steps))
        cols["source"] += [source] * steps
        cols["close"] += list(close)
        cols["log_return"] += list(r)
        cols["volume_eth"] += list(vol_eth)
        cols["volume_usdc"] += list(vol_eth * close)
        cols["swap_count"] += list(swaps)
        cols["realized_vol"] += list(np.abs(r) * 1.2)
        cols["tick"] += list(np.round(np.log(close * 1e-12) / LN_TICK).astype(np.int64))
    return cols


def write_windows(path: Path, n_windows: int, **kw) -> Path:
    cols = window_rows(n_windows, **kw)
    table = pa.table({
        "window_id": pa.array(cols["window_id"], pa.int64()),
        "step": pa.array(cols["step"], pa.int64()),
        "source": pa.array(cols["source"], pa.string()),
        **{k: pa.array(cols[k], pa.float64()) for k in ("close", "log_return", "volume_eth", "volume_usdc", "realized_vol")},
        "swap_count": pa.array(cols["swap_count"], pa.int64()),
        "tick": pa.array(cols["tick"], pa.int64()),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


# --- a tiny QwQ-like teacher ---------------------------------------------------------------

# Like QwQ's template: the generation prompt opens a think block the model must close.
THINK_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"
)


def rules_conversations(n: int, seed: int = 0, style: str = "cod", think: bool = True) -> list[list[dict]]:
    """Chat examples (system, user, assistant) answered by the rules teacher."""
    from distill import rules
    from distill.config import DEFAULTS
    from distill.prompt import format_prompt, state_from_window, system_prompt

    cfg = dict(DEFAULTS, seed=seed)
    cols = window_rows(n, seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    steps = 12
    for w in range(n):
        sl = slice(w * steps, (w + 1) * steps)
        window = {k: np.asarray(cols[k][sl], dtype=np.float64) for k in (
            "close", "log_return", "volume_eth", "volume_usdc", "swap_count", "realized_vol", "tick")}
        price = window["close"][-1]
        value = float(np.exp(rng.uniform(np.log(500), np.log(20000))))
        share = rng.uniform()
        state = state_from_window(window, round(value * share / price, 4), round(value * (1 - share), 2))
        answer = rules.answer(state, cfg, style)
        if think:
            answer = "<think>\nshort look at the numbers\n</think>\n" + answer
        out.append([
            {"role": "system", "content": system_prompt(style)},
            {"role": "user", "content": format_prompt(state)},
            {"role": "assistant", "content": answer},
        ])
    return out


def build_tiny_teacher(out_dir: Path, *, hidden_size: int = 64, num_layers: int = 2, pretrain_steps: int = 60,
                       vocab_size: int = 512, n_examples: int = 64, seed: int = 0, think: bool = True,
                       q_bits: int | None = 4, cot_examples: int = 8, pretrain_lr: float = 3e-3) -> Path:
    """A tiny qwen2 teacher, briefly trained on rules answers, quantised with mlx-lm's convert.

    Returns the quantised model dir (or the float dir with ``q_bits=None``). With ``think``,
    its chat template opens ``<think>`` like QwQ's and it was trained to close it.
    """
    import json

    from finetune_mlx.tiny import build_tiny

    convs = rules_conversations(n_examples, seed=seed, think=think) + rules_conversations(
        cot_examples, seed=seed + 1, style="cot", think=think)
    corpus = [m["content"] for c in convs for m in c]
    float_dir = out_dir / "float"
    build_tiny(float_dir, corpus, hidden_size=hidden_size, num_layers=num_layers, num_heads=4,
               num_kv_heads=2, vocab_size=vocab_size, max_position_embeddings=1024,
               pretrain_texts=convs, pretrain_steps=pretrain_steps, pretrain_batch_size=8,
               pretrain_lr=pretrain_lr, seed=seed)
    final = float_dir
    if q_bits:
        from mlx_lm.convert import convert

        final = out_dir / f"q{q_bits}"
        convert(str(float_dir), str(final), quantize=True, q_bits=q_bits, q_group_size=32)
    if think:
        cfg_path = final / "tokenizer_config.json"
        tc = json.loads(cfg_path.read_text())
        tc["chat_template"] = THINK_TEMPLATE
        cfg_path.write_text(json.dumps(tc, indent=2))
        if (final / "chat_template.jinja").exists():  # transformers 5 reads this file first
            (final / "chat_template.jinja").write_text(THINK_TEMPLATE)
    return final


# --- an OpenAI-compatible test server ------------------------------------------------------


class FakeOpenAI:
    """A real HTTP server on 127.0.0.1 speaking the chat-completions protocol.

    ``answer(body) -> str`` makes the reply; ``fail`` is a list of HTTP statuses returned to
    the first requests; ``key`` (if set) must come as ``Authorization: Bearer <key>``.
    """

    def __init__(self, answer=None, fail=(), key=None, delay=0.0):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.answer = answer or (lambda body: "share\n#### APE NEUTRAL")
        self.fail = list(fail)
        self.key = key
        self.delay = delay
        self.requests: list[dict] = []
        self.auth_seen: list[str | None] = []
        self.paths: list[str] = []  # each request's path and query
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, payload, headers=()):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self):
                auth = self.headers.get("Authorization")
                with lock:
                    server.auth_seen.append(auth)
                    server.paths.append(self.path)
                if server.key is not None and auth != f"Bearer {server.key}":
                    self._send(401, {"error": "bad key"})
                    return False
                return True

            def do_GET(self):
                if self._authorized():
                    self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})

            def do_POST(self):
                import time as _time

                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._authorized():
                    return
                with lock:
                    code = server.fail.pop(0) if server.fail else None
                    server.requests.append(body)
                if code is not None:
                    self._send(code, {"error": "try later"}, [("Retry-After", "0")] if code == 429 else ())
                    return
                _time.sleep(server.delay)
                text = server.answer(body)
                self._send(200, {
                    "id": "x", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split())},
                })

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def share_answer(body: dict) -> str:
    """A QwQ-like answer that uses a plain word (mapped to a canary by cleaning)."""
    import re as _re

    prompt = body["messages"][-1]["content"]
    share = int(_re.search(r"ETH share (\d+)%", prompt).group(1))
    word = "BUY 0.1 ETH" if share < 50 else "sell 0.1 ETH"
    return f"<think>\nhmm\n</think>\nETH share {share}%\n#### {word}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

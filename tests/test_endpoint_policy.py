"""The student behind a real OpenAI-compatible server: ``python -m llama_cpp.server`` on
127.0.0.1 serving the f16 GGUF of the tiny fused student (one server for this module). The
agent's backtest through it decides exactly as the in-process MLX policy on the same steps; the
canary eval through it scores as the fused MLX model; the server renders the prompt the MLX
tokenizer's chat template does; bad input is one line, exit 2.

The tiny student answers APE NEUTRAL to nearly everything, so equal decisions alone would not
show that each step's prompt reached the server. A recording proxy between the policy and the
server keeps every chat it forwards: each step's prompt must be among them. And a second tiny
model that learned three states' answers by heart (APE IN, APE OUT, APE NEUTRAL: the MLX
decisions differ, asserted) must get the same three decisions through its own server.
"""

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from export_fixtures import student_run

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed: pip install -e '.[gguf]' (make test does)"
)
pytest.importorskip(
    "uvicorn", reason="llama_cpp.server needs its server extra: pip install 'llama-cpp-python[server]'"
)

NAME = "tiny-student"
STEPS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run():
    return student_run()


@pytest.fixture(scope="module")
def gguf_path(run, tmp_path_factory):
    from finetune_mlx.export_gguf import export_gguf

    return export_gguf(run / "student" / "fused", tmp_path_factory.mktemp("gguf") / "model.gguf")


def _serve(gguf_path, name):
    """``python -m llama_cpp.server`` on a free port of 127.0.0.1; yields its ``/v1`` URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path), "--model_alias", name,
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1",
         "--n_threads_batch", "1", "--seed", "0", "--verbose", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                assert name in r.read().decode()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"llama_cpp.server did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def server(gguf_path):
    yield from _serve(gguf_path, NAME)


class Recorder:
    """A forwarding HTTP proxy on 127.0.0.1 in front of ``upstream`` (an OpenAI-compatible
    ``/v1`` URL): every request goes through unchanged; the chats of ``/chat/completions``
    requests are kept in ``chats`` (in arrival order)."""

    def __init__(self, upstream: str):
        self.upstream, self.chats = upstream.rstrip("/"), []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self, body=None):
                if body is not None and self.path.endswith("/chat/completions"):
                    rec.chats.append(json.loads(body)["messages"])
                path = self.path[len("/v1"):] if self.path.startswith("/v1") else self.path
                req = urllib.request.Request(rec.upstream + path, data=body, method=self.command,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=120) as r:
                        code, out = r.status, r.read()
                except urllib.error.HTTPError as e:
                    code, out = e.code, e.read()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_GET(self):
                self._forward()

            def do_POST(self):
                self._forward(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def prompts(self) -> list[str]:
        """The last user message (the market-state prompt) of every chat forwarded."""
        return [[m for m in chat if m["role"] == "user"][-1]["content"] for chat in self.chats]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def swaps(tmp_path_factory):
    from chain.csvio import write_swaps_csv
    from chain.simulate import simulate

    csv = tmp_path_factory.mktemp("swaps") / "sim.csv"
    write_swaps_csv(csv, simulate(800, seed=5))
    return csv


def _backtest(run, swaps, out, *extra):
    from agent_fixtures import agent_app
    from typer.testing import CliRunner

    # an ETH-heavy start (the rules teacher would sell back toward 50/50; measured: the tiny
    # student still answers NEUTRAL on these 8 steps, so no trade invalidates a prefetch)
    config = out.parent / f"{out.name}.yaml"
    config.write_text(f"extends: {run / 'config.yaml'}\nagent:\n  initial_eth_share: 0.9\n")
    res = CliRunner().invoke(agent_app(), [
        "backtest", "--config", str(config), "--run-dir", str(run), "--swaps", str(swaps), "--out", str(out),
        "--holdout-frac", "0.6", "--interval-minutes", "15", "--max-steps", str(STEPS),
        "--policies", "student,hold", *extra,
    ])
    assert res.exit_code == 0, (res.output, res.exception)
    lines = [json.loads(x) for x in (out / "decisions.jsonl").read_text().splitlines()]
    return [x for x in lines if x["policy"] == "student"], json.loads((out / "backtest.json").read_text())


def test_backtest_through_the_server_decides_as_mlx(run, server, swaps, tmp_path):
    from distill.prompt import MarketState, format_prompt

    mlx, _ = _backtest(run, swaps, tmp_path / "mlx", "--model", str(run / "student" / "fused"))
    proxy = Recorder(server)
    try:
        http, report = _backtest(run, swaps, tmp_path / "http", "--endpoint", proxy.url, "--model", NAME)
    finally:
        proxy.stop()
    assert len(mlx) == len(http) == STEPS
    # every step's own prompt reached the server (the steps' states all differ)
    sent = proxy.prompts()
    steps = [format_prompt(MarketState.from_dict(x["state"])) for x in http]
    assert len(set(steps)) == STEPS and all(p in sent for p in steps)
    # the comparison means something only if the student answers in canary words
    assert all(x["valid"] for x in mlx), [x["raw"] for x in mlx]
    # Same steps, same decisions, so the same portfolios and the same prompts all along (answer
    # texts may differ on near-tied digits between f16 and MLX's f32 weights).
    assert [(x["decision"], x["state"]) for x in http] == [(x["decision"], x["state"]) for x in mlx]
    assert all(x["valid"] for x in http) and all(x["latency_s"] > 0 for x in http)
    m = report["policies"]["student"]
    # prefetch asks the next steps ahead; a trade makes the guesses stale and asks again
    assert STEPS <= m["endpoint_requests"] <= STEPS + 4 * (m["trades"] + 1)
    print(f"\nendpoint backtest: {STEPS} steps, {m['endpoint_requests']} requests, "
          f"{m['trades']} trades, decisions {m['decisions']}")


def _state(price, change, eth, usdc):
    from distill.prompt import LN_TICK, MarketState

    return MarketState(price=price, change_pct=change, change_ticks=int(round(math.log1p(change / 100) / LN_TICK)),
                       volume_eth=120.0, volume_usdc=120.0 * price, volatility_pct=0.4, swap_count=300,
                       eth_balance=eth, usdc_balance=usdc, window_minutes=60)


LEARNED = [  # (state, answer): three states whose decisions differ
    (_state(3120.5, 1.1, 0.4, 6000.0), "trend up 1.1%\nETH share 17%\nbelow target\n#### APE IN 0.25 ETH"),
    (_state(2890.25, -1.3, 2.6, 800.0), "trend down 1.3%\nETH share 90%\nabove target\n#### APE OUT 0.25 ETH"),
    (_state(3301.75, 0.05, 1.5, 4950.0), "trend flat 0.1%\nETH share 50%\non target\n#### APE NEUTRAL"),
]


@pytest.fixture(scope="module")
def memorizer(tmp_path_factory):
    """A tiny model that learned the three LEARNED chats by heart (~20 s of CPU), its GGUF
    and a server for it: ``(model dir, /v1 URL)``."""
    from distill.prompt import format_prompt
    from finetune_mlx.export_gguf import export_gguf
    from finetune_mlx.tiny import build_tiny

    chats = [[{"role": "user", "content": format_prompt(s)}, {"role": "assistant", "content": a}]
             for s, a in LEARNED]
    corpus = [format_prompt(s) for s, _ in LEARNED] + [a for _, a in LEARNED]
    out = tmp_path_factory.mktemp("memorizer")
    model = build_tiny(out / "model", corpus * 4, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       intermediate_size=128, vocab_size=400, max_position_embeddings=512,
                       pretrain_texts=chats * 8, pretrain_steps=120, pretrain_batch_size=3,
                       pretrain_lr=3e-3, seed=0)
    gguf = export_gguf(model, out / "model.gguf")
    for url in _serve(gguf, "memorizer"):
        yield model, url


def test_endpoint_decides_each_state_as_mlx(memorizer):
    """States whose MLX decisions differ, asked ahead at once (prefetch) and then decided:
    the same decisions through the server, and each request carried its own state's prompt."""
    from agent.config import DEFAULTS
    from agent.policies import EndpointPolicy, ModelPolicy
    from distill.prompt import format_prompt

    model, url = memorizer
    cfg = dict(DEFAULTS, max_tokens=48)
    states = [s for s, _ in LEARNED]
    mlx = [ModelPolicy(str(model), system=False, max_tokens=48).decide(s).decision for s in states]
    assert len(set(mlx)) >= 2, mlx  # the comparison below can tell the states apart
    proxy = Recorder(url)
    try:
        pol = EndpointPolicy(proxy.url, "memorizer", cfg, system=False)
        pol.prefetch([(s, None) for s in states])
        http = [pol.decide(s) for s in states]
        pol.close()
    finally:
        proxy.stop()
    assert [d.decision for d in http] == mlx and pol.requests == len(states)
    assert sorted(proxy.prompts()) == sorted(format_prompt(s) for s in states)


def test_server_renders_the_mlx_chat_template(run, gguf_path, server):
    """The tiny preset trains without a system prompt: the chat is the user prompt alone."""
    from llama_cpp import Llama, llama_chat_format

    from distill.dataset import read_split, split_prompt
    from finetune_mlx.model_dir import load

    msgs = list(split_prompt(read_split(run / "dataset" / "test.jsonl")[0])[0])
    assert [m["role"] for m in msgs] == ["user"]
    _, tok = load(run / "student" / "fused")
    want = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    llm = Llama(str(gguf_path), vocab_only=True, verbose=False)
    # what the server picks: the GGUF's own template (or a built-in it recognises as equal)
    assert llm.chat_format == "chat_template.default"
    template = llm.metadata["tokenizer.chat_template"]
    rendered = llama_chat_format.Jinja2ChatFormatter(
        template, eos_token="<|im_end|>", bos_token=""
    )(messages=msgs).prompt
    assert rendered == want
    # and the server's own count of the prompt it built equals the MLX token ids' count
    body = json.dumps({"model": NAME, "messages": msgs, "max_tokens": 1, "temperature": 0}).encode()
    req = urllib.request.Request(f"{server}/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        usage = json.loads(r.read())["usage"]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
    assert usage["prompt_tokens"] == len(ids)


def test_canary_eval_through_the_server(run, server, tmp_path):
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, "-m", "finetune_mlx", "eval", "--run-dir", str(run), "--endpoint", server,
         "--model", NAME, "--fused", str(run / "student" / "fused"), "--limit", "12",
         "--max-tokens", "48", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    ep, fused = report["variants"]["endpoint"], report["variants"]["fused"]
    assert ep["n"] == fused["n"] == 12 and ep["model"] == NAME
    assert ep["canary_compliance"] == fused["canary_compliance"] == 1.0
    assert ep["confusion"] == fused["confusion"]  # decision by decision, summed per class
    assert ep["decision_agreement"] == fused["decision_agreement"]


@pytest.mark.parametrize("cmd", ["backtest", "eval"])
def test_bad_endpoint_input_is_one_line_exit_2(run, swaps, tmp_path, cmd):
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    if cmd == "backtest":
        base = [sys.executable, "-m", "agent", "backtest", "--run-dir", str(run), "--swaps", str(swaps),
                "--out", str(tmp_path / "bt"), "--policies", "student"]
    else:
        base = [sys.executable, "-m", "finetune_mlx", "eval", "--run-dir", str(run),
                "--out", str(tmp_path / "bt" / "eval.json")]
    cases = [
        ([*base, "--endpoint", dead, "--model", NAME], "cannot reach"),
        ([*base, "--endpoint", dead], "needs --model NAME"),
        ([*base, "--endpoint", "ftp://127.0.0.1/v1", "--model", NAME], "not an http(s) URL"),
        ([*base, "--endpoint", "https://api.example.invalid/v1?key=sk-secret123456", "--model", NAME],
         "environment variable OPENAI_API_KEY is not set"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    for args, msg in cases:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
        # (the eval prints which BLAS it loaded first: an info line, not part of the error)
        lines = [x for x in proc.stderr.strip().splitlines() if not x.startswith("[apeagent] BLAS")]
        assert proc.returncode == 2 and len(lines) == 1, (args, proc.stderr)
        assert lines[0].startswith("error: ") and msg in lines[0], lines
        assert "sk-secret" not in proc.stderr
    assert not (tmp_path / "bt").exists()

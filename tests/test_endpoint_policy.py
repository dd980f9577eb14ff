"""The student behind a real OpenAI-compatible server: ``python -m llama_cpp.server`` on
127.0.0.1 serving the f16 GGUF of the tiny fused student (one server for this module). The
agent's backtest through it decides exactly as the in-process MLX policy on the same steps; the
canary eval through it scores as the fused MLX model; the server renders the prompt the MLX
tokenizer's chat template does; bad input is one line, exit 2."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

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


@pytest.fixture(scope="module")
def server(gguf_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path), "--model_alias", NAME,
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1",
         "--n_threads_batch", "1", "--seed", "0", "--verbose", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                assert NAME in r.read().decode()
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
    mlx, _ = _backtest(run, swaps, tmp_path / "mlx", "--model", str(run / "student" / "fused"))
    http, report = _backtest(run, swaps, tmp_path / "http", "--endpoint", server, "--model", NAME)
    assert len(mlx) == len(http) == STEPS
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

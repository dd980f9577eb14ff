"""Real mlx-lm teachers: a tiny 4-bit qwen2 model through the mlx backend (batch generation,
chat template, QwQ-style <think>) and through a real ``mlx_lm.server`` (openai backend)."""

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from apeagent.errors import UserError
from distill.cache import read_records
from distill.config import DEFAULTS
from distill.dataset import answer_problem
from distill.parse import parse_answer
from distill.teach import teach

sys.path.insert(0, str(Path(__file__).parent))
from distill_fixtures import build_tiny_teacher, free_port, write_windows  # noqa: E402


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    # 150 steps at 5e-3 on short (Chain of Draft only) answers: enough for the 4-bit model to
    # close its think block and answer in 40 tokens (30 steps: 0 of 8 accepted, all unfinished)
    return build_tiny_teacher(
        tmp_path_factory.mktemp("teacher"), pretrain_steps=150, pretrain_lr=5e-3, cot_examples=0
    )


@pytest.fixture
def windows(tmp_path):
    return write_windows(tmp_path / "windows.parquet", 12, seed=4)


def mlx_cfg(model, **kw):
    return dict(DEFAULTS, teacher="mlx", model=str(model), batch_size=4, max_tokens=40,
                temperature=0.0, retries=1, **kw)


def test_tiny_teacher_is_a_4bit_qwen2_with_think_template(tiny_teacher):
    config = json.loads((tiny_teacher / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["quantization"]["bits"] == 4


def test_mlx_backend_batched(tmp_path, tiny_teacher, windows):
    out = tmp_path / "t"
    rep = teach(mlx_cfg(tiny_teacher, max_windows=8), [windows], out)
    assert rep["items"] == 8 and rep["model"] == str(tiny_teacher)
    assert rep["accepted"] + rep["rejected_after_retries"] == 8
    # the teacher was trained until it closes its think block and answers (measured: 5 and 8 of
    # 8 accepted in two builds; BLAS threading makes the tiny build not bit-reproducible)
    assert rep["accepted"] > 0, rep["rejections"]
    assert sum(rep["rejections"].values()) == rep["attempts"] - rep["accepted"]
    recs = read_records(out / "answers.jsonl")
    assert len(recs) == rep["attempts"]
    for r in recs:
        # The template opened <think>: the backend puts it back so parsing sees the block.
        assert r["raw"].startswith("<think>\n")
        assert 0 < r["output_tokens"] <= 40
        assert (r["completion"] is not None) == r["ok"]
    for r in (r for r in recs if r["ok"]):
        # the written completion: the drafts after </think>, then exactly one canary decision
        after = r["raw"].split("</think>", 1)[1]
        assert "<think>" not in r["completion"]
        # its first draft is the first draft line after </think>, cut to max_draft_words words
        # (joined by one space: a draft "in</think  ETH look share ..." became "in</think ETH look")
        first = r["completion"].splitlines()[0].split()
        assert next(line for line in after.splitlines() if line.strip()).split()[: len(first)] == first
        assert answer_problem(r["completion"]) is None
        assert parse_answer(r["completion"]).decision == r["decision"] == parse_answer(after, plain=True).decision
    assert rep["output_tokens"]["total"] == sum(r["output_tokens"] for r in recs)
    # Resume: nothing left to ask.
    assert teach(mlx_cfg(tiny_teacher, max_windows=8), [windows], out)["generated_this_run"] == 0


def test_mlx_backend_bad_model(tmp_path, windows):
    with pytest.raises(UserError, match="cannot load teacher model"):
        teach(mlx_cfg(tmp_path / "no-such-model"), [windows], tmp_path / "t")
    assert not (tmp_path / "t").exists()


def _start_server(model: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlx_lm", "server", "--model", str(model), "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("mlx_lm.server exited")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("mlx_lm.server did not start")


def test_openai_backend_against_mlx_lm_server_kill_restart_resume(tmp_path, tiny_teacher, windows):
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    cfg = dict(DEFAULTS, teacher="openai", model=str(tiny_teacher), base_urls=[url], max_tokens=40,
               temperature=0.0, retries=0, concurrency=1, http_retries=1, backoff=0.05,
               request_timeout=60.0, api_key_env="APE_TEST_NO_KEY")
    out = tmp_path / "t"
    server = _start_server(tiny_teacher, port)
    try:

        def kill_at_four(done, total):
            if done == 4:
                server.kill()
                server.wait()

        with pytest.raises(UserError, match="every teacher endpoint failed"):
            teach(cfg, [windows], out, kill_at_four)
    finally:
        server.kill()
        server.wait()
    first = read_records(out / "answers.jsonl")
    assert len(first) == 4

    server = _start_server(tiny_teacher, port)
    try:
        rep = teach(cfg, [windows], out)
    finally:
        server.kill()
        server.wait()
    recs = read_records(out / "answers.jsonl", strict=True)
    assert recs[:4] == first  # nothing lost
    assert len(recs) == 12 == len({r["key"] for r in recs})  # nothing duplicated
    assert rep["cached_at_start"] + rep["generated_this_run"] >= 12 - rep["rejected_after_retries"]
    assert rep["requests_per_url"] == {url: 8}
    for r in recs:
        assert 0 < r["output_tokens"] <= 40  # the server's usage count

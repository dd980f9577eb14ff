"""The openai backend against real HTTP servers on 127.0.0.1 (written for these tests)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apeagent.errors import UserError
from distill.cache import read_records
from distill.config import DEFAULTS
from distill.teach import teach

sys.path.insert(0, str(Path(__file__).parent))
from distill_fixtures import FakeOpenAI, free_port, share_answer, write_windows  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "APE_TEST_TEACHER_KEY"


def cfg(urls, **kw):
    base = dict(DEFAULTS, teacher="openai", model="fake-qwq", base_urls=urls, api_key_env=KEY_ENV,
                http_retries=3, backoff=0.01, request_timeout=10.0, concurrency=2)
    return dict(base, **kw)


@pytest.fixture
def windows(tmp_path):
    return write_windows(tmp_path / "windows.parquet", 20, seed=2)


@pytest.fixture
def servers():
    made = []

    def make(**kw):
        s = FakeOpenAI(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def test_spread_retries_and_key_never_written(tmp_path, windows, servers, monkeypatch):
    secret = "sk-test-5f9c1d-do-not-store"
    monkeypatch.setenv(KEY_ENV, secret)
    a = servers(answer=share_answer, fail=[429, 429], key=secret)
    b = servers(answer=share_answer, fail=[500, 503], key=secret)
    out = tmp_path / "teach"
    rep = teach(cfg([a.url, b.url]), [windows], out)
    assert rep["accepted"] == 20 and rep["attempts"] == 20
    per_url = rep["requests_per_url"]
    assert per_url[a.url] > 0 and per_url[b.url] > 0 and sum(per_url.values()) == 20
    assert len(a.requests) + len(b.requests) == 24  # 20 answers + 4 retried failures
    assert set(a.auth_seen + b.auth_seen) == {f"Bearer {secret}"}
    recs = read_records(out / "answers.jsonl")
    assert {r["decision"] for r in recs} <= {"APE IN", "APE OUT"}
    assert all("BUY" not in r["completion"] and "sell" not in r["completion"] for r in recs)
    assert rep["fixes"]["decision mapped to canary"] == 20
    body = a.requests[-1]
    assert body["model"] == "fake-qwq" and body["max_tokens"] == DEFAULTS["max_tokens"]
    assert body["messages"][0]["role"] == "system" and "#### " in body["messages"][0]["content"]
    for path in out.iterdir():
        assert secret not in path.read_text()


def test_reject_and_retry_is_bounded(tmp_path, windows, servers):
    def answer(body):
        share = share_answer(body)
        if "ETH share 1" in share:  # some prompts never get a usable answer
            return "I cannot decide, 市场不明朗"
        return share if body["seed"] > 0 else "no idea"  # first attempt useless, retry fine

    s = servers(answer=answer)
    rep = teach(cfg([s.url], retries=2), [windows], tmp_path / "t")
    bad = rep["rejected_after_retries"]
    assert rep["accepted"] + bad == 20 and rep["accepted"] > 0
    assert rep["attempts"] == rep["accepted"] * 2 + bad * 3
    # "no idea" names no action; "I cannot decide" is read as undecided.
    assert rep["rejections"] == {"no action": rep["accepted"], "undecided": bad * 3}
    assert len(s.requests) == rep["attempts"]
    # A re-run asks nothing more: rejected prompts used up their attempts.
    rep = teach(cfg([s.url], retries=2), [windows], tmp_path / "t")
    assert rep["generated_this_run"] == 0


def test_missing_key_unreachable_and_rejected_key_fail_before_work(tmp_path, windows, servers, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(UserError, match=KEY_ENV):
        teach(cfg(["https://api.example.invalid/v1"]), [windows], tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with pytest.raises(UserError, match="cannot reach teacher endpoint"):
        teach(cfg([f"http://127.0.0.1:{free_port()}/v1"]), [windows], tmp_path / "b")
    assert not (tmp_path / "b").exists()
    s = servers(key="right")
    monkeypatch.setenv(KEY_ENV, "wrong")
    with pytest.raises(UserError, match="rejected"):
        teach(cfg([s.url]), [windows], tmp_path / "c")
    assert not (tmp_path / "c").exists() and s.requests == []
    # A local server without a key is fine.
    monkeypatch.delenv(KEY_ENV)
    s2 = servers(answer=share_answer)
    assert teach(cfg([s2.url], max_windows=3), [windows], tmp_path / "d")["accepted"] == 3


def test_endpoint_dies_mid_run(tmp_path, windows, servers):
    s = servers(answer=share_answer, fail=[], delay=0.0)
    out = tmp_path / "t"
    seen = []

    def on_answer(done, total):
        seen.append(done)
        if done == 5:
            s.fail.extend([503] * 1000)  # the endpoint goes bad for good

    with pytest.raises(UserError, match="every teacher endpoint failed"):
        from distill.teach import teach as run

        run(cfg([s.url], http_retries=1, concurrency=1), [windows], out, on_answer)
    kept = read_records(out / "answers.jsonl")
    # every answer received before the failure is kept; the one request already in flight
    # when the endpoint went bad (concurrency 1) may still have succeeded
    n = len(kept)
    assert 5 <= n <= 6 and all(r["ok"] for r in kept)
    s.fail.clear()
    rep = teach(cfg([s.url]), [windows], out)
    assert rep["generated_this_run"] == 20 - n and rep["accepted"] == 20
    recs = read_records(out / "answers.jsonl")
    assert recs[:n] == kept and len({r["key"] for r in recs}) == 20 == len(recs)


def test_killed_teach_process_resumes(tmp_path, windows, servers):
    s = servers(answer=share_answer, delay=0.15)
    out = tmp_path / "t"
    yaml_cfg = tmp_path / "c.yaml"
    yaml_cfg.write_text("distill:\n  http_retries: 1\n  backoff: 0.01\n")
    cmd = [sys.executable, "-m", "distill", "teach", "-c", str(yaml_cfg), "-w", str(windows), "-o", str(out),
           "--teacher", "openai", "--base-url", s.url, "--model", "fake", "--concurrency", "2"]
    env = dict(os.environ, **{KEY_ENV: ""})
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    answers = out / "answers.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:
        if answers.exists() and answers.read_bytes().count(b"\n") >= 6:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = read_records(answers)
    assert 6 <= len(before) < 20
    assert not (out / "teacher_report.json").exists()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    recs = read_records(answers, strict=True)
    assert recs[: len(before)] == before
    assert len(recs) == 20 == len({r["key"] for r in recs})
    rep = json.loads((out / "teacher_report.json").read_text())
    assert rep["cached_at_start"] == len(before) and rep["accepted"] == 20

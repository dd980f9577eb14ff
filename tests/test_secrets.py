"""Secrets never written (issue 15): the pipeline's ingest with an RPC URL that carries a key
(path and query) and a user:password, against the project's devnode on 127.0.0.1; and the one
redaction rule itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apeagent.redact import MASK, redact, redact_headers, redact_obj, redact_url

ROOT = Path(__file__).resolve().parents[1]
KEY = "FAKEKEY0123456789abcdefSECRET"
USER, PASSWORD, QUERY_KEY = "alice", "hunter2pass", "QSECRET987xyz"


@pytest.mark.parametrize(
    "url, shown",
    [
        ("https://base-mainnet.g.alchemy.com/v2/abcDEF1234567890xyz", f"https://base-mainnet.g.alchemy.com/v2/{MASK}"),
        ("https://base-mainnet.infura.io/v3/0123456789abcdef0123456789abcdef",
         f"https://base-mainnet.infura.io/v3/{MASK}"),
        ("https://u:pw@host.example:8545/rpc?key=s3cret#frag", f"https://host.example:8545/rpc?key={MASK}#{MASK}"),
        ("https://mainnet.base.org", "https://mainnet.base.org"),
        ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1"),
        ("http://[::1]:8545/", "http://[::1]:8545/"),
        ("not a url", "<url>"),
        ("http://host:notaport/", "<url>"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_redact_text_headers_and_data():
    text = f"cannot connect to https://{USER}:{PASSWORD}@rpc.example.com/v2/{KEY}/ (Bearer sk-abcdef123456)"
    out = redact(text)
    assert KEY not in out and PASSWORD not in out and USER not in out and "sk-abcdef123456" not in out
    assert "https://rpc.example.com/v2/***/" in out
    assert redact_headers({"Authorization": "Bearer x", "X-API-Key": "k", "Accept": "json"}) == {
        "Authorization": MASK, "X-API-Key": MASK, "Accept": "json"}
    data = {"urls": [f"https://h/{KEY}"], "n": 3, "nested": [{"u": f"wss://h?token={QUERY_KEY}"}]}
    assert KEY not in json.dumps(redact_obj(data)) and QUERY_KEY not in json.dumps(redact_obj(data))
    assert redact_obj(data)["n"] == 3


def test_pipeline_ingest_writes_and_prints_no_secret(tmp_path):
    from chain.devnode import start_devnode
    from chain.simulate import simulate

    rows = simulate(300, seed=1)
    node = start_devnode(rows, head=rows[-1]["block_number"] + 10)  # the last swap 10 confirmations deep
    try:
        host = node.url.split("://", 1)[1]
        url = f"http://{USER}:{PASSWORD}@{host}/v2/{KEY}/?apikey={QUERY_KEY}"
        run = tmp_path / "run"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        env.pop("APE_DEBUG", None)
        p = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "pipeline.py"), "--rpc-url", url,
             "--from-block", str(rows[0]["block_number"]), "--to-block", str(rows[-1]["block_number"]),
             "--run-dir", str(run), "--until", "process"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
        )
    finally:
        node.stop()
    assert p.returncode == 0, p.stderr[-3000:]
    files = [f for f in run.rglob("*") if f.is_file()]
    assert {"manifest.json", "config.yaml", "swaps.db", "bars.parquet"} <= {f.name for f in files}
    secrets = (KEY, PASSWORD, QUERY_KEY, f"{USER}:")
    for blob, where in [(p.stdout, "stdout"), (p.stderr, "stderr"),
                        *((f.read_bytes().decode("latin-1"), str(f)) for f in files)]:
        found = [s for s in secrets if s in blob]
        assert not found, f"{found} in {where}"
    manifest = json.loads((run / "manifest.json").read_text())
    ingest = manifest["stages"]["ingest"]
    assert ingest["status"] == "done" and "--rpc-url" not in ingest["command"]  # via the environment
    assert manifest["source"]["urls"] == [f"http://{host}/v2/{MASK}/?apikey={MASK}"]
    from chain.store import Store

    with Store(run / "chain" / "swaps.db", readonly=True) as store:
        assert store.count() == len(rows)  # the key did not stop the data from coming


def test_openai_teacher_report_redacted_and_no_key_over_plain_http(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    from distill_fixtures import FakeOpenAI, share_answer, write_windows

    from apeagent.errors import UserError
    from distill.config import DEFAULTS
    from distill.teach import teach
    from distill.teachers import OpenAITeacher

    monkeypatch.setenv("APE_TEST_TEACHER_KEY", "sk-test-never-over-http-123")
    cfg = dict(DEFAULTS, teacher="openai", model="fake", api_key_env="APE_TEST_TEACHER_KEY",
               http_retries=1, backoff=0.01, request_timeout=10.0)
    with pytest.raises(UserError, match="refusing to send the API key over plain http"):
        OpenAITeacher(dict(cfg, base_urls=["http://teacher.example.com:8080/v1"])).check()
    server = FakeOpenAI(answer=share_answer, key="sk-test-never-over-http-123")
    try:
        url = server.url.replace("/v1", f"/{KEY}/v1")  # a key in the path (the server ignores it)
        rep = teach(dict(cfg, base_urls=[url]), [write_windows(tmp_path / "w.parquet", 4, seed=1)],
                    tmp_path / "teach")
    finally:
        server.close()
    assert rep["accepted"] == 4
    for f in (tmp_path / "teach").iterdir():
        text = f.read_text()
        assert KEY not in text and "sk-test-never-over-http" not in text, f
    assert "/***/v1" in (tmp_path / "teach" / "teacher_report.json").read_text()

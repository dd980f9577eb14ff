"""Secrets in URLs, round 2 (issue 26): every URL credential is masked whatever its length or
alphabet, in URLs without a scheme and inside library messages; and URLs with ``user:pw@`` or
``?apikey=`` reach the endpoint on 127.0.0.1 with their credentials in the right place (a
real HTTP server, the project's OpenAI-compatible client: the teacher, the agent's endpoint
policy and the endpoint eval use it)."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest

import apeagent.redact
from apeagent.redact import MASK, add_url_secrets, redact, split_credentials, url_secrets

sys.path.insert(0, str(Path(__file__).parent))

# (text, what must be gone, what must stay)
CASES = [
    ("http://127.0.0.1:8545/v2/shortk3y", ["shortk3y"], ["http://127.0.0.1:8545/v2/"]),
    ("https://base-mainnet.g.alchemy.com/v2/lowercasekeyonlyletters", ["lowercasekeyonlyletters"],
     ["base-mainnet.g.alchemy.com/v2/"]),
    ("https://base-mainnet.infura.io/v3/k", ["/v3/k"], ["/v3/***"]),  # one character, after the prefix
    ("https://rpc.example.com/v2/abc/def", ["abc", "def"], ["/v2/***/***"]),  # every segment after it
    ("https://x.quiknode.pro/0123abcd4567ef/", ["0123abcd4567ef"], ["x.quiknode.pro/***/"]),
    ("https://alice:pw@h.example/rpc", ["alice", ":pw@"], ["https://h.example/rpc"]),
    ("https://h.example/rpc?apikey=abc&x=yz#frag", ["=abc", "=yz", "frag"], ["?apikey=***&x=***#***"]),
    ("No connection adapters were found for 'alice:hunter2pass@127.0.0.1:9/FAKEKEY0123'",
     ["hunter2pass", "alice", "FAKEKEY0123"], ["No connection adapters", "127.0.0.1:9/***"]),
    ("HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: /v2/shortk3y?apikey=Q1w2 (x)",
     ["shortk3y", "Q1w2"], ["url: /v2/***?apikey=***", "port=9"]),
    ("base-mainnet.g.alchemy.com/v2/key", ["/key"], ["base-mainnet.g.alchemy.com/v2/***"]),  # no scheme
    ("bob:s3cret@db.example.com failed", ["bob", "s3cret"], ["db.example.com failed"]),
    # what must not change: OpenAI routes, file paths, numbers, plain hosts
    ("http://127.0.0.1:8080/v1/chat/completions", [], ["http://127.0.0.1:8080/v1/chat/completions"]),
    ("../shared/data/base_eth_usdc_v4_swaps.csv: 3 rows", [], ["../shared/data/base_eth_usdc_v4_swaps.csv"]),
    ("runs/tiny/student/model.safetensors is 1.5 MB, ratio 0.25", [], ["runs/tiny/student/model.safetensors",
                                                                       "1.5 MB, ratio 0.25"]),
    ("https://mainnet.base.org", [], ["https://mainnet.base.org"]),
]


@pytest.mark.parametrize("text, gone, kept", CASES, ids=[c[0][:40] for c in CASES])
def test_every_url_credential_is_masked(text, gone, kept):
    out = redact(text)
    assert not [g for g in gone if g in out], out
    assert all(k in out for k in kept), out


def test_credentials_quoted_apart_from_their_url_are_masked(monkeypatch):
    """A library may quote a key without its URL (urllib3's path, a provider's echo of it):
    the URL's credentials are registered by the CLI boundary (every argument) and the config."""
    # the registry is per process: start from an empty one (other tests in this worker add theirs)
    monkeypatch.setattr(apeagent.redact, "_SECRETS", set())
    url = "http://carol:Pa55w0rdX@127.0.0.1:7/v2/zzkeyzz?token=tok123456"
    assert set(url_secrets(url)) >= {"carol", "Pa55w0rdX", "zzkeyzz", "tok123456"}
    add_url_secrets(f"--rpc-url={url}")
    out = redact("provider said: invalid key zzkeyzz for user carol, password Pa55w0rdX, tok123456")
    assert not any(s in out for s in ("zzkeyzz", "carol", "Pa55w0rdX", "tok123456")), out
    assert out.count(MASK) == 4


def test_split_credentials():
    base, query, headers = split_credentials("http://al%40ice:p%3Aw@127.0.0.1:81/v1/?apikey=Q&x=1")
    assert (base, query) == ("http://127.0.0.1:81/v1", "apikey=Q&x=1")
    assert base64.b64decode(headers["Authorization"].split()[1]) == b"al@ice:p:w"
    assert split_credentials("https://h.example/v1") == ("https://h.example/v1", "", {})


@pytest.mark.parametrize("with_key", [False, True])
def test_userinfo_and_query_key_reach_a_local_endpoint(tmp_path, monkeypatch, with_key):
    """``http://user:pw@127.0.0.1:PORT/v1?apikey=K``: the requests go to 127.0.0.1 (not to a
    host named ``user:pw@127.0.0.1``), ``?apikey=K`` after each route, ``user:pw`` as Basic
    auth (an API key's Bearer header wins); no credential is in the files written."""
    from distill_fixtures import FakeOpenAI, share_answer, write_windows

    from distill.config import DEFAULTS
    from distill.teach import teach

    monkeypatch.setenv("APE_TEST_URL_KEY", "sk-local-key-123456")
    server = FakeOpenAI(answer=share_answer, key="sk-local-key-123456" if with_key else None)
    try:
        url = server.url.replace("http://", "http://alice:hunter2pass@") + "?apikey=QKEY987654"
        cfg = dict(DEFAULTS, teacher="openai", model="fake", base_urls=[url], http_retries=1, backoff=0.01,
                   request_timeout=10.0, api_key_env="APE_TEST_URL_KEY" if with_key else "")
        rep = teach(cfg, [write_windows(tmp_path / "w.parquet", 3, seed=2)], tmp_path / "teach")
    finally:
        server.close()
    assert rep["accepted"] == 3
    assert server.paths[0] == "/v1/models?apikey=QKEY987654"
    assert set(server.paths[1:]) == {"/v1/chat/completions?apikey=QKEY987654"}
    basic = "Basic " + base64.b64encode(b"alice:hunter2pass").decode()
    assert set(server.auth_seen) == {"Bearer sk-local-key-123456" if with_key else basic}
    for f in (tmp_path / "teach").iterdir():
        text = f.read_text()
        assert not any(s in text for s in ("hunter2pass", "alice", "QKEY987654", "sk-local-key")), f

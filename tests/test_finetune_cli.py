"""`ape-finetune` commands end to end, bad input, and 2-process data-parallel training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from finetune_fixtures import make_dataset, shared_tiny, tiny_kwargs

from finetune_mlx.evaluate import score

REPO = Path(__file__).resolve().parents[1]
FAST = [
    "--iters",
    "2",
    "--batch-size",
    "4",
    "--num-layers",
    "1",
    "--warmup-steps",
    "0",
    "--max-seq-length",
    "512",
    "--no-grad-checkpoint",
]


def ape(*args, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "finetune_mlx", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_score_counts_compliance_agreement_and_confusion():
    refs = ["a\n#### APE IN 0.25 ETH", "b\n#### APE OUT", "c\n#### APE NEUTRAL", "d\n#### APE IN"]
    outs = ["a\n#### APE IN 0.25 ETH", "#### APE IN", "#### SELL", "APE IN or APE OUT"]
    m = score(
        [{"text": t, "tokens": 5, "tokens_per_second": 100.0, "latency_s": 0.05} for t in outs],
        refs,
    )
    assert m["canary_compliance"] == 0.5 and m["decision_agreement"] == 0.25
    assert m["format_validity"] == 0.25  # the 2nd has no drafts
    assert m["plain_agreement"] == 0.25  # "#### SELL" reads as APE OUT; the teacher said NEUTRAL
    assert m["confusion"]["APE OUT"]["APE IN"] == 1 and m["confusion"]["APE IN"]["none"] == 1


def test_pipeline_commands(tmp_path):
    data = make_dataset(tmp_path / "ds", 24, 8, 6)
    base, ad, fused = tmp_path / "base", tmp_path / "ad", tmp_path / "fused"
    r = ape(
        "build-tiny",
        "--data",
        data,
        "--out",
        base,
        "--hidden-size",
        64,
        "--num-layers",
        2,
        "--vocab-size",
        400,
        "--pretrain-steps",
        3,
    )
    assert r.returncode == 0, r.stderr
    r = ape("lora", "--model", base, "--data", data, "--adapter-path", ad, *FAST)
    assert r.returncode == 0, r.stderr
    r = ape("fuse", "--model", base, "--adapter-path", ad, "--out", fused)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "eval.json"
    r = ape(
        "eval",
        "--model",
        base,
        "--adapter-path",
        ad,
        "--fused",
        fused,
        "--data",
        data,
        "--out",
        out,
        "--max-tokens",
        8,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert set(report["variants"]) == {"base", "base+adapter", "fused"} and report["n"] == 6
    for m in report["variants"].values():
        assert m["tokens_per_second"] > 0 and m["answer_tokens_mean"] <= 8
        conf = m["confusion"]
        assert sum(sum(row.values()) for row in conf.values()) == 6
        # compliance and agreement are what the confusion matrix counts
        assert m["canary_compliance"] * 6 == pytest.approx(6 - sum(row["none"] for row in conf.values()))
        assert m["decision_agreement"] * 6 == pytest.approx(sum(conf[t][t] for t in conf))
    # the baselines were fit on the dataset's train split and scored on its 6 test examples
    base = report["baselines"]
    assert report["train_file"] == str(data / "train.jsonl")
    assert base["majority"]["decision"] in ("APE IN", "APE OUT", "APE NEUTRAL")
    assert {"ETH share", "change", "volatility"} <= set(base["features"])
    assert base["best_trivial_agreement"] == max(
        base["majority"]["agreement"], base["best_single_feature"]["agreement"]
    )
    cmp = report["comparison"]
    assert cmp["model"] == "fused" and cmp["base_plain_agreement"] == report["variants"]["base"]["plain_agreement"]
    assert cmp["margin_points"] == pytest.approx(
        100 * (report["variants"]["fused"]["decision_agreement"] - base["best_trivial_agreement"]), abs=0.01
    )
    # Greedy answers of base+adapter and of the fused model are the same text.
    assert report["samples"]["base+adapter"] == report["samples"]["fused"]
    r = ape("generate", "--model", fused, "--change-pct", "1.2", "--max-tokens", 8)
    assert r.returncode == 0 and "decision:" in r.stdout and "ETH share" in r.stdout, r.stderr


def test_bad_input_names_the_file_and_writes_nothing(tmp_path):
    from finetune_fixtures import train_cfg

    from apeagent.errors import UserError
    from finetune_mlx.fuse import fuse
    from finetune_mlx.tiny import build_tiny
    from finetune_mlx.train import train

    data, base = shared_tiny()
    ad = tmp_path / "ad"
    ad.mkdir()
    (ad / "keep.txt").write_text("old")
    before = _snapshot(ad)

    empty = tmp_path / "empty"
    empty.mkdir()
    for split in ("train", "valid", "test"):
        (empty / f"{split}.jsonl").write_text("\n")
    with pytest.raises(UserError, match=r"empty/train.jsonl: no valid examples"):
        train(base, empty, ad, train_cfg())
    long = make_dataset(tmp_path / "long", 8, 4, 4)
    with pytest.raises(
        UserError, match=r"long/train.jsonl: example 1 is \d+ tokens, longer than max_seq_length=50"
    ):
        train(base, long, ad, train_cfg(max_seq_length=50))
    with pytest.raises(UserError, match=r"model directory not found: .*nope"):
        train(tmp_path / "nope", data, ad, train_cfg())
    assert _snapshot(ad) == before

    # An adapter trained on another base (same architecture, other weights) is refused.
    other = build_tiny(tmp_path / "other", ["x y z"] * 20, **tiny_kwargs(vocab_size=300), seed=5)
    good = tmp_path / "good"
    train(base, data, good, train_cfg(iters=1, num_layers=1))
    with pytest.raises(
        UserError, match=r"good/adapter_config.json: adapter was trained on another base model"
    ):
        fuse(other, good, tmp_path / "fused")
    assert not (tmp_path / "fused").exists()
    # Through the CLI: "error: ..." and exit code 2, no eval.json.
    r = ape(
        "eval",
        "--model",
        other,
        "--adapter-path",
        good,
        "--data",
        data,
        "--out",
        tmp_path / "e.json",
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error:") or "\nerror:" in r.stderr, r.stderr
    assert "another base model" in r.stderr and not (tmp_path / "e.json").exists()


@pytest.mark.skipif(sys.platform != "linux" and sys.platform != "darwin", reason="needs mlx.launch")
def test_two_process_ring_training_keeps_ranks_identical(tmp_path):
    data, base = shared_tiny()
    ad = tmp_path / "ad"
    env = dict(os.environ)
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune_mlx",
            "lora",
            "--model",
            str(base),
            "--data",
            str(data),
            "--adapter-path",
            str(ad),
            *FAST,
            "--num-layers",
            "9",
            "--num-processes",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert bad.returncode != 0 and "num_layers=9" in bad.stderr + bad.stdout
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune_mlx",
            "lora",
            "--model",
            str(base),
            "--data",
            str(data),
            "--adapter-path",
            str(ad),
            *FAST,
            "--num-processes",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert r.returncode == 0 and (ad / "train_report.json").is_file(), (
        r.stdout[-3000:] + r.stderr[-3000:]
    )
    r0 = json.loads((ad / "train_report.json").read_text())
    r1 = json.loads((ad / "train_report.rank1.json").read_text())
    assert r0["num_processes"] == r1["num_processes"] == 2 and (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["adapter_sha256"] == r1["adapter_sha256"]
    # And training moved the weights away from the LoRA initialisation (lora_b starts at zero).
    w = mx.load(str(ad / "adapters.safetensors"))
    assert any(k.endswith("lora_b") and mx.abs(v).max().item() > 0 for k, v in w.items())

"""Training: plain checkpoints, reproducible resume, incompatible configs; the CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from gan_fixtures import synthetic_bars, tiny_cfg, write_bars, write_cfg_yaml
from typer.testing import CliRunner

from apeagent.errors import UserError
from gan_torch import checkpoint as ckio
from gan_torch import generate as G
from gan_torch.cli import app
from gan_torch.data import WINDOW_COLUMNS, read_windows
from gan_torch.swaps import bars_to_swaps
from gan_torch.train import train


@pytest.fixture(scope="module")
def bars():
    return synthetic_bars(300, seed=3)


def _plain(obj) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_plain(v) for v in obj)
    return obj is None or isinstance(obj, (str, int, float, bool, torch.Tensor))


def test_checkpoints_are_plain_and_resume_reproduces_an_uninterrupted_run(bars, tmp_path):
    cfg = tiny_cfg(steps=6, checkpoint_every=4, eval_every=3)
    train(bars, cfg, tmp_path / "full", progress=False)
    train(bars, cfg, tmp_path / "cut", progress=False, stop_at=4)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"] == 4
    train(bars, cfg, tmp_path / "cut", progress=False, resume=True)
    for name in ("last.pt", "best.pt"):
        ck = torch.load(tmp_path / "full" / name, weights_only=True)  # no pickled objects
        assert _plain(ck) and ck["format"] == ckio.FORMAT
        gnet, cnet, _ = ckio.build_models(ck)
        assert len(gnet.layers) == cfg["num_layers"]
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["generator"]:
        assert torch.equal(a["generator"][k], b["generator"][k]), k
    rows_a = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    def strip(rows):
        return [
            {k: v for k, v in json.loads(r).items() if k != "elapsed_s"} for r in rows
        ]
    assert strip(rows_a) == strip(rows_b) and len(rows_a) == 6
    assert {"loss_c", "loss_g", "gp", "fm", "moment", "div", "noise_sigma"} <= set(
        json.loads(rows_a[0])
    )


def test_loss_terms_and_batches_are_passed_in(bars, tmp_path):
    # the loop takes its objectives and batch iteration as arguments (mlx_lm trainer shape):
    # a generator objective without the adversarial term trains a different generator
    from gan_torch import losses
    from gan_torch.train import TrainingArgs, iterate_batches

    cfg = tiny_cfg(steps=3, checkpoint_every=3, eval_every=3)
    calls = {"terms": 0, "batches": 0}

    def no_adv(*a, **k):
        calls["terms"] += 1
        terms = losses.generator_terms(*a, **k)
        return {**terms, "adv": terms["adv"] * 0.0}

    def counted(*a):
        for batch in iterate_batches(*a):
            calls["batches"] += 1
            yield batch

    train(bars, cfg, tmp_path / "a", progress=False)
    train(bars, cfg, tmp_path / "b", progress=False, generator_terms=no_adv, iterate_batches=counted)
    args = TrainingArgs.from_config(cfg)
    assert calls == {"terms": 3, "batches": 3 * (args.n_critic + 1)}
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["generator"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["generator"]
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert set(args.weights()) == {"adv", "fm", "moment", "acf_abs", "div"}


def test_resume_under_an_incompatible_config_is_refused(bars, tmp_path):
    cfg = tiny_cfg(steps=2, checkpoint_every=2)
    train(bars, cfg, tmp_path, progress=False)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(
        UserError, match=r"incompatible config \(d_model: checkpoint 16 vs config 32"
    ):
        train(bars, tiny_cfg(steps=4, d_model=32), tmp_path, progress=False, resume=True)
    assert (tmp_path / "last.pt").read_bytes() == before


def test_post_processing_invariants():
    ck = {
        "scaler": {"center": [0.0, 1.0, 1.5, 0.001], "scale": [0.001, 0.5, 0.4, 0.001]},
        "config": {"step_bound_mult": 1.0},
        "data": {"step_bound": 0.01},
    }
    scaled = np.random.default_rng(0).normal(0, 4, (5, 12, 4))  # includes wild values
    raw = G.decode_features(scaled, ck)
    assert np.all(np.isfinite(raw)) and np.abs(raw[..., 0]).max() <= 0.01
    assert np.all(raw[..., 1:] >= 0)
    empty = raw[..., 2] == 0
    assert np.all(raw[..., 0][empty] == 0) and np.all(raw[..., 1][empty] == 0)
    cols = G.to_windows(raw, np.full(5, 3000.0))
    assert np.all(cols["close"] > 0) and np.all(cols["volume_usdc"] >= 0)
    c = cols["close"].reshape(5, 12)
    assert np.allclose(np.log(c[:, 1:] / c[:, :-1]), raw[:, 1:, 0])


def test_swap_events_are_amm_consistent():
    from chain.amm import price_from_sqrt_price_x96, swap_exact_input, tick_from_sqrt_price_x96

    rng = np.random.default_rng(1)
    raw = np.stack(
        [
            rng.normal(0, 2e-3, (2, 6)),
            np.log1p(rng.uniform(0.5, 3, (2, 6))),
            np.log1p(rng.integers(0, 5, (2, 6))),
            np.zeros((2, 6)),
        ],
        -1,
    )
    raw = G.decode_features(
        np.arcsinh(raw),
        {
            "scaler": {"center": [0] * 4, "scale": [1] * 4},
            "config": {"step_bound_mult": 1.0},
            "data": {"step_bound": 0.05},
        },
    )
    cols = G.to_windows(raw, np.array([3000.0, 2500.0]))
    liq = 2 * 10**16
    rows = bars_to_swaps(cols, "uniform", liquidity=liq, start_time=1_738_816_800)
    assert len(rows) == int(cols["swap_count"].sum())
    from chain.amm import sqrt_price_x96_from_price

    prev = None
    for row in rows:
        sp = row["sqrt_price_x96"]
        assert row["tick"] == tick_from_sqrt_price_x96(sp)
        assert (row["amount0"] < 0) != (row["amount1"] < 0)  # one token in, the other out
        if prev is not None and row["log_index"] > 0:
            zfo = row["amount0"] < 0  # swapper paid ETH in: price must fall
            assert (sp < prev) == zfo
            again = swap_exact_input(
                prev, liq, -(row["amount0"] if zfo else row["amount1"]), zfo, 500
            )
            assert (again.amount0, again.amount1, again.sqrt_price_x96) == (
                row["amount0"],
                row["amount1"],
                sp,
            )
        prev = sp
    # each bar's last swap lands on the bar's close
    first_window = cols["window_id"] == 0
    last_price = {}
    for row in rows:
        last_price[(row["timestamp"] - 1_738_816_800) // 300] = price_from_sqrt_price_x96(
            row["sqrt_price_x96"]
        )
    for j, close in enumerate(cols["close"][first_window]):
        if cols["swap_count"][first_window][j] > 0:
            assert abs(last_price[j] / close - 1) < 1e-9
    assert sqrt_price_x96_from_price(3000.0) > 0
    ts = [r["timestamp"] for r in rows]
    blocks = [(r["block_number"], r["log_index"]) for r in rows]
    assert ts == sorted(ts) and len(set(blocks)) == len(blocks)


def test_cli_train_generate_validate(bars, tmp_path):
    runner = CliRunner()
    bars_path = write_bars(tmp_path / "bars.parquet", synthetic_bars(400, seed=5))
    cfg = write_cfg_yaml(tmp_path / "c.yaml", steps=4, checkpoint_every=2, eval_every=2)
    res = runner.invoke(
        app,
        [
            "train",
            "--bars",
            str(bars_path),
            "--out-dir",
            str(tmp_path / "gan"),
            "-c",
            str(cfg),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "gan" / "best.pt").is_file() and (
        tmp_path / "gan" / "metrics.jsonl"
    ).is_file()
    out = tmp_path / "windows.parquet"
    args = [
        "generate",
        "--checkpoint",
        str(tmp_path / "gan" / "best.pt"),
        "--out",
        str(out),
        "--n",
        "5",
        "--seed",
        "7",
        "-c",
        str(cfg),
    ]
    res = runner.invoke(
        app,
        [*args, "--swaps-out", str(tmp_path / "swaps.csv"), "--swap-decoder", "uniform",
         "--condition", "volatile"],
    )
    assert res.exit_code == 0, res.output
    w = read_windows(out)
    assert list(w) == list(WINDOW_COLUMNS) and set(w["source"]) == {"synthetic"}
    assert w["window_id"].max() == 4 and np.all(w["close"] > 0) and np.all(np.isfinite(w["close"]))
    header = (tmp_path / "swaps.csv").read_text().splitlines()[0]
    assert header.startswith("block_number,transaction_hash,pool_id") and header.endswith(
        "timestamp,log_index,sequence"
    )
    # seeded: the same call gives the same windows; autoregressive sampling gives the same too
    res = runner.invoke(
        app,
        [
            *args[:4],
            str(tmp_path / "w2.parquet"),
            *args[5:],
            "--condition",
            "volatile",
            "--autoregressive",
        ],
    )
    assert res.exit_code == 0, res.output
    assert np.allclose(
        read_windows(tmp_path / "w2.parquet")["log_return"], w["log_return"], atol=1e-7
    )
    res = runner.invoke(
        app,
        [
            "validate",
            "--bars",
            str(bars_path),
            "--checkpoint",
            str(tmp_path / "gan" / "best.pt"),
            "--out-dir",
            str(tmp_path / "val"),
            "-c",
            str(cfg),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "val" / "validation.json").read_text())
    test = rep["periods"]["test"]["sources"]
    assert set(test) == {"gan", "gbm", "bootstrap", "real_train"}
    for m in test.values():
        assert m["grade"] in ("EXCELLENT", "GOOD", "FAIR", "POOR")
        assert 0 <= m["discriminative_score"] <= 0.5 and set(m["per_feature"]) == {
            "log_return",
            "log_volume_eth",
            "log_swap_count",
            "realized_vol",
        }
    for png in ("sample_paths.png", "distributions.png", "acf.png", "volume_vs_return.png"):
        assert (tmp_path / "val" / png).stat().st_size > 1000
    res = runner.invoke(
        app,
        [
            "windows",
            "--bars",
            str(bars_path),
            "--out",
            str(tmp_path / "real.parquet"),
            "--window",
            "16",
            "--stride",
            "16",
            "--holdout-frac",
            "0",
        ],
    )
    assert res.exit_code == 0, res.output
    assert read_windows(tmp_path / "real.parquet")["window_id"].max() == 400 // 16 - 1


def test_cli_bad_input_exit_2_and_nothing_written(tmp_path):
    out = tmp_path / "w.parquet"
    cmd = [
        sys.executable,
        "-m",
        "gan_torch",
        "generate",
        "--checkpoint",
        str(tmp_path / "nope.pt"),
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 2 and "error: checkpoint not found" in done.stderr
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something else"}, bad)
    done = subprocess.run([*cmd[:5], str(bad), *cmd[6:]], capture_output=True, text=True)
    assert done.returncode == 2 and "not an ape-gan checkpoint" in done.stderr
    assert not out.exists()

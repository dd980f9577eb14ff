"""torch -> MLX generator conversion: same noise and condition give the same windows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gan_fixtures import synthetic_bars, tiny_cfg, write_cfg_yaml

pytest.importorskip("mlx.core")

from gan_torch import checkpoint as ckio  # noqa: E402
from gan_torch.generate import sample_scaled  # noqa: E402
from gan_torch.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("gan")
    train(
        synthetic_bars(300, seed=2),
        tiny_cfg(steps=3, checkpoint_every=3, eval_every=3),
        out,
        progress=False,
    )
    return out / "last.pt"


def test_mlx_generator_matches_torch(ckpt_path, tmp_path):
    from gan_torch.mlx_generator import convert_checkpoint, load_converted, sample_scaled_mlx

    ck = ckio.load(ckpt_path)
    gnet, _, _ = ckio.build_models(ck)
    want, _, idx_t = sample_scaled(gnet, ck, 6, seed=11)
    got, _, idx_m = sample_scaled_mlx(ck, 6, seed=11)
    assert np.array_equal(idx_t, idx_m)
    assert np.abs(want - got).max() < 1e-4
    # through the converted directory too, with an explicit condition
    model, meta = load_converted(convert_checkpoint(ckpt_path, tmp_path / "mlx"))
    cond = np.array([-6.0, 0.01, 1.0])
    want, _, _ = sample_scaled(gnet, ck, 4, cond_raw=cond, seed=3)
    got, _, _ = sample_scaled_mlx(meta, 4, cond_raw=cond, seed=3, model=model)
    assert np.abs(want - got).max() < 1e-4
    assert torch.allclose(meta["start_prices"], ck["start_prices"])


def test_convert_script_and_generate_backend_mlx(ckpt_path, tmp_path):
    from gan_torch.data import read_windows

    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/convert_gan_to_mlx.py"),
            str(ckpt_path),
            str(tmp_path / "mlx"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    cfg = write_cfg_yaml(tmp_path / "c.yaml")
    outs = {}
    for backend, ck in (("torch", ckpt_path), ("mlx", tmp_path / "mlx")):
        outs[backend] = tmp_path / f"{backend}.parquet"
        cmd = [
            sys.executable,
            "-m",
            "gan_torch",
            "generate",
            "--backend",
            backend,
            "--checkpoint",
            str(ck),
            "--out",
            str(outs[backend]),
            "--n",
            "3",
            "--seed",
            "5",
            "-c",
            str(cfg),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr
    a, b = read_windows(outs["torch"]), read_windows(outs["mlx"])
    assert np.allclose(a["close"], b["close"], rtol=1e-6) and np.array_equal(
        a["swap_count"], b["swap_count"]
    )

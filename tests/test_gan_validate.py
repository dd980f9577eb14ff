"""Validation conditions the GAN exactly as generation does: no held-out context (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest
from gan_fixtures import synthetic_bars, tiny_cfg, write_bars

from apeagent.errors import UserError
from gan_torch import fidelity as V
from gan_torch.data import windows_to_array
from gan_torch.generate import generate_windows
from gan_torch.train import train
from gan_torch.validate import run_validation

STATS = ("ret_mean", "ret_std", "ret_excess_kurtosis", "zero_return_frac", "log_volume_eth_mean")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gan_validate")
    bars = synthetic_bars(400, seed=5)
    cfg = tiny_cfg(steps=4, checkpoint_every=2, eval_every=2)
    train(bars, cfg, tmp / "gan", progress=False)
    return write_bars(tmp / "bars.parquet", bars), tmp / "gan" / "best.pt", cfg


def test_the_validated_gan_is_what_generate_writes(trained, tmp_path):
    bars_path, ckpt, cfg = trained
    rep = run_validation(bars_path, tmp_path, cfg, checkpoint=ckpt, plots=False, heldout_context=True)
    assert rep["gan_conditioning"]["mode"] == "training cond_bank"
    test = rep["periods"]["test"]
    n = max(4 * test["n_real_windows"], 64)
    cols, _ = generate_windows(ckpt, tmp_path / "w.parquet", dict(cfg, n_generate=n))
    made = V.summary(windows_to_array(cols)[0])
    scored = test["sources"]["gan"]["stats"]
    for key in STATS:
        assert scored[key] == pytest.approx(made[key], rel=1e-9, abs=1e-12), key
    # the old setup (conditions from the held-out bars before each window) is a different
    # source, kept only as a diagnostic: it never sets the grade
    leaky = test["sources"]["gan_heldout_context"]["stats"]
    assert any(not np.isclose(leaky[k], scored[k]) for k in STATS)
    assert rep["grade"] == test["sources"]["gan"]["grade"]


def test_an_asked_for_condition_is_used_and_recorded(trained, tmp_path):
    bars_path, ckpt, cfg = trained
    rep = run_validation(bars_path, tmp_path, cfg, checkpoint=ckpt, plots=False, condition="calm")
    cond = rep["gan_conditioning"]
    assert cond["mode"] == "condition" and cond["detail"] == "calm" and len(cond["raw"]) == 3
    n = max(4 * rep["periods"]["test"]["n_real_windows"], 64)
    cols, _ = generate_windows(
        ckpt, tmp_path / "w.parquet", dict(cfg, n_generate=n), condition="calm"
    )
    made = V.summary(windows_to_array(cols)[0])
    assert rep["periods"]["test"]["sources"]["gan"]["stats"]["ret_std"] == pytest.approx(
        made["ret_std"], rel=1e-9
    )
    with pytest.raises(UserError, match="--condition"):
        run_validation(bars_path, tmp_path, cfg, checkpoint=ckpt, condition="sideways")
    with pytest.raises(UserError, match="needs --checkpoint"):
        run_validation(bars_path, tmp_path, cfg, windows=tmp_path / "w.parquet", condition="calm")

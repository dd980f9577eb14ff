"""LoRA / DoRA / full / QLoRA through mlx-lm's trainer; mlx-lm's own tools read the results."""

from __future__ import annotations

import json
import subprocess
import sys

import mlx.core as mx
import mlx_lm
import pytest
import yaml
from finetune_fixtures import shared_tiny, train_cfg
from mlx_lm.lora import CONFIG_DEFAULTS

from finetune_mlx.fuse import fuse
from finetune_mlx.train import schedule_config, train

PROMPT = [
    {"role": "user", "content": "ETH/USDC, last 60 min\nchange +0.90%\nETH share 20%\nAction?"}
]


def _greedy(model, tok, n=12):
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True)
    return mlx_lm.generate(model, tok, ids, max_tokens=n)


def test_lora_writes_mlx_lm_adapters_and_fuses(tmp_path):
    data, base = shared_tiny()
    ad = tmp_path / "adapters"
    report = train(base, data, ad, train_cfg(iters=6))
    for name in (
        "adapters.safetensors",
        "adapter_config.json",
        "lora_config.yaml",
        "train_report.json",
    ):
        assert (ad / name).is_file(), name
    assert (
        report["final_val_loss"] is not None
        and report["trainable_parameters"] < report["total_parameters"]
    )
    assert report["train_log"] and report["train_log"][-1]["tokens_per_second"] > 0
    # mlx-lm's own loader applies the adapters (what `mlx_lm.generate --adapter-path` does).
    model, tok = mlx_lm.load(str(base), adapter_path=str(ad))
    with_adapter = _greedy(model, tok)
    fused = fuse(base, ad, tmp_path / "fused")
    fmodel, ftok = mlx_lm.load(str(fused))
    assert _greedy(fmodel, ftok) == with_adapter
    assert not any("lora" in k for k in mx.load(str(fused / "model.safetensors")))


def test_lora_config_yaml_runs_unchanged_with_mlx_lm(tmp_path):
    data, base = shared_tiny()
    ad = tmp_path / "adapters"
    train(base, data, ad, train_cfg(iters=2))
    cfg = yaml.safe_load((ad / "lora_config.yaml").read_text())
    assert set(cfg) <= set(CONFIG_DEFAULTS), set(cfg) - set(CONFIG_DEFAULTS)
    assert cfg["lr_schedule"]["warmup"] == 1 and cfg["mask_prompt"] is True
    # Same YAML, other output dir: mlx_lm.lora runs it as is.
    cfg["adapter_path"] = str(tmp_path / "mlx_lm_adapters")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "lora", "--config", str(tmp_path / "c.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "mlx_lm_adapters" / "adapters.safetensors").is_file()


def _logits(model, tok):
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True)
    out = model(mx.array([ids]))[0, -1].astype(mx.float32)
    mx.eval(out)
    return out


def _check_trained_and_fused(base, ad, fused):
    """Training moved the model (next-token logits differ from the base's); the fused model
    answers exactly as base + adapter (greedy text) with the same logits."""
    bmodel, btok = mlx_lm.load(str(base))
    base_logits = _logits(bmodel, btok)
    model, tok = mlx_lm.load(str(base), adapter_path=str(ad))
    with_adapter, adapter_logits = _greedy(model, tok), _logits(model, tok)
    assert mx.abs(adapter_logits - base_logits).max().item() > 1e-3, "training changed nothing"
    fmodel, ftok = mlx_lm.load(str(fused))
    assert _greedy(fmodel, ftok) == with_adapter
    assert mx.allclose(_logits(fmodel, ftok), adapter_logits, atol=2e-2).item()


@pytest.mark.parametrize("kind", ["dora", "full"])
def test_dora_and_full(tmp_path, kind):
    data, base = shared_tiny()
    ad = tmp_path / kind
    train(
        base, data, ad, train_cfg(fine_tune_type=kind, num_layers=1, iters=2, grad_checkpoint=True)
    )
    keys = list(mx.load(str(ad / "adapters.safetensors")))
    if kind == "dora":
        assert any(k.endswith(".m") for k in keys)
    else:
        assert keys and all(k.startswith("model.layers.1.") for k in keys)
    fused = fuse(base, ad, tmp_path / "fused")
    _check_trained_and_fused(base, ad, fused)


def test_qlora_on_quantized_base_and_dequantized_fuse(tmp_path):
    from mlx_lm.convert import convert

    data, base = shared_tiny()
    qbase = tmp_path / "q4"
    convert(str(base), mlx_path=str(qbase), quantize=True, q_group_size=32, q_bits=4)
    assert "quantization" in json.loads((qbase / "config.json").read_text())
    ad = tmp_path / "adapters"
    train(qbase, data, ad, train_cfg(iters=2))
    out = fuse(qbase, ad, tmp_path / "fused", dequantize=True)
    config = json.loads((out / "config.json").read_text())
    assert "quantization" not in config
    _check_trained_and_fused(qbase, ad, out)


def test_resume_from_adapter_file(tmp_path):
    data, base = shared_tiny()
    first = train(
        base, data, tmp_path / "a", train_cfg(iters=4, learning_rate=5e-4, val_batches=-1)
    )
    again = train(
        base,
        data,
        tmp_path / "b",
        train_cfg(iters=1, learning_rate=1e-9, warmup_steps=0, val_batches=-1),
        resume_adapter_file=tmp_path / "a" / "adapters.safetensors",
    )
    fresh = train(
        base,
        data,
        tmp_path / "c",
        train_cfg(iters=1, learning_rate=1e-9, warmup_steps=0, val_batches=-1),
    )
    # Resumed weights start where the first run ended (its final validation loss).
    assert again["val_log"][0]["val_loss"] == pytest.approx(first["final_val_loss"], rel=1e-4)
    assert fresh["val_log"][0]["val_loss"] != pytest.approx(first["final_val_loss"], rel=1e-4)


def test_schedule_warmup_then_decay():
    from mlx_lm.tuner.utils import build_schedule

    cfg = train_cfg(learning_rate=1e-3, iters=100, warmup_steps=10, min_lr_ratio=0.1)
    sched = build_schedule(schedule_config(cfg))
    lrs = [sched(mx.array(i)).item() for i in (0, 5, 10, 11, 60, 100)]
    assert lrs[0] == 0.0 and lrs[1] < lrs[2]
    assert lrs[2] == pytest.approx(1e-3, rel=1e-3) and lrs[4] < lrs[3]
    assert lrs[5] == pytest.approx(1e-4, rel=1e-2)


def test_cached_training_reports_the_full_models_valid_loss(tmp_path):
    """With the frozen-block cache the valid loss comes from the accuracy probe's pass, not
    from the trainer's: it must still be the canary-weighted loss of the trained model (mlx-lm's
    evaluate, full model, adapters loaded) over every valid example."""
    import types

    from mlx_lm.tuner.datasets import CacheDataset, create_dataset
    from mlx_lm.tuner.trainer import evaluate

    from finetune_mlx.canary import canary_token_sequences, weighted_loss

    data, base = shared_tiny()
    ad = tmp_path / "adapters"
    cfg = train_cfg(iters=4, num_layers=1, cache_frozen=True, canary_weight=3.0)
    report = train(base, data, ad, cfg, say=lambda _m: None)
    assert report["cached_frozen_blocks"] > 0
    assert [r["iteration"] for r in report["val_log"]] and all(
        "valid_decision" in r for r in report["val_log"])
    model, tok = mlx_lm.load(str(base), adapter_path=str(ad))
    ns = types.SimpleNamespace(**json.loads((ad / "adapter_config.json").read_text()))
    rows = [json.loads(line) for line in (data / "valid.jsonl").read_text().splitlines()]
    valid = CacheDataset(create_dataset(rows, tok, ns))
    full = evaluate(model=model, dataset=valid, batch_size=1, num_batches=-1,
                    max_seq_length=cfg["max_seq_length"],
                    loss=weighted_loss(canary_token_sequences(tok), 3.0))
    assert report["final_val_loss"] == pytest.approx(float(full), rel=1e-4)

"""LoRA / DoRA / full fine-tuning through mlx-lm's own trainer (``mlx_lm.tuner.trainer.train``).

This is what ``mlx_lm.lora --train`` does, plus: the canary-weighted loss, up-front dataset
checks, a warmup + decay LR schedule built from plain keys, a base-model fingerprint in the
adapter config, and ``lora_config.yaml`` (the same run for ``mlx_lm.lora --config``).
Adapters are mlx-lm's (``adapters.safetensors`` + ``adapter_config.json``), so
``mlx_lm.generate --adapter-path`` and ``mlx_lm.fuse`` use them unchanged.

With several processes (``mlx.launch``) the trainer splits every batch across ranks and
averages gradients (``mlx.nn.average_gradients``), so all ranks hold the same weights.
"""

from __future__ import annotations

import hashlib
import time
import types
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import yaml
from mlx.utils import tree_flatten

from apeagent.errors import UserError
from apeagent.files import atomic_path, write_json, write_text
from distill.dataset import check_lengths, load_splits
from finetune_mlx import frozen
from finetune_mlx.canary import canary_token_sequences, make_loss
from finetune_mlx.model_dir import arch_of, check_model_dir, fingerprint
from finetune_mlx.quant_cpu import use_sgemm

FINE_TUNE_TYPES = ("lora", "dora", "full")
OPTIMIZERS = {"adam": optim.Adam, "adamw": optim.AdamW, "sgd": optim.SGD, "adafactor": optim.Adafactor}
SCHEDULES = ("cosine_decay", "linear_schedule", "constant")


def schedule_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """mlx-lm's ``lr_schedule`` mapping (``build_schedule`` input) for the config keys."""
    lr, iters, warmup = cfg["learning_rate"], cfg["iters"], cfg["warmup_steps"]
    floor = lr * cfg["min_lr_ratio"]
    decay = max(iters - warmup, 1)
    name = cfg["lr_schedule"]
    if name == "cosine_decay":
        args = [lr, decay, floor]
    elif name == "linear_schedule":
        args = [lr, floor, decay]
    elif name == "constant":
        name, args = "linear_schedule", [lr, lr, 1]
    else:
        raise UserError(f"finetune.lr_schedule: unknown {name!r} (known: {', '.join(SCHEDULES)})")
    out: dict[str, Any] = {"name": name, "arguments": args}
    if warmup > 0:
        out.update(warmup=warmup, warmup_init=0.0)
    return out


def mlx_lm_args(
    cfg: dict[str, Any], model: str, data: str, adapter_path: str, resume_adapter_file: str | None
) -> dict[str, Any]:
    """The run as ``mlx_lm.lora`` arguments (keys of its ``CONFIG_DEFAULTS``)."""
    return {
        "model": model,
        "train": True,
        "data": data,
        "fine_tune_type": cfg["fine_tune_type"],
        "optimizer": cfg["optimizer"],
        "mask_prompt": cfg["mask_prompt"],
        "num_layers": cfg["num_layers"],
        "batch_size": cfg["batch_size"],
        "iters": cfg["iters"],
        "val_batches": cfg["val_batches"],
        "learning_rate": cfg["learning_rate"],
        "steps_per_report": cfg["steps_per_report"],
        "steps_per_eval": cfg["steps_per_eval"],
        "resume_adapter_file": resume_adapter_file,
        "adapter_path": adapter_path,
        "save_every": cfg["save_every"],
        "max_seq_length": cfg["max_seq_length"],
        "grad_checkpoint": cfg["grad_checkpoint"],
        "grad_accumulation_steps": cfg["grad_accumulation_steps"],
        "seed": cfg["seed"],
        "lr_schedule": schedule_config(cfg),
        "lora_parameters": {
            "rank": cfg["lora_rank"],
            "dropout": cfg["lora_dropout"],
            "scale": cfg["lora_scale"],
        },
    }


def lora_yaml(args: dict[str, Any], canary_weight: float) -> str:
    header = (
        "# The same training for mlx-lm's own CLI:  mlx_lm.lora --config lora_config.yaml\n"
        "# Written by `ape-finetune lora`. Not expressible here: the canary-weighted loss\n"
        f"# (finetune.canary_weight = {canary_weight}); mlx_lm.lora trains with its unweighted\n"
        "# default loss (an unknown key such as token_weighting would be silently ignored).\n"
    )
    return header + yaml.safe_dump(args, sort_keys=False)


def weights_digest(model) -> str:
    """sha256 of the trainable parameters (names, shapes, bytes), to compare ranks."""
    h = hashlib.sha256()
    for name, w in sorted(tree_flatten(model.trainable_parameters())):
        h.update(name.encode())
        h.update(str(w.shape).encode())
        h.update(np.array(w.astype(mx.float32)).tobytes())
    return h.hexdigest()


class _Recorder:
    """Trainer callback: keeps the reports (mlx-lm's TrainUI already prints them); ``probe``
    (with the frozen-block cache) measures the valid set's loss and teacher-forced answer
    accuracy in one pass, and its loss replaces the trainer's (then taken on one batch only)."""

    def __init__(self, probe=None, say=print):
        self.train: list[dict] = []
        self.val: list[dict] = []
        self.probe, self.say = probe, say

    def on_train_loss_report(self, info):
        self.train.append({k: float(v) for k, v in info.items()})

    def on_val_loss_report(self, info):
        row = {k: float(v) for k, v in info.items()}
        if self.probe is not None:  # the whole valid set's loss and accuracy, in one pass
            acc = self.probe()
            row.update(val_loss=acc["loss"], valid_exact=acc["exact"], valid_decision=acc["decision"])
            self.say(f"iter {int(row['iteration'])}: valid answers exact {acc['exact']:.1%}, "
                     f"decision {acc['decision']:.1%} (teacher-forced, {acc['n']} examples)")
        self.val.append(row)


def _check_inputs(model_dir, data_dir, cfg, resume_adapter_file) -> dict[str, list]:
    if cfg["fine_tune_type"] not in FINE_TUNE_TYPES:
        raise UserError(
            f"finetune.fine_tune_type: unknown {cfg['fine_tune_type']!r} "
            f"(known: {', '.join(FINE_TUNE_TYPES)})"
        )
    if resume_adapter_file is not None and not Path(resume_adapter_file).is_file():
        raise UserError(f"resume adapter file not found: {resume_adapter_file}")
    if cfg["optimizer"] not in OPTIMIZERS:
        raise UserError(f"finetune.optimizer: unknown {cfg['optimizer']!r}")
    return load_splits(data_dir, ("train", "valid"))


def _check_model(model, tokenizer, model_dir, data_dir, splits, cfg, resume_adapter_file) -> int:
    """Every check that needs the loaded model; returns the number of adapted blocks."""
    for split, rows in splits.items():
        path = data_dir / f"{split}.jsonl"
        check_lengths(rows, tokenizer, cfg["max_seq_length"], path)
        if len(rows) < cfg["batch_size"]:
            raise UserError(f"{path}: {len(rows)} examples, fewer than batch_size={cfg['batch_size']}")
    num_layers = cfg["num_layers"]
    if num_layers > len(model.layers):
        raise UserError(
            f"finetune.num_layers={num_layers}, but {model_dir} has {len(model.layers)} layers"
        )
    if cfg["fine_tune_type"] == "full" and num_layers < 0:
        num_layers = len(model.layers)
    if (
        resume_adapter_file is not None
        and (Path(resume_adapter_file).parent / "adapter_config.json").is_file()
    ):
        from finetune_mlx.model_dir import check_adapter

        check_adapter(Path(resume_adapter_file).parent, model_dir)
    return num_layers


def _adapt(model, cfg, args, num_layers, resume_adapter_file) -> None:
    """Freeze the base; adapters (or unfrozen blocks) on the top ``num_layers``."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    if cfg["fine_tune_type"] == "full":
        for layer in model.layers[-num_layers:]:
            layer.unfreeze()
    else:
        linear_to_lora_layers(
            model, num_layers, args["lora_parameters"], use_dora=cfg["fine_tune_type"] == "dora"
        )
    if resume_adapter_file is not None:
        model.load_weights(str(resume_adapter_file), strict=False)


def _data(model, tokenizer, splits, args, cfg, num_layers, say) -> dict[str, Any]:
    """Train/valid sets, the loss and the batch iterator: mlx-lm's, or over cached frozen blocks."""
    from mlx_lm.tuner.datasets import CacheDataset, create_dataset
    from mlx_lm.tuner.trainer import iterate_batches

    ns = types.SimpleNamespace(**args)
    sets = {s: CacheDataset(create_dataset(rows, tokenizer, ns)) for s, rows in splits.items()}
    start = len(model.layers) - num_layers if num_layers > 0 else 0
    out = {"train": sets["train"], "valid": sets["valid"], "iterate": iterate_batches,
           "loss": make_loss(tokenizer, cfg["canary_weight"]), "cached_blocks": 0}
    if not cfg["cache_frozen"] or not frozen.supported(model, start):
        return out
    lengths = [len(sets[s][i][0]) for s in sets for i in range(len(sets[s]))]
    gib = frozen.cache_bytes(lengths, model.args.hidden_size) / 2**30
    if gib > cfg["cache_frozen_max_gib"]:
        say(f"frozen-block cache would take {gib:.1f} GiB > finetune.cache_frozen_max_gib: "
            "training runs the full model")
        return out
    t0 = time.perf_counter()
    done, total, shown = 0, len(lengths), 0

    def progress(n: int) -> None:  # a line per tenth: the cache can take minutes
        nonlocal done, shown
        done += n
        if 10 * done // total > shown and done < total:
            shown = 10 * done // total
            left = (time.perf_counter() - t0) * (total - done) / done
            say(f"caching the {start} frozen blocks: {done}/{total} examples, ~{left:.0f} s left")

    cached = {s: frozen.cache_dataset(model, d, start, on_batch=progress) for s, d in sets.items()}
    say(f"cached the {start} frozen blocks' output for {len(lengths)} examples "
        f"({gib:.2f} GiB, {time.perf_counter() - t0:.0f} s)")
    seqs = canary_token_sequences(tokenizer)  # top_loss weighs them only when weight != 1
    out.update(train=cached["train"], valid=cached["valid"], iterate=frozen.iterate_batches,
               loss=frozen.top_loss(start, seqs, cfg["canary_weight"]), cached_blocks=start,
               probe=lambda: frozen.answer_accuracy(model, cached["valid"], start, seqs,
                                                    cfg["batch_size"], cfg["canary_weight"]))
    return out


def train(
    model_dir: str | Path,
    data_dir: str | Path,
    adapter_dir: str | Path,
    cfg: dict[str, Any],
    resume_adapter_file: str | Path | None = None,
    say=print,
) -> dict[str, Any]:
    """Train adapters into ``adapter_dir``; returns the report (also ``train_report.json``)."""
    from mlx_lm import load as mlx_load

    model_dir = check_model_dir(model_dir)
    data_dir, adapter_dir = Path(data_dir), Path(adapter_dir)
    splits = _check_inputs(model_dir, data_dir, cfg, resume_adapter_file)
    world = mx.distributed.init()
    rank, size = world.rank(), world.size()
    if cfg["batch_size"] % size:
        raise UserError(f"finetune.batch_size={cfg['batch_size']} must divide by the {size} processes")
    mx.random.seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    model, tokenizer = mlx_load(str(model_dir))
    use_sgemm(model)  # a quantized (QLoRA) base on the CPU: wide inputs at sgemm speed
    num_layers = _check_model(model, tokenizer, model_dir, data_dir, splits, cfg, resume_adapter_file)

    # Nothing is written before here: every check above can still fail.
    resume = str(resume_adapter_file) if resume_adapter_file else None
    args = mlx_lm_args(cfg, str(model_dir), str(data_dir), str(adapter_dir), resume)
    _adapt(model, cfg, args, num_layers, resume_adapter_file)
    data = _data(model, tokenizer, splits, args, cfg, num_layers, say)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    adapter_config = dict(args, num_layers=num_layers)
    adapter_config.update(
        canary_weight=cfg["canary_weight"],
        canary_token_ids=canary_token_sequences(tokenizer),
        base_fingerprint=fingerprint(model_dir),
        base_arch=arch_of(model_dir),
        num_processes=size,
    )
    if rank == 0:
        write_json(adapter_dir / "adapter_config.json", adapter_config)
        write_text(adapter_dir / "lora_config.yaml", lora_yaml(args, cfg["canary_weight"]))
    result = _run(model, data, args, cfg, adapter_dir, say)
    if rank == 0:
        _save_adapters(model, adapter_dir)
    report = {
        "model": str(model_dir),
        "data": str(data_dir),
        "fine_tune_type": cfg["fine_tune_type"],
        "iters": cfg["iters"],
        "num_processes": size,
        "rank": rank,
        "trainable_parameters": sum(v.size for _, v in tree_flatten(model.trainable_parameters())),
        "total_parameters": sum(v.size for _, v in tree_flatten(model.parameters())),
        "cached_frozen_blocks": data["cached_blocks"],
        **result,
        "adapter_sha256": weights_digest(model),
        "canary_weight": cfg["canary_weight"],
    }
    write_json(
        adapter_dir / ("train_report.json" if rank == 0 else f"train_report.rank{rank}.json"),
        report,
    )
    return report


def _run(model, data, args, cfg, adapter_dir: Path, say=print) -> dict[str, Any]:
    """mlx-lm's trainer with this run's loss and batches, then the final validation loss."""
    from mlx_lm.tuner.trainer import TrainingArgs, evaluate
    from mlx_lm.tuner.trainer import train as mlx_train
    from mlx_lm.tuner.utils import build_schedule

    optimizer = OPTIMIZERS[cfg["optimizer"]](learning_rate=build_schedule(args["lr_schedule"]))
    recorder = _Recorder(data.get("probe"), say)
    training_args = TrainingArgs(
        batch_size=cfg["batch_size"],
        iters=cfg["iters"],
        # with a probe the valid loss comes from its own pass over the whole valid set: the
        # trainer's pass would be a second forward over the same examples (~20 s each time here)
        val_batches=1 if data.get("probe") else cfg["val_batches"],
        steps_per_report=cfg["steps_per_report"],
        steps_per_eval=cfg["steps_per_eval"],
        steps_per_save=cfg["save_every"],
        adapter_file=str(adapter_dir / "adapters.safetensors"),
        max_seq_length=cfg["max_seq_length"],
        grad_checkpoint=cfg["grad_checkpoint"],
        grad_accumulation_steps=cfg["grad_accumulation_steps"],
    )
    t0 = time.perf_counter()
    mlx_train(model=model, optimizer=optimizer, train_dataset=data["train"],
              val_dataset=data["valid"], args=training_args, loss=data["loss"],
              iterate_batches=data["iterate"], training_callback=recorder)
    seconds = time.perf_counter() - t0
    # The trainer's last validation runs before the last step; measure the final weights.
    final_acc = data["probe"]() if data.get("probe") else None
    final_val = final_acc["loss"] if final_acc else evaluate(
        model=model, dataset=data["valid"], batch_size=cfg["batch_size"],
        num_batches=cfg["val_batches"], max_seq_length=cfg["max_seq_length"],
        loss=data["loss"], iterate_batches=data["iterate"])
    tokens = sum(r["trained_tokens"] for r in recorder.train[-1:])
    return {
        "final_valid_accuracy": final_acc,
        "seconds": round(seconds, 2),
        "trained_tokens": int(tokens),
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
        "final_train_loss": recorder.train[-1]["train_loss"] if recorder.train else None,
        "final_val_loss": final_val,
        "train_log": recorder.train,
        "val_log": recorder.val,
    }


def _save_adapters(model, adapter_dir: Path) -> None:
    """The trainer wrote the file in place; rewrite it atomically so a reader never sees half."""
    with atomic_path(adapter_dir / "adapters.safetensors") as tmp:
        mx.save_safetensors(
            str(tmp.with_suffix(".safetensors")),
            dict(tree_flatten(model.trainable_parameters())),
        )
        tmp.with_suffix(".safetensors").replace(tmp)

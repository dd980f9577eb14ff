"""WGAN-GP training loop, in the shape of ``mlx_lm.tuner.trainer``: a settings dataclass
(:class:`TrainingArgs`), the critic and generator steps as functions, the loss terms and the
batch iteration passed in. Seeded, resumable (checkpoints hold every RNG and optimizer state:
an interrupted run resumed reproduces the uninterrupted one bit for bit), atomic checkpoints,
EMA generator weights, best.pt by validation fidelity among the steps after
``select_from_frac`` (default: the last)."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from apeagent.errors import UserError
from apeagent.files import write_jsonl
from gan_torch import checkpoint as ckio
from gan_torch import losses
from gan_torch.data import build_dataset
from gan_torch.models import Critic, Generator, resolve_device

LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"


@dataclass
class TrainingArgs:
    """The loop's settings; values come from the ``gan`` config section (apeagent/defaults.yaml)."""

    steps: int  # generator steps
    batch_size: int
    n_critic: int  # critic steps per generator step
    gp_weight: float
    fm_weight: float
    moment_weight: float
    acf_abs_weight: float
    div_weight: float
    instance_noise: float
    noise_anneal_frac: float
    ema_decay: float
    select_from_frac: float
    log_every: int
    eval_every: int
    checkpoint_every: int
    seed: int

    @classmethod
    def from_config(cls, cfg: dict) -> TrainingArgs:
        cast = {"int": int, "float": float}
        return cls(**{f.name: cast[f.type](cfg[f.name]) for f in fields(cls)})

    def weights(self) -> dict[str, float]:
        """Weight of each generator term (:func:`gan_torch.losses.generator_terms`)."""
        return {
            "adv": 1.0,
            "fm": self.fm_weight,
            "moment": self.moment_weight,
            "acf_abs": self.acf_abs_weight,
            "div": self.div_weight,
        }


def iterate_batches(x: torch.Tensor, cond: torch.Tensor, batch_size: int, gen: torch.Generator):
    """Endless (windows, conditions) batches drawn with replacement by ``gen``."""
    while True:
        idx = torch.randint(len(x), (batch_size,), generator=gen).to(x.device)
        yield x[idx], cond[idx]


def noise(n: int, cfg: dict, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step and global generator noise for n windows."""
    z = torch.randn(n, cfg["window_bars"], cfg["noise_dim"], generator=gen).to(device)
    zg = torch.randn(n, cfg["noise_dim"], generator=gen).to(device)
    return z, zg


def critic_step(
    gnet, cnet, opt_c, batch, sigma, args: TrainingArgs, cfg, gen, loss=losses.critic_loss
):
    """One critic update on a real batch against fresh fakes; returns (loss, terms)."""
    real, cond = batch
    z, zg = noise(len(real), cfg, gen, real.device)
    with torch.no_grad():
        fake = gnet(z, cond, zg)
    loss_c, terms = loss(cnet, real, fake, cond, sigma, args.gp_weight, gen)
    opt_c.zero_grad(set_to_none=True)
    loss_c.backward()
    opt_c.step()
    return loss_c, terms


def generator_step(
    gnet,
    cnet,
    opt_g,
    batch,
    sigma,
    args: TrainingArgs,
    cfg,
    gen,
    targets,
    terms=losses.generator_terms,
):
    """One generator update: pairs of fakes share a condition (for the diversity term), every
    term from ``terms`` weighted by ``args.weights()``; returns (loss, terms)."""
    real, cond_real = batch
    half = max(1, len(real) // 2)
    cond = torch.cat([cond_real[:half], cond_real[:half]])
    z, zg = noise(2 * half, cfg, gen, real.device)
    fake = gnet(z, cond, zg)
    parts = terms(
        cnet, real, cond_real, fake, cond, torch.cat([z.flatten(1), zg], 1), sigma, targets, gen
    )
    loss_g = 0.0
    for name, weight in args.weights().items():
        loss_g = loss_g + weight * parts[name]
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    return loss_g, parts


def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float, step: int) -> None:
    """Polyak/EMA average of the generator's weights (Yazici et al. 2019), in place.

    The decay warms up as ``min(decay, (1 + step) / (10 + step))`` so the average is not
    dominated by the random initialisation in short runs.
    """
    d = min(float(decay), (1.0 + step) / (10.0 + step))
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
            pe.lerp_(p, 1.0 - d)
        for be, b in zip(ema.buffers(), net.buffers(), strict=True):
            be.copy_(b)


def evaluate_fidelity(gnet, ds, cfg, ckpt_like, device, split="val") -> float:
    """Fidelity of the generator on a held-out period (lower is better), fixed noise.

    Conditioned as generation is: conditions drawn from the training ``cond_bank``, never the
    held-out bars before each window (``gan_torch.validate`` does the same)."""
    from gan_torch.fidelity import fidelity
    from gan_torch.generate import decode_features, sample_scaled

    part = ds[split] if len(ds[split]["starts"]) else ds["train"]
    n = max(64, len(part["raw"]))
    fake, _, _ = sample_scaled(gnet, ckpt_like, n, seed=int(cfg["seed"]) + 1, device=device)
    gnet.train()
    return fidelity(part["raw"], decode_features(fake, ckpt_like))


def _ckpt(cfg, ds, gnet, cnet, opt_g, opt_c, step, gen, best, fid, gema=None) -> dict:
    extra = {} if gema is None else {"generator_train": gnet.state_dict()}
    return {
        "format": ckio.FORMAT,
        "config": dict(cfg),
        # the weights generation uses: the EMA average when ema_decay > 0
        "generator": (gema if gema is not None else gnet).state_dict(),
        **extra,
        "critic": cnet.state_dict(),
        "opt_g": opt_g.state_dict(),
        "opt_c": opt_c.state_dict(),
        "scaler": ds["scaler"],
        "cond_scaler": ds["cond_scaler"],
        "cond_bank": torch.from_numpy(ds["train"]["cond_raw"]).float(),
        "start_prices": torch.from_numpy(ds["train"]["start_price"]).double(),
        "data": {
            "step_bound": ds["step_bound"],
            "feature_max": ds["feature_max"],
            "liquidity": ds["liquidity"],
            "bar_seconds": ds["bar_seconds"],
            "last_close": ds["last_close"],
            "bounds": {k: list(v) for k, v in ds["bounds"].items()},
        },
        "step": int(step),
        "rng": gen.get_state(),
        "best_fidelity": float(best),
        "fidelity": float(fid),
    }


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]gan[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not enabled,
        transient=False,
    )


def _load_resume(out_dir: Path, cfg: dict, ds: dict, resume: bool) -> dict | None:
    """The checkpoint to resume from (``last.pt``), its scalers applied to ``ds``; None when
    not resuming or nothing to resume."""
    last_path = out_dir / LAST
    if not (resume and last_path.exists()):
        return None
    resumed = ckio.load(last_path)
    ckio.check_compatible(resumed["config"], cfg, last_path)
    ds["scaler"], ds["cond_scaler"] = resumed["scaler"], resumed["cond_scaler"]
    _rescale(ds)
    return resumed


def _build_models(cfg: dict, args: TrainingArgs, device):
    """Seeded generator, critic, their optimizers, the batch/noise RNG and the EMA copy."""
    torch.manual_seed(args.seed)
    gnet, cnet = Generator(cfg).to(device), Critic(cfg).to(device)
    opt_g = torch.optim.Adam(gnet.parameters(), lr=cfg["lr_g"], betas=(cfg["beta1"], cfg["beta2"]))
    opt_c = torch.optim.Adam(cnet.parameters(), lr=cfg["lr_c"], betas=(cfg["beta1"], cfg["beta2"]))
    gen = torch.Generator().manual_seed(args.seed)
    gema = copy.deepcopy(gnet).requires_grad_(False) if args.ema_decay > 0 else None
    return gnet, cnet, opt_g, opt_c, gen, gema


def _restore(resumed, gnet, cnet, opt_g, opt_c, gen, gema, out_dir: Path):
    """Load every weight, optimizer and RNG state of ``resumed``; returns (step, best, the
    metrics rows up to that step)."""
    gnet.load_state_dict(resumed.get("generator_train", resumed["generator"]))
    if gema is not None:
        gema.load_state_dict(resumed["generator"])
    cnet.load_state_dict(resumed["critic"])
    opt_g.load_state_dict(resumed["opt_g"])
    opt_c.load_state_dict(resumed["opt_c"])
    gen.set_state(resumed["rng"])
    step = int(resumed["step"])
    rows: list[dict] = []
    if (out_dir / METRICS).exists():
        rows = [json.loads(x) for x in (out_dir / METRICS).read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r["step"] <= step]
    return step, float(resumed["best_fidelity"]), rows


def _eval_context(ds: dict, cfg: dict) -> dict:
    """The checkpoint fields ``evaluate_fidelity`` samples with."""
    return {
        "scaler": ds["scaler"],
        "cond_scaler": ds["cond_scaler"],
        "cond_bank": torch.from_numpy(ds["train"]["cond_raw"]),
        "config": cfg,
        "data": {"step_bound": ds["step_bound"], "feature_max": ds["feature_max"]},
    }


def _loss_targets(ds: dict, cfg: dict) -> losses.Targets:
    """The generator's targets. Volatility clustering: ACF of |r| of all real training
    windows, computed exactly as the validation metric computes it (fidelity.acf on raw
    returns)."""
    from gan_torch.fidelity import acf as np_acf

    acf_lags = min(int(cfg["acf_abs_lags"]), int(cfg["window_bars"]) - 1)
    return losses.Targets(
        scaler=ds["scaler"],
        r_bound=float(ds["step_bound"]) * float(cfg["step_bound_mult"]),
        acf_abs=torch.tensor(np_acf(np.abs(ds["train"]["raw"][..., 0]), acf_lags)).float(),
    )


def _log_row(step, loss_c, loss_g, c_terms, g_terms, sigma, t0) -> dict:
    return {
        "step": step,
        "loss_c": loss_c.item(),
        "loss_g": loss_g.item(),
        **{k: v.item() for k, v in c_terms.items()},
        **{k: v.item() for k, v in g_terms.items()},
        "noise_sigma": sigma,
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }


def _bar_info(row: dict) -> str:
    nan = float("nan")
    return (
        f"C {row.get('loss_c', nan):+.3f} G {row.get('loss_g', nan):+.3f} "
        f"GP {row.get('gp', nan):.3f}"
    )


def train(
    bars: dict,
    cfg: dict,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
    source: str = "bars",
    iterate_batches=iterate_batches,
    critic_loss=losses.critic_loss,
    generator_terms=losses.generator_terms,
) -> dict:
    """Train; returns a summary. ``stop_at`` ends the run early (as an interruption would)."""
    out_dir = Path(out_dir)
    if cfg["minibatch_impl"] not in ("cdist", "native"):
        raise UserError(f"minibatch_impl must be cdist or native, got {cfg['minibatch_impl']!r}")
    args = TrainingArgs.from_config(cfg)
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    device = resolve_device(cfg["device"])
    ds = build_dataset(bars, cfg, source=source)
    resumed = _load_resume(out_dir, cfg, ds, resume)
    gnet, cnet, opt_g, opt_c, gen, gema = _build_models(cfg, args, device)
    step, best, fid, rows = 0, float("inf"), float("nan"), []
    if resumed is not None:
        step, best, rows = _restore(resumed, gnet, cnet, opt_g, opt_c, gen, gema, out_dir)

    x_train = torch.from_numpy(ds["train"]["x"]).to(device)
    c_train = torch.from_numpy(ds["train"]["cond"]).to(device)
    batches = iterate_batches(x_train, c_train, args.batch_size, gen)
    # best.pt candidates: only generators trained past select_from (docs/gan_torch.md)
    select_from = args.select_from_frac * args.steps
    end = args.steps if stop_at is None else min(args.steps, stop_at)
    ckpt_like = _eval_context(ds, cfg)
    targets = _loss_targets(ds, cfg)
    t0 = time.perf_counter()
    gnet.train()
    cnet.train()

    def save(path):
        ckio.save(path, _ckpt(cfg, ds, gnet, cnet, opt_g, opt_c, step, gen, best, fid, gema))

    bar = _progress(progress)
    with bar:
        task = bar.add_task("train", total=args.steps, completed=step, info="")
        while step < end:
            sigma = losses.instance_noise_sigma(
                step, args.steps, args.instance_noise, args.noise_anneal_frac
            )
            for _ in range(args.n_critic):
                loss_c, c_terms = critic_step(
                    gnet, cnet, opt_c, next(batches), sigma, args, cfg, gen, critic_loss
                )
            loss_g, g_terms = generator_step(
                gnet, cnet, opt_g, next(batches), sigma, args, cfg, gen, targets, generator_terms
            )
            if gema is not None:
                ema_update(gema, gnet, args.ema_decay, step)
            step += 1

            row = None
            if step % args.log_every == 0 or step == end:
                row = _log_row(step, loss_c, loss_g, c_terms, g_terms, sigma, t0)
            if step % args.eval_every == 0 or step == args.steps:
                fid = evaluate_fidelity(gnet if gema is None else gema, ds, cfg, ckpt_like, device)
                row = row or {"step": step}
                row["fidelity"] = fid
                if fid < best and (step > select_from or step == args.steps):
                    best = fid
                    save(out_dir / BEST)
            if row is not None:
                rows.append(row)
                bar.update(task, info=_bar_info(row))
            bar.update(task, completed=step)
            if step % args.checkpoint_every == 0 or step == end:
                save(out_dir / LAST)
                write_jsonl(out_dir / METRICS, rows)
    if not (out_dir / BEST).exists():
        save(out_dir / BEST)
    elapsed = time.perf_counter() - t0
    return {
        "steps": step,
        "elapsed_s": elapsed,
        "steps_per_s": (step - (resumed["step"] if resumed else 0)) / max(elapsed, 1e-9),
        "best_fidelity": best,
        "train_windows": len(x_train),
        "device": str(device),
        "out_dir": str(out_dir),
    }


def _rescale(ds: dict) -> dict:
    """Re-apply a checkpoint's scalers (resume keeps the scaling it started with)."""
    from gan_torch.data import scale, scale_condition

    for name in ("train", "val", "test"):
        part = ds[name]
        part["x"] = scale(part["raw"], ds["scaler"]).astype(np.float32)
        part["cond"] = scale_condition(part["cond_raw"], ds["cond_scaler"])
    return ds

"""WGAN-GP training loop: seeded, resumable, atomic checkpoints, EMA generator weights,
best.pt by validation fidelity among the steps after ``select_from_frac`` (default: the last)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from apeagent.files import write_jsonl
from gan_torch import checkpoint as ckio
from gan_torch import losses
from gan_torch.data import build_dataset
from gan_torch.models import Critic, Generator, resolve_device

LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"


def _opt(params, lr, cfg):
    return torch.optim.Adam(params, lr=lr, betas=(cfg["beta1"], cfg["beta2"]))


def _noise(n, cfg, gen, device):
    z = torch.randn(n, cfg["window_bars"], cfg["noise_dim"], generator=gen).to(device)
    zg = torch.randn(n, cfg["noise_dim"], generator=gen).to(device)
    return z, zg


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


def train(
    bars: dict,
    cfg: dict,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
    source: str = "bars",
) -> dict:
    """Train; returns a summary. ``stop_at`` ends the run early (as an interruption would)."""
    out_dir = Path(out_dir)
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    device = resolve_device(cfg["device"])
    ds = build_dataset(bars, cfg, source=source)
    last_path = out_dir / LAST
    resumed = None
    if resume and last_path.exists():
        resumed = ckio.load(last_path)
        ckio.check_compatible(resumed["config"], cfg, last_path)
        ds["scaler"], ds["cond_scaler"] = resumed["scaler"], resumed["cond_scaler"]
        ds = _rescale(ds, bars, cfg)

    torch.manual_seed(int(cfg["seed"]))
    gnet, cnet = Generator(cfg).to(device), Critic(cfg).to(device)
    opt_g = _opt(gnet.parameters(), cfg["lr_g"], cfg)
    opt_c = _opt(cnet.parameters(), cfg["lr_c"], cfg)
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    step, best, fid = 0, float("inf"), float("nan")
    rows: list[dict] = []
    gema = None
    if float(cfg["ema_decay"]) > 0:
        gema = copy.deepcopy(gnet).requires_grad_(False)
    if resumed is not None:
        gnet.load_state_dict(resumed.get("generator_train", resumed["generator"]))
        if gema is not None:
            gema.load_state_dict(resumed["generator"])
        cnet.load_state_dict(resumed["critic"])
        opt_g.load_state_dict(resumed["opt_g"])
        opt_c.load_state_dict(resumed["opt_c"])
        gen.set_state(resumed["rng"])
        step, best = int(resumed["step"]), float(resumed["best_fidelity"])
        if (out_dir / METRICS).exists():
            rows = [
                json.loads(x) for x in (out_dir / METRICS).read_text().splitlines() if x.strip()
            ]
            rows = [r for r in rows if r["step"] <= step]

    x_train = torch.from_numpy(ds["train"]["x"]).to(device)
    c_train = torch.from_numpy(ds["train"]["cond"]).to(device)
    n_train, b = len(x_train), int(cfg["batch_size"])
    half = max(1, b // 2)
    total = int(cfg["steps"])
    # best.pt candidates: only generators trained past select_from (see config.py)
    select_from = float(cfg["select_from_frac"]) * total
    end = total if stop_at is None else min(total, stop_at)
    ckpt_like = {
        "scaler": ds["scaler"],
        "cond_scaler": ds["cond_scaler"],
        "cond_bank": torch.from_numpy(ds["train"]["cond_raw"]),
        "config": cfg,
        "data": {"step_bound": ds["step_bound"], "feature_max": ds["feature_max"]},
    }
    # volatility clustering target: ACF of |r| of all real training windows, computed
    # exactly as the validation metric computes it (validate.acf on raw returns)
    from gan_torch.fidelity import acf as np_acf

    acf_lags = min(int(cfg["acf_abs_lags"]), int(cfg["window_bars"]) - 1)
    acf_target = torch.tensor(np_acf(np.abs(ds["train"]["raw"][..., 0]), acf_lags)).float()
    r_bound = float(ds["step_bound"]) * float(cfg["step_bound_mult"])
    t0 = time.perf_counter()
    gnet.train()
    cnet.train()

    def save(path):
        ckio.save(path, _ckpt(cfg, ds, gnet, cnet, opt_g, opt_c, step, gen, best, fid, gema))

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]gan[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not progress,
        transient=False,
    )
    with bar:
        task = bar.add_task("train", total=total, completed=step, info="")
        while step < end:
            sigma = losses.instance_noise_sigma(
                step, total, cfg["instance_noise"], cfg["noise_anneal_frac"]
            )
            for _ in range(int(cfg["n_critic"])):
                idx = torch.randint(n_train, (b,), generator=gen).to(device)
                real, cond = x_train[idx], c_train[idx]
                z, zg = _noise(b, cfg, gen, device)
                with torch.no_grad():
                    fake = gnet(z, cond, zg)
                d_real, _ = cnet(losses.add_instance_noise(real, sigma, gen), cond)
                d_fake, _ = cnet(losses.add_instance_noise(fake, sigma, gen), cond)
                w = losses.critic_wasserstein(d_real, d_fake)
                gp = losses.gradient_penalty(cnet, real, fake, cond, gen)
                loss_c = w + cfg["gp_weight"] * gp
                opt_c.zero_grad(set_to_none=True)
                loss_c.backward()
                opt_c.step()

            idx = torch.randint(n_train, (b,), generator=gen).to(device)
            real, cond_real = x_train[idx], c_train[idx]
            cond = torch.cat([cond_real[:half], cond_real[:half]])  # pairs share a condition
            z, zg = _noise(2 * half, cfg, gen, device)
            fake = gnet(z, cond, zg)
            d_fake, f_fake = cnet(losses.add_instance_noise(fake, sigma, gen), cond)
            with torch.no_grad():
                _, f_real = cnet(real, cond_real)
            terms = {
                "adv": losses.generator_wasserstein(d_fake),
                "fm": losses.feature_matching(f_real, f_fake),
                "moment": losses.moment_matching(real, fake),
                "acf_abs": losses.abs_return_acf_loss(
                    losses.decoded_returns(fake, ds["scaler"], r_bound), acf_target.to(device)
                ),
                "div": losses.diversity_loss(
                    fake[:half],
                    fake[half:],
                    torch.cat([z[:half].flatten(1), zg[:half]], 1),
                    torch.cat([z[half:].flatten(1), zg[half:]], 1),
                ),
            }
            loss_g = (
                terms["adv"]
                + cfg["fm_weight"] * terms["fm"]
                + cfg["moment_weight"] * terms["moment"]
                + cfg["acf_abs_weight"] * terms["acf_abs"]
                + cfg["div_weight"] * terms["div"]
            )
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            if gema is not None:
                ema_update(gema, gnet, cfg["ema_decay"], step)
            step += 1

            row = None
            if step % int(cfg["log_every"]) == 0 or step == end:
                row = {
                    "step": step,
                    "loss_c": loss_c.item(),
                    "loss_g": loss_g.item(),
                    "wasserstein": -w.item(),
                    "gp": gp.item(),
                    **{k: v.item() for k, v in terms.items()},
                    "noise_sigma": sigma,
                    "elapsed_s": round(time.perf_counter() - t0, 3),
                }
            if step % int(cfg["eval_every"]) == 0 or step == total:
                fid = evaluate_fidelity(gnet if gema is None else gema, ds, cfg, ckpt_like, device)
                row = row or {"step": step}
                row["fidelity"] = fid
                if fid < best and (step > select_from or step == total):
                    best = fid
                    save(out_dir / BEST)
            if row is not None:
                rows.append(row)
                bar.update(
                    task,
                    info=f"C {row.get('loss_c', float('nan')):+.3f} G {row.get('loss_g', float('nan')):+.3f} GP {row.get('gp', float('nan')):.3f}",
                )
            bar.update(task, completed=step)
            if step % int(cfg["checkpoint_every"]) == 0 or step == end:
                save(last_path)
                write_jsonl(out_dir / METRICS, rows)
    if not (out_dir / BEST).exists():
        save(out_dir / BEST)
    elapsed = time.perf_counter() - t0
    return {
        "steps": step,
        "elapsed_s": elapsed,
        "steps_per_s": (step - (resumed["step"] if resumed else 0)) / max(elapsed, 1e-9),
        "best_fidelity": best,
        "train_windows": n_train,
        "device": str(device),
        "out_dir": str(out_dir),
    }


def _rescale(ds: dict, bars: dict, cfg: dict) -> dict:
    """Re-apply a checkpoint's scalers (resume keeps the scaling it started with)."""
    from gan_torch.data import scale
    from gan_torch.generate import scale_condition

    for name in ("train", "val", "test"):
        part = ds[name]
        part["x"] = scale(part["raw"], ds["scaler"]).astype(np.float32)
        part["cond"] = scale_condition(part["cond_raw"], ds["cond_scaler"])
    return ds

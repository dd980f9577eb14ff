"""Device benchmark: training steps/s and generated windows/s, cdist fallback vs native."""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from gan_torch.models import Generator

WARMUP = 3


def available(device: str) -> tuple[bool, str]:
    if device == "cpu":
        return True, ""
    if device == "cuda":
        return (
            torch.cuda.is_available(),
            "CUDA not available (no NVIDIA GPU / CPU-only torch build)",
        )
    if device == "mps":
        return (torch.backends.mps.is_available(), "MPS not available (not an Apple-silicon Mac)")
    return False, f"unknown device {device!r}"


def _peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    if device == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def time_training(bars: dict, cfg: dict, device: str, impl: str, steps: int) -> dict:
    from gan_torch.train import train

    c = dict(cfg, device=device, minibatch_impl=impl, steps=steps + WARMUP, log_every=1)
    c.update(eval_every=10**9, checkpoint_every=10**9)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        train(bars, c, tmp, progress=False)
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    t = {r["step"]: r["elapsed_s"] for r in rows if "elapsed_s" in r}
    dt = t[steps + WARMUP] - t[WARMUP]
    return {"train_steps_per_s": steps / dt, "peak_mem_mb": _peak_mb(device)}


def time_generation(cfg: dict, device: str, n: int = 256, reps: int = 3) -> float:
    torch.manual_seed(0)
    g = Generator(cfg).to(device).eval()
    z = torch.randn(n, cfg["window_bars"], cfg["noise_dim"], device=device)
    zg = torch.randn(n, cfg["noise_dim"], device=device)
    c = torch.zeros(n, 3, device=device)
    with torch.no_grad():
        g(z, c, zg)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            g(z, c, zg)
        _sync(device)
    return n * reps / (time.perf_counter() - t0)


def device_bench(bars: dict, cfg: dict, devices: list[str], steps: int = 20) -> dict:
    rows = []
    for d in devices:
        ok, why = available(d)
        if not ok:
            rows.append({"device": d, "skipped": why})
            continue
        gen_rate = time_generation(cfg, d)
        for impl in ("cdist", "native"):
            r = time_training(bars, cfg, d, impl, steps)
            rows.append(
                {
                    "device": d,
                    "minibatch_impl": impl,
                    "cdist_on": "cpu (fallback)"
                    if (impl == "cdist" and d == "mps")
                    else (d if impl == "cdist" else "-"),
                    **r,
                    "gen_windows_per_s": gen_rate,
                }
            )
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": {
            k: cfg[k]
            for k in (
                "window_bars",
                "d_model",
                "num_heads",
                "num_layers",
                "batch_size",
                "n_critic",
                "critic_hidden",
                "mb_kernels",
            )
        },
        "steps": steps,
        "rows": rows,
    }


def print_bench(result: dict, console) -> None:
    from rich.table import Table

    t = Table(title=f"ape-gan bench (torch {result['torch']}, {result['steps']} steps)")
    for col in (
        "device",
        "minibatch",
        "cdist runs on",
        "train steps/s",
        "gen windows/s",
        "peak MB",
        "note",
    ):
        t.add_column(col)
    for r in result["rows"]:
        if "skipped" in r:
            t.add_row(r["device"], "-", "-", "-", "-", "-", f"skipped: {r['skipped']}")
        else:
            t.add_row(
                r["device"],
                r["minibatch_impl"],
                r["cdist_on"],
                f"{r['train_steps_per_s']:.2f}",
                f"{r['gen_windows_per_s']:.0f}",
                f"{r['peak_mem_mb']:.0f}",
                "",
            )
    console.print(t)

"""`ape-gan` / `python -m gan_torch`: train, generate, validate, real windows, device bench."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import typer
from rich.console import Console

from apeagent.cli import ConfigOpt, RunDirOpt, run_cli
from apeagent.errors import UserError
from apeagent.layout import RunLayout

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="WGAN-GP on real swap bars: train, generate synthetic windows, validate, benchmark devices.",
)
console = Console(stderr=True)
SHARED_CSV = Path("../shared/data/base_eth_usdc_v4_swaps.csv")


@app.callback()
def _group() -> None:
    """Keep typer in multi-command mode."""


def _cfg(config: str | None, run_dir: Path | None, overrides: dict) -> tuple[dict, RunLayout]:
    from apeagent.config import stage_settings

    return stage_settings(config, run_dir, "gan", overrides)


def bars_from_swaps_csv(csv_path: Path, out_dir: Path) -> Path:
    """bars.parquet from a swaps CSV through `ape-chain process` (the chain stage's contract)."""
    if not csv_path.is_file():
        raise UserError(f"swaps CSV not found: {csv_path}")
    cmd = [
        sys.executable,
        "-m",
        "chain",
        "process",
        "--csv",
        str(csv_path),
        "--out-dir",
        str(out_dir),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"`ape-chain process` failed on {csv_path}: {done.stderr.strip()[-500:]}")
    return out_dir / "bars.parquet"


@app.command()
def train(
    bars: Path = typer.Option(None, "--bars", help="bars.parquet [RUN/features/bars.parquet]."),
    out_dir: Path = typer.Option(
        None, "--out-dir", help="Checkpoints + metrics.jsonl [RUN/gan]."
    ),
    quick_test: bool = typer.Option(
        False, "--quick-test", help="Train on the shared real CSV, quick_test_steps steps."
    ),
    csv_path: Path = typer.Option(
        None, "--csv", help="Swaps CSV for --quick-test [../shared/data/...]."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from out_dir/last.pt."),
    steps: int = typer.Option(None, "--steps"),
    batch_size: int = typer.Option(None, "--batch-size"),
    device: str = typer.Option(None, "--device", help="auto | cpu | mps | cuda."),
    minibatch_impl: str = typer.Option(
        None, "--minibatch-impl", help="cdist (CPU fallback on MPS) | native."
    ),
    seed: int = typer.Option(None, "--seed"),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (0: default)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """Train the WGAN-GP; atomic checkpoints (last.pt every N steps, best.pt by fidelity)."""
    import json

    from gan_torch.data import read_bars
    from gan_torch.train import train as run_train

    over = {
        "steps": steps,
        "batch_size": batch_size,
        "device": device,
        "seed": seed,
        "threads": threads,
        "minibatch_impl": minibatch_impl,
    }
    cfg, run = _cfg(config, run_dir, over)
    if cfg["minibatch_impl"] not in ("cdist", "native"):
        raise UserError(f"minibatch_impl must be cdist or native, got {cfg['minibatch_impl']!r}")
    out_dir = out_dir or run.gan
    with tempfile.TemporaryDirectory() as tmp:
        if quick_test:
            if steps is None:
                cfg["steps"] = cfg["quick_test_steps"]
            cfg["checkpoint_every"] = min(cfg["checkpoint_every"], cfg["steps"])
            bars = bars or bars_from_swaps_csv(csv_path or SHARED_CSV, Path(tmp))
        bars = bars or run.bars
        data = read_bars(bars)
        summary = run_train(data, cfg, out_dir, resume=resume, progress=not quiet, source=str(bars))
    console.print(json.dumps(summary))


@app.command()
def generate(
    checkpoint: Path = typer.Option(
        None,
        "--checkpoint",
        help="Checkpoint [RUN/gan/best.pt] (--backend mlx: also a converted dir).",
    ),
    out: Path = typer.Option(
        None, "--out", help="windows.parquet to write [RUN/synthetic/windows.parquet]."
    ),
    n: int = typer.Option(None, "--n", help="Number of windows [gan.n_generate]."),
    condition: str = typer.Option(
        None,
        "--condition",
        help="typical|calm|volatile|up|down or vol=..,trend=..,volume=.. (default: real training conditions).",
    ),
    seed: int = typer.Option(None, "--seed"),
    start_price: float = typer.Option(
        None, "--start-price", help="Anchor price (default: real closes from training)."
    ),
    swaps_out: Path = typer.Option(
        None, "--swaps-out", help="Also write swap events (collector CSV + log_index, sequence)."
    ),
    swap_decoder: str = typer.Option(
        None, "--swap-decoder", help="bootstrap (real swap sequences) | uniform [gan.swap_decoder]."
    ),
    real_swaps: Path = typer.Option(
        None, "--real-swaps", help="Real swaps.parquet for the bootstrap [RUN/features/swaps.parquet]."
    ),
    continuous: bool = typer.Option(
        False, "--continuous", help="Chain the windows into one path (one swap sequence)."
    ),
    autoregressive: bool = typer.Option(
        False, "--autoregressive", help="Sample step by step (KV cache)."
    ),
    backend: str = typer.Option("torch", "--backend", help="torch | mlx (converted generator)."),
    device: str = typer.Option(None, "--device", help="auto | cpu | mps | cuda (torch backend)."),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """Synthetic windows (windows.parquet schema), optionally as AMM-consistent swap events."""
    import numpy as np

    from gan_torch import checkpoint as ckio
    from gan_torch import generate as gen
    from gan_torch import swaps as swap_io
    from gan_torch.data import write_windows
    from gan_torch.models import resolve_device

    over = {"seed": seed, "device": device, "n_generate": n, "swap_decoder": swap_decoder}
    cfg, run = _cfg(config, run_dir, over)
    checkpoint = checkpoint or run.gan_checkpoint
    out = out or run.synthetic_windows
    if backend not in ("torch", "mlx"):
        raise UserError(f"--backend must be torch or mlx, got {backend!r}")
    if start_price is not None and not start_price > 0:
        raise UserError(f"--start-price must be positive, got {start_price}")
    count = int(cfg["n_generate"])
    if count < 1:
        raise UserError(f"--n must be >= 1, got {count}")
    if continuous and backend == "mlx":
        raise UserError("--continuous samples window by window: use --backend torch")
    if swaps_out and cfg["swap_decoder"] not in swap_io.DECODERS:
        raise UserError(
            f"--swap-decoder must be one of {', '.join(swap_io.DECODERS)}, got {cfg['swap_decoder']!r}"
        )
    if backend == "mlx":
        from apeagent.blas import ensure_fast_blas

        ensure_fast_blas()  # before mlx is imported (may re-exec with OpenBLAS preloaded)
        from gan_torch.mlx_generator import load_converted, sample_scaled_mlx

        model = None
        if checkpoint.is_dir():  # a directory written by scripts/convert_gan_to_mlx.py
            model, ckpt = load_converted(checkpoint)
        else:
            ckpt = ckio.load(checkpoint)
        cond = gen.parse_condition(condition, ckpt["cond_bank"].double().numpy())
        scaled, _, idx = sample_scaled_mlx(
            ckpt, count, cond_raw=cond, seed=cfg["seed"], model=model
        )
    else:
        ckpt = ckio.load(checkpoint)
        cond = gen.parse_condition(condition, ckpt["cond_bank"].double().numpy())
        gnet, _, _ = ckio.build_models(ckpt, resolve_device(cfg["device"]))
        sample = gen.sample_continuous if continuous else gen.sample_scaled
        scaled, _, idx = sample(
            gnet, ckpt, count, cond, cfg["seed"], autoregressive, next(gnet.parameters()).device
        )
    raw = gen.decode_features(scaled, ckpt)
    anchors = np.full(count, start_price) if start_price else ckpt["start_prices"].numpy()[idx]
    if continuous:
        anchors = gen.chained_anchors(raw, float(anchors[0]))
    cols = gen.to_windows(raw, anchors)
    bank = None
    if swaps_out and cfg["swap_decoder"] == "bootstrap":  # read before anything is written
        bank = swap_io.bank_from_swaps(real_swaps or run.swaps_parquet, ckpt)
    write_windows(out, cols)
    console.print(f"{out}: {count} synthetic windows of {raw.shape[1]} bars")
    if swaps_out:
        rows = swap_io.bars_to_swaps(
            cols,
            cfg["swap_decoder"],
            bank=bank,
            liquidity=int(ckpt["data"]["liquidity"]) or 10**12,
            sequence_of={w: 0 for w in range(count)} if continuous else None,
            bar_seconds=int(ckpt["data"]["bar_seconds"]),
            seed=cfg["seed"],
        )
        swap_io.write_swaps_csv(swaps_out, rows)
        seqs = 1 if continuous else count
        console.print(f"{swaps_out}: {len(rows)} synthetic swap events in {seqs} sequence(s)")


@app.command()
def validate(
    bars: Path = typer.Option(None, "--bars", help="Real bars.parquet [RUN/features/bars.parquet]."),
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="Generate from this checkpoint [RUN/gan/best.pt]."
    ),
    windows: Path = typer.Option(
        None, "--windows", help="Or validate these synthetic windows.parquet."
    ),
    out_dir: Path = typer.Option(
        None, "--out-dir", help="validation.json + PNGs [RUN/validation]."
    ),
    swaps: Path = typer.Option(
        None,
        "--swaps",
        help="Real swaps.parquet for the swap-level section [RUN/features/swaps.parquet if present].",
    ),
    swap_decoder: str = typer.Option(None, "--swap-decoder", help="bootstrap | uniform."),
    seed: int = typer.Option(None, "--seed"),
    quiet: bool = typer.Option(False, "--quiet"),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """GAN vs held-out real data (time split), with GBM / block-bootstrap baselines and the real floor."""
    from gan_torch.swaps import DECODERS
    from gan_torch.validate import print_table, run_validation

    cfg, run = _cfg(config, run_dir, {"seed": seed, "swap_decoder": swap_decoder})
    if cfg["swap_decoder"] not in DECODERS:
        raise UserError(f"--swap-decoder must be one of {', '.join(DECODERS)}")
    bars = bars or run.bars
    if windows is None:
        checkpoint = checkpoint or run.gan_checkpoint
    out_dir = out_dir or run.validation
    if swaps is None and run.swaps_parquet.is_file():
        swaps = run.swaps_parquet
    result = run_validation(
        bars, out_dir, cfg, checkpoint=checkpoint, windows=windows, swaps=swaps
    )
    if not quiet:
        print_table(result, Console())


@app.command("windows")
def windows_cmd(
    bars: Path = typer.Option(None, "--bars", help="bars.parquet to cut [RUN/features/bars.parquet]."),
    out: Path = typer.Option(
        None, "--out", help="windows.parquet to write (source=real) [RUN/features/real_windows.parquet]."
    ),
    window: int = typer.Option(None, "--window", help="Bars per window [market.window_bars]."),
    stride: int = typer.Option(
        None, "--stride", help="Bars between starts [market.window_bars: no overlap]."
    ),
    min_active_frac: float = typer.Option(
        0.0, "--min-active-frac", help="Skip windows with fewer non-empty bars."
    ),
    holdout_frac: float = typer.Option(
        0.0,
        "--holdout-frac",
        help="Leave out the last fraction of the swaps (the backtest's held-out period).",
    ),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """Cut REAL windows from bars into the windows.parquet schema (ids in time order)."""
    from gan_torch.data import read_bars, real_windows, split_bounds, write_windows

    cfg, run = _cfg(config, run_dir, {"window_bars": window})
    bars, out = bars or run.bars, out or run.real_windows
    w = cfg["window_bars"]
    s = stride or w
    if w < 2 or s < 1:
        raise UserError(f"--window must be >= 2 and --stride >= 1 (got {w}, {s})")
    if not 0.0 <= holdout_frac < 1.0:
        raise UserError(f"--holdout-frac must be in [0, 1) (got {holdout_frac})")
    table = read_bars(bars)
    if holdout_frac > 0:
        # the same cut as training's time split and the backtest: a quantile of the swaps
        cut = split_bounds(table["swap_count"], holdout_frac, 0.0)["test"][0]
        table = {k: v[:cut] for k, v in table.items()}
    cols = real_windows(table, w, s, min_active_frac)
    write_windows(out, cols)
    console.print(f"{out}: {int(cols['window_id'].max()) + 1} real windows of {w} bars")


@app.command()
def bench(
    devices: str = typer.Option("cpu,mps,cuda", "--devices", help="Comma-separated devices."),
    steps: int = typer.Option(20, "--steps", help="Timed training steps per run."),
    bars: Path = typer.Option(
        None, "--bars", help="bars.parquet (default: the shared CSV via ape-chain process)."
    ),
    out: Path = typer.Option(Path("runs/bench/gan_devices.json"), "--out"),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """Training steps/s and generated windows/s per device, cdist fallback vs native."""
    from apeagent.files import write_json
    from gan_torch.bench import device_bench, print_bench
    from gan_torch.data import read_bars

    cfg, _ = _cfg(config, run_dir, {})
    with tempfile.TemporaryDirectory() as tmp:
        data = read_bars(bars or bars_from_swaps_csv(SHARED_CSV, Path(tmp)))
        result = device_bench(data, cfg, [d for d in devices.split(",") if d], steps)
    write_json(out, result)
    print_bench(result, Console())
    console.print(f"wrote {out}")


def main() -> None:
    run_cli(app)

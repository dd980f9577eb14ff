"""`ape-gan` / `python -m gan_torch`: train, generate, validate, real windows, device bench."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import typer
from rich.console import Console

from apeagent.cli import ConfigOpt, RunDirOpt, given, run_cli
from apeagent.errors import UserError
from apeagent.files import check_output
from apeagent.layout import RunLayout

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="WGAN-GP on real swap bars: train, generate synthetic windows, validate, benchmark devices.",
)
console = Console(stderr=True, soft_wrap=True)
SHARED_CSV = Path("../shared/data/base_eth_usdc_v4_swaps.csv")
BENCH_DEVICES = ("cpu", "mps", "cuda")


@app.callback()
def _group() -> None:
    """Keep typer in multi-command mode."""


def _cfg(ctx: typer.Context, config: str | None, run_dir: Path | None) -> tuple[dict, RunLayout]:
    """The gan section: defaults < config < the options given (each named for its key)."""
    from apeagent.config import stage_settings

    return stage_settings(config, run_dir, "gan", *given(ctx, "gan"))


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
    ctx: typer.Context,
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

    from apeagent.files import check_fits
    from gan_torch.data import read_bars
    from gan_torch.train import train as run_train

    cfg, run = _cfg(ctx, config, run_dir)
    out_dir = out_dir or run.gan
    check_output(out_dir, folder=True, what="--out-dir")
    # activations of the generator and the critic, kept for the gradient penalty's double backward
    width = cfg["d_model"] * cfg["num_layers"] * (cfg["ff_mult"] + 8) + cfg["critic_hidden"] * 4
    check_fits(cfg["batch_size"] * cfg["window_bars"] * width * 4 * 8,
               f"a GAN batch of {cfg['batch_size']} windows", "--batch-size (gan.batch_size), gan.d_model or gan.num_layers")
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
    ctx: typer.Context,
    checkpoint: Path = typer.Option(
        None,
        "--checkpoint",
        help="Checkpoint [RUN/gan/best.pt] (--backend mlx: also a converted dir).",
    ),
    out: Path = typer.Option(
        None, "--out", help="windows.parquet to write [RUN/synthetic/windows.parquet]."
    ),
    n_generate: int = typer.Option(None, "--n", help="Number of windows [gan.n_generate]."),
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
    from gan_torch import generate as gen
    from gan_torch import swaps as swap_io

    cfg, run = _cfg(ctx, config, run_dir)
    checkpoint = checkpoint or run.gan_checkpoint
    out = out or run.synthetic_windows
    check_output(out, what="--out")  # every output before the first write
    if swaps_out:
        check_output(swaps_out, what="--swaps-out")
        if Path(swaps_out).resolve() == Path(out).resolve():
            raise UserError(f"--swaps-out {swaps_out}: the same file as --out")
    if swaps_out and cfg["swap_decoder"] not in swap_io.DECODERS:
        raise UserError(
            f"--swap-decoder must be one of {', '.join(swap_io.DECODERS)}, got {cfg['swap_decoder']!r}"
        )
    bank = None
    if swaps_out and cfg["swap_decoder"] == "bootstrap":  # read before anything is written
        from gan_torch import checkpoint as ckio

        bank = swap_io.bank_from_swaps(real_swaps or run.swaps_parquet, ckio.load(checkpoint))
    cols, ckpt = gen.generate_windows(
        checkpoint, out, cfg, condition, start_price, autoregressive, backend, continuous
    )
    count, bars = int(cols["window_id"].max()) + 1, int(cols["step"].max()) + 1
    console.print(f"{out}: {count} synthetic windows of {bars} bars")
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
    ctx: typer.Context,
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
    condition: str = typer.Option(
        None,
        "--condition",
        help="Condition the GAN as `generate --condition` (default: the training conditions).",
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
    """GAN vs held-out real data (time split), with GBM / block-bootstrap baselines and the real
    floor. Every source sees only the training period (the GAN: its training conditions)."""
    from gan_torch.swaps import DECODERS, read_swaps
    from gan_torch.validate import print_table, run_validation

    cfg, run = _cfg(ctx, config, run_dir)
    if cfg["swap_decoder"] not in DECODERS:
        raise UserError(f"--swap-decoder must be one of {', '.join(DECODERS)}")
    bars = bars or run.bars
    if windows is None:
        checkpoint = checkpoint or run.gan_checkpoint
    out_dir = out_dir or run.validation
    check_output(out_dir, folder=True, what="--out-dir")
    if swaps is None and run.swaps_parquet.is_file():
        swaps = run.swaps_parquet
    if swaps is not None:
        read_swaps(swaps)  # a bad file fails here, before the first plot is written
    result = run_validation(
        bars, out_dir, cfg, checkpoint=checkpoint, windows=windows, condition=condition, swaps=swaps
    )
    if not quiet:
        print_table(result, Console())


@app.command("windows")
def windows_cmd(
    ctx: typer.Context,
    bars: Path = typer.Option(None, "--bars", help="bars.parquet to cut [RUN/features/bars.parquet]."),
    out: Path = typer.Option(
        None, "--out", help="windows.parquet to write (source=real) [RUN/features/real_windows.parquet]."
    ),
    window_bars: int = typer.Option(None, "--window", help="Bars per window [market.window_bars]."),
    real_window_stride: int = typer.Option(
        None, "--stride", help="Bars between starts [distill.real_window_stride; 0: no overlap]."
    ),
    real_min_active_frac: float = typer.Option(
        None, "--min-active-frac", help="Skip windows with fewer non-empty bars [distill.real_min_active_frac]."
    ),
    holdout_frac: float = typer.Option(
        None,
        "--holdout-frac",
        help="Leave out the last fraction of the swaps, the backtest's held-out period [market.holdout_frac].",
    ),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """Cut REAL windows from bars into the windows.parquet schema (ids in time order)."""
    from apeagent.config import config_for, load, section
    from gan_torch.data import cut_real_windows

    cfg, run = _cfg(ctx, config, run_dir)
    # the teacher's real-window cut (the same keys the pipeline passes); --stride 0: no overlap
    cut = section(load(config_for(config, run_dir)), "distill", *given(ctx, "distill"))
    out, w = out or run.real_windows, cfg["window_bars"]
    check_output(out, what="--out")
    s = cut["real_window_stride"] or w
    n = cut_real_windows(bars or run.bars, out, w, s, cut["real_min_active_frac"], cfg["holdout_frac"])
    console.print(f"{out}: {n} real windows of {w} bars")


@app.command()
def bench(
    ctx: typer.Context,
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

    cfg, _ = _cfg(ctx, config, run_dir)
    names = [d.strip() for d in devices.split(",") if d.strip()]
    unknown = [d for d in names if d not in BENCH_DEVICES]
    if not names or unknown:
        raise UserError(f"--devices {devices!r}: expected a comma-separated list of {', '.join(BENCH_DEVICES)}")
    if not 1 <= steps <= 100_000:
        raise UserError(f"--steps must be between 1 and 100000, got {steps}")
    check_output(out, what="--out")
    with tempfile.TemporaryDirectory() as tmp:
        data = read_bars(bars or bars_from_swaps_csv(SHARED_CSV, Path(tmp)))
        result = device_bench(data, cfg, names, steps)
    write_json(out, result)
    print_bench(result, Console())
    console.print(f"wrote {out}")


def main() -> None:
    run_cli(app)

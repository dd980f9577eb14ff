"""`ape-distill` / `python -m distill`: teacher answers and the student's dataset."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from apeagent.cli import ConfigOpt, RunDirOpt, given, run_cli
from apeagent.errors import UserError
from apeagent.files import check_output
from apeagent.layout import RunLayout

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Chain-of-Draft teacher answers (rules, mlx-lm, OpenAI-compatible) and canary datasets.",
)
console = Console(stderr=True, soft_wrap=True)


@app.callback()
def _group() -> None:
    """Keep typer in multi-command mode."""


def _cfg(ctx: typer.Context, config: str | None, run_dir: Path | None) -> tuple[dict, RunLayout]:
    """The distill section: defaults < config < the options given (each named for its key)."""
    from apeagent.config import stage_settings

    return stage_settings(config, run_dir, "distill", *given(ctx, "distill"))


@app.command()
def teach(
    ctx: typer.Context,
    windows: list[Path] = typer.Option(
        None, "--windows", "-w",
        help="windows.parquet or bars.parquet (repeatable) [RUN/synthetic/windows.parquet + RUN/features/real_windows.parquet]",
    ),
    out_dir: Path = typer.Option(None, "--out-dir", "-o", help="answers.jsonl (cache) and teacher_report.json [RUN/teacher]"),
    more: list[Path] = typer.Argument(None, help="more windows files (after --windows)", show_default=False),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
    teacher: str = typer.Option(None, help="rules | mlx | openai"),
    style: str = typer.Option(None, help="cod (Chain of Draft) | cot (chain of thought)"),
    model: str = typer.Option(None, help="mlx: HF repo or model dir; openai: model name"),
    base_urls: list[str] = typer.Option(None, "--base-url", help="OpenAI-compatible base URL (repeatable)"),
    api_key_env: str = typer.Option(None, help="environment variable holding the API key"),
    allow_insecure_http: bool = typer.Option(
        None, "--allow-insecure-http", help="openai: send the API key over http:// to a non-loopback host"
    ),
    concurrency: int = typer.Option(None, help="openai: requests in flight per URL"),
    batch_size: int = typer.Option(None, help="mlx: prompts generated together"),
    temperature: float = typer.Option(None),
    top_p: float = typer.Option(None),
    max_tokens: int = typer.Option(None),
    retries: int = typer.Option(None, help="re-asks of a rejected answer"),
    seed: int = typer.Option(None, help="portfolio and sampling seed"),
    max_windows: int = typer.Option(None, help="use at most this many windows (0: all)"),
    portfolios_per_window: int = typer.Option(None, "--portfolios", help="random portfolios per window"),
    tokenizer: str = typer.Option(None, help="model dir whose tokenizer counts output tokens"),
    show_rejected: int = typer.Option(0, "--show-rejected", min=0, help="print the last N rejected answers and why"),
) -> None:
    """Ask the teacher about every (window, random portfolio); answers are cached and resumable."""
    cfg, run = _cfg(ctx, config, run_dir)
    out_dir = out_dir or run.teacher
    check_output(out_dir, folder=True, what="--out-dir")
    check_output(Path(out_dir) / "answers.jsonl", what="--out-dir")
    if cfg["teacher"] == "mlx":
        from apeagent.blas import ensure_fast_blas

        ensure_fast_blas()
    from distill.teach import teach as run_teach

    with Progress(
        TextColumn("[bold]teacher[/] " + cfg["teacher"]), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=console, transient=True,
    ) as progress:
        task = progress.add_task("answers", total=None)

        def on_answer(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        paths = [*(windows or []), *(more or [])] or [p for p in (run.synthetic_windows, run.real_windows) if p.exists()]
        if not paths:
            raise UserError(f"no windows: pass --windows FILE (none in {run.root})")
        rep = run_teach(cfg, [str(w) for w in paths], out_dir, on_answer)
    _print_teach(rep)
    if show_rejected:
        from distill.teach import rejected

        for rec in rejected(out_dir, rep, show_rejected):
            _print_rejected(rec)


def _excerpt(raw: str, limit: int = 600) -> str:
    """What a rejected answer said, cut to its end (where the decision should be)."""
    from distill.parse import split_think

    thinking, body, unfinished = split_think(raw or "")
    if unfinished or not body:
        note = f"(no answer after a {len(thinking)}-character think block; its end:)\n"
        text = thinking
    else:
        note = f"(after a {len(thinking)}-character think block)\n" if thinking else ""
        text = body
    text = text.strip()
    if len(text) > limit:
        text = "…" + text[-limit:]
    return note + text


def _print_rejected(rec: dict) -> None:
    out = Console()
    out.rule(f"rejected: {rec.get('reason')}  (key {str(rec.get('key'))[:10]}, attempt {rec.get('attempt')})")
    out.print(_excerpt(rec.get("raw") or ""), markup=False, highlight=False)


def _print_teach(rep: dict) -> None:
    t = Table(title=f"teacher {rep['teacher']} ({rep['model']}, {rep['style']})")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("prompts", str(rep["items"]))
    t.add_row("accepted", str(rep["accepted"]))
    t.add_row("rejected after retries", str(rep["rejected_after_retries"]))
    t.add_row("cached at start", str(rep["cached_at_start"]))
    t.add_row("generated this run", str(rep["generated_this_run"]))
    if rep["attempts"]:
        t.add_row("rejected attempts", f"{rep['rejection_rate']:.1%}")
    for reason, n in rep["rejections"].items():
        t.add_row(f"rejection: {reason}", str(n))
    for via, n in rep.get("read_via", {}).items():
        t.add_row(f"read via: {via}", str(n))
    for fix, n in rep["fixes"].items():
        t.add_row(f"fix: {fix}", str(n))
    for d, n in rep["decisions"].items():
        t.add_row(d, str(n))
    t.add_row("mean output tokens", f"{rep['output_tokens']['mean_accepted']:.1f}")
    if rep.get("output_tokens_per_s"):
        t.add_row("output tokens/s", f"{rep['output_tokens_per_s']:.1f}")
    Console().print(t)


@app.command()
def dataset(
    ctx: typer.Context,
    answers: list[Path] = typer.Option(None, "--answers", "-a", help="answers.jsonl (repeatable) [RUN/teacher/answers.jsonl]"),
    out_dir: Path = typer.Option(None, "--out-dir", "-o", help="train/valid/test.jsonl go here [RUN/dataset]"),
    more: list[Path] = typer.Argument(None, help="more answers files (after --answers)", show_default=False),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
    format: str = typer.Option(None, "--format", help="chat | completions"),
    rebalance: str = typer.Option(None, help="none | downsample | upsample (train only)"),
    valid_fraction: float = typer.Option(None),
    test_fraction: float = typer.Option(None),
    include_system: bool = typer.Option(None, "--system/--no-system", help="chat: include the system prompt"),
    student: Path = typer.Option(None, "--tokenizer", "--model", help="student model dir: check lengths"),
    max_seq_length: int = typer.Option(None),
) -> None:
    """Build the student's mlx-lm dataset from accepted teacher answers."""
    from distill.dataset import build_dataset

    cfg, run = _cfg(ctx, config, run_dir)
    out_dir = out_dir or run.dataset
    check_output(out_dir, folder=True, what="--out-dir")
    rep = build_dataset(cfg, [*(answers or []), *(more or [])] or [run.answers], out_dir, student)
    t = Table(title=f"dataset ({rep['format']}) -> {out_dir}")
    t.add_column("split")
    t.add_column("examples", justify="right")
    t.add_column("windows", justify="right")
    for c in ("APE IN", "APE OUT", "APE NEUTRAL"):
        t.add_column(c, justify="right")
    for s, n in rep["counts"].items():
        cls = rep["classes"][s]
        t.add_row(s, str(n), str(rep["windows"][s]), *(str(cls[c]) for c in cls))
    Console().print(t)
    if rep["token_lengths"]:
        tl = rep["token_lengths"]
        Console().print(f"tokens: max {tl['max']}, mean {tl['mean']:.1f} (limit {tl['max_seq_length']})")


@app.command()
def check(
    ctx: typer.Context,
    dataset_dir: Path = typer.Option(None, "--dataset", "-d", help="dir with train/valid/test.jsonl [RUN/dataset]"),
    student: Path = typer.Option(None, "--tokenizer", "--model", help="student model dir [RUN/student/base]"),
    max_seq_length: int = typer.Option(None),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """Check an existing dataset against a student's tokenizer and the canary rules."""
    from distill.dataset import check_dataset

    cfg, run = _cfg(ctx, config, run_dir)
    dataset_dir, student = dataset_dir or run.dataset, student or run.student_base
    rep = check_dataset(dataset_dir, student, cfg["max_seq_length"])
    t = Table(title=f"check {dataset_dir} (max_seq_length {rep['max_seq_length']})")
    for col in ("split", "examples", "max tokens", "over limit", "bad answers"):
        t.add_column(col)
    for s, row in rep["splits"].items():
        t.add_row(s, str(row["examples"]), str(row["max_tokens"]), str(row["over_limit"]), str(row["bad_answers"]))
    Console().print(t)
    if not rep["ok"]:
        raise UserError("dataset check failed (see table)")


@app.command()
def show(
    ctx: typer.Context,
    windows: Path = typer.Option(None, "--windows", "-w", help="windows.parquet or bars.parquet [RUN/features/bars.parquet]"),
    n: int = typer.Option(3, help="how many windows"),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
    style: str = typer.Option(None, help="cod | cot"),
) -> None:
    """Print the prompts and the rules teacher's answers for the first windows."""
    from distill import rules
    from distill.prompt import format_prompt, system_prompt
    from distill.windows import load_windows, states

    cfg, run = _cfg(ctx, config, run_dir)
    windows = windows or run.bars
    print(f"[system]\n{system_prompt(cfg['style'])}\n")
    for w, state in states(load_windows([windows], cfg["window_bars"], n), cfg):
        print(f"[window {w.window_id}]\n{format_prompt(state)}\n[rules]\n{rules.answer(state, cfg, cfg['style'])}\n")


def main() -> None:
    run_cli(app)

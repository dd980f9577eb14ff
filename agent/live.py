"""The live agent loop: checks -> snapshot -> decision -> fill (paper) or swap (execute).

:func:`open_session` runs every check that needs no decision (flags, account, independent
check endpoints, an anchor for live orders, journal, key, connections); :func:`run_loop`
runs :func:`step` every ``interval_seconds``:

1. :func:`market_check`: the freshness of every endpoint (chain id, head block age, head
   advancing; :mod:`agent.anchor`), then the price sources at the pinned head
   (:func:`agent.prices.check_prices`: ``getSlot0``, the latest Swap event, the check
   endpoints), then the anchor. Any problem: nothing is decided or traded; the journal line
   has ``refused``, ``refused_by`` (the reason codes) and ``price_check``.
2. :func:`chain.snapshot.snapshot` reads the last window of swaps (``window_bars`` bars); the
   market state is built from it, at the checked price; the policy decides.
3. the executor. :func:`paper_fill` (the default): the decision is filled against the
   checked pool state with the exact pool math (fee, impact, gas) into a simulated
   portfolio, resumed from the journal on restart; nothing is ever signed or sent.
   :func:`live_order` (opt-in, ``--execute --account ADDRESS``): the portfolio is the
   account's on-chain balances; a trade is sized at the anchored price and cut to the
   per-trade caps in ETH and USDC, refused beyond the day's ETH and USDC limits; balances
   and allowances are checked; the output is simulated with the V4 Quoter (``eth_call``) and
   refused when it is worse than the checked quote by more than the slippage bound or below
   the anchored floor; the first order of a run is confirmed on the terminal (unless
   ``--yes``). Then, journal first: the transaction is signed, its hash and intent are
   journaled (fsync), and only then broadcast; every outcome is a journal line
   (:mod:`agent.journal`). ``dry_run`` needs only the address: it builds the transaction,
   prints the calldata and signs nothing.

On start, execute mode reconciles the journal's unresolved transactions by hash
(:func:`reconcile`) before any new order; a new transaction's nonce is the node's pending
count, and it must lie above every nonce the journal saw mined. Ctrl-C is journaled (with
the transaction in flight, if any) and ends the run with :class:`Interrupted`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent import anchor as anc
from agent.journal import Journal
from agent.policies import History, Trade
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
    decision: str, amount_eth: float | None, value_usdc: float, anchor: dict, cfg: dict
) -> tuple[str, int, str | None] | None:
    """Execution sizing at the anchored price: ``(side, amount_in raw, capped_by)``.

    As in paper trading, but cut to the per-trade caps in both assets -- ``max_trade_eth`` and
    ``max_trade_usdc`` -- each checked at the anchor's worse end (an ETH input valued at the
    band's ``high``, a USDC input counted in ETH at its ``low``), so a wrong price cannot
    inflate the amount; never silently shrunk to the balance (a trade the account cannot pay
    is an error, raised by the balance check)."""
    price = float(anchor["price"] or 0.0)
    if decision not in ("APE IN", "APE OUT") or price <= 0:
        return None
    if amount_eth is None or not math.isfinite(amount_eth) or amount_eth <= 0:
        amount_eth = cfg["default_trade_fraction"] * value_usdc / price
    capped = None
    if decision == "APE OUT":
        if amount_eth > cfg["max_trade_eth"]:
            amount_eth, capped = cfg["max_trade_eth"], "max_trade_eth"
        if amount_eth * anchor["high"] > cfg["max_trade_usdc"]:
            amount_eth, capped = cfg["max_trade_usdc"] / anchor["high"], "max_trade_usdc"
        return "sell", int(amount_eth * WEI), capped
    usdc = amount_eth * price
    if usdc > cfg["max_trade_usdc"]:
        usdc, capped = cfg["max_trade_usdc"], "max_trade_usdc"
    if usdc / anchor["low"] > cfg["max_trade_eth"]:
        usdc, capped = cfg["max_trade_eth"] * anchor["low"], "max_trade_eth"
    return "buy", int(usdc * USDC_UNIT), capped


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


# ---------------------------------------------------------------- a run: session, loop, step


@dataclass
class Session:
    """What one run holds (plain data): settings, connections, the journal, the account, and
    what the loop carries from one iteration to the next."""

    cfg: dict
    mode: str
    w3: Any
    url: str
    chain_id: int
    journal: Journal
    checks: list[tuple[str, Any]] = field(default_factory=list)  # (url, web3) per check endpoint
    chain_ids: dict[str, int] = field(default_factory=dict)  # check endpoint: its chain id at start
    anchor_kind: str | None = None  # agent.anchor.anchor_kind
    dry_run: bool = False
    fork: bool = False
    address: str | None = None
    acct: Any = None
    gas: int = 0
    confirm: Callable[[str], bool] | None = None  # asked before the run's first broadcast
    sleep: Callable[[float], None] = time.sleep
    echo: Callable[[str], None] = print
    history: History = field(default_factory=History)
    seen: dict[str, tuple[int, float]] = field(default_factory=dict)  # endpoint: (head, since)
    in_flight: dict[str, Any] = field(default_factory=dict)


def open_session(
    cfg: dict,
    *,
    mode: str = PAPER,
    rpc_urls: list[str],
    journal: str | Path,
    dry_run: bool = False,
    fork: bool = False,
    account=None,
    confirm: Callable[[str], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    echo: Callable[[str], None] = print,
) -> Session:
    """Every check that needs no decision, before a model is loaded: mode and flags, the
    account and slippage bound, independent check endpoints, an anchor for live orders, the
    journal, the key (live), then one connection per endpoint (chain id checked)."""
    from agent import execute as ex
    from agent.prices import check_name
    from apeagent.files import check_output

    if mode not in (PAPER, EXECUTE):
        raise UserError(f"unknown agent mode {mode!r}")
    if dry_run and mode == PAPER:
        raise UserError("--dry-run goes with --execute (paper trading never sends anything)")
    check_urls = list(cfg.get("check_rpc_urls") or [])
    anc.check_independent(list(rpc_urls or []), check_urls)
    kind = anc.anchor_kind(cfg)
    address = None
    if mode == EXECUTE:
        address = ex.expected_account(cfg)
        bps = ex.check_slippage(cfg["max_slippage_bps"], cfg.get("allow_high_slippage", False))
        if bps > ex.MAX_SLIPPAGE_BPS:
            echo(f"WARNING: slippage bound {bps} bps: a swap may fill {bps / 100:g}% below the anchored price")
    check_output(Path(journal))
    j = Journal(journal)  # a corrupt journal is an error before anything runs
    if mode == EXECUTE and kind is None:
        try:
            anc.require_anchor(cfg)
        except UserError as e:
            j.append({"time": int(time.time()), "event": "refused", "mode": mode,
                      "refused_by": [anc.ANCHOR], "refused": str(e)})
            raise
    live = mode == EXECUTE and not dry_run
    acct = (account or ex.load_account(cfg)) if live else None
    if acct is not None and acct.address != address:
        raise UserError(f"the signing key is for {acct.address}, not the expected account {address}")
    w3, url = ex.connect(rpc_urls, fork=fork, expected_chain_id=int(cfg["chain_id"]))
    checks = []  # with --fork a check endpoint may be another local fork, or Base itself
    for u in check_urls:
        other, _ = ex.connect([u], fork=fork and ex.is_loopback(u), expected_chain_id=int(cfg["chain_id"]))
        checks.append((u, other))
    if kind is None:
        echo(f"paper mode on one endpoint ({redact_url(url)}): its prices are checked against "
             "each other only, not against an independent source (--check-rpc-url)")
    chain_ids = {check_name(u): int(other.eth.chain_id) for u, other in checks}
    return Session(
        cfg=cfg, mode=mode, w3=w3, url=url, chain_id=int(w3.eth.chain_id), chain_ids=chain_ids, journal=j,
        checks=checks, anchor_kind=kind, dry_run=dry_run, fork=fork, address=address, acct=acct,
        gas=gas_wei(cfg["gas_units"], cfg["gas_price_gwei"]), confirm=confirm, sleep=sleep,
        echo=echo, history=j.history(),
    )


def run_agent(policy, cfg: dict, *, iterations: int = 0, **session) -> dict[str, Any]:
    """:func:`open_session` (keywords: ``mode``, ``rpc_urls``, ``journal``, ``dry_run``,
    ``fork``, ``account``, ``confirm``, ``sleep``, ``echo``), then :func:`run_loop`."""
    return run_loop(open_session(cfg, **session), policy, iterations)


def run_loop(s: Session, policy, iterations: int = 0) -> dict[str, Any]:
    """Run :func:`step` ``iterations`` times (0: until interrupted). Returns a short summary.

    Execute mode first reconciles the journal's unresolved transactions. An endpoint's error
    answer (a method it does not serve) or a transport failure ends the run with one line
    (UserError); a broadcast transaction then is journaled as pending. Ctrl-C is journaled
    and raises :class:`Interrupted`."""
    from agent import execute as ex

    summary = {"iterations": 0, "trades": 0, "unparseable": 0, "halted": 0, "refused": 0}
    try:
        try:
            if s.mode == EXECUTE:
                reconcile(s.w3, s.journal, s.address, sleep=s.sleep, echo=s.echo)
            while not iterations or summary["iterations"] < iterations:
                if summary["iterations"]:
                    s.sleep(float(s.cfg["interval_seconds"]))
                rec, traded = step(s, policy, summary["iterations"])
                summary["iterations"] += 1
                summary["trades"] += int(traded)
                summary["refused"] += int(bool(rec.get("refused")))
                summary["halted"] += int(bool(rec.get("halted")))
                summary["unparseable"] += int(not rec.get("valid", True))
        except ex.rpc_failures() as e:
            if s.in_flight.get("broadcast"):
                f = s.in_flight
                _tx_event(s.journal, f["tx_hash"], f["nonce"], f["account"], "pending")
            s.in_flight.clear()
            raise ex.endpoint_error(s.url, e) from None
    except KeyboardInterrupt:
        f = s.in_flight
        if f:
            _tx_event(s.journal, f["tx_hash"], f["nonce"], f["account"], "interrupted",
                      broadcast=f["broadcast"])
            raise Interrupted(
                f"interrupted with transaction {f['tx_hash']} "
                f"{'broadcast' if f['broadcast'] else 'signed, not broadcast'}: "
                "it is in the journal; the next start reconciles it"
            ) from None
        s.journal.append({"time": int(time.time()), "event": "interrupted", "mode": s.mode})
        raise Interrupted("interrupted: no transaction was in flight") from None
    summary["journal"] = str(s.journal.path)
    summary["rpc"] = redact_url(s.url)
    return summary


# an order's own refusals (after the checks of market_check): the day's limits; the simulated
# quote worse than the checked one, reverting, or below the anchored floor
DAILY_LIMIT, QUOTE = "daily_limit", "quote"
LABELS = {anc.CHAIN_ID: "chain id", anc.HEAD_LAG: "stale head", anc.HEAD_STALLED: "head not advancing",
          anc.PRICE: "price check", anc.ANCHOR: "anchor"}


def market_check(s: Session, now: float) -> tuple[Any, dict | None, dict[str, Any]]:
    """Freshness of every endpoint, then the price sources at the pinned head, then the
    anchor: ``(pool state | None, anchor | None, report)``. ``report["refused_by"]``: the
    reason codes (agent.anchor.REASONS) of the problems, in the order they were found."""
    from agent import execute as ex
    from agent.prices import check_name, check_prices

    found: list[tuple[str, str]] = []
    fresh: dict[str, dict] = {}
    for name, w3 in [(redact_url(s.url), s.w3)] + [(check_name(u), w) for u, w in s.checks]:
        try:
            chain_id = s.chain_ids.get(name, s.chain_id)
            fresh[name] = anc.freshness(w3, name, s.cfg, chain_id, s.seen, now)
        except ex.rpc_failures() as e:
            if w3 is s.w3:
                raise
            fresh[name] = {"problems": [(anc.ANCHOR, f"{name} failed ({type(e).__name__})")]}
        found += fresh[name].pop("problems")
    trading = fresh[redact_url(s.url)]
    report: dict[str, Any] = {"block": trading.get("head"), "freshness": fresh}
    pool = anchor = None
    if not found:
        heads = {n: f["head"] for n, f in fresh.items() if n.startswith("check:")}
        pool, prices, check_pools = check_prices(s.w3, s.cfg, s.checks, block=trading["head"],
                                                 check_heads=heads)
        report.update(prices)
        found += [(anc.ANCHOR if p.startswith("check:") else anc.PRICE, p) for p in prices["problems"]]
        if pool is not None and s.anchor_kind is not None:
            anchor, problems = anc.anchor_band(prices, check_pools, s.cfg)
            found += [(anc.ANCHOR, p) for p in problems]
    report["anchor"] = anc.public(anchor)
    report["problems"] = [f"{LABELS[code]}: {text}" for code, text in found]
    report["refused_by"] = list(dict.fromkeys(code for code, _ in found))
    report["ok"] = not found
    return (pool, anchor, report) if not found else (None, None, report)


def step(s: Session, policy, it: int) -> tuple[dict[str, Any], bool]:
    """One iteration: checks -> snapshot -> state -> decision -> the paper or live executor.
    Journals the iteration (a live swap's record is journaled when signed) and returns
    ``(record, traded)``."""
    from chain.snapshot import snapshot

    now = int(time.time())
    rec: dict[str, Any] = {
        "time": now,
        "utc": datetime.fromtimestamp(now, tz=timezone.utc).isoformat(timespec="seconds"),
        "iteration": it, "mode": s.mode, "policy": getattr(policy, "name", type(policy).__name__),
        "chain_id": s.chain_id,
    }
    pool, anchor, report = market_check(s, now)
    rec.update(price_check=report, block=report["block"])
    if pool is None:
        rec.update(refused_by=report["refused_by"], refused="; ".join(report["problems"]))
        s.journal.append(rec)
        s.echo(f"[{rec['utc']}] block {report['block']}: NO ORDER, {rec['refused']}")
        return rec, False
    snap = snapshot([s.url], minutes=window_minutes(s.cfg),
                    allow_chain_id=s.chain_id if s.fork else None, max_retries=3)
    snap["price"] = pool.price  # the checked price, not a second reading
    price = anchor["price"] if anchor else pool.price  # what the portfolio is valued at
    if s.mode == PAPER:
        portfolio = s.journal.last_portfolio(PAPER) or initial_portfolio(
            s.cfg["initial_value_usdc"], s.cfg["initial_eth_share"], price)
    else:
        from agent import execute as ex

        wei, usdc = ex.balances(s.w3, s.address)
        portfolio = Portfolio(eth_wei=wei, usdc=usdc)
    before = portfolio.value_usdc(price)
    if not s.history.start_value_usdc:
        s.history.start_value_usdc = before
    state = state_from_snapshot(snap, portfolio)
    d = policy.decide(state, s.history)
    rec.update(price=pool.price, state=state.to_dict(), decision=d.decision, amount_eth=d.amount_eth,
               valid=d.valid)
    if d.raw:
        rec.update(raw=d.raw, reason=d.reason, latency_s=d.latency_s)
    day_start = s.journal.day_start_value(now, s.mode) or before
    rec["halted"] = halted = before < day_start * (1.0 - s.cfg["daily_loss_limit_pct"] / 100.0)
    rec["portfolio"] = _portfolio_view(portfolio, price, before)
    journaled = traded = False
    if not halted:  # the day's loss limit is hit: decisions are journaled, nothing trades
        executor = paper_fill if s.mode == PAPER else live_order
        journaled, traded = executor(s, rec, d, pool, anchor, portfolio, before)
    if not journaled:
        s.journal.append(rec)
        s.echo(
            f"[{rec['utc']}] block {report['block']} price {pool.price:.2f} -> {d.decision}"
            f"{'' if d.valid else ' (unparseable answer)'}{' HALTED (daily loss limit)' if halted else ''}"
            f"{'  NO ORDER: ' + rec['refused'] if rec.get('refused') else ''}"
            f"  value {rec['portfolio']['value_usdc']:.2f} USDC"
        )
    return rec, traded


def paper_fill(s: Session, rec: dict, d, pool, anchor, portfolio: Portfolio, before: float):
    """The paper executor: fill against the checked pool state with the exact pool math into
    the simulated portfolio. Returns ``(journaled, traded)``: never journaled here."""
    fill = trade(portfolio, d.decision, d.amount_eth, pool.sqrt_price_x96, pool.liquidity,
                 pool.lp_fee, s.cfg)
    rec["fill"] = fill.to_dict() if fill else None
    rec["portfolio"] = _portfolio_view(portfolio, anchor["price"] if anchor else pool.price, before)
    if fill:
        s.history.add(Trade(rec["time"], d.decision, fill.eth_delta, fill.exec_price))
    return False, fill is not None


def live_order(s: Session, rec: dict, d, pool, anchor, portfolio: Portfolio, before: float):
    """The live executor: size at the anchor, then :func:`_order`. Returns ``(journaled,
    broadcast)``; a refusal sets ``rec["refused"]``."""
    rec["account"] = s.address
    planned = plan_live(d.decision, d.amount_eth, before, anchor, s.cfg)
    if not planned:
        return False, False
    side, amount_in, capped = planned
    if capped:
        rec["capped_by"] = capped
    plan = _checked_plan(s, rec, side, amount_in, pool, anchor)
    if plan is None:
        return False, False
    return _sign_and_send(s, rec, plan)


def _checked_plan(s: Session, rec: dict, side: str, amount_in: int, pool, anchor: dict):
    """The swap plan, anchored (notional in both assets, the fair output and the floor of the
    minimum output), within the day's limits, paid for, and simulated; None when refused
    (``rec["refused"]``). Missing funds are an error (journaled, raised)."""
    from agent import execute as ex

    cfg, bps = s.cfg, s.cfg["max_slippage_bps"]
    try:
        plan = ex.plan_swap(side, amount_in, pool.sqrt_price_x96, pool.liquidity, pool.lp_fee,
                            bps, cfg["deadline_seconds"])
        plan.notional_usdc, plan.notional_eth = anc.notional(plan.zero_for_one, amount_in, anchor)
        plan.anchor_out = anc.anchored_output(plan.zero_for_one, amount_in, anchor)
        plan.floor_out = ex.min_output(plan.anchor_out, bps)
        rec["swap"] = {"plan": plan.to_dict()}
        for unit, key, amount in (("USDC", "max_daily_usdc", plan.notional_usdc),
                                  ("ETH", "max_daily_eth", plan.notional_eth)):
            today = s.journal.notional_today(s.address, rec["time"], unit)
            if today + amount > cfg[key]:
                rec["refused_by"] = [DAILY_LIMIT]
                rec["refused"] = (f"daily notional limit: {today:.{2 if unit == 'USDC' else 6}f} {unit} "
                                  f"signed today + {amount:.{2 if unit == 'USDC' else 6}f} > {key} {cfg[key]:g}")
                return None
        ex.check_funds(s.w3, s.address, plan, s.gas)
    except UserError as e:
        rec.pop("swap", None)
        rec["error"] = str(e)
        s.journal.append(rec)
        raise
    try:
        ex.apply_simulation(plan, ex.simulate_quote(s.w3, plan, pool.block), bps)
    except UserError as e:
        rec.update(refused_by=[QUOTE], refused=str(e))
        return None
    finally:
        rec["swap"] = {"plan": plan.to_dict()}
    return plan


def _sign_and_send(s: Session, rec: dict, plan) -> tuple[bool, bool]:
    """Nonce, transaction, dry run or confirmation, then journal -> broadcast -> receipt.
    Returns ``(journaled, broadcast)``."""
    from agent import execute as ex

    j, address = s.journal, s.address
    nonce = ex.next_nonce(s.w3, address)
    used = j.highest_used_nonce(address)
    if nonce <= used:
        rec["error"] = (
            f"the node's next nonce {nonce} for {address} is not above nonce {used}, already "
            "mined per the journal: the node is behind or wrong; nothing was signed"
        )
        j.append(rec)
        raise UserError(rec["error"])
    tx = ex.build_transaction(s.w3, address, plan, s.chain_id, nonce)
    rec["swap"] = {"plan": plan.to_dict(), "to": tx["to"], "value": tx["value"], "nonce": nonce}
    if s.dry_run:
        rec["swap"]["calldata"] = tx["data"]
        s.echo(f"dry run: {plan.side} {plan.amount_in} (min out {plan.min_amount_out}, simulated "
               f"{plan.simulated_out}, anchored floor {plan.floor_out}) to {tx['to']}")
        s.echo(f"calldata {tx['data']}")
        return False, False
    if s.confirm is not None:
        what = (f"{plan.side} ETH: {plan.amount_in} {'wei' if plan.zero_for_one else 'USDC units'} "
                f"(~{plan.notional_usdc:.2f} USDC, {plan.notional_eth:.6f} ETH by the anchor) at "
                f"{plan.price:.2f}, min out {plan.min_amount_out}, from {address} on chain "
                f"{s.chain_id}. Sign and send?")
        if not s.confirm(what):
            rec["refused"] = "not confirmed on the terminal: nothing was signed"
            j.append(rec)
            raise UserError(rec["refused"])
        s.confirm = None  # asked once per run
    raw, tx_hash = ex.sign(s.acct, tx)
    rec["swap"].update(tx_hash=tx_hash, status="signed")
    s.in_flight.update(tx_hash=tx_hash, nonce=nonce, account=address, broadcast=False)
    j.append(rec)  # journal first: the hash and intent are on disk before the node sees it
    try:
        ex.broadcast(s.w3, raw, tx_hash)
    except UserError as e:
        _tx_event(j, tx_hash, nonce, address, "send_failed", error=str(e))
        s.in_flight.clear()
        raise
    s.in_flight["broadcast"] = True
    _tx_event(j, tx_hash, nonce, address, "sent")
    s.echo(f"[{rec['utc']}] sent {tx_hash} (nonce {nonce}): {plan.side} {plan.amount_in}, "
           f"min out {plan.min_amount_out}")
    r = _wait_receipt(s.w3, tx_hash, float(s.cfg["receipt_timeout_s"]), s.sleep)
    if r is None:
        _tx_event(j, tx_hash, nonce, address, "pending")
        s.in_flight.clear()
        raise UserError(
            f"no receipt for {tx_hash} within {s.cfg['receipt_timeout_s']:g} s: it is journaled "
            "as pending; the next start reconciles it before any new order"
        )
    outcome = "mined" if r["status"] == 1 else "reverted"
    _tx_event(j, tx_hash, nonce, address, outcome, **r)
    s.in_flight.clear()
    s.echo(f"[{rec['utc']}] {tx_hash} {outcome} in block {r['block']}")
    return True, True

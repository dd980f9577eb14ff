"""What the trading endpoint does not control: an independent price anchor, and freshness.

Threat model (docs/agent.md): the endpoint the agent trades through may lie *consistently* --
its ``getSlot0``, its Swap logs and its V4 Quoter all describing a pool at another price --
or serve a stalled chain, or another chain. Its answers then agree with each other, so
comparing them (:mod:`agent.prices`) proves nothing. Before any live order the price must
also agree with an **anchor** the trading endpoint cannot move:

- ``check_rpc_urls``: the pool's ``getSlot0`` on endpoints of other providers (a URL of the
  trading endpoint, or another URL on the same host:port, is refused: not independent);
- ``min_price`` / ``max_price``: bounds the user sets (USDC per ETH).

The anchor is a price band ``[low, high]`` (one check endpoint: one price; bounds only: the
bounds) with a point ``price``. Orders are sized, capped and given their minimum output with
the anchor, never with the trading endpoint's word alone: the USDC value of an ETH amount is
taken at ``high``, the ETH value of a USDC amount at ``low``, and the minimum output is never
below the anchored fair output (the exact pool math at the check endpoint's pool state, or
the bound's price less the pool fee) times ``1 - max_slippage_bps``.

Freshness (every endpoint, every iteration): the chain id must be the expected one (8453, or
the flagged fork's), the head block's timestamp must lie within ``max_head_lag_s`` of the wall
clock, and the head must advance between iterations (``head_stall_s``). Each failure is its
own reason code in the journal (:data:`REASONS`).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from apeagent.errors import UserError
from apeagent.redact import redact_url
from chain.amm import AmmError, swap_exact_input
from chain.pool import FEE

# reason codes of a refused iteration (journal ``refused_by``), in the order they are checked
CHAIN_ID, HEAD_LAG, HEAD_STALLED, PRICE, ANCHOR = "chain_id", "head_lag", "head_stalled", "price", "anchor"
REASONS = (CHAIN_ID, HEAD_LAG, HEAD_STALLED, PRICE, ANCHOR)
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def endpoint_key(url: str) -> tuple[str, int | None]:
    """``(host, port)`` of a URL (scheme's default port filled in; every loopback name is one
    host), for the independence rule."""
    try:
        u = urlsplit(str(url).strip())
        port = u.port or DEFAULT_PORTS.get(u.scheme.lower())
    except ValueError:
        raise UserError(f"not a URL: {redact_url(url)}") from None
    host = (u.hostname or "").lower().rstrip(".")
    if host in ("localhost", "::1", "0.0.0.0") or host.startswith("127."):
        host = "localhost"
    return host, port


def check_independent(rpc_urls: list[str], check_urls: list[str]) -> None:
    """Refuse a check endpoint that is one of the trading endpoints (same URL, or the same
    host:port with another path or key): it would only repeat the same node's answer."""
    trading = {endpoint_key(u): u for u in rpc_urls}
    for url in check_urls:
        key = endpoint_key(url)
        if key in trading:
            same = "the same URL" if url.strip() == trading[key].strip() else "the same host:port"
            raise UserError(  # (a URL is followed by a space or the end: redaction finds it whole)
                f"--check-rpc-url {redact_url(url)} is not an independent price source (use "
                f"another provider): it is {same} as --rpc-url {redact_url(trading[key])}"
            )


def anchor_kind(cfg: dict) -> str | None:
    """What anchors the price: ``"check"`` (check endpoints, bounds as an extra guard),
    ``"bounds"`` (both bounds, no check endpoint) or None. Bounds alone need both ends: a
    sell's floor comes from ``min_price``, a buy's from ``max_price``."""
    lo, hi = float(cfg.get("min_price") or 0.0), float(cfg.get("max_price") or 0.0)
    if lo and hi and lo >= hi:
        raise UserError(f"--min-price {lo:g} must be below --max-price {hi:g}")
    if cfg.get("check_rpc_urls"):
        return "check"
    return "bounds" if lo and hi else None


def require_anchor(cfg: dict) -> str:
    """:func:`anchor_kind` for live orders: None is a UserError (one endpoint's word would
    size and bound the order)."""
    kind = anchor_kind(cfg)
    if kind is not None:
        return kind
    half = " (bounds alone need both --min-price and --max-price)" if cfg.get("min_price") or cfg.get("max_price") else ""
    raise UserError(
        "--execute needs an independent price anchor: --check-rpc-url URL of another provider, "
        f"or --min-price/--max-price{half}; no order is placed on one endpoint's word"
    )


# ---------------------------------------------------------------- freshness


def freshness(w3, name: str, cfg: dict, chain_id: int, seen: dict, now: float | None = None) -> dict:
    """Chain id, head and head age of one endpoint: ``{chain_id, head, head_timestamp, lag_s,
    problems: [(reason, text)]}``. ``seen[name]`` keeps ``(head, first seen at)`` between
    iterations: a head that did not advance within ``head_stall_s`` is a problem."""
    now = time.time() if now is None else now
    out: dict[str, Any] = {"problems": []}
    got = int(w3.eth.chain_id)
    out["chain_id"] = got
    if got != chain_id:
        out["problems"].append((CHAIN_ID, f"{name} answers chain id {got}, not {chain_id}"))
        return out
    head = int(w3.eth.block_number)
    ts = int(w3.eth.get_block(head)["timestamp"])
    lag = now - ts
    out.update(head=head, head_timestamp=ts, lag_s=round(lag, 3))
    bound = float(cfg["max_head_lag_s"])
    if lag > bound:
        out["problems"].append((HEAD_LAG, f"{name} head block {head} is {lag:.0f} s old (bound {bound:g} s)"))
    elif -lag > bound:
        out["problems"].append(
            (HEAD_LAG, f"{name} head block {head} is dated {-lag:.0f} s in the future (bound {bound:g} s)")
        )
    prev = seen.get(name)
    if prev is not None and head <= prev[0] and now - prev[1] >= float(cfg["head_stall_s"]):
        out["problems"].append(
            (HEAD_STALLED, f"{name} head is block {head}, not past block {prev[0]} seen "
             f"{now - prev[1]:.0f} s ago (bound {float(cfg['head_stall_s']):g} s)")
        )
    if prev is None or head > prev[0]:
        seen[name] = (head, now)
    return out


# ---------------------------------------------------------------- the anchor


def anchor_band(report: dict, check_pools: dict[str, Any], cfg: dict) -> tuple[dict | None, list[str]]:
    """The anchor from the check endpoints' pool states and the bounds, and its problems.

    ``report``: :func:`agent.prices.check_prices`'s (the trading endpoint's ``slot0`` price in
    ``sources``). Returns ``(anchor, problems)``; the anchor is None when nothing independent is
    configured or it could not be formed (``problems`` says why).
    """
    lo_b, hi_b = float(cfg.get("min_price") or 0.0), float(cfg.get("max_price") or 0.0)
    problems: list[str] = []
    trading = report["sources"].get("slot0")
    if check_pools:
        name, pool = sorted(check_pools.items(), key=lambda kv: kv[1].price)[(len(check_pools) - 1) // 2]
        anchor = {"kind": "check", "source": name, "price": pool.price, "low": pool.price,
                  "high": pool.price, "pool": pool}
    elif lo_b and hi_b:
        anchor = {"kind": "bounds", "source": "min_price/max_price", "price": trading,
                  "low": lo_b, "high": hi_b, "pool": None}
    else:
        return None, []
    for what, p in (("slot0", trading), (anchor["source"], anchor["price"])):
        if p is None:
            continue
        if (lo_b and p < lo_b) or (hi_b and p > hi_b):
            problems.append(
                f"{what} price {p:.2f} is outside the bounds [{lo_b or 0:g}, {hi_b or float('inf'):g}] "
                "(min_price/max_price)"
            )
    if lo_b and anchor["kind"] == "check":
        anchor["bounds"] = [lo_b, hi_b or None]
    return (None if problems else anchor), problems


def public(anchor: dict | None) -> dict | None:
    """The anchor as journaled (the pool state as plain data)."""
    if anchor is None:
        return None
    pool = anchor["pool"]
    return {**{k: v for k, v in anchor.items() if k != "pool"}, "pool": pool.to_dict() if pool else None}


def anchored_output(zero_for_one: bool, amount_in: int, anchor: dict) -> int:
    """The fair output of an exact-input swap by the anchor: the exact pool math at the check
    endpoint's pool state, else (bounds) the worst bound's price less the pool fee."""
    pool = anchor["pool"]
    if pool is not None:
        try:
            return swap_exact_input(pool.sqrt_price_x96, pool.liquidity, int(amount_in), zero_for_one,
                                    pool.lp_fee).amount_out
        except AmmError as e:
            raise UserError(f"cannot quote the swap at the anchor's pool state: {e}") from None
    keep = 1.0 - FEE / 1e6
    if zero_for_one:  # ETH in, USDC out: at the lowest price the anchor allows
        return int(amount_in / 1e18 * anchor["low"] * keep * 1e6)
    return int(amount_in / 1e6 / anchor["high"] * keep * 1e18)


def notional(zero_for_one: bool, amount_in: int, anchor: dict) -> tuple[float, float]:
    """``(USDC, ETH)`` a swap's input is worth by the anchor, each at the band's worse end for
    the caps (an ETH input valued at ``high``, a USDC input counted in ETH at ``low``)."""
    if zero_for_one:
        eth = amount_in / 1e18
        return eth * anchor["high"], eth
    usdc = amount_in / 1e6
    return usdc, usdc / anchor["low"]

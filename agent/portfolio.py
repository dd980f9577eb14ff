"""Portfolio accounting in exact token units, fills through the exact pool math.

A portfolio holds native ETH (wei) and USDC (6-decimal units) as Python ints. A trade is an
exact-input swap against the pool state the market was in at that moment (its
``sqrtPriceX96`` and in-range ``liquidity``), computed with :func:`chain.amm.swap_exact_input`:
the pool fee (``fee`` pips of the input) and the price impact come out to the integer the
pool would give. Gas is paid in ETH on top of the input.

Decision -> trade (the same in backtests, paper trading and execution):

- ``APE IN x ETH``: spend ``x * mid price`` USDC (exact input), so the ETH received is ``x``
  less the fee and the impact; capped by the USDC held.
- ``APE OUT x ETH``: sell exactly ``x`` ETH; capped by the ETH held less the gas.
- no amount: ``default_trade_fraction`` of the portfolio's value; every trade is capped at
  ``max_trade_eth``. ``APE NEUTRAL`` never trades.

The trade does not move the recorded market afterwards (the backtest replays what really
happened): a policy's own impact is charged on its fill, not carried into later prices.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from chain.amm import AmmError, price_from_sqrt_price_x96, swap_exact_input

WEI = 10**18
USDC_UNIT = 10**6
BUY, SELL = "buy", "sell"  # buy ETH with USDC (oneForZero) / sell ETH for USDC (zeroForOne)
MIN_TRADE_USDC = 0.01  # smaller trades are skipped: dust costs more gas than it moves


@dataclass
class Portfolio:
    eth_wei: int
    usdc: int  # 6-decimal units
    fees_eth_wei: int = 0  # pool fees paid on sells (in the input token, ETH)
    fees_usdc: int = 0  # pool fees paid on buys (in USDC)
    fees_value_usdc: float = 0.0  # all pool fees valued at the mid price of their trade
    gas_wei: int = 0
    gas_value_usdc: float = 0.0
    trades: int = 0

    @property
    def eth(self) -> float:
        return self.eth_wei / WEI

    @property
    def usdc_float(self) -> float:
        return self.usdc / USDC_UNIT

    def value_usdc(self, price: float) -> float:
        return self.eth * price + self.usdc_float

    def eth_share_pct(self, price: float) -> float:
        value = self.value_usdc(price)
        return 50.0 if value <= 0 else 100.0 * self.eth * price / value

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Portfolio:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def initial_portfolio(value_usdc: float, eth_share: float, price: float) -> Portfolio:
    """A portfolio worth ``value_usdc`` at ``price`` with ``eth_share`` (0..1) of it in ETH."""
    if value_usdc <= 0 or not 0.0 <= eth_share <= 1.0 or price <= 0:
        raise ValueError("initial value and price must be positive, the ETH share in [0, 1]")
    eth = value_usdc * eth_share / price
    return Portfolio(eth_wei=int(eth * WEI), usdc=int(value_usdc * (1 - eth_share) * USDC_UNIT))


@dataclass
class Fill:
    side: str  # buy | sell (ETH)
    amount_in: int  # raw units of the input token, fee included
    amount_out: int  # raw units of the output token
    fee: int  # pool fee, raw units of the input token
    gas_wei: int
    price_before: float  # mid price (USDC per ETH) before the trade
    price_after: float  # where the trade alone would move the pool
    exec_price: float  # USDC per ETH actually paid / received (fee included)
    cost_bps: float  # exec price vs mid: fee + impact, in basis points (>= 0)
    eth_delta: float  # the portfolio's change, ETH (gas included)
    usdc_delta: float

    def to_dict(self) -> dict:
        return asdict(self)


def gas_wei(gas_units: int, gas_price_gwei: float) -> int:
    return int(round(gas_units * gas_price_gwei * 1e9))


def plan_trade(
    decision: str,
    amount_eth: float | None,
    portfolio: Portfolio,
    price: float,
    cfg: dict,
) -> tuple[str, int] | None:
    """``(side, amount_in raw)`` for a decision, or None when it does not trade."""
    if decision not in ("APE IN", "APE OUT") or price <= 0:
        return None
    if amount_eth is None or not math.isfinite(amount_eth) or amount_eth <= 0:
        amount_eth = cfg["default_trade_fraction"] * portfolio.value_usdc(price) / price
    amount_eth = min(amount_eth, cfg["max_trade_eth"])
    gas = gas_wei(cfg["gas_units"], cfg["gas_price_gwei"])
    if decision == "APE IN":
        usdc_in = min(int(amount_eth * price * USDC_UNIT), portfolio.usdc)
        if usdc_in < MIN_TRADE_USDC * USDC_UNIT or portfolio.eth_wei < gas:
            return None
        return BUY, usdc_in
    eth_in = min(int(amount_eth * WEI), portfolio.eth_wei - gas)
    if eth_in * price / WEI < MIN_TRADE_USDC:
        return None
    return SELL, eth_in


def quote(side: str, amount_in: int, sqrt_price_x96: int, liquidity: int, fee_pips: int):
    """The exact pool result of swapping ``amount_in`` (a :class:`chain.amm.SwapResult`)."""
    return swap_exact_input(
        int(sqrt_price_x96), int(liquidity), int(amount_in), side == SELL, int(fee_pips)
    )


def apply_trade(
    portfolio: Portfolio,
    side: str,
    amount_in: int,
    sqrt_price_x96: int,
    liquidity: int,
    fee_pips: int,
    gas: int,
) -> Fill | None:
    """Fill one exact-input swap into ``portfolio`` (in place). None if the pool cannot
    (a swap larger than the in-range liquidity: the contract would revert)."""
    try:
        r = quote(side, amount_in, sqrt_price_x96, liquidity, fee_pips)
    except AmmError:
        return None
    mid = price_from_sqrt_price_x96(sqrt_price_x96)
    after = price_from_sqrt_price_x96(r.sqrt_price_x96)
    if r.amount_out <= 0:
        return None
    if side == BUY:
        eth_out, usdc_in = r.amount_out, r.amount_in
        portfolio.usdc -= usdc_in
        portfolio.eth_wei += eth_out - gas
        portfolio.fees_usdc += r.fee_amount
        portfolio.fees_value_usdc += r.fee_amount / USDC_UNIT
        exec_price = (usdc_in / USDC_UNIT) / (eth_out / WEI)
        cost_bps = 1e4 * (exec_price / mid - 1.0)
        eth_delta, usdc_delta = (eth_out - gas) / WEI, -usdc_in / USDC_UNIT
    else:
        eth_in, usdc_out = r.amount_in, r.amount_out
        portfolio.eth_wei -= eth_in + gas
        portfolio.usdc += usdc_out
        portfolio.fees_eth_wei += r.fee_amount
        portfolio.fees_value_usdc += r.fee_amount / WEI * mid
        exec_price = (usdc_out / USDC_UNIT) / (eth_in / WEI)
        cost_bps = 1e4 * (1.0 - exec_price / mid)
        eth_delta, usdc_delta = -(eth_in + gas) / WEI, usdc_out / USDC_UNIT
    portfolio.gas_wei += gas
    portfolio.gas_value_usdc += gas / WEI * mid
    portfolio.trades += 1
    return Fill(
        side=side,
        amount_in=r.amount_in,
        amount_out=r.amount_out,
        fee=r.fee_amount,
        gas_wei=gas,
        price_before=mid,
        price_after=after,
        exec_price=exec_price,
        cost_bps=cost_bps,
        eth_delta=eth_delta,
        usdc_delta=usdc_delta,
    )


def trade(
    portfolio: Portfolio,
    decision: str,
    amount_eth: float | None,
    sqrt_price_x96: int,
    liquidity: int,
    fee_pips: int,
    cfg: dict,
) -> Fill | None:
    """Plan and fill a decision at the given pool state (None: no trade)."""
    price = price_from_sqrt_price_x96(sqrt_price_x96)
    planned = plan_trade(decision, amount_eth, portfolio, price, cfg)
    if planned is None:
        return None
    side, amount_in = planned
    gas = gas_wei(cfg["gas_units"], cfg["gas_price_gwei"])
    return apply_trade(portfolio, side, amount_in, sqrt_price_x96, liquidity, fee_pips, gas)


# ---------------------------------------------------------------- metrics


def metrics(values: list[float], times: list[int], portfolio: Portfolio) -> dict:
    """Total return, annualised Sharpe of the per-interval returns, max drawdown, costs.

    Sharpe: mean / std of the simple returns between consecutive decisions, times
    sqrt(intervals per year) (risk-free rate 0, crypto trades all year: 365 days).
    """
    v = [float(x) for x in values]
    out = {
        "start_value_usdc": v[0] if v else 0.0,
        "end_value_usdc": v[-1] if v else 0.0,
        "total_return_pct": 100.0 * (v[-1] / v[0] - 1.0) if len(v) > 1 and v[0] > 0 else 0.0,
        "sharpe": 0.0,
        "max_drawdown_pct": 0.0,
        "trades": portfolio.trades,
        "fees_paid_usdc": portfolio.fees_value_usdc,
        "gas_paid_usdc": portfolio.gas_value_usdc,
        "costs_usdc": portfolio.fees_value_usdc + portfolio.gas_value_usdc,
    }
    if len(v) > 2:
        rets = [b / a - 1.0 for a, b in zip(v[:-1], v[1:], strict=True) if a > 0]
        mean = sum(rets) / len(rets)
        var = sum((r - mean) ** 2 for r in rets) / max(len(rets) - 1, 1)
        dt = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0
        if var > 0 and dt > 0:
            out["sharpe"] = mean / math.sqrt(var) * math.sqrt(365 * 86400 / dt)
    peak, mdd = -math.inf, 0.0
    for x in v:
        peak = max(peak, x)
        if peak > 0:
            mdd = max(mdd, 1.0 - x / peak)
    out["max_drawdown_pct"] = 100.0 * mdd
    return out

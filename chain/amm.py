"""Exact Uniswap V3/V4 concentrated-liquidity math on Python ints.

Ports of ``TickMath``, ``SqrtPriceMath``, ``FullMath`` and ``SwapMath.computeSwapStep`` with
the contracts' rounding, so a simulated swap gives the same integers a pool would. Only the
constant-liquidity case is modelled (a swap that stays inside the active range): enough for
the simulator and for checking recorded events, since a single step is all a swap inside one
initialized range does.

Sign convention of :class:`SwapResult` ``amount0``/``amount1``: exactly as the V4 ``Swap`` event
reports them, i.e. the *swapper's* balance delta: negative = paid by the swapper into the pool,
positive = paid out of the pool to the swapper. (This is checked to the integer against the
real Base events in ``tests/test_chain_amm.py``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Q96 = 1 << 96
Q128 = 1 << 128
MIN_TICK = -887272
MAX_TICK = 887272
MIN_SQRT_PRICE = 4295128739
MAX_SQRT_PRICE = 1461446703485210103287273052203988822378723970342
MAX_SWAP_FEE = 1_000_000  # fees are in pips (hundredths of a bip)
UINT160_MAX = (1 << 160) - 1
UINT256_MAX = (1 << 256) - 1

# TickMath magic numbers: 2**128 / sqrt(1.0001) ** (2**i), rounded as in the contract.
_TICK_FACTORS = (
    (0x2, 0xFFF97272373D413259A46990580E213A),
    (0x4, 0xFFF2E50F5F656932EF12357CF3C7FDCC),
    (0x8, 0xFFE5CACA7E10E4E61C3624EAA0941CD0),
    (0x10, 0xFFCB9843D60F6159C9DB58835C926644),
    (0x20, 0xFF973B41FA98C081472E6896DFB254C0),
    (0x40, 0xFF2EA16466C96A3843EC78B326B52861),
    (0x80, 0xFE5DEE046A99A2A811C461F1969C3053),
    (0x100, 0xFCBE86C7900A88AEDCFFC83B479AA3A4),
    (0x200, 0xF987A7253AC413176F2B074CF7815E54),
    (0x400, 0xF3392B0822B70005940C7A398E4B70F3),
    (0x800, 0xE7159475A2C29B7443B29C7FA6E889D9),
    (0x1000, 0xD097F3BDFD2022B8845AD8F792AA5825),
    (0x2000, 0xA9F746462D870FDF8A65DC1F90E061E5),
    (0x4000, 0x70D869A156D2A1B890BB3DF62BAF32F7),
    (0x8000, 0x31BE135F97D08FD981231505542FCFA6),
    (0x10000, 0x9AA508B5B7A84E1C677DE54F3E99BC9),
    (0x20000, 0x5D6AF8DEDB81196699C329225EE604),
    (0x40000, 0x2216E584F5FA1EA926041BEDFE98),
    (0x80000, 0x48A170391F7DC42444E8FA2),
)


class AmmError(ValueError):
    """An input the contracts would revert on (tick or price out of range, overflow)."""


@dataclass(frozen=True)
class SwapResult:
    amount0: int  # signed, as the V4 Swap event: < 0 paid in by the swapper, > 0 paid out
    amount1: int
    sqrt_price_x96: int  # after the swap
    tick: int  # after the swap
    fee_amount: int  # in the input token, included in the input amount
    amount_in: int  # unsigned input including the fee
    amount_out: int  # unsigned output


# ---------------------------------------------------------------- FullMath


def mul_div(a: int, b: int, denominator: int) -> int:
    if denominator <= 0:
        raise AmmError("mulDiv by zero")
    result = a * b // denominator
    if result > UINT256_MAX:
        raise AmmError("mulDiv overflow")
    return result


def mul_div_rounding_up(a: int, b: int, denominator: int) -> int:
    if denominator <= 0:
        raise AmmError("mulDiv by zero")
    result = -((-a * b) // denominator)
    if result > UINT256_MAX:
        raise AmmError("mulDiv overflow")
    return result


def div_rounding_up(x: int, y: int) -> int:
    return -(-x // y)


# ---------------------------------------------------------------- TickMath


def sqrt_price_x96_from_tick(tick: int) -> int:
    """Bit-exact ``TickMath.getSqrtPriceAtTick``: sqrt(1.0001**tick) * 2**96, rounded up."""
    tick = int(tick)
    abs_tick = abs(tick)
    if abs_tick > MAX_TICK:
        raise AmmError(f"tick {tick} outside [{MIN_TICK}, {MAX_TICK}]")
    ratio = 0xFFFCB933BD6FAD37AA2D162D1A594001 if abs_tick & 0x1 else Q128
    for bit, factor in _TICK_FACTORS:
        if abs_tick & bit:
            ratio = (ratio * factor) >> 128
    if tick > 0:
        ratio = UINT256_MAX // ratio
    return (ratio >> 32) + (1 if ratio & 0xFFFFFFFF else 0)


def tick_from_sqrt_price_x96(sqrt_price_x96: int) -> int:
    """``TickMath.getTickAtSqrtPrice``: the greatest tick whose sqrt price is <= the input."""
    sqrt_price_x96 = int(sqrt_price_x96)
    if not MIN_SQRT_PRICE <= sqrt_price_x96 < MAX_SQRT_PRICE:
        raise AmmError(f"sqrtPriceX96 {sqrt_price_x96} outside [MIN_SQRT_PRICE, MAX_SQRT_PRICE)")
    # A float estimate lands within a tick or two; the exact integer check settles it.
    log_sqrt = math.log(sqrt_price_x96) - 96 * math.log(2)
    tick = int(math.floor(2 * log_sqrt / math.log(1.0001)))
    tick = max(MIN_TICK, min(MAX_TICK, tick))
    while tick > MIN_TICK and sqrt_price_x96_from_tick(tick) > sqrt_price_x96:
        tick -= 1
    while tick < MAX_TICK and sqrt_price_x96_from_tick(tick + 1) <= sqrt_price_x96:
        tick += 1
    return tick


# ---------------------------------------------------------------- prices


def price_from_sqrt_price_x96(
    sqrt_price_x96: int, decimals0: int = 18, decimals1: int = 6
) -> float:
    """Human price of token0 in token1 (USDC per ETH for this pool).

    ``(sqrtPriceX96 / 2**96)**2`` is token1 per token0 in raw units; scale by
    ``10**(decimals0 - decimals1)``. Computed as an exact integer ratio before the one float
    rounding, so no precision is lost on 160-bit inputs.
    """
    num = int(sqrt_price_x96) ** 2
    shift = decimals0 - decimals1
    if shift >= 0:
        num *= 10**shift
        den = 1 << 192
    else:
        den = (1 << 192) * 10 ** (-shift)
    return num / den


def sqrt_price_x96_from_price(price: float, decimals0: int = 18, decimals1: int = 6) -> int:
    """Inverse of :func:`price_from_sqrt_price_x96` (floor of the exact square root)."""
    if not price > 0 or not math.isfinite(price):
        raise AmmError(f"price must be positive and finite, got {price!r}")
    from fractions import Fraction

    raw = Fraction(price) * Fraction(10) ** (decimals1 - decimals0)  # token1 raw per token0 raw
    scaled = raw * (1 << 192)
    return math.isqrt(scaled.numerator // scaled.denominator)


# ---------------------------------------------------------------- SqrtPriceMath


def get_amount0_delta(sqrt_a: int, sqrt_b: int, liquidity: int, round_up: bool) -> int:
    if sqrt_a > sqrt_b:
        sqrt_a, sqrt_b = sqrt_b, sqrt_a
    if sqrt_a <= 0:
        raise AmmError("sqrt price must be positive")
    numerator1 = liquidity << 96
    numerator2 = sqrt_b - sqrt_a
    if round_up:
        return div_rounding_up(mul_div_rounding_up(numerator1, numerator2, sqrt_b), sqrt_a)
    return mul_div(numerator1, numerator2, sqrt_b) // sqrt_a


def get_amount1_delta(sqrt_a: int, sqrt_b: int, liquidity: int, round_up: bool) -> int:
    if sqrt_a > sqrt_b:
        sqrt_a, sqrt_b = sqrt_b, sqrt_a
    if round_up:
        return mul_div_rounding_up(liquidity, sqrt_b - sqrt_a, Q96)
    return mul_div(liquidity, sqrt_b - sqrt_a, Q96)


def next_sqrt_price_from_amount0_rounding_up(
    sqrt_p: int, liquidity: int, amount: int, add: bool
) -> int:
    if amount == 0:
        return sqrt_p
    numerator1 = liquidity << 96
    product = amount * sqrt_p
    if add:
        # The contract takes the precise branch only when nothing overflows 256 bits.
        if product <= UINT256_MAX:
            denominator = numerator1 + product
            if denominator <= UINT256_MAX:
                return mul_div_rounding_up(numerator1, sqrt_p, denominator)
        return div_rounding_up(numerator1, numerator1 // sqrt_p + amount)
    if product > UINT256_MAX or numerator1 <= product:
        raise AmmError("price overflow: output exceeds the pool's token0 reserves")
    result = mul_div_rounding_up(numerator1, sqrt_p, numerator1 - product)
    if result > UINT160_MAX:
        raise AmmError("sqrt price overflow")
    return result


def next_sqrt_price_from_amount1_rounding_down(
    sqrt_p: int, liquidity: int, amount: int, add: bool
) -> int:
    if add:
        quotient = (amount << 96) // liquidity
        result = sqrt_p + quotient
        if result > UINT160_MAX:
            raise AmmError("sqrt price overflow")
        return result
    quotient = div_rounding_up(amount << 96, liquidity)
    if sqrt_p <= quotient:
        raise AmmError("not enough liquidity: output exceeds the pool's token1 reserves")
    return sqrt_p - quotient


def next_sqrt_price_from_input(
    sqrt_p: int, liquidity: int, amount_in: int, zero_for_one: bool
) -> int:
    if sqrt_p <= 0 or liquidity <= 0:
        raise AmmError("sqrt price and liquidity must be positive")
    if zero_for_one:
        return next_sqrt_price_from_amount0_rounding_up(sqrt_p, liquidity, amount_in, True)
    return next_sqrt_price_from_amount1_rounding_down(sqrt_p, liquidity, amount_in, True)


def next_sqrt_price_from_output(
    sqrt_p: int, liquidity: int, amount_out: int, zero_for_one: bool
) -> int:
    if sqrt_p <= 0 or liquidity <= 0:
        raise AmmError("sqrt price and liquidity must be positive")
    if zero_for_one:
        return next_sqrt_price_from_amount1_rounding_down(sqrt_p, liquidity, amount_out, False)
    return next_sqrt_price_from_amount0_rounding_up(sqrt_p, liquidity, amount_out, False)


# ---------------------------------------------------------------- SwapMath


def compute_swap_step(
    sqrt_price_current: int,
    sqrt_price_target: int,
    liquidity: int,
    amount_remaining: int,
    fee_pips: int,
) -> tuple[int, int, int, int]:
    """``SwapMath.computeSwapStep`` (V4 sign: ``amount_remaining < 0`` is exact input).

    Returns ``(sqrt_price_next, amount_in, amount_out, fee_amount)``.
    """
    if not 0 <= fee_pips <= MAX_SWAP_FEE:
        raise AmmError(f"fee {fee_pips} pips outside [0, {MAX_SWAP_FEE}]")
    zero_for_one = sqrt_price_current >= sqrt_price_target
    exact_in = amount_remaining < 0
    if exact_in:
        remaining_less_fee = mul_div(-amount_remaining, MAX_SWAP_FEE - fee_pips, MAX_SWAP_FEE)
        if zero_for_one:
            amount_in = get_amount0_delta(sqrt_price_target, sqrt_price_current, liquidity, True)
        else:
            amount_in = get_amount1_delta(sqrt_price_current, sqrt_price_target, liquidity, True)
        if remaining_less_fee >= amount_in:
            sqrt_next = sqrt_price_target
            fee_amount = (
                amount_in
                if fee_pips == MAX_SWAP_FEE
                else mul_div_rounding_up(amount_in, fee_pips, MAX_SWAP_FEE - fee_pips)
            )
        else:
            amount_in = remaining_less_fee
            sqrt_next = next_sqrt_price_from_input(
                sqrt_price_current, liquidity, amount_in, zero_for_one
            )
            fee_amount = -amount_remaining - amount_in
        if zero_for_one:
            amount_out = get_amount1_delta(sqrt_next, sqrt_price_current, liquidity, False)
        else:
            amount_out = get_amount0_delta(sqrt_price_current, sqrt_next, liquidity, False)
    else:
        if zero_for_one:
            amount_out = get_amount1_delta(sqrt_price_target, sqrt_price_current, liquidity, False)
        else:
            amount_out = get_amount0_delta(sqrt_price_current, sqrt_price_target, liquidity, False)
        if amount_remaining >= amount_out:
            sqrt_next = sqrt_price_target
        else:
            amount_out = amount_remaining
            sqrt_next = next_sqrt_price_from_output(
                sqrt_price_current, liquidity, amount_out, zero_for_one
            )
        if zero_for_one:
            amount_in = get_amount0_delta(sqrt_next, sqrt_price_current, liquidity, True)
        else:
            amount_in = get_amount1_delta(sqrt_price_current, sqrt_next, liquidity, True)
        fee_amount = (
            amount_in
            if fee_pips == MAX_SWAP_FEE
            else mul_div_rounding_up(amount_in, fee_pips, MAX_SWAP_FEE - fee_pips)
        )
    return sqrt_next, amount_in, amount_out, fee_amount


def _swap(
    sqrt_price_x96: int,
    liquidity: int,
    amount_specified: int,
    zero_for_one: bool,
    fee_pips: int,
    sqrt_price_limit_x96: int | None,
) -> SwapResult:
    sqrt_price_x96, liquidity = int(sqrt_price_x96), int(liquidity)
    if not MIN_SQRT_PRICE <= sqrt_price_x96 < MAX_SQRT_PRICE:
        raise AmmError(f"sqrtPriceX96 {sqrt_price_x96} out of range")
    if liquidity <= 0:
        raise AmmError("liquidity must be positive")
    if sqrt_price_limit_x96 is None:
        sqrt_price_limit_x96 = MIN_SQRT_PRICE + 1 if zero_for_one else MAX_SQRT_PRICE - 1
    if zero_for_one and not MIN_SQRT_PRICE < sqrt_price_limit_x96 < sqrt_price_x96:
        raise AmmError("price limit must be below the current price for zeroForOne")
    if not zero_for_one and not sqrt_price_x96 < sqrt_price_limit_x96 < MAX_SQRT_PRICE:
        raise AmmError("price limit must be above the current price for oneForZero")
    sqrt_next, amount_in, amount_out, fee = compute_swap_step(
        sqrt_price_x96, sqrt_price_limit_x96, liquidity, amount_specified, fee_pips
    )
    paid_in = amount_in + fee
    # Swapper's deltas, as PoolManager emits them: input negative, output positive.
    delta_in, delta_out = -paid_in, amount_out
    amount0, amount1 = (delta_in, delta_out) if zero_for_one else (delta_out, delta_in)
    return SwapResult(
        amount0=amount0,
        amount1=amount1,
        sqrt_price_x96=sqrt_next,
        tick=tick_from_sqrt_price_x96(sqrt_next),
        fee_amount=fee,
        amount_in=paid_in,
        amount_out=amount_out,
    )


def swap_exact_input(
    sqrt_price_x96: int,
    liquidity: int,
    amount_in: int,
    zero_for_one: bool,
    fee_pips: int,
    sqrt_price_limit_x96: int | None = None,
) -> SwapResult:
    """Swap exactly ``amount_in`` (fee included) of token0 (``zero_for_one``) or token1.

    Constant liquidity: the swap stays in the active range (at most the price limit).
    """
    if amount_in <= 0:
        raise AmmError("amount_in must be positive")
    return _swap(
        sqrt_price_x96, liquidity, -int(amount_in), zero_for_one, fee_pips, sqrt_price_limit_x96
    )


def swap_exact_output(
    sqrt_price_x96: int,
    liquidity: int,
    amount_out: int,
    zero_for_one: bool,
    fee_pips: int,
    sqrt_price_limit_x96: int | None = None,
) -> SwapResult:
    """Receive exactly ``amount_out`` of token1 (``zero_for_one``) or token0; input computed."""
    if amount_out <= 0:
        raise AmmError("amount_out must be positive")
    return _swap(
        sqrt_price_x96, liquidity, int(amount_out), zero_for_one, fee_pips, sqrt_price_limit_x96
    )

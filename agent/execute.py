"""Opt-in execution: a V4 swap of native ETH <-> USDC through the Universal Router on Base.

The transaction calls ``execute(bytes commands, bytes[] inputs, uint256 deadline)`` on the
Universal Router with one command, ``V4_SWAP`` (0x10), whose input is
``abi.encode(bytes actions, bytes[] params)`` with three V4Router actions:

- ``SWAP_EXACT_IN_SINGLE`` (0x06): ``ExactInputSingleParams(PoolKey poolKey, bool zeroForOne,
  uint128 amountIn, uint128 amountOutMinimum, bytes hookData)`` -- the struct of the router
  deployed on Base (Universal Router v2.0, v4-periphery at launch; see docs/agent.md);
- ``SETTLE_ALL`` (0x0c): ``(Currency currency, uint256 maxAmount)`` -- pay the input;
- ``TAKE_ALL`` (0x0f): ``(Currency currency, uint256 minAmount)`` -- receive the output.

The pool key is the ETH-USDC pool: currency0 native ETH (address 0), currency1 USDC, fee
500, tick spacing 10, no hooks. Selling ETH sends it as ``msg.value``; selling USDC needs
the usual Permit2 allowances (USDC -> Permit2, Permit2 -> router), checked before building.

Safety: the chain id must be 8453 (a local fork is accepted only when flagged and on a
loopback URL); the key comes only from an environment variable or an encrypted keystore
and is never printed, logged or written; a trade is capped at ``max_trade_eth``; the minimum
output is the exact-math quote less ``max_slippage_bps``; the daily loss limit stops trading
for the UTC day. Balance, allowance and key checks all happen before a transaction exists.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from eth_abi import encode
from eth_utils import keccak, to_checksum_address

from apeagent.errors import UserError
from apeagent.redact import redact_url
from chain.amm import AmmError, price_from_sqrt_price_x96, swap_exact_input
from chain.pool import (
    BASE_CHAIN_ID,
    FEE,
    NATIVE_ETH,
    NO_HOOKS,
    TICK_SPACING,
    UNIVERSAL_ROUTER,
    USDC,
)

PERMIT2 = "0x000000000022D473030F116dDEE9F6B43aC78BA3"
V4_SWAP = 0x10
SWAP_EXACT_IN_SINGLE = 0x06
SETTLE_ALL = 0x0C
TAKE_ALL = 0x0F
EXECUTE_SIGNATURE = "execute(bytes,bytes[],uint256)"
EXECUTE_SELECTOR = keccak(text=EXECUTE_SIGNATURE)[:4]
POOL_KEY_TYPE = "(address,address,uint24,int24,address)"
EXACT_IN_SINGLE_TYPE = f"({POOL_KEY_TYPE},bool,uint128,uint128,bytes)"
POOL_KEY = (NATIVE_ETH, USDC, FEE, TICK_SPACING, NO_HOOKS)
UINT128_MAX = (1 << 128) - 1
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SWAP_GAS_LIMIT = 300_000  # a single-hop V4 swap uses ~130-180k; the limit only caps the worst case


# ---------------------------------------------------------------- calldata


@dataclass
class SwapPlan:
    side: str  # "sell" (ETH -> USDC, zeroForOne) | "buy" (USDC -> ETH)
    zero_for_one: bool
    amount_in: int  # raw units of the input token
    quote_out: int  # exact-math output at the quoted pool state
    min_amount_out: int  # quote less the slippage allowance
    deadline: int  # unix seconds
    value: int  # msg.value (wei): the input for ETH sells, 0 otherwise
    price: float  # the quoted mid price, USDC per ETH

    def to_dict(self) -> dict:
        return asdict(self)


def min_output(quote_out: int, max_slippage_bps: int) -> int:
    if not 0 <= max_slippage_bps < 10_000:
        raise UserError(f"--max-slippage-bps must be in [0, 10000), got {max_slippage_bps}")
    return quote_out * (10_000 - int(max_slippage_bps)) // 10_000


def v4_swap_input(zero_for_one: bool, amount_in: int, min_amount_out: int) -> bytes:
    """The ``V4_SWAP`` command's input: ``abi.encode(actions, params)``."""
    if not 0 < amount_in <= UINT128_MAX or not 0 <= min_amount_out <= UINT128_MAX:
        raise UserError("swap amounts must fit uint128 and the input must be positive")
    currency_in, currency_out = (NATIVE_ETH, USDC) if zero_for_one else (USDC, NATIVE_ETH)
    actions = bytes([SWAP_EXACT_IN_SINGLE, SETTLE_ALL, TAKE_ALL])
    params = [
        encode([EXACT_IN_SINGLE_TYPE], [(POOL_KEY, zero_for_one, amount_in, min_amount_out, b"")]),
        encode(["address", "uint256"], [currency_in, amount_in]),
        encode(["address", "uint256"], [currency_out, min_amount_out]),
    ]
    return encode(["bytes", "bytes[]"], [actions, params])


def swap_calldata(zero_for_one: bool, amount_in: int, min_amount_out: int, deadline: int) -> bytes:
    """Calldata of ``UniversalRouter.execute(commands, inputs, deadline)`` for one V4 swap."""
    commands = bytes([V4_SWAP])
    inputs = [v4_swap_input(zero_for_one, amount_in, min_amount_out)]
    return EXECUTE_SELECTOR + encode(
        ["bytes", "bytes[]", "uint256"], [commands, inputs, int(deadline)]
    )


def plan_swap(
    side: str,
    amount_in: int,
    sqrt_price_x96: int,
    liquidity: int,
    fee_pips: int,
    max_slippage_bps: int,
    deadline_seconds: int,
    now: float | None = None,
) -> SwapPlan:
    """Quote an exact-input swap at a pool state with the exact math; derive the minimum out."""
    zero_for_one = side == "sell"
    try:
        r = swap_exact_input(
            int(sqrt_price_x96), int(liquidity), int(amount_in), zero_for_one, int(fee_pips)
        )
    except AmmError as e:
        raise UserError(f"cannot quote the swap at the current pool state: {e}") from None
    return SwapPlan(
        side=side,
        zero_for_one=zero_for_one,
        amount_in=int(amount_in),
        quote_out=r.amount_out,
        min_amount_out=min_output(r.amount_out, max_slippage_bps),
        deadline=int(now if now is not None else time.time()) + int(deadline_seconds),
        value=int(amount_in) if zero_for_one else 0,
        price=price_from_sqrt_price_x96(sqrt_price_x96),
    )


# ---------------------------------------------------------------- keys


def load_account(cfg: dict, keystore: str | None = None):
    """The signing account from ``$<key_env>`` or an encrypted keystore file.

    Error messages name where the key was looked for, never the key or the password.
    """
    from eth_account import Account

    path = keystore or cfg.get("keystore") or ""
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"keystore file not found: {p}")
        try:
            data = json.loads(p.read_text())
        except ValueError:
            raise UserError(f"{p}: not a JSON keystore file") from None
        password = os.environ.get(cfg["keystore_password_env"])
        if password is None:
            if not os.isatty(0):
                raise UserError(
                    f"keystore {p}: set ${cfg['keystore_password_env']} (no terminal to ask on)"
                )
            password = getpass.getpass(f"password for {p}: ")
        try:
            key = Account.decrypt(data, password)
        except Exception:
            raise UserError(f"keystore {p}: wrong password or corrupt file") from None
        where = f"keystore {p}"
    else:
        env = cfg["key_env"]
        key = os.environ.get(env)
        if not key:
            raise UserError(
                f"no private key: set ${env} or give --keystore (keys are never read from config files)"
            )
        where = f"${env}"
    try:
        acct = Account.from_key(key)
    except Exception:
        raise UserError(f"{where} does not hold a valid 32-byte hex private key") from None
    finally:
        key = None
    expected = cfg.get("account") or ""
    if expected:
        try:
            expected = to_checksum_address(expected)
        except ValueError:
            raise UserError(f"--account {expected!r} is not an address") from None
        if acct.address != expected:
            raise UserError(
                f"the key in {where} is for {acct.address}, not the expected account {expected}"
            )
    return acct


# ---------------------------------------------------------------- node




def connect(
    rpc_urls: list[str],
    *,
    fork: bool = False,
    expected_chain_id: int = BASE_CHAIN_ID,
    timeout: float = 10.0,
):
    """A web3 client on the first reachable URL whose chain id is Base's (or a flagged fork)."""
    from web3 import Web3

    if not rpc_urls:
        raise UserError("no RPC URL given (--rpc-url or agent.rpc_urls)")
    if fork:
        remote = [redact_url(u) for u in rpc_urls if urlparse(u).hostname not in LOOPBACK]
        if remote:
            raise UserError(
                f"--fork is only accepted for a loopback RPC URL, not {', '.join(remote)}"
            )
    errors = []
    for url in rpc_urls:
        w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))
        try:
            chain_id = w3.eth.chain_id
        except Exception as e:  # refused, timeout, DNS, HTTP errors, malformed bodies
            errors.append(f"{redact_url(url)} ({type(e).__name__})")
            continue
        if chain_id != expected_chain_id:
            if not fork:
                raise UserError(
                    f"{redact_url(url)} is chain id {chain_id}, not Base ({expected_chain_id}); "
                    "for a local fork pass --fork"
                )
        return w3, url
    raise UserError(f"cannot reach any RPC endpoint: {', '.join(errors)}")


def _call(w3, to: str, signature: str, types: list[str], args: list, out: list[str]):
    from eth_abi import decode

    data = "0x" + (keccak(text=signature)[:4] + encode(types, args)).hex()
    raw = w3.eth.call({"to": to_checksum_address(to), "data": data})
    if not raw:
        raise UserError(
            f"{to}: empty answer to {signature} (no contract at this address on this chain?)"
        )
    return decode(out, bytes(raw))


def balances(w3, address: str) -> tuple[int, int]:
    """``(wei, usdc units)`` held by ``address``."""
    wei = int(w3.eth.get_balance(to_checksum_address(address)))
    (usdc,) = _call(w3, USDC, "balanceOf(address)", ["address"], [address], ["uint256"])
    return wei, int(usdc)


def check_funds(w3, address: str, plan: SwapPlan, gas_wei: int) -> None:
    """Balance and allowance checks before any transaction is built (UserError if short)."""
    wei, usdc = balances(w3, address)
    if plan.zero_for_one:
        need = plan.amount_in + gas_wei
        if wei < need:
            raise UserError(
                f"insufficient ETH balance in {address}: {wei / 1e18:.6f} ETH, the swap needs "
                f"{plan.amount_in / 1e18:.6f} ETH + {gas_wei / 1e18:.6f} ETH gas"
            )
        return
    if usdc < plan.amount_in:
        raise UserError(
            f"insufficient USDC balance in {address}: {usdc / 1e6:.2f} USDC, the swap needs {plan.amount_in / 1e6:.2f}"
        )
    if wei < gas_wei:
        raise UserError(
            f"insufficient ETH for gas in {address}: {wei / 1e18:.6f} ETH, needs {gas_wei / 1e18:.6f}"
        )
    (erc20,) = _call(
        w3,
        USDC,
        "allowance(address,address)",
        ["address", "address"],
        [address, PERMIT2],
        ["uint256"],
    )
    amount, expiration, _ = _call(
        w3,
        PERMIT2,
        "allowance(address,address,address)",
        ["address", "address", "address"],
        [address, USDC, UNIVERSAL_ROUTER],
        ["uint160", "uint48", "uint48"],
    )
    if erc20 < plan.amount_in or amount < plan.amount_in or expiration <= time.time():
        raise UserError(
            f"selling USDC through the Universal Router needs Permit2 allowances for {address}: "
            f"USDC.approve({PERMIT2}, amount) and Permit2.approve({USDC}, {UNIVERSAL_ROUTER}, amount, expiration) "
            f"(now: USDC->Permit2 {erc20 / 1e6:.2f}, Permit2->router {amount / 1e6:.2f} until {expiration})"
        )


def build_transaction(w3, address: str, plan: SwapPlan, chain_id: int) -> dict[str, Any]:
    """The unsigned EIP-1559 transaction for ``plan`` (nonce and fees from the node)."""
    base = w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0
    try:
        tip = int(w3.eth.max_priority_fee)
    except Exception:  # some nodes lack eth_maxPriorityFeePerGas
        tip = 1_000_000  # 0.001 gwei: enough on Base
    return {
        "chainId": chain_id,
        "from": to_checksum_address(address),
        "to": to_checksum_address(UNIVERSAL_ROUTER),
        "data": "0x"
        + swap_calldata(
            plan.zero_for_one, plan.amount_in, plan.min_amount_out, plan.deadline
        ).hex(),
        "value": plan.value,
        "nonce": w3.eth.get_transaction_count(to_checksum_address(address), "pending"),
        "gas": SWAP_GAS_LIMIT,
        "maxPriorityFeePerGas": tip,
        "maxFeePerGas": 2 * int(base) + tip,
    }


def send(w3, acct, tx: dict[str, Any], wait_s: float = 120.0) -> dict[str, Any]:
    """Sign locally and broadcast; wait for the receipt. Returns a journal-safe summary."""
    signed = acct.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    out = {"tx_hash": "0x" + bytes(tx_hash).hex(), "status": None, "block": None, "gas_used": None}
    try:
        rcpt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=wait_s)
        out.update(
            status=int(rcpt["status"]),
            block=int(rcpt["blockNumber"]),
            gas_used=int(rcpt["gasUsed"]),
        )
    except Exception as e:  # not mined in time: the journal keeps the hash to look it up
        out["status"] = f"pending ({type(e).__name__})"
    return out

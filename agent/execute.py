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
loopback URL); the key comes only from an encrypted keystore (eth-account), its passphrase
from ``getpass`` or an environment variable, and neither is ever printed, logged or written.
The expected output is simulated with the V4 Quoter (``eth_call``) just before signing and
checked against the exact-math quote at the price-checked pool state (:mod:`agent.prices`);
the minimum output is derived from both and ``max_slippage_bps`` (at most
:data:`MAX_SLIPPAGE_BPS` unless loudly overridden). Balance, allowance and key checks all
happen before a transaction exists.
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
V4_QUOTER = "0x0d5e0f971ed27fbff6c2837bf31316121532048d"  # Base (docs.uniswap.org/contracts/v4/deployments)
QUOTE_SIGNATURE = (
    "quoteExactInputSingle(((address,address,uint24,int24,address),bool,uint128,bytes))"
)
MAX_SLIPPAGE_BPS = 300  # above: only with --allow-high-slippage
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
    quote_out: int  # exact-math output at the checked pool state
    min_amount_out: int  # what the router must deliver, else the swap reverts
    deadline: int  # unix seconds
    value: int  # msg.value (wei): the input for ETH sells, 0 otherwise
    price: float  # the checked mid price, USDC per ETH
    notional_usdc: float  # the trade's size valued at ``price``
    simulated_out: int | None = None  # the Quoter's answer (eth_call), once asked
    notional_eth: float = 0.0  # the trade's size in ETH (by the anchor once anchored)
    anchor_out: int | None = None  # the fair output by the independent anchor (agent.anchor)
    floor_out: int | None = None  # anchor_out * (1 - slippage): min_amount_out never goes below

    def to_dict(self) -> dict:
        return asdict(self)


def check_slippage(max_slippage_bps: int, allow_high: bool = False) -> int:
    """The slippage bound, refused above :data:`MAX_SLIPPAGE_BPS` unless ``allow_high``."""
    bps = int(max_slippage_bps)
    if not 0 <= bps < 10_000:
        raise UserError(f"--max-slippage-bps must be in [0, 10000), got {bps}")
    if bps > MAX_SLIPPAGE_BPS and not allow_high:
        raise UserError(
            f"--max-slippage-bps {bps} is above the {MAX_SLIPPAGE_BPS} bps cap: a swap could fill "
            f"{bps / 100:g}% below the price; pass --allow-high-slippage to accept that"
        )
    return bps


def min_output(quote_out: int, max_slippage_bps: int) -> int:
    return quote_out * (10_000 - check_slippage(max_slippage_bps, allow_high=True)) // 10_000


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
    """Quote an exact-input swap at a pool state with the exact math; derive the minimum out
    (refined by :func:`apply_simulation` once the Quoter has answered)."""
    zero_for_one = side == "sell"
    try:
        r = swap_exact_input(
            int(sqrt_price_x96), int(liquidity), int(amount_in), zero_for_one, int(fee_pips)
        )
    except AmmError as e:
        raise UserError(f"cannot quote the swap at the current pool state: {e}") from None
    price = price_from_sqrt_price_x96(sqrt_price_x96)
    notional = amount_in / 1e18 * price if zero_for_one else amount_in / 1e6
    return SwapPlan(
        side=side,
        zero_for_one=zero_for_one,
        amount_in=int(amount_in),
        quote_out=r.amount_out,
        min_amount_out=min_output(r.amount_out, max_slippage_bps),
        deadline=int(now if now is not None else time.time()) + int(deadline_seconds),
        value=int(amount_in) if zero_for_one else 0,
        price=price,
        notional_usdc=notional,
        notional_eth=amount_in / 1e18 if zero_for_one else notional / price,
    )


def quote_calldata(zero_for_one: bool, amount_in: int) -> str:
    """``V4Quoter.quoteExactInputSingle((poolKey, zeroForOne, exactAmount, hookData))``."""
    args = (POOL_KEY, zero_for_one, int(amount_in), b"")
    return "0x" + (keccak(text=QUOTE_SIGNATURE)[:4] + encode([f"({POOL_KEY_TYPE},bool,uint128,bytes)"], [args])).hex()


def simulate_quote(w3, plan: SwapPlan, block: int | str = "latest") -> int:
    """The output the pool would give now, by simulation (``eth_call`` of the V4 Quoter)."""
    from eth_abi import decode

    try:
        raw = bytes(
            w3.eth.call(
                {"to": to_checksum_address(V4_QUOTER), "data": quote_calldata(plan.zero_for_one, plan.amount_in)},
                block,
            )
        )
        amount_out, _gas = decode(["uint256", "uint256"], raw)
    except Exception as e:  # a revert, an empty or short answer: no simulated quote, no order
        raise UserError(
            f"the V4 Quoter {V4_QUOTER} did not simulate the swap ({type(e).__name__}: "
            f"{str(e)[:120]}): no order"
        ) from None
    return int(amount_out)


def apply_simulation(plan: SwapPlan, simulated_out: int, max_slippage_bps: int) -> SwapPlan:
    """Check the simulated output against the exact-math quote at the checked price, then
    derive the minimum output from the lower of the two (never above the checked quote), and
    never below the anchored floor (``plan.floor_out``, when anchored).

    Refused (UserError) when the simulation is worse than the checked quote by more than the
    slippage bound (the pool, or one of the answers about it, is not what was checked), or
    when the simulation or the quote lies below the anchored floor (the trading endpoint's
    pool is worse than the independent anchor allows).
    """
    bps = int(max_slippage_bps)
    floor = plan.quote_out * (10_000 - bps) // 10_000
    plan.simulated_out = int(simulated_out)
    if simulated_out < floor:
        short = 100.0 * (1.0 - simulated_out / plan.quote_out) if plan.quote_out else 100.0
        raise UserError(
            f"simulated output {simulated_out} is {short:.2f}% below the checked quote "
            f"{plan.quote_out} (bound {bps / 100:g}%): no order"
        )
    worst = min(int(simulated_out), plan.quote_out)
    if plan.floor_out is not None and worst < plan.floor_out:
        raise UserError(
            f"the trading endpoint's output {worst} is below the anchored floor {plan.floor_out} "
            f"(fair output {plan.anchor_out} by the anchor, less {bps / 100:g}%): no order"
        )
    plan.min_amount_out = max(min_output(worst, bps), plan.floor_out or 0)
    return plan


# ---------------------------------------------------------------- keys


def load_account(cfg: dict, *, ask=getpass.getpass):
    """The signing account from an encrypted keystore file (eth-account / geth format).

    The passphrase comes from ``$<keystore_password_env>`` or is asked on the terminal
    (``getpass``). The decrypted key lives only inside the returned account object. Error
    messages name the file, never the key or the passphrase. The address must match the
    expected ``account`` (required: a key for another account is refused).
    """
    from eth_account import Account

    path = cfg.get("keystore") or ""
    expected = expected_account(cfg)
    if not path:
        raise UserError(
            "live trading needs an encrypted keystore: --keystore FILE (make one with "
            "`ape-agent keystore FILE`); keys are never read from the environment or a config"
        )
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"keystore file not found: {p}")
    try:
        data = json.loads(p.read_text())
        if not isinstance(data, dict) or "crypto" not in {k.lower() for k in data}:
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{p}: not a JSON keystore file") from None
    if data.get("address"):
        try:
            stored = to_checksum_address("0x" + str(data["address"]).removeprefix("0x"))
        except ValueError:
            raise UserError(f"{p}: the keystore's address field is not an address") from None
        if stored != expected:
            raise UserError(f"keystore {p} is for {stored}, not the expected account {expected}")
    env = cfg["keystore_password_env"]
    password = os.environ.get(env)
    if password is None:
        if not os.isatty(0):
            raise UserError(f"keystore {p}: set ${env} (no terminal to ask the passphrase on)")
        password = ask(f"passphrase for {p}: ")
    try:
        acct = Account.from_key(Account.decrypt(data, password))
    except Exception:
        raise UserError(f"keystore {p}: wrong passphrase or corrupt file") from None
    finally:
        password = None
    if acct.address != expected:
        raise UserError(
            f"the key in keystore {p} is for {acct.address}, not the expected account {expected}"
        )
    return acct


def expected_account(cfg: dict) -> str:
    """The ``--account`` address (checksummed); required for any execution."""
    text = cfg.get("account") or ""
    if not text:
        raise UserError(
            "--execute needs --account ADDRESS: the address you expect to trade from "
            "(a key or keystore for another account is refused)"
        )
    try:
        return to_checksum_address(text)
    except ValueError:
        raise UserError(f"--account {text!r} is not an address") from None


def write_keystore(path: str | Path, key: str, password: str) -> str:
    """Encrypt ``key`` with ``password`` (scrypt, eth-account defaults) into ``path`` (mode
    0600, written atomically, never over an existing file). Returns the address."""
    from eth_account import Account

    from apeagent.files import atomic_path

    p = Path(path).expanduser()
    if p.exists():
        raise UserError(f"{p} exists: refusing to overwrite a keystore")
    if len(password) < 8:
        raise UserError("the passphrase must have at least 8 characters")
    try:
        acct = Account.from_key(key.strip())
    except Exception:
        raise UserError("that is not a valid 32-byte hex private key") from None
    data = Account.encrypt(acct.key, password)
    with atomic_path(p) as tmp:  # mkstemp: mode 0600
        tmp.write_text(json.dumps(data))
    return acct.address


# ---------------------------------------------------------------- node




def is_loopback(url: str) -> bool:
    try:
        return urlparse(url).hostname in LOOPBACK
    except ValueError:
        return False


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


def build_transaction(
    w3, address: str, plan: SwapPlan, chain_id: int, nonce: int
) -> dict[str, Any]:
    """The unsigned EIP-1559 transaction for ``plan`` (fees from the node, nonce given)."""
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
        "nonce": int(nonce),
        "gas": SWAP_GAS_LIMIT,
        "maxPriorityFeePerGas": tip,
        "maxFeePerGas": 2 * int(base) + tip,
    }


def next_nonce(w3, address: str) -> int:
    """The account's next nonce as the node counts it (pending transactions included)."""
    n = w3.eth.get_transaction_count(to_checksum_address(address), "pending")
    if not isinstance(n, int) or n < 0:
        raise UserError(f"the node answered a nonce of {n!r} for {address}")
    return n


def sign(acct, tx: dict[str, Any]) -> tuple[bytes, str]:
    """Sign locally: the raw transaction and its hash (the journal keeps the hash)."""
    signed = acct.sign_transaction(tx)
    return bytes(signed.raw_transaction), "0x" + bytes(signed.hash).hex()


def broadcast(w3, raw: bytes, tx_hash: str) -> None:
    """``eth_sendRawTransaction``; a refusal (nonce too low, underpriced, ...) is a UserError
    with the node's message. The node's answer must be the hash we signed."""
    try:
        got = w3.eth.send_raw_transaction(raw)
    except Exception as e:  # Web3RPCError, HTTP errors, timeouts
        raise UserError(f"the node refused the transaction {tx_hash}: {_error_text(e)}") from None
    got = "0x" + bytes(got).hex()
    if got.lower() != tx_hash.lower():
        raise UserError(f"the node answered hash {got} for the transaction {tx_hash}")


def receipt(w3, tx_hash: str) -> dict[str, int] | None:
    """``{status, block, gas_used}`` of a mined transaction, None while it is not mined."""
    from web3.exceptions import TransactionNotFound

    try:
        r = w3.eth.get_transaction_receipt(tx_hash)
    except TransactionNotFound:
        return None
    if r is None:
        return None
    h = "0x" + bytes(r["transactionHash"]).hex()
    if h.lower() != tx_hash.lower():
        raise UserError(f"the node answered the receipt of {h} for {tx_hash}")
    return {"status": int(r["status"]), "block": int(r["blockNumber"]), "gas_used": int(r["gasUsed"])}


def known_to_node(w3, tx_hash: str) -> bool:
    """Whether the node has the transaction (pending or mined)."""
    from web3.exceptions import TransactionNotFound

    try:
        return w3.eth.get_transaction(tx_hash) is not None
    except TransactionNotFound:
        return False


def _error_text(e: Exception) -> str:
    """A node's error as one short line. Transport errors give only their type: their text
    carries the URL, and provider URLs carry API keys."""
    from web3.exceptions import Web3RPCError

    if not isinstance(e, Web3RPCError):
        return type(e).__name__
    error = (e.rpc_response or {}).get("error") if isinstance(e.rpc_response, dict) else None
    msg = error if isinstance(error, dict) else (e.message or "")
    if isinstance(msg, dict):
        msg = msg.get("message", "")
    return (str(msg).splitlines() or [""])[0][:200] or type(e).__name__


def rpc_failures() -> tuple[type[BaseException], ...]:
    """What a JSON-RPC endpoint raises through web3 when it answers an error (a method it does
    not serve, a refusal, a malformed answer) or cannot be reached mid-run."""
    import requests
    from web3.exceptions import Web3Exception

    return (Web3Exception, requests.RequestException)


def endpoint_error(url: str, e: BaseException) -> UserError:
    """An endpoint's failure during trading as one line: the endpoint (redacted) and what it
    answered (a transport error only by its type: its text carries the URL)."""
    from web3.exceptions import MethodUnavailable

    what = _error_text(e) if isinstance(e, Exception) else type(e).__name__
    if isinstance(e, MethodUnavailable):
        return UserError(
            f"the RPC endpoint {redact_url(url)} does not serve a method live trading needs "
            f"({what}): use a full Base node or provider"
        )
    return UserError(f"the RPC endpoint {redact_url(url)} failed during trading: {what}")

"""The Base ETH-USDC Uniswap V4 pool: addresses, pool id, the Swap event and StateView calls.

Everything here is encoded with eth-abi and hashed with keccak, never hard-coded bytes
alone: the pool id is recomputed from its PoolKey and the event topic from its signature.
"""

from __future__ import annotations

from typing import Any

from eth_abi import decode, encode
from eth_utils import keccak, to_checksum_address

from apeagent.errors import UserError

BASE_CHAIN_ID = 8453
POOL_MANAGER = "0x498581fF718922c3f8e6A244956aF099B2652b2b"
STATE_VIEW = "0xA3c0c9b65baD0b08107Aa264b0f3dB444b867A71"
UNIVERSAL_ROUTER = "0x6fF5693b99212Da76ad316178A184AB56D299b43"
USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
NATIVE_ETH = "0x0000000000000000000000000000000000000000"
FEE = 500  # pips: 0.05 %
TICK_SPACING = 10
NO_HOOKS = NATIVE_ETH
DECIMALS0 = 18  # ETH
DECIMALS1 = 6  # USDC

# Rows made by `chain simulate` carry this marker in router_address / original_sender; on
# the wire (devnode logs and transactions) it becomes SIMULATED_ADDRESS.
SIMULATED = "simulated"
SIMULATED_ADDRESS = "0x5151A7ED00000000000000000000000000005151"

SWAP_SIGNATURE = "Swap(bytes32,address,int128,int128,uint160,uint128,int24,uint24)"
SWAP_TOPIC = "0x" + keccak(text=SWAP_SIGNATURE).hex()
SWAP_DATA_TYPES = ("int128", "int128", "uint160", "uint128", "int24", "uint24")
SWAP_EVENT_ABI = {
    "type": "event",
    "name": "Swap",
    "anonymous": False,
    "inputs": [
        {"name": "id", "type": "bytes32", "indexed": True},
        {"name": "sender", "type": "address", "indexed": True},
        {"name": "amount0", "type": "int128", "indexed": False},
        {"name": "amount1", "type": "int128", "indexed": False},
        {"name": "sqrtPriceX96", "type": "uint160", "indexed": False},
        {"name": "liquidity", "type": "uint128", "indexed": False},
        {"name": "tick", "type": "int24", "indexed": False},
        {"name": "fee", "type": "uint24", "indexed": False},
    ],
}

GET_SLOT0_SIGNATURE = (
    "getSlot0(bytes32)"  # -> (uint160 sqrtPriceX96, int24 tick, uint24 protocolFee, uint24 lpFee)
)
GET_LIQUIDITY_SIGNATURE = "getLiquidity(bytes32)"  # -> uint128
GET_SLOT0_SELECTOR = "0x" + keccak(text=GET_SLOT0_SIGNATURE)[:4].hex()
GET_LIQUIDITY_SELECTOR = "0x" + keccak(text=GET_LIQUIDITY_SIGNATURE)[:4].hex()


def pool_id(currency0: str, currency1: str, fee: int, tick_spacing: int, hooks: str) -> str:
    """``PoolIdLibrary.toId``: keccak256(abi.encode(PoolKey)) as 0x-prefixed hex."""
    encoded = encode(
        ["address", "address", "uint24", "int24", "address"],
        [currency0, currency1, fee, tick_spacing, hooks],
    )
    return "0x" + keccak(encoded).hex()


ETH_USDC_POOL_ID = pool_id(NATIVE_ETH, USDC, FEE, TICK_SPACING, NO_HOOKS)


def norm_hex32(value: str | bytes) -> str:
    """A bytes32 (pool id, tx or block hash) as lowercase 0x-hex; accepts bare hex."""
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    else:
        text = value.strip().lower()
        text = text[2:] if text.startswith("0x") else text
        if len(text) != 64:
            raise ValueError(f"expected 32 bytes of hex, got {value!r}")
        raw = bytes.fromhex(text)
    if len(raw) != 32:
        raise ValueError(f"expected 32 bytes, got {len(raw)}")
    return "0x" + raw.hex()


def address_topic(address: str) -> str:
    return "0x" + bytes.fromhex(address[2:].lower()).rjust(32, b"\0").hex()


def encode_swap_log(
    *,
    pool: str,
    sender: str,
    amount0: int,
    amount1: int,
    sqrt_price_x96: int,
    liquidity: int,
    tick: int,
    fee: int,
) -> tuple[list[str], str]:
    """The ``topics`` and ``data`` of a Swap log, exactly as PoolManager emits it."""
    data = encode(list(SWAP_DATA_TYPES), [amount0, amount1, sqrt_price_x96, liquidity, tick, fee])
    return [SWAP_TOPIC, norm_hex32(pool), address_topic(sender)], "0x" + data.hex()


def _hex(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    text = str(value)
    return text if text.startswith("0x") else "0x" + text


def _int(value: Any) -> int:
    if isinstance(value, int):
        return value
    return int(str(value), 16)


def decode_swap_log(log: Any) -> dict[str, Any]:
    """A Swap log (JSON-RPC dict or web3 AttributeDict) as a plain dict with Python ints.

    Raises ValueError if it is not a Swap log of the expected shape.
    """
    topics = [_hex(t) for t in log["topics"]]
    if len(topics) != 3 or topics[0].lower() != SWAP_TOPIC:
        raise ValueError(f"not a Swap log: topics {topics}")
    data = bytes.fromhex(_hex(log["data"])[2:])
    amount0, amount1, sqrt_price, liquidity, tick, fee = decode(list(SWAP_DATA_TYPES), data)
    return {
        "block_number": _int(log["blockNumber"]),
        "log_index": _int(log["logIndex"]),
        "transaction_hash": norm_hex32(_hex(log["transactionHash"])),
        "block_hash": norm_hex32(_hex(log["blockHash"])),
        "pool_id": norm_hex32(topics[1]),
        "sender": to_checksum_address("0x" + topics[2][-40:]),
        "amount0": amount0,
        "amount1": amount1,
        "sqrt_price_x96": sqrt_price,
        "liquidity": liquidity,
        "tick": tick,
        "fee": fee,
    }


def encode_get_slot0(pool: str) -> str:
    return GET_SLOT0_SELECTOR + encode(["bytes32"], [bytes.fromhex(norm_hex32(pool)[2:])]).hex()


def encode_get_liquidity(pool: str) -> str:
    return GET_LIQUIDITY_SELECTOR + encode(["bytes32"], [bytes.fromhex(norm_hex32(pool)[2:])]).hex()


def decode_slot0(data: bytes | str) -> dict[str, int]:
    raw = bytes.fromhex(_hex(data)[2:]) if not isinstance(data, (bytes, bytearray)) else bytes(data)
    sqrt_price, tick, protocol_fee, lp_fee = decode(["uint160", "int24", "uint24", "uint24"], raw)
    return {
        "sqrt_price_x96": sqrt_price,
        "tick": tick,
        "protocol_fee": protocol_fee,
        "lp_fee": lp_fee,
    }


def decode_liquidity(data: bytes | str) -> int:
    raw = bytes.fromhex(_hex(data)[2:]) if not isinstance(data, (bytes, bytearray)) else bytes(data)
    return decode(["uint128"], raw)[0]


BLOCK_SECONDS = 2  # Base: one block every 2 seconds since genesis


def check_timestamps(rows: list[dict[str, Any]], where: str) -> None:
    """Rows in chain order: timestamps rise with blocks and fit Base's block time.

    Between consecutive rows, ``dt`` must be ``BLOCK_SECONDS * d_block`` within one block time
    (simulated rows round their timestamps to blocks; real ones match exactly). Raises
    UserError naming the first row that does not.
    """
    for a, b in zip(rows, rows[1:], strict=False):
        db, dt = b["block_number"] - a["block_number"], b["timestamp"] - a["timestamp"]
        if dt < 0 or abs(dt - BLOCK_SECONDS * db) > BLOCK_SECONDS:
            raise UserError(
                f"{where}: implausible timestamps: block {a['block_number']} at {a['timestamp']}, "
                f"block {b['block_number']} at {b['timestamp']} ({dt} s for {db} blocks; "
                f"Base makes one block every {BLOCK_SECONDS} s)"
            )

import sqlite3

import pytest
from eth_abi import encode
from eth_utils import keccak

from chain import pool
from chain.store import Store


def test_pool_id_from_key():
    pid = pool.pool_id(pool.NATIVE_ETH, pool.USDC, 500, 10, pool.NO_HOOKS)
    assert pid == "0x96d4b53a38337a5733179751781178a2613306063c511b78cd02684739288c0a"
    assert pid == pool.ETH_USDC_POOL_ID
    assert pool.pool_id(pool.NATIVE_ETH, pool.USDC, 3000, 60, pool.NO_HOOKS) != pid


def test_swap_topic_and_selectors():
    assert pool.SWAP_TOPIC == "0x40e9cecb9f5f1f1c5b9c97dec2917b7ee92e57ba5563708daca94dd84ad7112f"
    assert pool.SWAP_TOPIC == "0x" + keccak(text=pool.SWAP_SIGNATURE).hex()
    assert pool.GET_SLOT0_SELECTOR == "0x" + keccak(text="getSlot0(bytes32)")[:4].hex()


@pytest.mark.parametrize(
    "amount0,amount1,sqrt_price,liq,tick",
    [
        (-(2**127), 2**127 - 1, 2**160 - 1, 2**128 - 1, -887272),
        (-(10**14), 319782, 4458936925670369649410795, 562108584583, -195714),
        (0, -1, 4295128739, 1, 887271),
    ],
)
def test_swap_log_round_trip(amount0, amount1, sqrt_price, liq, tick):
    topics, data = pool.encode_swap_log(
        pool=pool.ETH_USDC_POOL_ID,
        sender=pool.UNIVERSAL_ROUTER,
        amount0=amount0,
        amount1=amount1,
        sqrt_price_x96=sqrt_price,
        liquidity=liq,
        tick=tick,
        fee=500,
    )
    # The same bytes a hand-written eth-abi encoding gives.
    assert (
        data
        == "0x"
        + encode(
            ["int128", "int128", "uint160", "uint128", "int24", "uint24"],
            [amount0, amount1, sqrt_price, liq, tick, 500],
        ).hex()
    )
    log = {
        "topics": topics,
        "data": data,
        "blockNumber": "0x1",
        "logIndex": "0x7",
        "transactionHash": "0x" + "11" * 32,
        "blockHash": "0x" + "22" * 32,
    }
    d = pool.decode_swap_log(log)
    assert (
        d["amount0"],
        d["amount1"],
        d["sqrt_price_x96"],
        d["liquidity"],
        d["tick"],
        d["fee"],
    ) == (amount0, amount1, sqrt_price, liq, tick, 500)
    assert d["sender"] == pool.UNIVERSAL_ROUTER and d["pool_id"] == pool.ETH_USDC_POOL_ID
    assert (d["block_number"], d["log_index"]) == (1, 7)
    with pytest.raises(ValueError):
        pool.decode_swap_log({**log, "topics": ["0x" + "00" * 32, *topics[1:]]})


def _row(block, idx, amount0=-(2**127), amount1=2**127 - 1):
    return {
        "block_number": block,
        "log_index": idx,
        "transaction_hash": "0x" + f"{block:064x}",
        "block_hash": "0x" + "ab" * 32,
        "pool_id": pool.ETH_USDC_POOL_ID,
        "sender": pool.UNIVERSAL_ROUTER,
        "amount0": amount0,
        "amount1": amount1,
        "sqrt_price_x96": 2**160 - 1,
        "liquidity": 2**128 - 1,
        "tick": -887272,
        "fee": 500,
        "timestamp": 1_700_000_000 + block,
        "original_sender": None,
        "is_contract_sender": None,
        "tx_to": None,
    }


def test_store_big_ints_round_trip_exactly(tmp_path):
    rows = [_row(10, 0), _row(10, 1, amount0=2**127 - 1, amount1=-(2**127)), _row(12, 0, 1, -1)]
    with Store(tmp_path / "s.db") as st:
        st.commit_chunk(10, 20, rows, [(20, "0x" + "cd" * 32, 1)])
        got = list(st.swaps())
    assert got == rows
    # Stored as exact decimal text, readable by any sqlite client.
    raw = (
        sqlite3.connect(tmp_path / "s.db")
        .execute("SELECT amount0, sqrt_price_x96 FROM swaps LIMIT 1")
        .fetchone()
    )
    assert raw == (str(-(2**127)), str(2**160 - 1))
    assert sqlite3.connect(tmp_path / "s.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_chunk_is_atomic_and_ranges_merge(tmp_path):
    with Store(tmp_path / "s.db") as st:
        st.commit_chunk(0, 9, [_row(5, 0)])
        with pytest.raises(sqlite3.IntegrityError):  # duplicate key inside one chunk
            st.commit_chunk(10, 19, [_row(15, 0), _row(15, 0)])
        assert st.count() == 1 and st.done_ranges() == [(0, 9)]
        st.commit_chunk(20, 29, [_row(25, 0)])
        assert st.missing_ranges(0, 40) == [(10, 19), (30, 40)]
        st.commit_chunk(10, 19, [_row(15, 0)])
        assert st.done_ranges() == [(0, 29)]
        st.commit_chunk(10, 19, [_row(15, 0)])  # a redo replaces, never duplicates
        assert st.count() == 3
        assert [r["block_number"] for r in st.swaps()] == [5, 15, 25]
        assert st.rollback_from(15) == 2
        assert st.done_ranges() == [(0, 14)] and st.count() == 1

"""Defaults of the ``chain`` config section (overlaid by the preset, then by CLI flags)."""

from chain.pool import ETH_USDC_POOL_ID

DEFAULTS = {
    # collect
    "rpc_urls": [],  # Base JSON-RPC endpoints, used concurrently
    "pool_id": ETH_USDC_POOL_ID,
    "from_block": 25_428_824,  # first block of the shared CSV
    "to_block": None,  # a block number; None or "latest": head minus `confirmations`
    "confirmations": 10,
    "chunk_size": 2000,  # first eth_getLogs block range; adapts
    "max_chunk": 10_000,
    "concurrency": 4,  # eth_getLogs requests in flight
    "rate_limit": 25.0,  # requests per second per endpoint; 0 = unlimited
    "timeout_s": 10.0,
    "max_retries": 8,
    "batch_size": 50,  # block headers / txs per JSON-RPC batch
    "reorg_depth": 64,  # newest stored block hashes re-checked on every start / poll
    "poll_s": 4.0,  # --follow interval
    # process
    "bar_seconds": 300,
    # simulate
    "sim_swaps": 10_000,
    "sim_seed": 0,
    "sim_start_timestamp": 1_737_646_800,
    # snapshot
    "snapshot_minutes": 60,
}

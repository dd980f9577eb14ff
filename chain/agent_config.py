"""Defaults of the ``agent`` section: backtest, paper trading and opt-in execution.

A preset or YAML file overrides them, CLI flags win (``finetune_mlx.config.section``). The
rules teacher's thresholds are not repeated here: the agent reads them from the ``distill``
section, so the teacher it compares against is the one that labelled the training data.
Private keys never live in a config: only the *name* of the environment variable (or the
path of an encrypted keystore) that holds one.
"""

DEFAULTS = {
    # --- decision engine -------------------------------------------------------------------
    "model": "",  # student: a fused MLX model dir, or the base model dir when `adapter` is set
    "adapter": "",  # LoRA adapters dir (mlx-lm format) applied on top of `model`
    "teacher": "rules",  # the comparison teacher in backtests: rules (deterministic, offline)
    "max_tokens": 96,  # generation budget per answer (Chain of Draft answers are short)
    "temperature": 0.0,  # 0: greedy, reproducible decisions
    "style": "cod",  # system prompt style (distill.prompt.system_prompt)
    "stateful": False,  # keep recent trades and their outcomes in the prompt
    "context_tokens": 384,  # the model's context: prompt + history + answer must fit
    "history_trades": 6,  # at most this many trades in detail; older ones are summarised
    # --- market state ----------------------------------------------------------------------
    "bar_minutes": 5,  # bars inside a window (as distill: the student was trained on these)
    "window_bars": 12,  # a market state covers window_bars * bar_minutes minutes
    # --- backtest --------------------------------------------------------------------------
    "policies": ["student", "rules", "hold", "rebalance"],
    "interval_minutes": 15,  # one decision every N minutes of chain time
    "holdout_fraction": 0.2,  # the last fraction of the swaps (by time): never seen in training
    "max_steps": 0,  # 0: every interval of the held-out span
    "initial_value_usdc": 10000.0,  # starting portfolio, valued at the first decision's price
    "initial_eth_share": 0.5,  # its ETH share (buy-and-hold keeps exactly this)
    "rebalance_band_pct": 5.0,  # 50/50 rebalancer trades when |ETH share - 50| exceeds this
    # --- fills -----------------------------------------------------------------------------
    "default_trade_fraction": 0.1,  # answer without an amount: this fraction of the value
    "max_trade_eth": 1.0,  # hard cap on one trade's size (paper, backtest and execution)
    "gas_units": 150000,  # gas of one V4 single-hop swap through the Universal Router
    "gas_price_gwei": 0.01,  # Base L2 gas price (L1 data fee included, roughly)
    # --- paper trading / execution ---------------------------------------------------------
    "rpc_urls": [],  # Base JSON-RPC endpoint(s); the first one that answers is used
    "interval_seconds": 60.0,  # time between two decisions of the live loop
    "snapshot_minutes": 60,  # recent-swaps window read by the snapshot
    "journal": "runs/agent/journal.jsonl",
    "max_slippage_bps": 50,  # minimum output = quote * (1 - bps / 10000)
    "deadline_seconds": 120,  # the router reverts a swap mined after this
    "daily_loss_limit_pct": 5.0,  # stop trading for the UTC day once value fell this much
    "key_env": "APE_PRIVATE_KEY",  # env var holding the hex private key (execution only)
    "keystore": "",  # or an encrypted keystore JSON file (eth-account / geth format)
    "keystore_password_env": "APE_KEYSTORE_PASSWORD",  # its password (else asked on the tty)
    "account": "",  # expected address: a key for another account is refused
    "chain_id": 8453,  # Base; anything else is refused unless --fork is given for a local RPC
}

POLICIES = ("student", "rules", "teacher", "hold", "rebalance")
STYLES = ("cod", "cot")

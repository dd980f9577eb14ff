"""Defaults of the ``distill`` section (a preset or YAML file overrides them, CLI flags win)."""

DEFAULTS = {
    # --- teacher ---------------------------------------------------------------------------
    "teacher": "rules",  # rules | mlx | openai
    "style": "cod",  # cod (Chain of Draft) | cot (chain of thought, to measure the saving)
    "model": "mlx-community/QwQ-32B-4bit",  # mlx: HF repo or local dir; openai: model name
    "batch_size": 8,  # mlx: prompts generated together (mlx-lm batch generation)
    "temperature": 0.6,  # QwQ's recommended sampling
    "top_p": 0.95,
    "max_tokens": 4096,  # QwQ thinks at length before it answers
    "seed": 0,  # portfolios and sampling
    "retries": 2,  # re-asks of a rejected answer (bounded reject-and-retry)
    "max_draft_words": 5,  # Chain of Draft: words per draft step
    "max_drafts": 8,
    "tokenizer": "",  # model dir whose tokenizer counts output tokens of rules/openai answers
    # --- openai-compatible endpoints -------------------------------------------------------
    "base_urls": ["http://127.0.0.1:8080/v1"],  # requests are spread over all of them
    "api_key_env": "OPENAI_API_KEY",  # env var holding the key (required for non-local URLs)
    "concurrency": 4,  # requests in flight per URL
    "request_timeout": 300.0,  # seconds
    "http_retries": 5,  # per request, on 429 / 5xx / timeouts / refused connections
    "backoff": 1.0,  # seconds; doubles each retry (Retry-After wins when given)
    # --- windows and portfolios ------------------------------------------------------------
    "bar_minutes": 5,
    "window_bars": 12,  # when cutting bars.parquet into windows
    "max_windows": 0,  # 0: all windows
    "portfolios_per_window": 1,
    # The real windows the pipeline cuts for the teacher (`ape-gan windows`): bars between
    # window starts (0: window_bars, no overlap) and the share of bars that must have swaps.
    # An hour without a swap says nothing about the market and, in the real CSV, 58% of the
    # non-overlapping windows are such hours (0.00% change); the held-out split has none.
    "real_window_stride": 0,
    "real_min_active_frac": 0.0,
    "portfolio_min_usdc": 500.0,  # portfolio value, drawn log-uniform in [min, max]
    "portfolio_max_usdc": 20000.0,
    "in_band_fraction": 0.5,  # share of portfolios drawn inside the balance band (class balance)
    # --- rules teacher ---------------------------------------------------------------------
    "band_low": 35.0,  # ETH share % below which the analyst buys back toward 50/50
    "band_high": 65.0,  # ETH share % above which it sells back toward 50/50
    "trend_pct": 0.3,  # |window change| % above which it follows the trend
    "trade_fraction": 0.1,  # trend trades: this fraction of the portfolio's value
    "high_vol_pct": 1.0,  # window volatility % above which trend trades are halved
    # --- dataset ---------------------------------------------------------------------------
    "format": "chat",  # chat ({"messages": ...}) | completions ({"prompt", "completion"})
    "include_system": True,  # chat format: put the system prompt in every example
    "valid_fraction": 0.1,
    "test_fraction": 0.1,
    "rebalance": "none",  # none | downsample | upsample (train split only)
    "max_seq_length": 384,  # checked when a tokenizer / model dir is given
}

TEACHERS = ("rules", "mlx", "openai")
STYLES = ("cod", "cot")
FORMATS = ("chat", "completions")
REBALANCE = ("none", "downsample", "upsample")

"""A small distilled dataset in the stage format, and tiny models built from it (for tests).

Decisions are driven by two numbers in the prompt, as with the rules teacher: the window's
price change and the ETH share of the portfolio. Answers are Chain-of-Draft lines ending in
one canary decision, e.g. "trend up 0.8%\\nETH share 38%\\nbelow target\\n#### APE IN 0.25 ETH".
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from distill.prompt import LN_TICK, MarketState, format_prompt, system_prompt


def decide(change_pct: float, share_pct: float) -> tuple[str, str]:
    trend = "up" if change_pct > 0.3 else "down" if change_pct < -0.3 else "flat"
    target = "below target" if share_pct < 40 else "above target" if share_pct > 60 else "on target"
    if trend == "up" and share_pct < 60:
        action = "APE IN 0.25 ETH"
    elif trend == "down" and share_pct > 40:
        action = "APE OUT 0.25 ETH"
    else:
        action = "APE NEUTRAL"
    drafts = f"trend {trend} {abs(change_pct):.1f}%\nETH share {share_pct:.0f}%\n{target}"
    return drafts, action


def example(rng: random.Random) -> dict:
    price = rng.uniform(2500, 3500)
    change = rng.uniform(-1.5, 1.5)
    eth = rng.uniform(0.0, 3.0)
    usdc = rng.uniform(0.0, 9000.0)
    state = MarketState(
        price=price,
        change_pct=change,
        change_ticks=int(round(math.log1p(change / 100) / LN_TICK)),
        volume_eth=rng.uniform(10, 300),
        volume_usdc=0.0,
        volatility_pct=rng.uniform(0.1, 1.5),
        swap_count=rng.randint(50, 900),
        eth_balance=eth,
        usdc_balance=usdc,
        window_minutes=60,
    )
    state.volume_usdc = state.volume_eth * price
    # Decide on the numbers exactly as printed in the prompt.
    drafts, action = decide(round(change, 2), round(state.eth_share_pct))
    return {
        "messages": [
            {"role": "system", "content": system_prompt("cod")},
            {"role": "user", "content": format_prompt(state)},
            {"role": "assistant", "content": f"{drafts}\n#### {action}"},
        ]
    }


def make_dataset(
    out: Path, n_train: int = 96, n_valid: int = 16, n_test: int = 16, seed: int = 0
) -> Path:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        rows = [example(rng) for _ in range(n)]
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def tiny_kwargs(**over) -> dict:
    """Test-sized model: builds in about a second."""
    kw = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=512)
    kw.update(over)
    return kw


_CACHE: dict = {}


def shared_tiny(tmp_root: Path | None = None) -> tuple[Path, Path]:
    """(dataset dir, briefly pre-trained tiny base model dir), built once per test session."""
    import atexit
    import shutil
    import tempfile

    if "tiny" not in _CACHE:
        root = Path(tempfile.mkdtemp(prefix="ape-finetune-test-"))
        atexit.register(shutil.rmtree, root, True)
        from distill.dataset import load_splits
        from finetune_mlx.tiny import build_tiny, corpus_from_dataset

        data = make_dataset(root / "dataset")
        splits = load_splits(data, ("train", "valid"))
        corpus, chats = corpus_from_dataset(splits["train"] + splits["valid"])
        base = build_tiny(
            root / "base",
            corpus,
            **tiny_kwargs(),
            pretrain_texts=chats[:96],
            pretrain_steps=30,
            pretrain_batch_size=8,
        )
        _CACHE["tiny"] = (data, base)
    return _CACHE["tiny"]


def train_cfg(**over) -> dict:
    """The finetune section for fast test training runs."""
    from finetune_mlx.config import DEFAULTS

    cfg = dict(DEFAULTS)
    cfg.update(
        iters=4,
        batch_size=4,
        learning_rate=1e-3,
        num_layers=-1,
        warmup_steps=1,
        steps_per_report=2,
        steps_per_eval=4,
        val_batches=2,
        save_every=100,
        max_seq_length=512,
        grad_checkpoint=False,
    )
    cfg.update(over)
    return cfg

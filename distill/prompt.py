"""The market-state prompt: the one source of truth for what the student reads.

Training data (``ape-distill``), evaluation (``ape-finetune eval``) and the live agent all
build the user prompt with :func:`format_prompt`, so the text a model sees in use is the
text it was trained on. Prompts are short on purpose: the offline student is a few-million
parameter model with a ~384-token context.

Every quantity a decision depends on is printed plainly (the ETH share of the portfolio in
%, the window's price change in %), so a small student can copy it into its drafts and
decide from it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from gan_torch.data import WINDOW_VALUES

# One tick is a 0.01% price step: price = 1.0001 ** tick (in raw units).
LN_TICK = math.log(1.0001)

# the per-bar values a market state is built from: windows.parquet's (gan_torch owns the format)
WINDOW_COLUMNS = WINDOW_VALUES


@dataclass
class MarketState:
    price: float  # USDC per ETH at the end of the window
    change_pct: float  # price change over the window, %
    change_ticks: int  # the same change in Uniswap ticks
    volume_eth: float
    volume_usdc: float
    volatility_pct: float  # realized volatility over the window, %
    swap_count: int
    eth_balance: float
    usdc_balance: float
    window_minutes: int

    @property
    def portfolio_usdc(self) -> float:
        return self.eth_balance * self.price + self.usdc_balance

    @property
    def eth_share_pct(self) -> float:
        """Share of the portfolio's value held in ETH, % (50 for an empty portfolio)."""
        total = self.portfolio_usdc
        return 50.0 if total <= 0 else 100.0 * self.eth_balance * self.price / total

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MarketState:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def state_from_window(
    columns: dict[str, np.ndarray],
    eth_balance: float,
    usdc_balance: float,
    bar_minutes: int = 5,
) -> MarketState:
    """Summarise one window (the rows of one ``window_id`` of windows.parquet, in step order).

    The change is measured from the close *before* the window (recovered from the first
    bar's log return) to the last close, so a window of n bars covers n * bar_minutes.
    """
    missing = [c for c in WINDOW_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"window is missing columns: {', '.join(missing)}")
    close = np.asarray(columns["close"], dtype=np.float64)
    if close.size == 0:
        raise ValueError("window has no rows")
    log_ret = np.asarray(columns["log_return"], dtype=np.float64)
    first_ret = float(log_ret[0]) if np.isfinite(log_ret[0]) else 0.0
    price = float(close[-1])
    start = float(close[0]) * math.exp(-first_ret)
    change = math.log(price / start) if price > 0 and start > 0 else 0.0
    rv = np.asarray(columns["realized_vol"], dtype=np.float64)
    rv = rv[np.isfinite(rv)]
    return MarketState(
        price=price,
        change_pct=100.0 * math.expm1(change),
        change_ticks=int(round(change / LN_TICK)),
        volume_eth=float(np.nansum(columns["volume_eth"])),
        volume_usdc=float(np.nansum(columns["volume_usdc"])),
        volatility_pct=100.0 * float(np.sqrt(np.sum(rv * rv))),
        swap_count=int(np.nansum(columns["swap_count"])),
        eth_balance=float(eth_balance),
        usdc_balance=float(usdc_balance),
        window_minutes=int(close.size * bar_minutes),
    )


def format_prompt(state: MarketState) -> str:
    """The user prompt for one market state (identical in training, eval and live use)."""
    s = state
    # The two deciding numbers come last, at a near-fixed distance from the answer (nothing
    # of variable length between them and it): a small student finds them by position
    # instead of having to learn to search for them.
    return (
        f"ETH/USDC, last {s.window_minutes} min\n"
        f"price {s.price:.2f} USDC\n"
        f"volume {s.volume_eth:.1f} ETH, {s.volume_usdc:.0f} USDC\n"
        f"volatility {s.volatility_pct:.2f}%\n"
        f"swaps {s.swap_count}\n"
        f"tick move {s.change_ticks:+d}\n"
        f"holding {s.eth_balance:.4f} ETH, {s.usdc_balance:.2f} USDC\n"
        f"change {s.change_pct:+.2f}%\n"
        f"ETH share {s.eth_share_pct:.0f}%\n"
        "Action?"
    )


_ACTIONS = (
    "Answer APE IN (buy ETH), APE OUT (sell ETH) or APE NEUTRAL (hold), "
    "with an optional amount, e.g. #### APE IN 0.25 ETH."
)

SYSTEM_PROMPTS = {
    # Chain of Draft (Xu et al., 2025), with the canary actions.
    "cod": (
        "You are an ETH/USDC trading analyst. Think step by step, but only keep a minimum "
        "draft for each thinking step, with 5 words at most. Then write #### and the action. "
        + _ACTIONS
    ),
    # Standard chain of thought, kept to measure what Chain of Draft saves.
    "cot": (
        "You are an ETH/USDC trading analyst. Think step by step and explain your reasoning "
        "in full sentences. Then write #### and the action. " + _ACTIONS
    ),
}


def system_prompt(style: str = "cod") -> str:
    try:
        return SYSTEM_PROMPTS[style]
    except KeyError:
        raise ValueError(f"unknown prompt style {style!r} (known: cod, cot)") from None


def messages(state: MarketState, style: str = "cod", system: bool = True) -> list[dict[str, str]]:
    """Chat messages for one state: system (unless ``system`` is false, as for a student
    trained without one: ``distill.include_system``) + user."""
    user = [{"role": "user", "content": format_prompt(state)}]
    return ([{"role": "system", "content": system_prompt(style)}] if system else []) + user


_SYS, _USER = "\x1fsystem-probe\x1f", "\x1fuser-probe\x1f"


def template_system(tokenizer) -> str | None:
    """The system prompt a chat template puts in when the messages bring none, or None.

    SmolLM2's template adds "You are a helpful AI assistant named SmolLM, trained by Hugging
    Face", Qwen2.5's "You are Qwen, created by Alibaba Cloud. ..."; a student trained without a
    system message (``distill.include_system: false``) was trained *with* that one. Every path
    that renders through the tokenizer's template (training, eval, generate, the agent,
    ``mlx_lm.generate``, llama.cpp with the exported template) gets it for free; a path with a
    template of its own (Ollama's Modelfile) must state it, and takes it from here.
    """
    def render(msgs):
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)

    user = [{"role": "user", "content": _USER}]
    try:
        with_sys = render([{"role": "system", "content": _SYS}, *user])
    except Exception:  # noqa: BLE001 - a template without a system role
        return None
    bare = render(user)
    head, _, tail = with_sys.partition(_SYS)
    tail = tail[: tail.index(_USER)] if _USER in tail else tail
    # bare = head + default + tail + user...: the template's own system message
    if not head or not bare.startswith(head):
        return None
    rest = bare[len(head):]
    cut = rest.find(tail) if tail else -1
    if cut <= 0 or _USER not in rest[cut:]:
        return None
    return rest[:cut]


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The token ids of ``messages`` with the generation prompt: what the student reads."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))

"""The decision engine: a market state in, one canary decision out.

Policies share one shape, ``policy.decide(state, history) -> Decision``:

- :class:`ModelPolicy`: an MLX model (a fused model dir, or a base model + LoRA adapters)
  loaded with ``mlx_lm.load``; the user prompt is ``distill.prompt.format_prompt`` (the very
  text the student was trained on), the answer is parsed with ``distill.parse.parse_answer``.
  An unparseable answer counts as ``APE NEUTRAL`` and keeps its raw text for the log. The
  same class runs an MLX *teacher* (parsed with ``plain=True``, buy/sell/hold words accepted).
- :class:`EndpointPolicy`: the same chat sent to an OpenAI-compatible endpoint (``--endpoint
  URL --model NAME``) through the one HTTP client of ``distill.teachers``, greedy, parsed alike.
- :class:`RulesPolicy`: the deterministic rules teacher of ``distill.rules`` (the analyst
  that labelled the training data), for comparison.
- :class:`HoldPolicy` (buy-and-hold: keep the initial mix) and :class:`RebalancePolicy`
  (back to 50/50 whenever the ETH share leaves the band).

Stateful mode (:class:`History`): recent trades and their outcomes go into the prompt as one
extra user message placed *before* the market-state prompt (which stays exactly
``format_prompt``'s text). When the chat no longer fits the model's context minus the answer
budget, the oldest trades are folded into a one-line summary, then the summary is dropped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from apeagent.errors import UserError
from distill.parse import APE_IN, APE_NEUTRAL, APE_OUT, parse_answer
from distill.prompt import MarketState, format_prompt, system_prompt


@dataclass
class Decision:
    decision: str  # APE IN | APE OUT | APE NEUTRAL (a fallback NEUTRAL when unparseable)
    amount_eth: float | None = None
    valid: bool = True  # False: the answer could not be parsed (fell back to APE NEUTRAL)
    reason: str | None = None  # the parser's reason when not valid
    raw: str = ""  # the model's text ("" for rule policies)
    prompt_tokens: int = 0
    answer_tokens: int = 0
    latency_s: float = 0.0
    history_trades: int = 0  # trades shown in detail in the prompt (stateful mode)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- history (stateful mode)


@dataclass
class Trade:
    time: int  # unix seconds
    decision: str
    amount_eth: float  # ETH bought (+) or sold (-), fee and gas included
    price: float  # execution price, USDC per ETH


@dataclass
class History:
    """Trades the policy made, rendered for the prompt with their outcome so far."""

    trades: list[Trade] = field(default_factory=list)
    start_value_usdc: float = 0.0

    def add(self, t: Trade) -> None:
        self.trades.append(t)

    def render(self, price: float, value_usdc: float, detail: int) -> str:
        """``detail`` most recent trades line by line, older ones as one summary line."""
        if not self.trades:
            return ""
        detail = max(0, min(detail, len(self.trades)))
        older, recent = (
            self.trades[: len(self.trades) - detail],
            self.trades[len(self.trades) - detail :],
        )
        lines = ["Your trades so far (outcome: price move since the trade)"]
        if older:
            n_in = sum(t.decision == APE_IN for t in older)
            lines.append(
                f"earlier: {len(older)} trades ({n_in} APE IN, {len(older) - n_in} APE OUT)"
            )
        for t in recent:
            stamp = time.strftime("%m-%d %H:%M", time.gmtime(t.time))
            move = 100.0 * (price / t.price - 1.0) if t.price > 0 else 0.0
            lines.append(
                f"{stamp} {t.decision} {abs(t.amount_eth):.4f} ETH at {t.price:.2f}, since {move:+.2f}%"
            )
        if self.start_value_usdc > 0:
            lines.append(
                f"portfolio since start {100.0 * (value_usdc / self.start_value_usdc - 1.0):+.2f}%"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------- policies


class HoldPolicy:
    """Buy-and-hold: keep the initial ETH/USDC mix, never trade."""

    name = "hold"

    def decide(self, state: MarketState, history: History | None = None) -> Decision:
        return Decision(APE_NEUTRAL)


class RebalancePolicy:
    """50/50 rebalancer: trade back to an even split when |ETH share - 50| > band."""

    name = "rebalance"

    def __init__(self, band_pct: float = 5.0):
        self.band_pct = band_pct

    def decide(self, state: MarketState, history: History | None = None) -> Decision:
        share, price = state.eth_share_pct, state.price
        if abs(share - 50.0) <= self.band_pct or price <= 0:
            return Decision(APE_NEUTRAL)
        eth = abs(state.portfolio_usdc / 2 - state.eth_balance * price) / price
        return Decision(APE_OUT if share > 50.0 else APE_IN, eth)


class RulesPolicy:
    """The rules teacher of ``distill.rules`` on the same state (thresholds from ``distill``)."""

    name = "rules"

    def __init__(self, distill_cfg: dict):
        self.cfg = distill_cfg

    def decide(self, state: MarketState, history: History | None = None) -> Decision:
        from distill.rules import decide

        d = decide(state, self.cfg)
        return Decision(d["decision"], d["amount_eth"])


HF_PREFIX = "hf:"


def load_model(model: str, adapter: str = ""):
    """``(model, tokenizer)`` from a model reference: a local MLX model dir (it must exist:
    nothing is ever downloaded for a path, or a typo of one) or an explicit Hugging Face
    repo ``hf:org/name`` (fetched into the HF cache by mlx-lm)."""
    import re

    from finetune_mlx.model_dir import check_adapter, load

    if not model:
        raise UserError("no model given (--model DIR or hf:org/name, or agent.model)")
    if model.startswith(HF_PREFIX):
        repo = model[len(HF_PREFIX) :]
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo):
            raise UserError(f"--model {model!r}: a hub model is hf:org/name")
        from mlx_lm import load as hub_load

        if adapter:
            raise UserError("--adapter goes with a local base model dir, not an hf: reference")
        try:
            return hub_load(repo)
        except Exception as e:  # noqa: BLE001 - hub and load errors of every kind
            raise UserError(f"cannot load {model!r} from the Hugging Face hub: {e}") from None
    if not Path(model).expanduser().is_dir():
        raise UserError(
            f"model directory not found: {model} (a Hugging Face model is written hf:org/name)"
        )
    if adapter:
        check_adapter(adapter, Path(model).expanduser())
    return load(Path(model).expanduser(), adapter or None)


def fit_chat(
    state: MarketState,
    history: History | None,
    *,
    system: str | None,
    stateful: bool,
    history_trades: int,
    budget: int,
    count,
) -> tuple[list[dict], int]:
    """The chat for ``state`` (system prompt, history, ``format_prompt``'s text) whose
    ``count(chat)`` (prompt tokens) fits ``budget``, and the number of detailed trades."""
    user = {"role": "user", "content": format_prompt(state)}
    base = [{"role": "system", "content": system}] if system else []
    detail = history_trades if (stateful and history and history.trades) else -1
    while True:
        chat = list(base)
        if detail >= 0:
            text = history.render(state.price, state.portfolio_usdc, detail)
            chat.append({"role": "user", "content": text})
        chat.append(user)
        if detail < 0 or count(chat) <= budget:
            return chat, max(detail, 0)
        # Too long: fold the oldest detailed trade into the summary; then drop history.
        detail = detail - 1 if detail > 0 else -1


def _decision(policy, text: str, prompt_tokens: int, answer_tokens: int, latency_s: float,
              detail: int, state: MarketState) -> Decision:
    """Parse an answer into a Decision (unparseable: APE NEUTRAL, logged with its raw text).
    A plain-word teacher's "rebalance" and USDC amounts are read against the state's ETH share
    and price, as the teacher cleaning does."""
    ans = parse_answer(text, plain=policy.plain, share_pct=state.eth_share_pct, price=state.price)
    d = Decision(
        ans.decision if ans.valid else APE_NEUTRAL,
        ans.amount_eth if ans.valid else None,
        valid=ans.valid,
        reason=ans.reason,
        raw=text,
        prompt_tokens=prompt_tokens,
        answer_tokens=answer_tokens,
        latency_s=latency_s,
        history_trades=detail,
    )
    if not ans.valid and policy.log is not None:
        policy.log({"event": "unparseable", "policy": policy.name, "reason": ans.reason, "raw": text})
    return d


# two market states with no digit in common: their prompts share exactly the fixed head
_PROBE_STATES = (
    MarketState(1111.11, 1.11, 11, 1.1, 1111.0, 1.11, 11, 1.1111, 111.11, 11),
    MarketState(2222.22, -2.22, -22, 2.2, 2222.0, 2.22, 22, 2.2222, 222.22, 22),
)


class ModelPolicy:
    """An MLX model (student, or an MLX teacher with ``plain=True``) answering the prompt."""

    def __init__(
        self,
        model: str,
        adapter: str = "",
        *,
        name: str = "student",
        max_tokens: int = 96,
        style: str = "cod",
        system: bool = True,
        stateful: bool = False,
        context_tokens: int = 384,
        history_trades: int = 6,
        plain: bool = False,
        prompt_cache: bool = False,
        log=None,
    ):
        self.model, self.tokenizer = load_model(model, adapter)
        self.name = name
        self.max_tokens = max_tokens
        # without a system prompt when the student was trained without one (distill.include_system)
        self.system = system_prompt(style) if system else None
        self.stateful = stateful
        self.context_tokens = context_tokens
        self.history_trades = history_trades
        self.plain = plain
        self.log = log  # callable(dict) receiving unparseable answers with their raw text
        self.prefix = None
        if prompt_cache:  # the prompt's fixed head: what two states with no digit in common share
            from finetune_mlx.model_dir import PrefixCache, common_prefix

            heads = [self.fit(s, None)[1] for s in _PROBE_STATES]
            self.prefix = PrefixCache(self.model, common_prefix(heads))

    def messages(self, state: MarketState, history: History | None) -> tuple[list[int], int]:
        """Token ids of the chat (fitted to the context) and the number of detailed trades."""
        _, ids, detail = self.fit(state, history)
        return ids, detail

    def fit(self, state: MarketState, history: History | None) -> tuple[list[dict], list[int], int]:
        """The chat fitted to the context, its token ids, the number of detailed trades."""
        last: dict = {}

        def count(chat: list[dict]) -> int:
            last["chat"] = chat
            last["ids"] = list(
                self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=False)
            )
            return len(last["ids"])

        chat, detail = fit_chat(state, history, system=self.system, stateful=self.stateful,
                                history_trades=self.history_trades,
                                budget=self.context_tokens - self.max_tokens, count=count)
        if last.get("chat") is not chat:
            count(chat)
        return chat, last["ids"], detail

    def decide(self, state: MarketState, history: History | None = None) -> Decision:
        from finetune_mlx.model_dir import answer  # the one greedy answer (eval uses it too)

        chat, ids, detail = self.fit(state, history)
        out = answer(self.model, self.tokenizer, ids, self.max_tokens, prefix=self.prefix)
        return _decision(self, out["text"], len(ids), out["tokens"], out["latency_s"], detail, state)


class EndpointPolicy:
    """The student (or any model) behind an OpenAI-compatible chat endpoint (``mlx_lm.server``,
    llama.cpp's server, Ollama's ``/v1``, LM Studio, OpenRouter): the same chat as
    :class:`ModelPolicy` (the server applies the model's chat template), greedy, parsed alike.

    Stateful mode fits the history with a token *estimate* (``agent.tokenizer``: exact content
    tokens from a tokenizer.json, else words + punctuation; plus a few tokens per message for
    the template), since the server's tokenizer is not at hand.

    :meth:`prefetch` answers several prompts at once (``agent.concurrency`` in flight) and
    keeps the answers by their exact chat; :meth:`decide` takes a kept answer only for the
    very same chat, so a prefetched guess that a later trade made stale is never used.
    """

    TEMPLATE_TOKENS = 5  # per message (<|im_start|>role\n ... <|im_end|>\n), estimate

    def __init__(self, url: str, model: str, cfg: dict, *, name: str = "student",
                 system: bool = True, plain: bool = False, log=None):
        from distill.teachers import endpoint_client, token_counter

        self.name, self.plain, self.log = name, plain, log
        self.max_tokens = cfg["max_tokens"]
        self.system = system_prompt(cfg["style"]) if system else None
        self.stateful = cfg["stateful"]
        self.context_tokens = cfg["context_tokens"]
        self.history_trades = cfg["history_trades"]
        self.concurrency = max(1, int(cfg["concurrency"]))
        self._count, _ = token_counter(cfg["tokenizer"])
        self.client = endpoint_client(url, model, self.max_tokens, cfg, what="agent", section="agent")
        self._kept: dict[str, tuple[str, int, float]] = {}
        self.requests = 0  # answers asked of the endpoint (prefetches included)

    def count(self, chat: list[dict]) -> int:
        return sum(self._count(m["content"]) + self.TEMPLATE_TOKENS for m in chat) + 3

    def fit(self, state: MarketState, history: History | None) -> tuple[list[dict], int]:
        return fit_chat(state, history, system=self.system, stateful=self.stateful,
                        history_trades=self.history_trades,
                        budget=self.context_tokens - self.max_tokens, count=self.count)

    def _ask(self, chats: list[list[dict]]) -> None:
        from distill.teachers import Request

        todo = {}
        for chat in chats:
            key = _chat_key(chat)
            if key not in self._kept:
                todo[key] = Request(key, chat, None)
        for r, g in self.client.generate(todo.values()):
            self._kept[r.key] = (g.text, g.output_tokens, g.seconds)
        self.requests += len(todo)

    def prefetch(self, states: list[tuple[MarketState, History | None]]) -> None:
        """Answer these (state, history) prompts ahead, ``agent.concurrency`` at a time."""
        self._kept.clear()  # answers of chats that did not come are stale guesses
        self._ask([self.fit(s, h)[0] for s, h in states])

    def decide(self, state: MarketState, history: History | None = None) -> Decision:
        chat, detail = self.fit(state, history)
        key = _chat_key(chat)
        if key not in self._kept:
            self._ask([chat])
        text, tokens, seconds = self._kept.pop(key)
        return _decision(self, text, self.count(chat), tokens, seconds, detail, state)

    def close(self) -> None:
        self.client.close()


def _chat_key(chat: list[dict]) -> str:
    return json.dumps(chat, sort_keys=True)


def make_policy(kind: str, cfg: dict, distill_cfg: dict, log=None):
    """A policy by name: student | rules | hold | rebalance (``cfg``: the agent section)."""
    if kind == "hold":
        return HoldPolicy()
    if kind == "rebalance":
        return RebalancePolicy(cfg["rebalance_band_pct"])
    if kind == "rules" or (kind == "teacher" and cfg["teacher"] == "rules"):
        return RulesPolicy(distill_cfg)
    common = dict(
        max_tokens=cfg["max_tokens"],
        style=cfg["style"],
        stateful=cfg["stateful"],
        context_tokens=cfg["context_tokens"],
        history_trades=cfg["history_trades"],
        log=log,
    )
    if kind == "student" and cfg["endpoint"]:
        return EndpointPolicy(cfg["endpoint"], cfg["model"], cfg, name="student",
                              system=distill_cfg["include_system"], log=log)
    if kind == "student":
        return ModelPolicy(cfg["model"], cfg["adapter"], name="student",
                           system=distill_cfg["include_system"],
                           prompt_cache=cfg["prompt_cache"], **common)
    if kind == "teacher":  # an MLX teacher model (answers may use plain trading words)
        return ModelPolicy(cfg["teacher"], "", name="teacher", plain=True,
                           prompt_cache=cfg["prompt_cache"], **common)
    raise UserError(f"unknown policy {kind!r} (known: student, rules, teacher, hold, rebalance)")

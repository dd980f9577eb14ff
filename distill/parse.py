"""Read a model's answer: think block, drafts, the ``####`` separator, one canary decision.

Used on teacher answers (with ``plain=True``: "buy"/"sell"/"hold" words are mapped to the
canaries) and on the student's answers in evaluation (strict: only canaries count).

>>> parse_answer("<think>...</think>\\nshare 20%\\n#### APE IN 0.5 ETH").decision
'APE IN'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

APE_IN, APE_OUT, APE_NEUTRAL = "APE IN", "APE OUT", "APE NEUTRAL"
CANARIES = (APE_IN, APE_OUT, APE_NEUTRAL)
SEPARATOR = "####"

# Plain trading words a teacher may use instead of the canaries, and the canary each means.
PLAIN_TO_CANARY = {
    **dict.fromkeys(
        ("buy", "buying", "long", "go long", "accumulate", "accumulating", "add"), APE_IN
    ),
    **dict.fromkeys(
        ("sell", "selling", "short", "go short", "reduce", "reducing", "trim", "exit"), APE_OUT
    ),
    **dict.fromkeys(
        ("hold", "holding", "wait", "waiting", "neutral", "stay", "no action", "do nothing"),
        APE_NEUTRAL,
    ),
}

# Rejection reasons (stable strings: reports count them).
EMPTY = "empty"
UNFINISHED_THINK = "unfinished think"
NO_ACTION = "no action"
SEVERAL_ACTIONS = "several actions"

_CANARY_RE = re.compile(r"\bAPE[\s_-]+(IN|OUT|NEUTRAL)\b", re.IGNORECASE)
_PLAIN_RE = re.compile(
    r"\b("
    + "|".join(sorted((re.escape(w).replace(r"\ ", r"\s+") for w in PLAIN_TO_CANARY), key=len, reverse=True))
    + r")\b",
    re.IGNORECASE,
)
# An amount right after the decision: "APE OUT 2.5 ETH", "APE IN: 0.25 eth", "sell 1,5 WETH".
_AMOUNT_RE = re.compile(r"^[\s:=*_\-]*(?:\w+\s+){0,2}?(\d+(?:[.,]\d+)?)\s*W?ETH\b", re.IGNORECASE)
_BULLET_RE = re.compile(r"^\s*(?:[-*\u2022>]+|\d+[.)]|step\s*\d+\s*[:.)-])\s*", re.IGNORECASE)
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


@dataclass
class Answer:
    decision: str | None  # one of CANARIES, or None
    amount_eth: float | None
    drafts: list[str] = field(default_factory=list)
    has_separator: bool = False
    valid: bool = False
    reason: str | None = None  # why it is not valid (None when valid)
    thinking: str = ""  # the <think> block's text, if any
    mapped: bool = False  # the decision came from a plain word ("sell"), not a canary


def to_canary(word: str) -> str | None:
    """Map a decision word or phrase to its canary ("Buy" -> "APE IN"); None if unknown."""
    w = " ".join(word.strip().lower().split())
    if w.upper() in CANARIES:
        return w.upper()
    return PLAIN_TO_CANARY.get(w)


def format_action(decision: str, amount_eth: float | None = None) -> str:
    """``APE IN`` or ``APE IN 0.25 ETH``."""
    if amount_eth is None:
        return decision
    return f"{decision} {format_amount(amount_eth)} ETH"


def format_amount(amount: float) -> str:
    text = f"{amount:.4f}".rstrip("0").rstrip(".")
    return text or "0"


def split_think(text: str) -> tuple[str, str, bool]:
    """``(thinking, answer, unfinished)``.

    QwQ's chat template opens ``<think>`` in the prompt, so the output often has only the
    closing tag; an opening tag with no closing one means generation stopped mid-thought.
    """
    if _THINK_CLOSE in text:
        head, _, tail = text.rpartition(_THINK_CLOSE)
        return head.replace(_THINK_OPEN, "").strip(), tail.strip(), False
    if _THINK_OPEN in text:
        return text.split(_THINK_OPEN, 1)[1].strip(), "", True
    return "", text.strip(), False


def _decisions(text: str, plain: bool) -> list[tuple[str, int, int, bool]]:
    """All decisions in ``text`` as ``(canary, start, end, mapped)``, in order."""
    found = [(f"APE {m.group(1).upper()}", m.start(), m.end(), False) for m in _CANARY_RE.finditer(text)]
    if plain:
        masked = _CANARY_RE.sub(lambda m: " " * len(m.group(0)), text)
        for m in _PLAIN_RE.finditer(masked):
            found.append((PLAIN_TO_CANARY[" ".join(m.group(1).lower().split())], m.start(), m.end(), True))
    return sorted(found, key=lambda d: d[1])


def _clean_line(line: str) -> str:
    line = _BULLET_RE.sub("", line.strip())
    return line.strip().strip("*").strip()


def parse_answer(text: str | None, plain: bool = False) -> Answer:
    """Parse one answer. ``plain=True`` also accepts buy/sell/hold words (teacher cleaning)."""
    if text is None or not text.strip():
        return Answer(None, None, reason=EMPTY)
    thinking, body, unfinished = split_think(text)
    if unfinished:
        return Answer(None, None, thinking=thinking, reason=UNFINISHED_THINK)
    if not body:
        return Answer(None, None, thinking=thinking, reason=EMPTY)

    has_sep = SEPARATOR in body
    if has_sep:
        head, _, action = body.rpartition(SEPARATOR)
        head_lines = head.splitlines()
    else:
        # No separator: the action is the last line that names a decision.
        lines = body.splitlines()
        idx = next((i for i in range(len(lines) - 1, -1, -1) if _decisions(lines[i], plain)), None)
        if idx is None:
            drafts = [d for d in map(_clean_line, lines) if d]
            return Answer(None, None, drafts, False, thinking=thinking, reason=NO_ACTION)
        action, head_lines = lines[idx], lines[:idx]

    drafts = [d for d in (_clean_line(line.replace(SEPARATOR, "")) for line in head_lines) if d]
    found = _decisions(action, plain)
    result = Answer(None, None, drafts, has_sep, thinking=thinking)
    if not found:
        result.reason = NO_ACTION
        return result
    if len({d[0] for d in found}) > 1:
        result.reason = SEVERAL_ACTIONS
        return result
    decision, _, end, mapped = found[0]
    result.decision, result.mapped, result.valid = decision, mapped, True
    m = _AMOUNT_RE.match(action[end:])
    if m:
        result.amount_eth = float(m.group(1).replace(",", "."))
    return result

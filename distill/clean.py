"""Turn a raw teacher answer into a training completion, or reject it with a reason.

A kept completion is always ``<drafts, one per line>\\n#### <CANARY>[ <amount> ETH]``:
decisions are mapped to canary words, amounts kept, non-English text transliterated or
removed (QwQ sometimes switches to Chinese mid-answer), Chain-of-Draft steps held to their
word limit, and no plain BUY/SELL/HOLD survives as a decision word.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from distill.parse import SEPARATOR, format_action, parse_answer

# Rejection reasons beyond the parser's (empty, unfinished think, no action, several actions).
NO_DRAFTS = "no drafts"
TOO_MANY_DRAFTS = "too many drafts"
DRAFT_TOO_LONG = "draft too long"
NON_ENGLISH = "non-english"

# Fixes applied to kept answers (counted in the report).
MAPPED = "decision mapped to canary"
SEPARATOR_ADDED = "separator added"
TRUNCATED = "draft truncated"
TRANSLITERATED = "non-english removed"
PLAIN_WORD = "plain decision word replaced"

# Plain decision words inside drafts become neutral verbs, so no BUY/SELL/HOLD remains.
_PLAIN_IN_DRAFT = re.compile(r"\b(buy|sell|hold)\b", re.IGNORECASE)
_DRAFT_WORDS = {"buy": "add", "sell": "trim", "hold": "keep"}
_FORBIDDEN = re.compile(r"\b(BUY|SELL|HOLD)\b", re.IGNORECASE)


@dataclass
class Cleaned:
    ok: bool
    completion: str | None = None
    decision: str | None = None
    amount_eth: float | None = None
    reason: str | None = None
    fixes: list[str] = field(default_factory=list)
    via: str | None = None  # how the decision was read (distill.parse.Answer.via)


def to_english(text: str) -> tuple[str, int]:
    """ASCII text and the number of letters that could not be transliterated (dropped).

    NFKC first folds full-width forms ("１２％" -> "12%"), NFKD then splits accents off Latin
    letters ("é" -> "e"); whatever is still not ASCII (CJK, Cyrillic) is removed.
    """
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    kept, dropped = [], 0
    for ch in folded:
        if ord(ch) < 128:
            kept.append(ch)
        elif unicodedata.combining(ch):
            continue
        elif unicodedata.category(ch).startswith(("L", "N")):
            dropped += 1
        else:
            kept.append(" ")  # foreign punctuation / symbols: a word break
    return " ".join("".join(kept).split()), dropped


def has_plain_decision(text: str) -> bool:
    """True if BUY/SELL/HOLD appears as a word (the final data must have none)."""
    return bool(_FORBIDDEN.search(text))


def clean_answer(
    text: str | None,
    max_draft_words: int | None = 5,
    max_drafts: int = 8,
    max_foreign: float = 0.3,
    share_pct: float | None = None,
    price: float | None = None,
) -> Cleaned:
    """Clean one teacher answer. ``max_draft_words=None`` (chain of thought) skips the limit.

    ``share_pct`` and ``price`` come from the market state the answer was given for: they
    give a rebalance its direction and turn a USDC amount into ETH (see parse_answer).

    Drafts over the limit are cut to it; a draft over twice the limit means the teacher
    wrote prose instead of drafts, so the answer is rejected (and re-asked). An answer whose
    drafts lose more than ``max_foreign`` of their letters to transliteration is rejected.
    """
    ans = parse_answer(text, plain=True, share_pct=share_pct, price=price)
    if not ans.valid:
        return Cleaned(False, reason=ans.reason)
    fixes: list[str] = []
    if ans.mapped:
        fixes.append(MAPPED)
    if not ans.has_separator:
        fixes.append(SEPARATOR_ADDED)

    drafts: list[str] = []
    letters = dropped_total = 0
    for raw in ans.drafts:
        draft, dropped = to_english(raw)
        letters += sum(ch.isalnum() for ch in raw)
        dropped_total += dropped
        if dropped:
            fixes.append(TRANSLITERATED)
        draft, n = _PLAIN_IN_DRAFT.subn(lambda m: _DRAFT_WORDS[m.group(1).lower()], draft)
        if n:
            fixes.append(PLAIN_WORD)
        draft = draft.replace(SEPARATOR, "").strip(" -:;,")
        if not draft:
            continue
        if max_draft_words is not None:
            words = draft.split()
            if len(words) > 2 * max_draft_words:
                return Cleaned(False, reason=DRAFT_TOO_LONG)
            if len(words) > max_draft_words:
                draft = " ".join(words[:max_draft_words])
                fixes.append(TRUNCATED)
        drafts.append(draft)
    if letters and dropped_total / letters > max_foreign:
        return Cleaned(False, reason=NON_ENGLISH)
    if not drafts:
        return Cleaned(False, reason=NO_DRAFTS)
    if len(drafts) > max_drafts:
        return Cleaned(False, reason=TOO_MANY_DRAFTS)
    completion = "\n".join(drafts) + f"\n{SEPARATOR} " + format_action(ans.decision, ans.amount_eth)
    # The invariant of the final data, checked rather than assumed.
    assert not has_plain_decision(completion), completion
    return Cleaned(True, completion, ans.decision, ans.amount_eth, None, sorted(set(fixes)), ans.via)

"""Read a model's answer: think block, drafts, the ``####`` separator, one canary decision.

Two modes:

- strict (``plain=False``, the student's answers in evaluation and live use): only the
  canary words count; the action is what follows the last ``####`` (no separator: the last
  line naming a canary).
- plain (``plain=True``, teacher answers): the *final* decision is read the way a careful
  reader would, from the phrase tables in ``phrases.yaml`` (data, not code): plain words
  and idioms ("take profit", "sit tight"), swaps (the direction is what happens to ETH:
  "sell 1,500 USDC for ETH" buys ETH), rebalancing (ETH share vs the target), Chinese,
  negation ("not the time to buy"), earlier thoughts ("I considered selling, but"),
  conditional later plans ("buy now; sell above 3,100"), markdown and ``\\boxed{}``. When
  the answer is unsure, conflicting or cut off it is rejected with a reason (precision
  first: a wrong label teaches the student to trade the wrong way).

>>> parse_answer("<think>...</think>\\nshare 20%\\n#### APE IN 0.5 ETH").decision
'APE IN'
>>> a = parse_answer("#### Sell 1,500 USDC for ETH", plain=True, price=2500.0)
>>> a.decision, a.amount, a.unit, a.amount_eth
('APE IN', 1500.0, 'USDC', 0.6)
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import yaml

APE_IN, APE_OUT, APE_NEUTRAL = "APE IN", "APE OUT", "APE NEUTRAL"
CANARIES = (APE_IN, APE_OUT, APE_NEUTRAL)
SEPARATOR = "####"
PHRASES_FILE = Path(__file__).with_name("phrases.yaml")

# Rejection reasons (stable strings: reports count them).
EMPTY = "empty"
UNFINISHED_THINK = "unfinished think"
NO_ACTION = "no action"
SEVERAL_ACTIONS = "several actions"
REFUSAL = "refusal"
UNDECIDED = "undecided"
NEGATED_ONLY = "negated only"
CONDITIONAL_ONLY = "conditional only"
REBALANCE_UNKNOWN = "rebalance direction unknown"
REASONS = (
    EMPTY, UNFINISHED_THINK, NO_ACTION, SEVERAL_ACTIONS, REFUSAL, UNDECIDED, NEGATED_ONLY,
    CONDITIONAL_ONLY, REBALANCE_UNKNOWN,
)

# How a plain-mode decision was read (Answer.via; the teacher report counts them).
VIA_CANARY, VIA_PHRASE, VIA_SWAP, VIA_REBALANCE, VIA_CHINESE = (
    "canary", "phrase", "swap", "rebalance", "chinese")

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_CANARY_RE = re.compile(r"\bAPE[\s_-]+(IN|OUT|NEUTRAL)\b", re.IGNORECASE)
# An amount right after the decision: "APE OUT 2.5 ETH", "APE IN: 0.25 eth", "sell 1,5 WETH".
_AMOUNT_RE = re.compile(r"^[\s:=*_\-]*(?:\w+\s+){0,2}?(\d+(?:[.,]\d+)?)\s*W?ETH\b", re.IGNORECASE)
_BULLET_RE = re.compile(r"^\s*(?:[-*\u2022>]+|\d+[.)]|step\s*\d+\s*[:.)-])\s*", re.IGNORECASE)


@dataclass
class Answer:
    decision: str | None  # one of CANARIES, or None
    amount_eth: float | None  # the amount in ETH (a USDC amount only when a price was given)
    drafts: list[str] = field(default_factory=list)
    has_separator: bool = False
    valid: bool = False
    reason: str | None = None  # why it is not valid (None when valid)
    thinking: str = ""  # the <think> block's text, if any
    mapped: bool = False  # the decision came from a plain word ("sell"), not a canary
    amount: float | None = None  # the amount as written, in `unit`
    unit: str | None = None  # "ETH" or "USDC"
    via: str | None = None  # plain mode: canary | phrase | swap | rebalance | chinese


# --------------------------------------------------------------------------- phrase tables


def _forms(verb: str, irregular: dict) -> list[str]:
    """A verb (or verb phrase: its first word is inflected) and its -s/-ing/-ed forms."""
    head, _, rest = verb.partition(" ")
    forms = {head, *irregular.get(head, ())}
    if head.isascii() and head[-1].isalpha():
        stem = head[:-1] if head.endswith("e") and not head.endswith("ee") else head
        forms |= {
            head + ("es" if head.endswith(("s", "x", "z", "ch", "sh")) else "s"),
            stem + "ing",
            head + ("d" if head.endswith("e") else "ed"),
        }
    return sorted(f"{w} {rest}".strip() for w in forms)


def _alternation(entries, boundary: bool = True) -> re.Pattern:
    """One regex matching any entry, the longest first (spaces match any whitespace)."""
    alts = sorted({e.lower() for e in entries}, key=len, reverse=True)
    body = "|".join(re.escape(a).replace(r"\ ", r"\s+") for a in alts)
    return re.compile(rf"(?<![\w-])(?:{body})(?![\w-])" if boundary else f"(?:{body})")


def _space(s: str) -> str:
    return " ".join(s.lower().split())


class _Tables:
    """The phrase tables of ``phrases.yaml``, compiled."""

    def __init__(self, path: Path = PHRASES_FILE) -> None:
        t = yaml.safe_load(path.read_text(encoding="utf-8"))
        irregular = t["irregular"]
        self.entries: dict[str, tuple[str, str]] = {}  # phrase -> (class, base verb)

        def add(words, cls, inflect=True):
            for w in words:
                for f in _forms(w, irregular) if inflect else [w]:
                    self.entries.setdefault(_space(f), (cls, w.split()[0]))

        self.with_object: set[str] = set()
        for canary, d in t["decisions"].items():
            add(d.get("verbs", []), canary)
            add(d.get("phrases", []), canary, inflect=False)
            add(d.get("with_object", []), canary)
            self.with_object |= set(d.get("with_object", []))
        add(t["swap_verbs"], "swap")
        add(t["rebalance"]["verbs"], "rebalance")
        add(t["rebalance"]["phrases"], "rebalance", inflect=False)
        for w in t["not_decision"]:  # ignored phrases win over what they contain
            self.entries[_space(w)] = ("ignore", w)
        self.phrase_re = _alternation(self.entries)
        self.plain = {p: c for p, (c, _) in self.entries.items() if c in CANARIES}

        zh = t["chinese"]
        self.zh: dict[str, str] = {}
        for cls in (*CANARIES, "swap", "rebalance"):
            for w in zh[cls]:
                self.zh.setdefault(w, cls)
        for w in zh["not_decision"]:
            self.zh[w] = "ignore"
        self.zh_re = _alternation(self.zh, boundary=False)
        self.zh_state_before = tuple(zh["state_before"])
        self.zh_hedges = tuple(zh["hedges"])

        self.assets = {_space(w): a for a, ws in t["assets"].items() for w in ws}
        self.state_after = _alternation(t["state_after"])
        self.state_before = _alternation(t["state_before"])
        self.state_verbs = set(t["state_verbs"])
        neg = t["negation"]
        self.neg_window = int(neg["window"])
        self.neg_before = _alternation(neg["before"])
        self.neg_after = re.compile(
            r"^\W*(?:[\w']+\s+){0,2}?" + _alternation(neg["after"]).pattern)
        self.zh_neg = tuple(sorted(neg["chinese"], key=len, reverse=True))
        hyp = t["hypothetical"]
        self.hyp_before = _alternation(hyp["before"])
        self.hyp_after = re.compile(r"^\W*(?:[\w']+\s+){0,1}?" + _alternation(hyp["after"]).pattern)
        self.zh_hyp = tuple(hyp["chinese"])
        self.hedges = _alternation(t["hedges"])
        cond = t["conditional"]
        self.cond_before = _alternation(cond["before"])
        self.cond_after = _alternation(cond["after"])
        self.cond_now = _alternation(cond["now"])
        self.cond_limit = re.compile(
            r"^\W*(?:[~≈$+]?[\d.,]+\s*(?:k\s*)?(?:w?eth|usdc|usd)?\s*)?(?:now\s+)?"
            + "(?P<word>" + _alternation(cond["limit_after"]).pattern + ")"
            + r"\s*(?:~|≈|about|around)?\s*\$?\s*(?P<num>\d[\d,]*(?:\.\d+)?)(?P<pct>\s*%)?"
        )
        self.zh_cond = tuple(cond["chinese"])
        fm = t["final_markers"]
        start = _alternation(fm["start"], boundary=False).pattern
        self.marker_start = re.compile(rf"^(?:so,?\s+)?(?:{start})\s*(?::|=|-|—|–|\bis\b)\s*")
        self.marker_only = re.compile(rf"^(?:{start})\s*:?\s*$")
        self.marker_inside = _alternation(fm["inside"])
        self.refusal = _alternation(t["refusal"])
        self.undecided = _alternation(t["undecided"])
        self.zh_refusal = tuple(w for w in t["refusal"] if not w.isascii())
        self.zh_undecided = tuple(w for w in t["undecided"] if not w.isascii())
        cues = t["thinking_cues"]
        self.cue_start = re.compile(r"^\W*" + _alternation(cues["start"]).pattern)
        self.cue_inside = _alternation(cues["inside"])
        self.price_before = _alternation(t["price_before"])


_T = _Tables()
# Plain trading words a teacher may use instead of the canaries, and the canary each means.
PLAIN_TO_CANARY = dict(_T.plain)


def to_canary(word: str) -> str | None:
    """Map a decision word or phrase to its canary ("Buy" -> "APE IN"); None if unknown."""
    w = _space(word)
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


def _clean_line(line: str) -> str:
    line = _BULLET_RE.sub("", line.strip())
    return line.strip().strip("*").strip()


def parse_answer(
    text: str | None,
    plain: bool = False,
    share_pct: float | None = None,
    price: float | None = None,
    target_pct: float = 50.0,
) -> Answer:
    """Parse one answer. ``plain=True`` reads plain wording too (teacher cleaning).

    ``share_pct`` (the ETH share of the portfolio, %) and ``target_pct`` give a rebalance
    its direction (without a share the answer's own "ETH share 72%" is used); ``price``
    (USDC per ETH) converts a USDC amount to ``amount_eth`` and tells a price level from an
    amount. Both come from the market state the answer was given for.
    """
    if text is None or not text.strip():
        return Answer(None, None, reason=EMPTY)
    thinking, body, unfinished = split_think(text)
    if unfinished:
        return Answer(None, None, thinking=thinking, reason=UNFINISHED_THINK)
    if not body:
        return Answer(None, None, thinking=thinking, reason=EMPTY)
    if not plain:
        return _parse_strict(body, thinking)
    tagless = _THINK_OPEN not in text and _THINK_CLOSE not in text
    return _Reader(body, thinking, share_pct, price, target_pct, tagless).read()


# --------------------------------------------------------------------------- strict mode


def _canaries(text: str) -> list[tuple[str, int, int]]:
    return [(f"APE {m.group(1).upper()}", m.start(), m.end()) for m in _CANARY_RE.finditer(text)]


def _parse_strict(body: str, thinking: str) -> Answer:
    has_sep = SEPARATOR in body
    if has_sep:
        head, _, action = body.rpartition(SEPARATOR)
        head_lines = head.splitlines()
    else:
        # No separator: the action is the last line that names a decision.
        lines = body.splitlines()
        idx = next((i for i in range(len(lines) - 1, -1, -1) if _canaries(lines[i])), None)
        if idx is None:
            drafts = [d for d in map(_clean_line, lines) if d]
            return Answer(None, None, drafts, False, thinking=thinking, reason=NO_ACTION)
        action, head_lines = lines[idx], lines[:idx]

    drafts = [d for d in (_clean_line(line.replace(SEPARATOR, "")) for line in head_lines) if d]
    found = _canaries(action)
    result = Answer(None, None, drafts, has_sep, thinking=thinking)
    if not found:
        result.reason = NO_ACTION
        return result
    if len({d[0] for d in found}) > 1:
        result.reason = SEVERAL_ACTIONS
        return result
    decision, _, end = found[0]
    result.decision, result.valid = decision, True
    m = _AMOUNT_RE.match(action[end:])
    if m:
        result.amount_eth = result.amount = float(m.group(1).replace(",", "."))
        result.unit = "ETH"
    return result


# --------------------------------------------------------------------------- plain mode

_STRIKE = re.compile(r"~~.*?~~")
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_EMPHASIS = re.compile(r"\*+|`+|(?<![\w])_+|_+(?![\w])|\$\$|\\[()\[\]]")
_HEADING = re.compile(r"^\s*(?:>\s*)*(?:#{1,3}(?!#)\s*)?")
_ARROW = re.compile(r"\s*(?:→|->|=>|⟶|⇒|➡)\s*")
_TABLE_RULE = re.compile(r"^[\s|:\-]+$")
_SENTENCE_END = re.compile(r"(?<=[.!?;。！？；])(?=\s|$)")
_CLAUSE = re.compile(r"[;:()\[\]—–]|,(?!\d)|\s-\s|→|\b(?:but|so|yet|however|though|although|while|whereas)\b")
_TOKEN = re.compile(r"\$|~|≈|\+|→|\d[\d,]*(?:\.\d+)?|[a-z][a-z'-]*|[^\s\w]")
_QTY = re.compile(
    r"(?P<cur>\$\s*)?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:[.,]\d+)?)(?P<k>\s*k\b)?"
    r"(?P<pct>\s*%)?(?P<range>\s*(?:-|–|to)\s*\d)?\s*(?P<unit>w?eth\b|ether\b|ξ|usdc\b|usdt\b|usd\b|dollars?\b|个)?"
)
_SHARE = re.compile(r"(?:eth\s*)?(?:share|占比)\s*(?:is\s+|of\s+|at\s+|[:=]\s*)?(\d+(?:\.\d+)?)\s*%|(\d+(?:\.\d+)?)\s*%\s*(?:in\s+)?eth\b")
_PAIR = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)")
_TARGET = re.compile(r"(?:to|toward|towards|→|at)\s+(?:a\s+|an\s+|the\s+)?(\d+(?:\.\d+)?)\s*%")
_TERMINAL = tuple(".!?。！？)]}\"'*`")
_SKIP = {
    "the", "a", "an", "some", "more", "of", "about", "around", "roughly", "approximately", "approx",
    "~", "≈", "+", "$", "up", "back", "by", "worth", "all", "half", "my", "our", "your", "its", "it",
    "only", "another", "additional", "extra", "little", "bit", "small", "portion", "part",
    "remaining", "current", "existing", "spot", "k", "%", "at", "market", "now", "here",
}
_SOURCE_PREPS = {"from", "out", "with", "using"}
_TARGET_PREPS = {"for", "into", "to", "toward", "towards", "→", "on", "in"}
_STOP = set(".;:!?()[],—–") | {"-"}


@dataclass
class _Mention:
    decision: str | None  # None: a rebalance whose direction is unknown
    start: int
    end: int
    via: str
    state: str = "committed"  # committed | negated | question | hedged | hypothetical | conditional | unknown


@dataclass
class _Stmt:
    line: int
    text: str  # normalized, lower case
    sep: bool = False  # the action after a #### separator
    marked: bool = False  # stated as the decision ("Decision: ...", "the answer is ...")
    whole: bool = True  # the statement is its whole line
    prefix: str = ""  # the line's text before this statement (normalized, original case)
    last: bool = False  # the last statement of the answer
    mentions: list[_Mention] = field(default_factory=list)

    def committed(self) -> list[_Mention]:
        return [m for m in self.mentions if m.state == "committed" and m.decision]


def _normalize(line: str) -> str:
    """One line without markdown/LaTeX decoration, full-width forms folded (NFKC)."""
    s = unicodedata.normalize("NFKC", line).replace("’", "'")
    s = _STRIKE.sub(" ", s)
    s = _BOXED.sub(lambda m: f" final answer: {m.group(1)} ", s)
    s = _LATEX_TEXT.sub(r"\1", s)
    s = _EMPHASIS.sub(" ", s)
    if _TABLE_RULE.match(s) and "|" in s:
        return ""
    s = s.replace("|", " ").replace("。", ". ").replace("、", ", ")
    s = _HEADING.sub("", s)
    s = _ARROW.sub(" → ", s)
    return " ".join(s.split())


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'%$.,~≈+-]+", text)


def _clause_before(text: str) -> str:
    cut = 0
    for m in _CLAUSE.finditer(text):
        cut = m.end()
    return text[cut:]


def _clause_after(text: str) -> str:
    m = _CLAUSE.search(text)
    return text[: m.start()] if m else text


class _Reader:
    """Plain-mode reading of one answer body (see the module docstring)."""

    def __init__(self, body, thinking, share_pct, price, target_pct, tagless):
        self.body, self.thinking = body, thinking
        self.price = price if price and price > 0 else None
        self.target = target_pct
        self.tagless = tagless
        self.norm = [_normalize(line) for line in body.splitlines()]
        self.share = share_pct
        if self.share is None:
            m = _SHARE.search("\n".join(self.norm).lower())
            if m:
                self.share = float(m.group(1) or m.group(2))
        self.has_sep = SEPARATOR in body

    # ---- statements --------------------------------------------------------------------

    def statements(self) -> list[_Stmt]:
        """The answer's sentences, in order, with their mentions of a decision."""
        out: list[_Stmt] = []
        pending_sep = pending_mark = False  # "####" or "Final Answer" alone on its line
        for i, line in enumerate(self.norm):
            pieces = line.split(SEPARATOR)
            for k, seg in enumerate(pieces):
                seg = seg.strip()
                if not seg:
                    pending_sep |= k > 0
                    continue
                if _T.marker_only.match(_clean_line(seg.lower())):
                    pending_mark = True
                    continue
                sep, mark = k > 0 or pending_sep, pending_mark
                pending_sep = pending_mark = False
                sentences = [p.strip() for p in _SENTENCE_END.split(seg) if p.strip()]
                whole = len(pieces) == 1 and len(sentences) == 1
                for j, sentence in enumerate(sentences):
                    prefix = " ".join(sentences[:j]) if k == 0 else ""
                    out += self._split_marker(sentence, i, sep, mark, whole, prefix)
        if out:
            out[-1].last = True
        for st in out:
            st.mentions = self.mentions(st)
        return out

    @staticmethod
    def _split_marker(sentence, line, sep, mark, whole, prefix) -> list[_Stmt]:
        """A sentence, split where a final marker says the decision comes ("so the answer is")."""
        clean = _clean_line(sentence)
        low = clean.lower()
        m = _T.marker_start.match(low)
        if m:
            return [_Stmt(line, low[m.end():], sep, True, whole, prefix)]
        m = _T.marker_inside.search(low)
        if not m:
            return [_Stmt(line, low, sep, mark, whole, prefix)]
        before, after = low[: m.start()].strip(), low[m.end():].strip()
        head = [_Stmt(line, before, sep, mark, False, prefix)] if before else []
        lead = clean[: m.start()] if len(clean) == len(low) else before
        return head + [_Stmt(line, after, sep, True, whole and not before, f"{prefix} {lead}".strip())]

    # ---- mentions ----------------------------------------------------------------------

    def mentions(self, s: _Stmt) -> list[_Mention]:
        t = s.text
        found: list[_Mention] = []
        taken = [False] * len(t)
        for m in _CANARY_RE.finditer(t):
            found.append(_Mention(f"APE {m.group(1).upper()}", m.start(), m.end(), VIA_CANARY))
            taken[m.start():m.end()] = [True] * (m.end() - m.start())
        for m in re.finditer(r"(?<![\w-])ape[_-]?(in|out|neutral)(?![\w-])", t):  # "apeout"
            if not any(taken[m.start():m.end()]):
                found.append(_Mention(f"APE {m.group(1).upper()}", m.start(), m.end(), VIA_CANARY))
                taken[m.start():m.end()] = [True] * (m.end() - m.start())
        for m in _T.phrase_re.finditer(t):
            if any(taken[m.start():m.end()]):
                continue
            cls, base = _T.entries[_space(m.group(0))]
            if cls == "ignore":
                continue
            men = self._english(t, m.start(), m.end(), cls, base)
            if men:
                found.append(men)
        for m in _T.zh_re.finditer(t):
            cls = _T.zh[m.group(0)]
            if cls != "ignore":
                men = self._chinese(t, m.start(), m.end(), cls)
                if men:
                    found.append(men)
        found.sort(key=lambda x: x.start)
        prev = None
        for men in found:
            if men.state == "committed":
                men.state = self._state(t, men, found)
            # "not ... buying or selling": the negation covers the whole list.
            if prev and prev.state == "negated" and re.fullmatch(r"\s*(?:/|or|and|nor)\s*", t[prev.end:men.start]):
                men.state = "negated"
            prev = men
        return found

    def _assets(self, t: str, end: int) -> tuple[str | None, str | None, str | None, bool]:
        """``(object, preposition, other side, quantity seen)`` after a verb: "1,500 USDC for ETH"."""
        obj = prep = side = None
        qty = False
        for tok in _TOKEN.findall(t[end:])[:12]:
            if tok in _STOP:
                break
            asset = _T.assets.get(tok)
            if asset:
                if prep is None and obj is None:
                    obj = asset
                elif prep is not None:
                    side = asset
                    break
                continue
            if tok[0].isdigit():
                qty = True
                continue
            if tok in _SOURCE_PREPS | _TARGET_PREPS and prep is None:
                prep = tok
                continue
            if tok in _SKIP:
                continue
            break
        return obj, prep, side, qty

    def _english(self, t: str, start: int, end: int, cls: str, base: str) -> _Mention | None:
        obj, prep, side, qty = self._assets(t, end)
        if cls in (APE_IN, APE_OUT):
            if base in _T.with_object and obj is None:
                return None
            if cls == APE_IN:  # "buy USDC with 0.5 ETH" sells ETH; "buy with 1 ETH" does not
                bought = obj or (side if prep in _TARGET_PREPS - {"on"} else None)
                flip = bought == "USDC"
            else:
                received = side if prep in _TARGET_PREPS - {"on"} else None
                flip = obj == "USDC" or received == "ETH"
            decision = (APE_OUT if cls == APE_IN else APE_IN) if flip else cls
            return _Mention(decision, start, end, VIA_PHRASE)
        if cls == APE_NEUTRAL:
            if base in _T.state_verbs:
                after = t[end:].lstrip()
                if re.match(r"[~≈$]?\s*\d", after) or _T.state_after.match(after):
                    return None
                if _T.state_before.search(" ".join(_words(t[:start])[-2:])):
                    return None
            return _Mention(APE_NEUTRAL, start, end, VIA_PHRASE)
        if cls == "swap" or (cls == "rebalance" and (qty or prep)):
            d = _swap_direction(obj, prep, side)
            if d:
                return _Mention(d, start, end, VIA_SWAP)
            if cls == "swap":
                return None
        return self._rebalance(t, start, end, VIA_REBALANCE)

    def _chinese(self, t: str, start: int, end: int, cls: str) -> _Mention | None:
        after = t[end:end + 16]
        if cls == "swap":
            before = _clause_before(t[:start])
            src = next((_T.assets[w] for w in reversed(_TOKEN.findall(before)) if w in _T.assets), None)
            dst = next((_T.assets[w] for w in _TOKEN.findall(after) if w in _T.assets), None)
            d = _swap_direction(src, "to" if dst else None, dst)
            return _Mention(d, start, end, VIA_CHINESE) if d else None
        if cls == "rebalance":
            return self._rebalance(t, start, end, VIA_CHINESE)
        if cls == APE_NEUTRAL:
            if re.match(r"\s*\d", after) or t[:start].rstrip().endswith(_T.zh_state_before):
                return None
            return _Mention(APE_NEUTRAL, start, end, VIA_CHINESE)
        obj = next((_T.assets[w] for w in _TOKEN.findall(after)[:3] if w in _T.assets), None)
        decision = (APE_OUT if cls == APE_IN else APE_IN) if obj == "USDC" else cls
        return _Mention(decision, start, end, VIA_CHINESE)

    def _rebalance(self, t: str, start: int, end: int, via: str) -> _Mention:
        rest = t[end:]
        lo = hi = self.target
        pair = _PAIR.search(rest)
        if pair:
            a, b = float(pair.group(1)), float(pair.group(2))
            lo, hi = min(a, b), max(a, b)
        else:
            m = _TARGET.search(rest)
            if m:
                lo = hi = float(m.group(1))
        decision = None
        if self.share is not None:
            if self.share > hi + (1.0 if lo == hi else 0.0):
                decision = APE_OUT
            elif self.share < lo - (1.0 if lo == hi else 0.0):
                decision = APE_IN
        men = _Mention(decision, start, end, via)
        if decision is None:
            men.state = "unknown"
        return men

    # ---- modifiers ---------------------------------------------------------------------

    def _state(self, t: str, men: _Mention, found: list[_Mention]) -> str:
        before_all, after_all = t[: men.start], t[men.end:]
        clause = _clause_before(before_all)
        window = " ".join(_words(clause)[-_T.neg_window:])
        zh_before = before_all.rstrip()[-3:]
        if _T.neg_before.search(window) or _T.neg_after.match(_clause_after(after_all)):
            return "negated"
        if zh_before.endswith(_T.zh_neg):
            return "negated"
        if t.rstrip().endswith("?"):
            return "question"
        wide = " ".join(_words(clause)[-6:])
        if _T.hedges.search(wide) or any(h in clause for h in _T.zh_hedges):
            return "hedged"
        if _T.hyp_before.search(wide) or any(h in clause for h in _T.zh_hyp):
            return "hypothetical"
        if men.via != VIA_CANARY and _T.hyp_after.match(_clause_after(after_all)):
            return "hypothetical"
        # A later or conditional plan: a marker earlier in the sentence (no "now" after
        # it), later in the sentence (up to the next decision), or a price limit.
        last_cond = None
        for m in _T.cond_before.finditer(before_all):
            last_cond = m
        if last_cond and not _T.cond_now.search(before_all[last_cond.end():]):
            return "conditional"
        if any(c in before_all for c in _T.zh_cond):
            return "conditional"
        nxt = next((f.start for f in found if f.start >= men.end), len(t))
        if _T.cond_after.search(t[men.end:nxt]):
            return "conditional"
        lim = _T.cond_limit.match(_clause_after(after_all))
        if lim and not self._current_price(lim):
            return "conditional"
        # "... and hold" after a trade keeps the rest: not a second decision.
        if men.decision == APE_NEUTRAL and re.search(r"(?:\band|&)\s*$", before_all):
            if any(f.decision in (APE_IN, APE_OUT) and f.end <= men.start for f in found):
                return "hypothetical"
        return "committed"

    def _current_price(self, lim: re.Match) -> bool:
        """An "at 2,450" that is the current price (no limit order: the trade is now)."""
        if lim.group("pct") or lim.group("word").split()[0] not in ("at", "near", "@"):
            return False
        v = float(lim.group("num").replace(",", ""))
        return self.price is None or abs(v / self.price - 1) < 0.015

    # ---- amounts -----------------------------------------------------------------------

    def amount(self, s: _Stmt, men: _Mention) -> tuple[float, str] | None:
        t = s.text
        stop = next((f.start for f in s.mentions if f.start >= men.end
                     and (f.decision != men.decision or f.state != "committed")), len(t))
        got = self._quantity(t, men.end, stop, s, right_after=men.via == VIA_CANARY)
        if got is None and men.via == VIA_CHINESE:  # "把0.4 ETH换成USDC": the amount comes first
            clause_start = men.start - len(_clause_before(t[: men.start]))
            got = self._quantity(t, clause_start, men.start, s, False)
        return got if got not in (None, "ambiguous") else None

    def _quantity(self, t: str, lo: int, hi: int, s: _Stmt, right_after: bool):
        seg = t[lo:hi]
        for q in _QTY.finditer(seg):
            if q.start() > 0 and (seg[q.start() - 1].isascii() and seg[q.start() - 1].isalnum()
                                  or seg[q.start() - 1] == "/"):
                continue
            if seg[q.end("num"):q.end("num") + 1] == "/":
                continue
            if q.group("pct"):
                continue
            if q.group("range"):
                return "ambiguous"
            raw = q.group("num")
            value = float(raw.replace(",", "")) if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", raw) \
                else float(raw.replace(",", "."))
            if q.group("k"):
                value *= 1000
            unit = (q.group("unit") or "").strip()
            lead = " ".join(_words(seg[: q.start()])[-2:])
            if unit in ("eth", "weth", "ether", "ξ") or (unit == "个" and "eth" in t):
                return value, "ETH"
            if unit or q.group("cur"):
                if _T.price_before.search(lead) and "worth" not in lead:
                    continue
                if self.price and abs(value / self.price - 1) < 0.015 and "worth" not in seg[q.end():q.end() + 10]:
                    continue
                return value, "USDC"
            # No unit: an amount only right after a canary ("ape-in 0.5"), at the end of
            # its clause, and not a price or a number cut off by truncation ("APE IN 1.").
            gap = seg[: q.start()].strip(" :")
            tail = seg[q.end():].strip()
            if right_after and not gap and (not tail or tail[0] in ",;().") and not q.group("cur"):
                if self.price and abs(value / self.price - 1) < 0.5:
                    continue
                if s.last and tail == "." and self.body.rstrip().endswith(raw + "."):
                    return None  # "APE IN 1." at the very end: cut off mid-number
                return value, "ETH"
        return None

    # ---- the decision ------------------------------------------------------------------

    def read(self) -> Answer:
        stmts = self.statements()
        if not self.has_sep and self._cut_off_thinking():
            return self._answer(reason=UNFINISHED_THINK)
        finals = [i for i, s in enumerate(stmts) if (s.sep or s.marked) and s.committed()]
        if finals:
            region = stmts[finals[0]:]
            deciding = [s for s in region if s.committed()]
        elif self.has_sep:
            return self._reject([s for s in stmts if s.sep or s.marked] or stmts, stmts)
        else:
            cands = [s for s in stmts if s.committed()]
            if not cands:
                return self._reject(stmts, stmts)
            deciding = [cands[-1]]
        if any(_T.undecided.search(s.text) or any(u in s.text for u in _T.zh_undecided) for s in deciding):
            return self._answer(reason=UNDECIDED, stmts=stmts, first=deciding[0])
        decisions = {m.decision for s in deciding for m in s.committed()}
        if len(decisions) > 1:
            return self._answer(reason=SEVERAL_ACTIONS, stmts=stmts, first=deciding[0])
        decision = decisions.pop()
        order = sorted(deciding, key=lambda s: not s.sep)  # the #### line's amount first
        amount = None
        if decision != APE_NEUTRAL:
            for s in order:
                for men in s.committed():
                    amount = self.amount(s, men)
                    if amount:
                        break
                if amount:
                    break
        vias = [m.via for s in deciding for m in s.committed()]
        via = VIA_CANARY if VIA_CANARY in vias else vias[0]
        a = self._answer(stmts=stmts, first=deciding[0])
        a.decision, a.valid, a.via, a.mapped = decision, True, via, via != VIA_CANARY
        if amount:
            a.amount, a.unit = amount
            if a.unit == "ETH":
                a.amount_eth = a.amount
            elif self.price:
                a.amount_eth = round(a.amount / self.price, 6)
        return a

    def _cut_off_thinking(self) -> bool:
        """No think tags, thinking cues, and the text stops mid-sentence."""
        if not self.tagless:
            return False
        last = next((n for n in reversed(self.norm) if n), "")
        if not last or last.endswith(_TERMINAL):
            return False
        if _CANARY_RE.search([p for p in _SENTENCE_END.split(last) if p.strip()][-1]):
            return False  # ends on its decision ("... so: APE IN 0.4 ETH")
        low = self.body.lower()
        return bool(_T.cue_start.match(low) or _T.cue_inside.search(low))

    def _reject(self, scope: list[_Stmt], stmts: list[_Stmt]) -> Answer:
        text = " ".join(s.text for s in stmts)
        states = {m.state for s in scope for m in s.mentions}
        if _T.refusal.search(text) or any(r in text for r in _T.zh_refusal):
            reason = REFUSAL
        elif _T.undecided.search(text) or any(u in text for u in _T.zh_undecided) or states & {"hedged", "question"}:
            reason = UNDECIDED
        elif "negated" in states:
            reason = NEGATED_ONLY
        elif states & {"conditional", "hypothetical"}:
            reason = CONDITIONAL_ONLY
        elif "unknown" in states:
            reason = REBALANCE_UNKNOWN
        else:
            reason = NO_ACTION
        return self._answer(reason=reason, stmts=stmts)

    def _answer(self, reason: str | None = None, stmts=None, first: _Stmt | None = None) -> Answer:
        return Answer(None, None, self._drafts(stmts or [], first), self.has_sep, reason=reason,
                      thinking=self.thinking)

    def _drafts(self, stmts: list[_Stmt], first: _Stmt | None) -> list[str]:
        """The lines before the decision (with a separator: before the first #### line), less
        marker lines ("**Final Answer**") and lines that state the decision themselves;
        markdown removed."""
        if self.has_sep:
            end = next(i for i, line in enumerate(self.norm) if SEPARATOR in line)
            lines = self.norm[:end] + [self.norm[end].split(SEPARATOR, 1)[0]]
        else:
            lines = self.norm if first is None else self.norm[: first.line]
        stating = {s.line for s in stmts if s.whole and s.marked and s.committed()}
        drafts = [d for i, d in enumerate(map(_clean_line, lines))
                  if d and i not in stating and not _T.marker_only.match(_clean_line(self.norm[i].lower()))]
        if not self.has_sep and first is not None and _clean_line(first.prefix):
            drafts.append(_clean_line(first.prefix))  # "share 70%, flat. Action: APE OUT"
        return drafts


def _swap_direction(src: str | None, prep: str | None, side: str | None) -> str | None:
    """The canary of a swap from what happens to ETH; None when it is not clear."""
    if prep in _SOURCE_PREPS:
        src, dst = src or side, None
    else:
        dst = side if prep in _TARGET_PREPS else None
    sells = src == "ETH" or dst == "USDC"
    buys = src == "USDC" or dst == "ETH"
    if sells != buys:
        return APE_OUT if sells else APE_IN
    return None

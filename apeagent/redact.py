"""Secrets never leave the process: what is printed, logged or stored passes through here.

One rule for every URL: provider URLs carry API keys in the userinfo (``user:password@``), in
the query string and in path segments (``https://base-mainnet.g.alchemy.com/v2/<KEY>``), so
the userinfo is dropped, every query value and the fragment become ``***``, and a path
segment becomes ``***`` when it follows a provider's version prefix (``/v2/``, ``/v3/``: every
segment after it, whatever its length or alphabet) or looks like a key anywhere (letters
mixed with digits, or long); scheme, host, port and the plain path stay, so a message still
says which endpoint it means. A URL without a scheme (``user:pw@host:port/KEY``, as a library
quotes it) gets the same rule. Header values that carry credentials (``Authorization``,
``X-API-Key``, cookies) become ``***``.

:func:`redact` applies the rule to every URL inside a text (an exception's message, a command
line) and masks ``Bearer`` tokens and the values registered with :func:`add_secret` (keys read
from the environment) or :func:`add_url_secrets` (the credentials of every URL a command was
given: a library may quote them apart from their URL, as urllib3's ``url: /v2/KEY`` does);
:func:`redact_obj` walks JSON-like data (a manifest, a report, a journal line).
:func:`split_credentials` takes a URL apart for an HTTP client that does not read userinfo.
"""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import unquote, urlsplit

MASK = "***"
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "x-auth-token", "cookie", "set-cookie"}
)
_STOP = r"\s'\"<>()\[\]{}`"
# scheme://... up to whitespace, a quote or a closing bracket
_URL = re.compile(rf"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^{_STOP}]+")
# a URL without a scheme: [user[:pw]@]host[:port]/path, the host an IP, localhost or a dotted name
_HOST = r"(?:\d{1,3}(?:\.\d{1,3}){3}|localhost|(?:[a-zA-Z0-9-]+\.)+[a-zA-Z]{2,})"
_BARE = re.compile(rf"(?<![\w/.:@%+-])(?:[^{_STOP}/@]+@)?{_HOST}(?::\d+)?(?:[/?][^{_STOP}]*)?(?=$|[{_STOP}])")
_USERINFO = re.compile(rf"(?<![\w/.:@%+-])[^{_STOP}/@:]+:[^{_STOP}/@]*@")  # user:pw@ anywhere else
_URL_PATH = re.compile(rf"(?i)\b(url: )(/[^{_STOP}]*)")  # urllib3: "Max retries exceeded with url: /v2/KEY"
_BEARER = re.compile(r"(?i)\b(bearer|token|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_KEYISH = re.compile(r"[A-Za-z0-9_\-.=+~%]+")
_VERSION = re.compile(r"v\d+")
_SECRETS: set[str] = set()


def looks_like_key(segment: str) -> bool:
    """A path segment that is probably a credential: one token of letters mixed with digits
    (Alchemy / Infura / QuickNode keys, UUIDs, hex tokens) or simply long (16+ characters).
    A version (``v1``), a number and a plain word stay."""
    if not segment or not _KEYISH.fullmatch(segment) or _VERSION.fullmatch(segment) or segment.isdigit():
        return False
    if "." in segment and not any(c.isdigit() for c in segment.split(".")[0]):
        return False  # a file name: rpc.json
    has_digit = any(c.isdigit() for c in segment)
    has_alpha = any(c.isalpha() for c in segment)
    return len(segment) >= 16 or (has_digit and has_alpha and len(segment) >= 6)


def _secret_segments(path: str) -> list[int]:
    """Indexes of the path segments to mask: every one after a provider's ``/v2/``-style
    prefix (``v1`` is the OpenAI API's, followed by route names), and key-like ones."""
    segs = path.split("/")
    out, after = [], False
    for i, seg in enumerate(segs):
        if after and seg:
            out.append(i)
        elif looks_like_key(seg):
            out.append(i)
        if _VERSION.fullmatch(seg) and seg != "v1":
            after = True
    return out


def _mask_path(path: str) -> str:
    segs = path.split("/")
    for i in _secret_segments(path):
        segs[i] = MASK
    return "/".join(segs)


def _mask_query(query: str) -> str:
    return "&".join(f"{p.split('=', 1)[0]}={MASK}" if "=" in p else MASK for p in query.split("&"))


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path?key=***`` without userinfo, query values, fragment or key segments."""
    try:
        u = urlsplit(str(url).strip())
        host, port = u.hostname, u.port
    except ValueError:  # a malformed port or IPv6 literal
        return "<url>"
    if not u.scheme or not host:
        return "<url>"
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{port}" if port else ""
    tail = f"?{_mask_query(u.query)}" if u.query else ""
    tail += f"#{MASK}" if u.fragment else ""
    return f"{u.scheme}://{netloc}{_mask_path(u.path)}{tail}"


def _redact_bare(text: str) -> str:
    """``[user:pw@]host[:port]/path?query`` (no scheme): the same rule as :func:`redact_url`."""
    if "/" not in text and "@" not in text and "?" not in text:
        return text  # a plain host name (or a file name such as model.safetensors)
    shown = redact_url(f"http://{text}")
    return shown[len("http://"):] if shown != "<url>" else "<url>"


def redact_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """Headers with the values of credential-carrying ones masked."""
    return {k: MASK if str(k).lower() in SECRET_HEADERS else v for k, v in headers.items()}


def add_secret(value: str | None, min_len: int = 6) -> None:
    """Mask this exact value (a key read from the environment) wherever it appears in a text
    (a value shorter than ``min_len`` would mask common words: its URL form is masked still)."""
    if value and len(value) >= min_len:
        _SECRETS.add(value)


def url_secrets(url: str) -> list[str]:
    """The credentials of one URL (with or without a scheme): user, password, query values,
    fragment and the path segments that :func:`redact_url` masks (raw and percent-decoded)."""
    text = str(url).strip()
    if "://" not in text:
        text = f"http://{text}"
    try:
        u = urlsplit(text)
        user, password = u.username, u.password
    except ValueError:
        return []
    found = [user or "", password or "", u.fragment]
    found += [p.split("=", 1)[-1] for p in u.query.split("&") if p]
    segs = u.path.split("/")
    found += [segs[i] for i in _secret_segments(u.path)]
    return [v for s in found if s for v in {s, unquote(s)}]


def add_url_secrets(text: str) -> None:
    """Register the credentials of every URL in ``text`` (a command-line argument, a config
    value): a library that quotes one of them apart from its URL still shows ``***``."""
    text = str(text)
    if "/" not in text and "@" not in text and "?" not in text:
        return
    for m in (*_URL.finditer(text), *_BARE.finditer(text)):
        for secret in url_secrets(m.group(0)):
            add_secret(secret, min_len=4)  # a user name, a short key


def redact(text: str) -> str:
    """A text with every URL redacted, ``Bearer`` tokens and registered secrets masked."""
    text = str(text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, MASK)
    parts = []  # URLs with a scheme first; the rest of the text gets the scheme-less rules
    last = 0
    for m in _URL.finditer(text):
        parts += [_redact_rest(text[last:m.start()]), redact_url(m.group(0))]
        last = m.end()
    text = "".join([*parts, _redact_rest(text[last:])])
    return _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)


def _redact_rest(text: str) -> str:
    text = _BARE.sub(lambda m: _redact_bare(m.group(0)), text)
    text = _USERINFO.sub(f"{MASK}@", text)
    return _URL_PATH.sub(lambda m: m.group(1) + _redact_bare(f"h.h{m.group(2)}")[3:], text)


def split_credentials(url: str) -> tuple[str, str, dict[str, str]]:
    """``(base, query, headers)`` of an endpoint URL for an HTTP client that does not read
    userinfo (urllib): the URL without userinfo, query and fragment; its query string (to put
    after the request's own path); an ``Authorization: Basic`` header from ``user:pw@``."""
    u = urlsplit(str(url).strip())
    netloc = u.netloc.rsplit("@", 1)[-1]
    base = f"{u.scheme}://{netloc}{u.path}".rstrip("/")
    headers = {}
    if u.username is not None or u.password is not None:
        pair = f"{unquote(u.username or '')}:{unquote(u.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    return base, u.query, headers


def redact_obj(obj: Any) -> Any:
    """JSON-like data with :func:`redact` applied to every string (keys included)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact(k) if isinstance(k, str) else k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj

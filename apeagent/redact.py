"""Secrets never leave the process: what is printed, logged or stored passes through here.

One rule for every URL: provider URLs carry API keys in the userinfo (``user:password@``), in
the query string and in path segments (``https://base-mainnet.g.alchemy.com/v2/<KEY>``), so
the userinfo is dropped, the query and fragment become ``***`` and every path segment that
looks like a key becomes ``***``; scheme, host, port and the plain path stay, so a message
still says which endpoint it means. Header values that carry credentials (``Authorization``,
``X-API-Key``, cookies) become ``***``. :func:`redact` applies the rule to every URL inside a
text (an exception's message, a command line) and masks ``Bearer`` tokens and the values
registered with :func:`add_secret` (keys read from the environment); :func:`redact_obj` walks
JSON-like data (a manifest, a report, a journal line).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

MASK = "***"
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "x-auth-token", "cookie", "set-cookie"}
)
# scheme://... up to whitespace, a quote or a closing bracket
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\]{}`]+")
_BEARER = re.compile(r"(?i)\b(bearer|token|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_KEYISH = re.compile(r"[A-Za-z0-9_\-.=+~]+")
_SECRETS: set[str] = set()


def looks_like_key(segment: str) -> bool:
    """A path segment that is probably a credential: long, one token, letters mixed with digits
    (Alchemy / Infura / QuickNode keys, UUIDs, hex tokens) or simply very long."""
    if len(segment) < 12 or not _KEYISH.fullmatch(segment):
        return False
    has_digit = any(c.isdigit() for c in segment)
    has_alpha = any(c.isalpha() for c in segment)
    return len(segment) >= 24 or (has_digit and has_alpha)


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path`` without userinfo, query, fragment or key-like segments."""
    try:
        u = urlsplit(str(url).strip())
        host, port = u.hostname, u.port
    except ValueError:  # a malformed port or IPv6 literal
        return "<url>"
    if not u.scheme or not host:
        return "<url>"
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{port}" if port else ""
    path = "/".join(MASK if looks_like_key(seg) else seg for seg in u.path.split("/"))
    tail = f"?{MASK}" if u.query else ""
    tail += f"#{MASK}" if u.fragment else ""
    return f"{u.scheme}://{netloc}{path}{tail}"


def redact_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """Headers with the values of credential-carrying ones masked."""
    return {k: MASK if str(k).lower() in SECRET_HEADERS else v for k, v in headers.items()}


def add_secret(value: str | None) -> None:
    """Mask this exact value (a key read from the environment) wherever it appears in a text."""
    if value and len(value) >= 6:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """A text with every URL redacted, ``Bearer`` tokens and registered secrets masked."""
    text = str(text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    return _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)


def redact_obj(obj: Any) -> Any:
    """JSON-like data with :func:`redact` applied to every string (keys included)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact(k) if isinstance(k, str) else k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj

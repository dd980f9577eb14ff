"""Secrets never leave the process: what is printed, logged or stored passes through here.

Provider URLs often carry an API key in the path, the query or the userinfo; only
``scheme://host[:port]`` of such a URL is ever shown.
"""

from __future__ import annotations

from urllib.parse import urlparse


def redact_url(url: str) -> str:
    """scheme://host[:port] only: provider URLs often carry an API key in the path or query."""
    u = urlparse(url)
    return f"{u.scheme}://{u.hostname}{f':{u.port}' if u.port else ''}" if u.hostname else "<rpc>"

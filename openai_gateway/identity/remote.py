"""Talking to key sets and captcha verifiers: which URLs are fit, and bounded reads.

A JWKS fetched over plain http can be swapped by anyone on the path, who then signs tokens
for every user; a siteverify request carries the captcha secret. Both must be https, except
on loopback, where nothing crosses a network (a sidecar, the tests).
"""
from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import aiohttp

#: Host names that always mean this machine (RFC 6761 section 6.3 reserves "localhost").
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(url: str) -> str | None:
    """None when `url` is fit to carry keys or secrets, else what is wrong with it."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"{url[:200]!r} is not a valid URL"
    if not host:
        return f"{url[:200]!r} has no host"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and is_loopback(host):
        return None
    return f"{url[:200]!r} must use https (plain http is accepted only on loopback)"


class TooLarge(Exception):
    """A remote answer exceeded the size we read."""


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or TooLarge past `limit` bytes (a key set or verdict is small)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the answer is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)

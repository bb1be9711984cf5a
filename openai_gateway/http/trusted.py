"""The routes for the operator's tools (/metrics, /gateway/spend): trusted peers only."""
from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from ..errors import error_response
from ..identity.addresses import Addresses


def refusal(addresses: Callable[[], Addresses], request: web.Request,
            what: str) -> web.Response | None:
    """403 unless the request's client is one of server.trusted_proxies: a peer of the
    gateway's own, and, behind a proxy, on behalf of a trusted address too (nginx passing an
    outside client on is refused). `addresses()`: the running settings' (a reload changes
    them). None: go on."""
    current = addresses()
    if current.trusted.contains(current.of(request)):
        return None
    return error_response(403, f"{what} only served to trusted peers.",
                          "invalid_request_error", None, "forbidden")

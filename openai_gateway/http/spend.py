"""GET /gateway/spend: the gateway's spend today and this month, in total and per tier, and
its [budget] ceilings, as integer micro-dollars (metering/tally.py), to trusted peers only.

This is how `spend` reads a gateway whose counters live in its own memory (memory://); on a
shared store it reads the store itself, and both print the same report.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ..identity.addresses import Addresses
from .trusted import refusal


def spend_handler(addresses: Callable[[], Addresses], report: Callable[[], Awaitable[dict]]):
    """`report()`: `tally.spend_report` of the running components (raises StorageUnavailable,
    a 503, when the store cannot be read)."""

    async def handle(request: web.Request) -> web.Response:
        refused = refusal(addresses, request, "The spend is")
        if refused is not None:
            return refused
        return web.json_response(await report(), headers={"Cache-Control": "no-store"})

    return handle

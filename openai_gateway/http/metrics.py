"""GET /metrics: the Prometheus registry (observability/metrics.py), to trusted peers only."""
from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import error_response
from ..identity.addresses import Addresses


def metrics_handler(addresses: Callable[[], Addresses]):
    """Serve the registry to trusted peers only; behind a proxy the real client must be one.
    `addresses()`: the running settings' (server.trusted_proxies changes on reload)."""

    async def handle(request: web.Request) -> web.Response:
        current = addresses()
        if not current.trusted.contains(current.of(request)):
            return error_response(403, "Metrics are only served to trusted peers.",
                                  "invalid_request_error", None, "forbidden")
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle

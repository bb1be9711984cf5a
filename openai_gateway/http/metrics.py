"""GET /metrics: the Prometheus registry (observability/metrics.py), to trusted peers only."""
from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import error_response
from ..identity.addresses import Addresses
from ..observability.metrics import Metrics


def metrics_handler(addresses: Callable[[], Addresses], metrics: Metrics):
    """Serve the app's metrics to trusted peers only; behind a proxy the real client must be
    one. `addresses()`: the running settings' (server.trusted_proxies changes on reload)."""

    async def handle(request: web.Request) -> web.Response:
        current = addresses()
        if not current.trusted.contains(current.of(request)):
            return error_response(403, "Metrics are only served to trusted peers.",
                                  "invalid_request_error", None, "forbidden")
        return web.Response(body=metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle

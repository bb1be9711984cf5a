"""GET /metrics: the Prometheus registry (observability/metrics.py), to trusted peers only."""
from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..identity.addresses import Addresses
from ..observability.metrics import Metrics
from .trusted import refusal


def metrics_handler(addresses: Callable[[], Addresses], metrics: Metrics):
    """Serve the app's metrics to trusted peers only (`trusted.refusal`)."""

    async def handle(request: web.Request) -> web.Response:
        refused = refusal(addresses, request, "Metrics are")
        if refused is not None:
            return refused
        return web.Response(body=metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle

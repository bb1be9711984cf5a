"""Prometheus collectors (prometheus-client) and the /metrics endpoint for trusted peers.

Labels are bounded sets (route table, status codes, the model allowlist) so a client cannot
grow the registry by sending random paths or model names.
"""
from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from .errors import error_response

class _Children:
    """A labelled metric whose children are looked up once.

    prometheus_client's labels() takes a lock and validates its arguments on every call; our
    label sets are small and fixed, so a plain dict in front keeps that off the request path.
    """

    __slots__ = ("metric", "children")

    def __init__(self, metric):
        self.metric = metric
        self.children: dict[tuple, object] = {}

    def labels(self, *values):
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.metric.labels(*values)
        return child


_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = _Children(Counter(
    "gateway_requests_total", "Requests answered, by route and status.", ["route", "status"]))
LATENCY = _Children(Histogram(
    "gateway_request_duration_seconds", "Time from request to the last byte of the answer.",
    ["route"], buckets=_BUCKETS))
TTFB = _Children(Histogram(
    "gateway_time_to_first_byte_seconds",
    "Time from request to the first byte of the upstream's answer.", ["route"],
    buckets=_BUCKETS))
UPSTREAM_ERRORS = _Children(Counter(
    "gateway_upstream_errors_total",
    "Upstream failures, by kind (status_5xx, status_429, status_401, interrupted ...).",
    ["kind"]))
CACHE = _Children(Counter(
    "gateway_cache_total", "Cache lookups, by result (HIT, MISS, BYPASS).", ["result"]))
RATE_LIMITED = _Children(Counter(
    "gateway_rate_limited_total", "Requests refused with 429, by kind.", ["kind"]))
TOKENS = _Children(Counter(
    "gateway_tokens_total", "Tokens reported by the upstream, by model and direction.",
    ["model", "direction"]))
ACTIVE_STREAMS = Gauge("gateway_active_streams", "Streams currently being relayed.")
STORAGE_ERRORS = _Children(Counter(
    "gateway_storage_errors_total", "Failed calls to the rate-limit or cache storage.",
    ["component"]))


def metrics_handler(get_trusted):
    """Serve the registry to trusted peers only; behind a proxy the real client must be one."""
    from .identity import client_address

    async def handle(request: web.Request) -> web.Response:
        trusted = get_trusted()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if not peer or not trusted.contains(
                client_address(peer[0], request.headers.get("X-Forwarded-For"), trusted)):
            return error_response(403, "Metrics are only served to trusted peers.",
                                  "invalid_request_error", None, "forbidden")
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
    return handle

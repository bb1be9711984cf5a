"""Prometheus collectors (prometheus-client) and the /metrics endpoint for trusted peers.

Labels are bounded sets (route table, status codes, the model allowlist) so a client cannot
grow the registry by sending random paths or model names.
"""
from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from .errors import error_response

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter("gateway_requests_total", "Requests answered, by route and status.",
                   ["route", "status"])
LATENCY = Histogram("gateway_request_duration_seconds",
                    "Time from request to the last byte of the answer.", ["route"],
                    buckets=_BUCKETS)
TTFB = Histogram("gateway_time_to_first_byte_seconds",
                 "Time from request to the first byte of the upstream's answer.", ["route"],
                 buckets=_BUCKETS)
UPSTREAM_ERRORS = Counter("gateway_upstream_errors_total",
                          "Upstream failures, by kind (unavailable, timeout, interrupted).",
                          ["kind"])
CACHE = Counter("gateway_cache_total", "Cache lookups, by result (HIT, MISS, BYPASS).",
                ["result"])
RATE_LIMITED = Counter("gateway_rate_limited_total", "Requests refused with 429, by kind.",
                       ["kind"])
TOKENS = Counter("gateway_tokens_total", "Tokens reported by the upstream, by model and direction.",
                 ["model", "direction"])
ACTIVE_STREAMS = Gauge("gateway_active_streams", "Streams currently being relayed.")
STORAGE_ERRORS = Counter("gateway_storage_errors_total",
                         "Failed calls to the rate-limit or cache storage.", ["component"])


def model_label(model: str | None, allowed: frozenset[str]) -> str:
    """Models outside the allowlist share one label (client input must not grow the registry)."""
    if model is None:
        return "none"
    return model if (model in allowed or not allowed) and len(model) <= 64 else "other"


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

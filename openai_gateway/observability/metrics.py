"""Prometheus metrics (prometheus-client); GET /metrics serves them (http/metrics.py).

Labels are bounded sets (route table, status codes, the model allowlist) so a client cannot
grow the registry by sending random paths or model names.

The request path only adds to plain numbers; prometheus-client turns them into its metric
families when /metrics is scraped (a custom `Collector`, its documented extension point). Its
own Counter and Histogram take a lock and re-check their state on every call, which cost ~7% of
the gateway's throughput for a lock this single-threaded event loop never needs.
"""
from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class _Count:
    __slots__ = ("value",)

    def __init__(self):
        self.value = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class _Buckets:
    """One histogram child: a count per bucket (not cumulative), the sum of observations."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: a value on a bound counts there
        self.sum += value


class _Family:
    """A labelled metric: children are created on first use, then found by a dict lookup."""

    __slots__ = ("name", "doc", "labelnames", "kind", "buckets", "children")

    def __init__(self, kind: str, name: str, doc: str, labelnames=(), buckets=()):
        self.kind, self.name, self.doc = kind, name, doc
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(buckets)
        self.children: dict[tuple[str, ...], _Count | _Buckets] = {}

    def labels(self, *values: str):
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            child = self.children[values] = (
                _Buckets(self.buckets) if self.kind == "histogram" else _Count())
        return child

    # Unlabelled families (the gauge) are used directly.
    def inc(self, amount: float = 1) -> None:
        self.labels().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self.labels().dec(amount)

    def family(self):
        if self.kind == "histogram":
            out = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
            les = [floatToGoString(b) for b in (*self.buckets, float("inf"))]
            for values, child in self.children.items():
                cumulative = list(zip(les, accumulate(child.counts), strict=True))
                out.add_metric(values, cumulative, child.sum)
            return out
        kind = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        out = kind(self.name, self.doc, labels=self.labelnames)
        for values, child in self.children.items():
            out.add_metric(values, child.value)
        return out


class _GatewayCollector(Collector):
    def __init__(self, families: list[_Family]):
        self.families = families

    def collect(self):
        for family in self.families:
            yield family.family()


_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = _Family("counter", "gateway_requests", "Requests answered, by route and status.",
                   ["route", "status"])
LATENCY = _Family("histogram", "gateway_request_duration_seconds",
                  "Time from request to the last byte of the answer.", ["route"], _BUCKETS)
TTFB = _Family("histogram", "gateway_time_to_first_byte_seconds",
               "Time from request to the first byte of the upstream's answer.", ["route"],
               _BUCKETS)
UPSTREAM_ERRORS = _Family(
    "counter", "gateway_upstream_errors",
    "Upstream failures, by kind (status_5xx, status_429, status_401, interrupted ...).", ["kind"])
CACHE = _Family("counter", "gateway_cache", "Cache lookups, by result (HIT, MISS, BYPASS).",
                ["result"])
RATE_LIMITED = _Family("counter", "gateway_rate_limited", "Requests refused with 429, by kind.",
                       ["kind"])
TOKENS = _Family("counter", "gateway_tokens",
                 "Tokens reported by the upstream, by model and direction.",
                 ["model", "direction"])
ACTIVE_STREAMS = _Family("gauge", "gateway_active_streams", "Streams currently being relayed.")
ACTIVE_STREAMS.labels()  # exported as 0 before the first stream
STORAGE_ERRORS = _Family("counter", "gateway_storage_errors",
                         "Failed calls to the rate-limit or cache storage.", ["component"])
# Money (issue 15). `model` is the price table's row name (`PriceTable.label_for`: dated
# snapshots count under their family, unpriced models under "other"), `tier` a configured tier
# name, so both label sets stay bounded. Amounts are dollars: inc(micro / 1_000_000).
SPEND = _Family("counter", "gateway_spend_usd",
                "US dollars spent upstream, from the answers' usage, by model and tier.",
                ["model", "tier"])
# Gauges are set through the child's `value`: labels(period).value = dollars.
BUDGET_REMAINING = _Family("gauge", "gateway_budget_remaining_usd",
                           "US dollars left under the gateway-wide ceiling, by period.",
                           ["period"])
BUDGET_WARN = _Family("gauge", "gateway_budget_warn",
                      "1 once the gateway-wide spend has crossed budget.warn_at, by period.",
                      ["period"])
# One child per configured shared-store server ("host:port"): a bounded set from the config.
STORAGE_SERVER_UP = _Family("gauge", "gateway_storage_server_up",
                            "1 while a shared-store server answers, 0 while it is marked down.",
                            ["server"])

REGISTRY.register(_GatewayCollector([REQUESTS, LATENCY, TTFB, UPSTREAM_ERRORS, CACHE,
                                     RATE_LIMITED, TOKENS, ACTIVE_STREAMS, STORAGE_ERRORS,
                                     SPEND, BUDGET_REMAINING, BUDGET_WARN, STORAGE_SERVER_UP]))

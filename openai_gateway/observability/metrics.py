"""Prometheus metrics (prometheus-client), owned by the app; GET /metrics serves them
(http/metrics.py).

The request path only adds to plain numbers; prometheus-client turns them into its metric
families when /metrics is scraped (a custom `Collector`, its documented extension point). Its
own Counter and Histogram take a lock and re-check their state on every call, which cost ~7% of
the gateway's throughput for a lock this single-threaded event loop never needs.
"""
from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

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
    """A labelled metric: children are created on first use, then found by a dict lookup.
    `scale`: the values are counted in units of 1/scale (integers) and shown divided by it."""

    __slots__ = ("name", "doc", "labelnames", "kind", "buckets", "scale", "children",
                 "histograms")

    def __init__(self, kind: str, name: str, doc: str, labelnames=(), buckets=(),
                 scale: int = 1):
        self.kind, self.name, self.doc = kind, name, doc
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(buckets)
        self.scale = scale
        self.children: dict[tuple[str, ...], _Count] = {}
        self.histograms: dict[tuple[str, ...], _Buckets] = {}

    def labels(self, *values: str) -> _Count:
        child = self.children.get(values)
        if child is None:
            self._check(values)
            child = self.children[values] = _Count()
        return child

    def bucket(self, *values: str) -> _Buckets:
        """A histogram's child."""
        child = self.histograms.get(values)
        if child is None:
            self._check(values)
            child = self.histograms[values] = _Buckets(self.buckets)
        return child

    def _check(self, values: tuple[str, ...]) -> None:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")

    # Unlabelled families (the gauge) are used directly.
    def inc(self, amount: float = 1) -> None:
        self.labels().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self.labels().dec(amount)

    def family(self):
        if self.kind == "histogram":
            histogram = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
            les = [floatToGoString(b) for b in (*self.buckets, float("inf"))]
            for values, buckets in self.histograms.items():
                cumulative = list(zip(les, accumulate(buckets.counts), strict=True))
                histogram.add_metric(values, cumulative, buckets.sum)
            return histogram
        kind = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        out = kind(self.name, self.doc, labels=self.labelnames)
        for values, child in self.children.items():
            # An integer count divided once: 4746 micro-dollars show as 0.004746, not as the
            # sum of float dollars (0.004745999999999999).
            out.add_metric(values, child.value / self.scale if self.scale != 1 else child.value)
        return out


class _GatewayCollector(Collector):
    def __init__(self, families: list[_Family]):
        self.families = families

    def collect(self):
        for family in self.families:
            yield family.family()


_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: Money is counted in integer micro-dollars and shown in dollars: exact, whatever is added.
MICRO = 1_000_000


class Metrics:
    """The gateway's metric families, owned by one app, in a registry of its own (no global
    state: two apps in one process keep two sets of numbers). Components are handed this
    object and add to plain numbers on the request path.

    Labels are bounded sets (route table, status codes, the price table's rows, configured
    tiers and servers) so a client cannot grow the registry by sending random paths or model
    names."""

    def __init__(self) -> None:
        self.requests = _Family("counter", "gateway_requests",
                                "Requests answered, by route and status.", ["route", "status"])
        self.latency = _Family("histogram", "gateway_request_duration_seconds",
                               "Time from request to the last byte of the answer.", ["route"],
                               _BUCKETS)
        self.ttfb = _Family("histogram", "gateway_time_to_first_byte_seconds",
                            "Time from request to the first byte of the upstream's answer.",
                            ["route"], _BUCKETS)
        self.upstream_errors = _Family(
            "counter", "gateway_upstream_errors",
            "Upstream failures, by kind (status_5xx, status_429, status_401, interrupted ...).",
            ["kind"])
        self.cache = _Family("counter", "gateway_cache",
                             "Cache lookups, by result (HIT, MISS, BYPASS).", ["result"])
        self.rate_limited = _Family("counter", "gateway_rate_limited",
                                    "Requests refused with 429, by kind.", ["kind"])
        self.tokens = _Family("counter", "gateway_tokens",
                              "Tokens reported by the upstream, by model and direction.",
                              ["model", "direction"])
        self.active_streams = _Family("gauge", "gateway_active_streams",
                                      "Streams currently being relayed.")
        self.active_streams.labels()  # exported as 0 before the first stream
        self.storage_errors = _Family("counter", "gateway_storage_errors",
                                      "Failed calls to the rate-limit or cache storage.",
                                      ["component"])
        # `model` is the price table's row name (`PriceTable.label_for`: dated snapshots count
        # under their family, unpriced models under "other"), `tier` a configured tier name.
        # Added in micro-dollars, shown in dollars.
        self.spend = _Family("counter", "gateway_spend_usd",
                             "US dollars charged to budgets, from the answers' usage (the "
                             "reservation where it is unknown), by model and tier.",
                             ["model", "tier"], scale=MICRO)
        # Gauges are set through the child's `value`, in micro-dollars.
        self.budget_remaining = _Family(
            "gauge", "gateway_budget_remaining_usd",
            "US dollars left under the gateway-wide ceiling, by period.", ["period"],
            scale=MICRO)
        self.budget_warn = _Family(
            "gauge", "gateway_budget_warn",
            "1 once the gateway-wide spend has crossed budget.warn_at, by period.", ["period"])
        # Realtime sessions (WebSocket relays and supervised WebRTC calls). Their spend and
        # tokens count in `spend` and `tokens` with every other answer's.
        self.realtime_sessions = _Family(
            "gauge", "gateway_realtime_sessions",
            "Realtime sessions open in this process, by transport (websocket, webrtc).",
            ["transport"])
        for transport in ("websocket", "webrtc"):  # exported as 0 before the first session
            self.realtime_sessions.labels(transport)
        self.realtime_seconds = _Family(
            "counter", "gateway_realtime_session_seconds",
            "Seconds realtime sessions lasted, counted as they end, by transport and model.",
            ["transport", "model"])
        self.realtime_ended = _Family(
            "counter", "gateway_realtime_sessions_ended",
            "Realtime sessions ended, by transport and reason (client_closed, "
            "upstream_closed, stopped, expired, shutdown).", ["transport", "reason"])
        # One child per configured shared-store server ("host:port").
        self.storage_server_up = _Family(
            "gauge", "gateway_storage_server_up",
            "1 while a shared-store server answers, 0 while it is marked down.", ["server"])
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_GatewayCollector([
            value for value in vars(self).values() if isinstance(value, _Family)]))

    def storage_server(self, server: str, up: bool) -> None:
        """A shared-store server's health transition (the store's `on_change`)."""
        self.storage_server_up.labels(server).value = 1 if up else 0

    def exposition(self) -> bytes:
        """The registry in Prometheus's text format."""
        return generate_latest(self.registry)

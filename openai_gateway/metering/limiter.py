"""Per-caller request limits, counted in the store the process chose at start.

Strategy (decided once per settings, from `rate_limit.strategy` and what the store keeps):
- a moving window (exact: no burst at a window edge) where the store keeps one: memory (our
  limits storage) and Redis (limits' own, exact across processes);
- the sliding-window counter on memcached (limits implements no moving window there:
  NotImplementedError), or where `rate_limit.strategy = "sliding-window-counter"` asks for it.
A request is counted before its body is read (`check`: the caller's limits and the rules of its
route, one store call), and the rules naming its model once that is known (`hits`, counted by
the pipeline's admission together with the budgets and the cache read). Identifiers are SHA-256
hashed before they reach a shared store (memcached keys may not contain spaces and are at most
250 bytes).
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from typing import NoReturn

from ..errors import RateLimited, StorageUnavailable
from ..observability.metrics import Metrics
from ..store import Counted, Hit, ServerDown, Store, Window
from .headers import LimitState, format_reset, limit_headers, retry_after
from .rules import Limit, Limits, Rules

log = logging.getLogger("gateway.ratelimit")


class Hits(list[tuple[Hit, Limit]]):
    """A request's windows with the limits they stand for; `windows`: the hits alone."""

    __slots__ = ("windows",)

    def __init__(self, pairs: list[tuple[Hit, Limit]], windows: list[Hit] | None = None):
        super().__init__(pairs)
        self.windows = [hit for hit, _ in pairs] if windows is None else windows


#: A request with no request window (shared: never changed).
NO_HITS = Hits([])


class StoragePolicy:
    """`storage.on_error`: what a failed store call means. "open": serve and log (the usage is
    not counted); "closed": refuse with 503 before anything is forwarded."""

    def __init__(self, on_error: str, metrics: Metrics):
        self.on_error = on_error
        self.metrics = metrics

    @property
    def fail_open(self) -> bool:
        return self.on_error == "open"

    def failed(self, exc: Exception, *, refuse: bool = True) -> None:
        """Count and log a failure; raise StorageUnavailable when it must refuse."""
        self.metrics.storage_errors.labels("ratelimit").inc()
        quiet = isinstance(exc, ServerDown)  # the store logged it once, when marking it down
        if refuse and not self.fail_open:
            if not quiet:
                log.warning("rate-limit storage failed (%s); refusing (storage.on_error=closed)",
                            type(exc).__name__)
            raise StorageUnavailable("Rate-limit storage is unavailable; try again shortly.")
        if not quiet:
            log.warning("rate-limit storage failed (%s); %s", type(exc).__name__,
                        "allowing (storage.on_error=open)" if refuse else "usage not counted")


class RateLimiter:
    """Built once per process on its store; `configure` again on reload (counters survive)."""

    #: Plans remembered: one per set of limits (the defaults, a tier's, a client key's) and
    #: route (and model, for the rules naming one): few, whatever the number of callers.
    PLANS = 1024

    def __init__(self, store: Store, policy: StoragePolicy):
        self.store = store
        self.policy = policy
        self._hash = store.kind != "memory"  # a key that never leaves the process stays readable
        # An OrderedDict: evicting its first entry is O(1), where a dict leaves a hole at its
        # front per eviction that every later `next(iter())` scans (tens of us when full).
        self._plans: OrderedDict[tuple, tuple[object, tuple[tuple[str, Limit], ...]]] = \
            OrderedDict()

    def configure(self, rules: Rules, strategy: str) -> None:
        self.rules = rules
        if strategy == "auto":  # limits has no moving window on memcached
            strategy = "moving-window" if self.store.moving is not None \
                else "sliding-window-counter"
        self.strategy = strategy
        self._moving = strategy == "moving-window"
        self._plans = OrderedDict()

    def ident(self, caller) -> str:
        """The caller's part of its counters' keys."""
        if not self._hash:
            return caller.id
        return hashlib.sha256(caller.id.encode()).hexdigest()[:32]

    @property
    def has_model_rules(self) -> bool:
        """Whether a [[rate_limit.rules]] entry limits requests by model."""
        return bool(self.rules.model_rules)

    def hits(self, caller, route: str, model: str | None, *, rules_only: bool = False) -> Hits:
        """The request windows of a request: the caller's limits and the rules of its route
        (model None), or only the rules naming its model (`rules_only`)."""
        plan = self._plan(caller.limits, route, model, rules_only)
        if not plan:
            return NO_HITS
        ident, moving = self.ident(caller), self._moving
        pairs, windows = [], []
        for scope, limit in plan:
            hit = Hit(Window(limit.key("req", ident, scope), limit.amount, limit.expiry), 1,
                      moving)
            pairs.append((hit, limit))
            windows.append(hit)
        return Hits(pairs, windows)

    def _plan(self, own: Limits | None, route: str, model: str | None, rules_only: bool
              ) -> tuple[tuple[str, Limit], ...]:
        """(scope, limit) of every request window for these limits: the same for every caller
        sharing them, so worked out once (the limits object is held, so its id stays its)."""
        key = (id(own), route, model, rules_only)
        found = self._plans.get(key)
        if found is not None and found[0] is own:
            return found[1]
        scopes = self.rules.scopes(own, route, model, "requests")
        if rules_only:
            scopes = [(scope, limits) for scope, limits in scopes
                      if scope in self.rules.model_rules]
        plan = tuple((scope, limit) for scope, limits in scopes for limit in limits)
        if len(self._plans) >= self.PLANS:  # clients choose model names: bounded
            self._plans.popitem(last=False)
        self._plans[key] = (own, plan)
        return plan

    async def check(self, caller, route: str) -> LimitState | None:
        """Count one request against the caller's limits and its route's rules, before its
        body is read; raise RateLimited (429 with Retry-After) when over a limit."""
        hits = self.hits(caller, route, None)
        if not hits:
            return None
        counted = await self.count(hits.windows)
        return None if counted is None else self.verdict(counted, hits)

    async def count(self, hits: list[Hit], reads=()) -> Counted | None:
        """One store call under the storage policy. None: it failed and on_error is "open"
        (nothing counted, nothing read); raises StorageUnavailable when "closed"."""
        try:
            counted = await self.store.count(hits, now=time.time(), reads=reads,
                                             fail_open=self.policy.fail_open)
        except Exception as exc:  # store clients raise many types; all mean "unavailable"
            self.policy.failed(exc)
            return None
        if counted.error is not None:
            self.policy.failed(counted.error)  # raises when on_error is "closed"
        return counted

    @staticmethod
    def verdict(counted: Counted, hits: Hits) -> LimitState | None:
        """Raise the 429 of a refused request window; else the tightest request limit."""
        result, now = None, time.time()
        for hit, limit in hits:
            stats = counted.stats(hit.window)
            if stats is None:
                continue  # its server failed: allowed by on_error=open
            if counted.refused_by == hit.window:
                refuse(limit, stats.reset_at)
            if result is None or stats.remaining < result.remaining:
                result = LimitState(limit.amount, stats.remaining,
                                    max(stats.reset_at - now, 0.0))
        return result


def refuse(limit: Limit, frees_at: float) -> NoReturn:
    wait = max(frees_at - time.time(), 0.0)
    raise RateLimited(
        f"Rate limit reached for requests: {limit.amount} per {limit.per}. "
        f"Please try again in {format_reset(wait)}.",
        headers={"Retry-After": retry_after(wait),
                 **limit_headers(requests=LimitState(limit.amount, 0, wait))},
        log_detail=f"limit={limit.amount}/{limit.per} retry_after={retry_after(wait)}s")

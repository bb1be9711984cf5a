"""Per-caller request limits, token budgets and dollar budgets with the `limits` library.

Per request: `check_requests` (counts one request), `reserve` (the estimate, against every
token and dollar budget that applies, before forwarding), `settle` (after the answer, to the
real usage; never raises). Budgets themselves live in budgets.py.

Strategy by storage (decided once, at start-up):
- memory (our `MemoryStore`): request limits use the moving window (exact: no burst at a
  window edge), checked on the store's synchronous path.
- memcached: `limits` implements no moving window there (NotImplementedError), so request
  limits use limits' sliding-window counter, which weights the previous window's count.
- budgets always use the sliding-window counter: a moving window stores one entry per unit.

Which limits apply to a request: the caller's own (its client key's or its tier's, carried by
the caller; else the [rate_limit] defaults), plus every matching [[rate_limit.rules]] entry,
plus, for dollars, the gateway-wide ceilings. Identifiers are SHA-256 hashed before they reach
memcached (its keys may not contain spaces and are at most 250 bytes).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NoReturn, cast

from limits import RateLimitItemPerDay, RateLimitItemPerMonth
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from .budgets import (
    EVERYONE,
    GATEWAY,
    SPEND,
    TOKENS,
    Hold,
    Limit,
    Limits,
    MemoryBook,
    Reservation,
    SharedBook,
    remaining,
    state,
    tightest,
)
from .errors import GatewayError, RateLimited, StorageUnavailable
from .limitheaders import MICRO, LimitState, format_reset, limit_headers, retry_after
from .mcstore import RefundingMemcachedStorage
from .memstore import MemoryStore
from .storage import StorageURL

__all__ = ["LimitState", "Limits", "RateLimiter", "Reservation", "format_reset",
           "limit_headers"]

log = logging.getLogger("gateway.ratelimit")


@dataclass(frozen=True, slots=True)
class _Rule:
    scope: str  # "rule<i>": part of its counters' keys
    route: str
    model: str
    limits: Limits


def gateway_limits(budget) -> tuple[tuple[str, Limit], ...]:
    """("daily" | "monthly", limit) for budget.daily_usd / budget.monthly_usd above 0."""
    out = []
    for name, usd, per in (("daily", getattr(budget, "daily_usd", 0), RateLimitItemPerDay),
                           ("monthly", getattr(budget, "monthly_usd", 0), RateLimitItemPerMonth)):
        if usd and usd > 0:
            out.append((name, Limit.of(per(round(usd * MICRO)))))
    return tuple(out)


def _limits_uri(url: StorageURL) -> str:
    """Our own storages' URIs (MemoryStore, RefundingMemcachedStorage: each class registers
    its scheme with limits when its module is imported); any other kind (Redis, on main) is
    limits' own storage."""
    if url.kind == "memory":
        return "async+gateway-memory://"
    if url.kind != "memcached":
        return url.limits_uri()
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in url.servers)
    return "async+gateway-memcached://" + hosts


class RateLimiter:
    """Built once per settings; `configure` again on reload (the counters survive)."""

    def __init__(self, settings, storage: StorageURL | None = None, *,
                 on_error: str = "open", timeout: float = 0.5, budget=None):
        self.storage_url = storage or StorageURL("memory")
        self.on_error = on_error
        self.timeout = timeout if self.storage_url.is_shared else None
        # Nothing connects yet: memcached's client opens its connections on first use.
        self._storage = cast(MemoryStore | RefundingMemcachedStorage,
                             storage_from_string(_limits_uri(self.storage_url)))
        # Budgets: synchronous on our memory store; else limits' sliding-window counter.
        self._book: MemoryBook | SharedBook = (
            MemoryBook(self._storage) if isinstance(self._storage, MemoryStore)
            else SharedBook(self._storage))
        self.configure(settings, budget=budget)

    def configure(self, settings, *, budget=None) -> None:
        """(Re)build the limits from `settings` ([rate_limit]: requests, tokens, spend, rules,
        strategy) and `budget` (daily_usd, monthly_usd; None = no ceiling). Limits arrive as
        RateLimitItem tuples (spend in micro-dollars)."""
        self.defaults = Limits(settings.requests, settings.tokens, getattr(settings, "spend", ()))
        self.rules = tuple(_Rule(f"rule{i}", r.route, r.model,
                                 Limits(r.requests, r.tokens, getattr(r, "spend", ())))
                           for i, r in enumerate(settings.rules))
        self.gateway = gateway_limits(budget)
        self._rule_models = {rule.scope: rule.model for rule in self.rules}
        rules = tuple(r.limits for r in self.rules)
        #: Budgets any caller has whatever its own limits (the defaults, rules, the ceilings).
        self._budgets = bool(self.gateway or any(limits.tokens or limits.spend
                                                 for limits in (self.defaults, *rules)))
        strategy = settings.strategy
        if strategy == "auto":  # limits has no moving window on memcached
            strategy = ("sliding-window-counter" if self.storage_url.kind == "memcached"
                        else "moving-window")
        self.strategy = strategy
        moving = strategy == "moving-window"
        self._req = (MovingWindowRateLimiter if moving else SlidingWindowCounterRateLimiter)(
            self._storage)
        # On the memory store the moving window is read directly (see _hit_moving_memory).
        self._moving_memory = (self._storage if moving and isinstance(self._storage, MemoryStore)
                               else None)

    @asynccontextmanager
    async def running(self):
        log.info("rate limits: %s for requests, sliding-window-counter for budgets, on %s",
                 self.strategy, self.storage_url.kind)
        try:
            yield self
        finally:
            self._storage.close()

    # --- which limits apply --------------------------------------------------------------

    @staticmethod
    def _own(caller) -> Limits | None:
        """The caller's own limits (its client key's or tier's; None: the defaults)."""
        return cast(Limits | None, caller.limits)

    def _scopes(self, own: Limits | None, route: str, model: str | None, kind: str) -> list:
        """(scope, limits) pairs of one kind ("requests", "tokens", "spend") for a request."""
        mine = getattr(own, kind) if own is not None else None
        base = getattr(self.defaults, kind) if mine is None else mine
        out = [("all", base)] if base else []
        for rule in self.rules:
            limits = getattr(rule.limits, kind)
            if limits and (not rule.route or rule.route == route) and (
                    not rule.model or rule.model == model):
                out.append((rule.scope, limits))
        return out

    def _ident(self, caller) -> str:
        if not self.storage_url.is_shared:
            return caller.id  # never leaves the process
        return hashlib.sha256(caller.id.encode()).hexdigest()[:32]

    # --- storage calls, bounded and failing by policy -------------------------------------

    async def _guard(self, coro):
        try:
            if self.timeout is None:
                return await coro
            async with asyncio.timeout(self.timeout):
                return await coro
        except RateLimited:
            raise
        except Exception as exc:  # memcached clients raise many types; all mean "unavailable"
            return self._storage_failed(exc)

    def _storage_failed(self, exc: Exception, refuse: bool = True) -> None:
        from .metrics import STORAGE_ERRORS  # local: metrics is optional at import time
        STORAGE_ERRORS.labels("ratelimit").inc()
        if refuse and self.on_error == "closed":
            log.warning("rate-limit storage failed (%s); refusing (storage.on_error=closed)",
                        type(exc).__name__)
            raise StorageUnavailable("Rate-limit storage is unavailable; try again shortly.")
        log.warning("rate-limit storage failed (%s); %s", type(exc).__name__,
                    "allowing (storage.on_error=open)" if refuse else "usage not counted")

    async def _quietly(self, coro) -> None:
        """A storage call whose failure refuses nothing (settling, giving back)."""
        try:
            async with asyncio.timeout(self.timeout or 1.0):
                await coro
        except Exception as exc:
            self._storage_failed(exc, refuse=False)

    # --- request limits -------------------------------------------------------------------

    @property
    def has_model_rules(self) -> bool:
        """Whether a [[rate_limit.rules]] entry limits requests by model."""
        return any(rule.model and rule.limits.requests for rule in self.rules)

    async def check_requests(self, caller, route: str, model: str | None, *,
                             rules_only: bool = False) -> LimitState | None:
        """Count one request; raise `RateLimited` (429 with Retry-After) when over a limit.

        The proxy counts a request before reading its body (model None: the caller's limits
        and route rules), then, once the model is known, with `rules_only` for the rules that
        name it."""
        scopes = self._scopes(self._own(caller), route, model, "requests")
        if rules_only:
            scopes = [(scope, limits) for scope, limits in scopes
                      if scope != "all" and self._rule_models[scope]]
        if not scopes:
            return None
        if self._moving_memory is not None:  # cannot fail: no _guard, no coroutine
            return _hit_moving_memory(self._moving_memory, caller.id, scopes)
        return await self._guard(self._hit_requests(self._ident(caller), scopes))

    async def _hit_requests(self, ident: str, scopes) -> LimitState | None:
        strategy, result = self._req, None
        for scope, limits in scopes:
            for limit in limits:
                if not await strategy.hit(limit.item, "req", ident, scope):
                    stats = await strategy.get_window_stats(limit.item, "req", ident, scope)
                    _refuse_requests(limit, stats.reset_time)
        for scope, limits in scopes:
            for limit in limits:
                stats = await strategy.get_window_stats(limit.item, "req", ident, scope)
                if result is None or stats.remaining < result.remaining:
                    result = LimitState(limit.amount, stats.remaining,
                                        max(stats.reset_time - time.time(), 0.0))
        return result

    # --- budgets: tokens and dollars ------------------------------------------------------

    def _holds(self, caller, route: str, model: str | None, tokens: int,
               micro_usd: int | None) -> list[Hold]:
        """What a request reserves: tokens (at least 1, so an empty budget refuses even a
        zero estimate), then dollars (micro_usd None: none)."""
        own, ident = self._own(caller), ""
        holds: list[Hold] = []
        if not self._budgets and not (own is not None and (own.tokens or own.spend)):
            return holds  # the usual case without budgets: nothing to look at
        kinds = [(TOKENS, "tokens", max(tokens, 1))]
        if micro_usd is not None:
            kinds.append((SPEND, "spend", max(micro_usd, 0)))
        for kind, attr, amount in kinds:
            for scope, limits in self._scopes(own, route, model, attr):
                ident = ident or self._ident(caller)
                holds.extend(Hold(kind, scope, ident, limit, limit.key(kind, ident, scope),
                                  amount) for limit in limits)
        if micro_usd is not None:
            holds.extend(Hold(SPEND, GATEWAY, EVERYONE, limit,
                              limit.key(SPEND, EVERYONE, GATEWAY), max(micro_usd, 0))
                         for _, limit in self.gateway)
        return holds

    def spend_applies(self, caller, route: str, model: str | None) -> bool:
        """Whether a dollar budget (the caller's, a rule's, the gateway's) covers a request:
        its model must then have a price."""
        return bool(self.gateway or self._scopes(self._own(caller), route, model, "spend"))

    async def reserve(self, caller, route: str, model: str | None, *, tokens: int,
                      micro_usd: int | None) -> Reservation:
        """Reserve the estimate against every token and dollar budget that applies, all or
        nothing. Raises TokensRateLimited, SpendLimited (the caller's budget), BudgetExceeded
        (the gateway's), or StorageUnavailable (storage down, on_error=closed)."""
        holds = self._holds(caller, route, model, tokens, micro_usd)
        if not holds:
            return Reservation()
        return await self._take(holds)

    async def _take(self, holds: list[Hold]) -> Reservation:
        book = self._book
        if isinstance(book, MemoryBook):
            return Reservation(tuple(holds), *tightest(holds, book.take(holds)))
        taken: list[Hold] = []
        try:
            states = await self._guard(book.take(holds, taken))
        except GatewayError:  # refused, or the storage failed with on_error=closed
            await self._quietly(book.give_back(taken))
            raise
        if states is None:  # the storage failed, on_error=open: allowed, nothing reported
            return Reservation(tuple(taken))
        return Reservation(tuple(taken), *tightest(taken, states))

    async def settle(self, reservation: Reservation, *, tokens: int, micro_usd: int
                     ) -> dict[str, str]:
        """Bring the reservation to the real usage: charge the overrun (it empties a budget,
        never more), refund the rest. Returns the x-ratelimit-*-tokens / -spend headers with
        the settled remaining values. Never raises (storage errors are logged and counted);
        a second settle of the same reservation does nothing and returns {}."""
        token_state, spend_state = await self._settle(reservation, tokens, micro_usd)
        return limit_headers(tokens=token_state, spend=spend_state)

    async def _settle(self, reservation: Reservation, tokens: int, micro_usd: int
                      ) -> tuple[LimitState | None, LimitState | None]:
        if reservation.settled or not reservation.holds:
            return None, None
        reservation.settled = True
        holds, book = reservation.holds, self._book
        if isinstance(book, MemoryBook):
            return tightest(holds, book.settle(holds, tokens, micro_usd))
        try:
            async with asyncio.timeout(self.timeout):
                return tightest(holds, await book.settle(holds, tokens, micro_usd))
        except Exception as exc:
            self._storage_failed(exc, refuse=False)
            return None, None

    async def gateway_spend(self) -> dict[str, dict]:
        """The gateway-wide ceilings as counted now, only those configured:
        {"daily": {"limit_usd", "spent_usd", "remaining_usd", "window_seconds",
        "reset_seconds"}, "monthly": {...}}. Raises StorageUnavailable when unreadable."""
        out, book = {}, self._book
        for name, limit in self.gateway:
            key = limit.key(SPEND, EVERYONE, GATEWAY)
            try:
                window = (book.window(key, limit) if isinstance(book, MemoryBook)
                          else await asyncio.wait_for(book.window(key, limit), self.timeout))
            except Exception as exc:
                self._storage_failed(exc, refuse=False)
                raise StorageUnavailable("Rate-limit storage is unavailable.") from None
            left = remaining(limit, window)
            out[name] = {"limit_usd": limit.amount / MICRO,
                         "spent_usd": (limit.amount - left) / MICRO,
                         "remaining_usd": left / MICRO, "window_seconds": limit.expiry,
                         "reset_seconds": round(state(limit, window).reset, 3)}
        return out


def _hit_moving_memory(store: MemoryStore, caller_id: str, scopes) -> LimitState | None:
    """MovingWindowRateLimiter.hit and .get_window_stats in one synchronous pass over the
    memory store: each key is built from the Limit's prepared tail (no hashing: the key never
    leaves the process) and the window's count is the length of the list the hit just trimmed
    (no second search)."""
    hits = []
    for scope, limits in scopes:
        for limit in limits:
            key = f"{limit.namespace}/req/{caller_id}/{scope}{limit.suffix}"
            events = store.acquire_now(key, limit.amount, limit.expiry)
            if events is None:  # the window is full: its oldest entry leaves first
                _refuse_requests(limit, store.frees_at(key, limit.expiry))
            hits.append((limit.amount, events))
    result, now = None, time.time()
    for amount, events in hits:
        left = amount - len(events)
        if result is None or left < result.remaining:
            result = LimitState(amount, left, max(events[-1] - now, 0.0))
    return result


def _refuse_requests(limit: Limit, frees_at: float) -> NoReturn:
    wait = max(frees_at - time.time(), 0.0)
    raise RateLimited(
        f"Rate limit reached for requests: {limit.amount} per {limit.per}. "
        f"Please try again in {format_reset(wait)}.",
        headers={"Retry-After": retry_after(wait),
                 **limit_headers(requests=LimitState(limit.amount, 0, wait))},
        log_detail=f"limit={limit.amount}/{limit.per} retry_after={retry_after(wait)}s")

"""Per-caller request limits, token budgets and dollar budgets with the `limits` library.

Per request: `check_requests` (counts one request), `reserve` (the estimate, against every
token and dollar budget that applies, before forwarding), `settle` (after the answer, to the
real usage; never raises). Budgets themselves live in budgets.py.

Strategy by storage (decided once, at start-up):
- memory (our `MemoryStore`): request limits use the moving window (exact: no burst at a
  window edge), checked on the store's synchronous path.
- memcached (a ring of servers, `store/`): `limits` implements no moving window there
  (NotImplementedError), so request limits use the sliding-window counter (limits' arithmetic,
  `store/windows.py`), batched: a request's limits are one round trip (`check_requests`), and
  its model rules, budgets and cache read one more (`admit`).
- redis: request limits use limits' moving window (exact across processes, limits' Lua
  script); budgets and the cache read are batched as on memcached.
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
from dataclasses import dataclass, field
from typing import NoReturn, cast

from limits import RateLimitItemPerDay, RateLimitItemPerMonth
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from ..config.storage import StorageURL
from ..errors import RateLimited, StorageUnavailable
from ..observability import metrics
from ..store import ServerDown, sliding
from ..store import Window as SWindow
from ..store.memory import MemoryStore
from ..store.redis import RedisStore
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
    refusal,
    remaining,
    state,
    tightest,
    window_of,
)
from .headers import MICRO, LimitState, format_reset, limit_headers, retry_after
from .stores import SharedStore, shared_store

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


@dataclass(slots=True)
class Admitted:
    """What `admit` did in one batch: the budgets' reservation, the state of the model rules'
    request limits (None: none applied), and the values of the extra keys read along."""

    reservation: Reservation
    requests: LimitState | None = None
    extra: dict[str, bytes] = field(default_factory=dict)


class RateLimiter:
    """Built once per settings; `configure` again on reload (the counters survive).

    `store`: the process's shared store (memcached ring or Redis) when the cache uses it too;
    None builds one for a shared `storage` URL (closed by `running`). `password`: Redis's."""

    def __init__(self, settings, storage: StorageURL | None = None, *,
                 on_error: str = "open", timeout: float = 0.5, budget=None,
                 store: SharedStore | None = None, password: str = ""):
        self.storage_url = url = storage or StorageURL("memory")
        self.on_error = on_error
        self.timeout = timeout if url.is_shared else None
        self._own_store = store is None and url.is_shared
        #: The shared store (None on memory://). Nothing connects before first use.
        self.store: SharedStore | None = store or (
            shared_store(url, timeout=timeout, password=password) if url.is_shared else None)
        self._storage: MemoryStore | None = None
        self._redis_limits = None  # limits' own Redis storage, for its moving window
        if self.store is None:
            self._storage = cast(MemoryStore, storage_from_string("async+gateway-memory://"))
        elif isinstance(self.store, RedisStore):
            self._redis_limits = storage_from_string(
                self.store.url.limits_uri(), **self.store.url.limits_options(password, timeout))
        # Budgets: synchronous on our memory store; else batched on the shared store.
        self._book: MemoryBook | SharedBook = (
            SharedBook(self.store) if self.store is not None
            else MemoryBook(cast(MemoryStore, self._storage)))
        self.configure(settings, budget=budget)

    @property
    def batched(self) -> bool:
        """Whether `admit` does model rules, budgets and a cache read in one batch (shared
        stores); on memory the steps are separate synchronous calls."""
        return self.store is not None

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
        # limits' strategy object: on memory (sliding counter), on Redis (moving window); None
        # for the batched sliding counter on a shared store.
        storage = self._storage if self._storage is not None else (
            self._redis_limits if moving else None)
        self._req = None if storage is None else (
            MovingWindowRateLimiter if moving else SlidingWindowCounterRateLimiter)(storage)
        # On the memory store the moving window is read directly (see _hit_moving_memory).
        self._moving_memory = self._storage if moving else None

    @asynccontextmanager
    async def running(self):
        log.info("request limits: %s (%s on %s); budgets: sliding-window-counter",
                 self.strategy, self.strategy.replace("-", " "), self.storage_url.kind)
        try:
            yield self
        finally:
            if self._storage is not None:
                self._storage.close()
            if self.store is not None and self._own_store:
                await self.store.close()

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
        # No timer of ours: the stores bound every call themselves (memcachio's connect, read
        # and pool-wait timeouts, redis-py's socket timeouts, all storage.timeout); a timer per
        # call cost about a tenth of the shared path's CPU.
        try:
            return await coro
        except RateLimited:
            raise
        except Exception as exc:  # memcached clients raise many types; all mean "unavailable"
            return self._storage_failed(exc)

    def _storage_failed(self, exc: Exception, refuse: bool = True) -> None:
        metrics.STORAGE_ERRORS.labels("ratelimit").inc()
        quiet = isinstance(exc, ServerDown)  # the store logged it once, when marking it down
        if refuse and self.on_error == "closed":
            if not quiet:
                log.warning("rate-limit storage failed (%s); refusing (storage.on_error=closed)",
                            type(exc).__name__)
            raise StorageUnavailable("Rate-limit storage is unavailable; try again shortly.")
        if not quiet:
            log.warning("rate-limit storage failed (%s); %s", type(exc).__name__,
                    "allowing (storage.on_error=open)" if refuse else "usage not counted")

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
        if self._req is None:  # the batched sliding counter on a shared store
            requests = self._request_windows(self._ident(caller), scopes)
            got = await self._count(requests, [])
            return None if got is None else self._requests_state(got.acquired, requests)
        hit = self._hit_requests(self._ident(caller), scopes)
        if isinstance(self.store, RedisStore):  # fail fast while Redis is marked down
            hit = self.store.guarded(hit)
        return await self._guard(hit)

    async def _hit_requests(self, ident: str, scopes) -> LimitState | None:
        """limits' own strategy, limit by limit (memory's sliding counter, Redis's moving
        window)."""
        strategy, result = self._req, None
        assert strategy is not None
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

    # --- the batched path (shared stores) -------------------------------------------------

    @staticmethod
    def _request_windows(ident: str, scopes) -> list[tuple[SWindow, Limit]]:
        return [(SWindow(limit.key("req", ident, scope), limit.amount, limit.expiry), limit)
                for scope, limits in scopes for limit in limits]

    async def _count(self, requests, holds: list[Hold], extra_keys=()
                     ) -> sliding.Counted | None:
        """One batch: a request hit on each window of `requests`, each hold's amount, a read
        of `extra_keys`. None when the store failed and on_error is "open"."""
        assert self.store is not None
        now = time.time()
        for hold in holds:
            hold.at = now
        wins = [w for w, _ in requests] + [SharedBook.win(h) for h in holds]
        costs = [1] * len(requests) + [h.amount for h in holds]
        got = await self._guard(sliding.count(
            self.store, wins, now=now, cost=costs, extra_keys=extra_keys,
            fail_open=self.on_error == "open"))
        if got is not None and got.acquired.error is not None:
            self._storage_failed(got.acquired.error)  # raises when on_error is "closed"
        return got

    @staticmethod
    def _requests_state(acquired: sliding.Acquired, requests) -> LimitState | None:
        """Raise the 429 of a refused request window; else the tightest request limit."""
        result, now = None, time.time()
        for w, limit in requests:
            stats = acquired.stats.get(w)
            if stats is None:
                continue  # its server failed: allowed by on_error=open
            if acquired.refused_by == w:
                _refuse_requests(limit, stats.reset_at)
            if result is None or stats.remaining < result.remaining:
                result = LimitState(limit.amount, stats.remaining,
                                    max(stats.reset_at - now, 0.0))
        return result

    async def admit(self, caller, route: str, model: str | None, *, tokens: int,
                    micro_usd: int | None, extra_keys=(), model_rules: bool = True
                    ) -> Admitted:
        """Shared stores only: the request limits of the rules naming `model` (when
        `model_rules`; as `check_requests(..., rules_only=True)`), every token and dollar
        budget (as `reserve`) and a read of `extra_keys` (the cache entry), in one round trip.
        Raises as those do; a refused request takes nothing from any budget."""
        requests, rules_state = [], None
        if model_rules and model is not None and self.has_model_rules:
            if self._req is not None:  # Redis's moving window: limits' own script, first
                rules_state = await self.check_requests(caller, route, model, rules_only=True)
            else:
                scopes = [(scope, limits) for scope, limits in self._scopes(
                    self._own(caller), route, model, "requests")
                    if scope != "all" and self._rule_models[scope]]
                requests = self._request_windows(self._ident(caller), scopes)
        holds = self._holds(caller, route, model, tokens, micro_usd)
        if not requests and not holds and not extra_keys:
            return Admitted(Reservation(), rules_state)
        got = await self._count(requests, holds, extra_keys)
        if got is None:  # failed, on_error=open: allowed, nothing reported
            return Admitted(Reservation(), rules_state)
        acquired = got.acquired
        rules_state = self._requests_state(acquired, requests) or rules_state
        now, taken, states = time.time(), [], []
        for hold in holds:
            w = SharedBook.win(hold)
            if w not in got.counts:
                continue  # its server failed: not counted, nothing to give back
            prev, cur = got.counts[w]
            if acquired.refused_by == w:
                raise refusal(hold, window_of(w, prev, cur, now))
            taken.append(hold)
            states.append(state(hold.limit, window_of(w, prev, cur, now)))
        return Admitted(Reservation(tuple(taken), *tightest(taken, states)), rules_state,
                        acquired.extra)

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
        if self.store is not None:
            return (await self.admit(caller, route, model, tokens=tokens, micro_usd=micro_usd,
                                     model_rules=False)).reservation
        holds = self._holds(caller, route, model, tokens, micro_usd)
        if not holds:
            return Reservation()
        book = cast(MemoryBook, self._book)
        return Reservation(tuple(holds), *tightest(holds, book.take(holds)))

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

"""Per-client request limits and token budgets with the `limits` library.

Strategy by storage (decided once, at start-up):
- memory: request limits use the moving window (exact: no burst at a window edge).
- memcached: `limits` implements no moving window there (it raises NotImplementedError), so
  request limits use the sliding-window counter, which weights the previous window's count.
- token budgets always use the sliding-window counter: a moving window stores one entry per
  unit of cost, i.e. per token.

Identifiers are SHA-256 hashed before they reach memcached (its keys may not contain spaces and
are at most 250 bytes); the memory moving window keys by the client id itself.
"""
from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import math
import operator
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from limits import RateLimitItem
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from .errors import RateLimited, StorageUnavailable, TokensRateLimited
from .identity import Client
from .settings import RateLimitSettings, ClientSettings
from .storage import StorageURL

log = logging.getLogger("gateway.ratelimit")


class SweepingMemoryStorage(MemoryStorage):
    """limits' async memory storage with its bookkeeping made cheap (limits 5.8).

    Upstream, every hit may start a sweep over all keys that hands each key's bisect to a
    thread (asyncio.to_thread), and each moving-window list keeps every entry until that
    sweep drops it. Here an allowed hit trims its list to the entries still in the window (at
    most `limit`: an entry older than the limit-th newest can never count again), so the
    sweep only has to forget clients whose newest entry expired, and runs every
    SWEEP_SECONDS in the event loop, in batches.

    A moving-window list holds each entry's expiry time as a float (newest first), not
    limits' `Entry` object: about 33 bytes an entry instead of 105, and nothing for the garbage
    collector to traverse (a day limit keeps one entry per request for a day). Counting is
    unchanged (tests compare it with limits' own MemoryStorage).
    """

    SWEEP_SECONDS = 5.0
    SWEEP_BATCH = 10_000  # keys per loop iteration: ~0.7 ms
    _next_sweep = 0.0

    async def _MemoryStorage__schedule_expiry(self) -> None:
        self._schedule_sweep()

    def _schedule_sweep(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep and (self.timer is None or self.timer.done()):
            self._next_sweep = now + self.SWEEP_SECONDS
            self.timer = asyncio.get_running_loop().create_task(self._sweep())

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.acquire_now(key, limit, expiry, amount) is not None

    def acquire_now(self, key: str, limit: int, expiry: int, amount: int = 1) -> list | None:
        """The parent's moving-window hit, synchronous and without its per-key asyncio.Lock:
        nothing here awaits, so no other coroutine can interleave (the lock only mattered while
        the sweep ran in threads). Same list, same test: the `limit - amount`-th newest entry
        decides. Returns the key's entries when allowed (newest first, every one inside the
        window, so their count is the window's count), None when refused."""
        if amount > limit:
            return None
        self._schedule_sweep()
        events = self.events.get(key)
        if events is None:
            events = self.events[key] = []
        now = time.time()
        if len(events) > limit - amount and events[limit - amount] >= now:
            return None
        events[:0] = [now + expiry] * amount
        if len(events) > limit:
            del events[limit:]
        # Entries that left the window never count again: drop them (oldest last; each entry
        # is popped once, so O(1) per hit), else a client under its limit keeps `limit` entries.
        while events[-1] < now:
            events.pop()
        return events

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """The parent's answer (start of the window, entries in it) from expiry times."""
        timestamp = time.time()
        if events := self.events.get(key):
            inside = bisect.bisect_left(events, -timestamp, key=operator.neg)  # newest first
            return events[inside - 1] - expiry, inside
        return timestamp, 0

    async def _sweep(self) -> None:
        """Forget keys whose newest entry (or counter) expired, SWEEP_BATCH keys per event-loop
        iteration: a client on a day limit stays a day, and one pass over a million keys held
        the loop for ~70 ms. A key is re-checked as it is dropped, so one that was hit while
        the sweep let other coroutines run is kept (a hit mutates its list in place: `entries`
        is always the live list)."""
        events, expirations = self.events, self.expirations
        async for now, keys, lists in self._batches(events):
            for key, entries in zip(keys, lists):
                if (not entries or entries[0] <= now) and events.get(key) is entries:
                    del events[key]  # newest entry expired: the client is idle
                    self.locks.pop(key, None)
        async for now, keys, deadlines in self._batches(expirations):
            for key, expires in zip(keys, deadlines):
                if expires <= now and expirations.get(key, now + 1) <= now:  # still expired
                    self.storage.pop(key, None)
                    del expirations[key]
                    self.locks.pop(key, None)

    async def _batches(self, table: dict):
        """(now, keys, values) from a snapshot of `table`, SWEEP_BATCH keys at a time with the
        event loop let in between. The snapshot is taken in table order (a lookup
        per key would jump around a table of a million) and released batch by batch, so
        freeing what the sweep dropped is spread over the batches too."""
        batch = self.SWEEP_BATCH
        keys, values = list(table), list(table.values())
        while keys:
            batch_keys, batch_values = keys[-batch:], values[-batch:]
            del keys[-batch:], values[-batch:]
            yield time.time(), batch_keys, batch_values
            await asyncio.sleep(0)


# limits re-wraps every storage method in an error-translating coroutine at each subclass level
# (three deep here). They only translate when wrap_exceptions=True, which the memory storage
# never uses and never needs (it raises nothing), so the subclass keeps the plain methods.
for _name in ("incr", "get", "get_expiry", "check", "reset", "clear", "acquire_entry",
              "get_moving_window", "acquire_sliding_window_entry", "get_sliding_window",
              "clear_sliding_window"):
    _fn = getattr(SweepingMemoryStorage, _name)
    while hasattr(_fn, "__wrapped__"):
        _fn = _fn.__wrapped__
    setattr(SweepingMemoryStorage, _name, _fn)


@dataclass(frozen=True, slots=True)
class _Rule:
    route: str
    model: str
    requests: tuple[RateLimitItem, ...]
    tokens: tuple[RateLimitItem, ...]


@dataclass(slots=True)
class LimitState:
    """What the client is told in the x-ratelimit-* headers."""

    limit: int
    remaining: int
    reset: float  # seconds until the reported window has room again


def format_reset(seconds: float) -> str:
    """OpenAI's duration format for x-ratelimit-reset-*: "1s", "6m0s", "1h2m3s", "20ms"."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms"
    s = math.ceil(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    return f"{m}m{sec}s" if m else f"{sec}s"


class RateLimiter:
    """Built once per settings; `check_requests`, `check_tokens`, `charge_tokens` per request."""

    def __init__(self, settings: RateLimitSettings, clients: tuple[ClientSettings, ...],
                 storage: StorageURL, *, on_error: str, timeout: float):
        self.storage_url = storage
        self.on_error = on_error
        self.timeout = timeout if storage.is_shared else None
        self._storage = None
        self._req = self._tok = self._memory_window = None
        self.configure(settings, clients)

    def configure(self, settings: RateLimitSettings, clients: tuple[ClientSettings, ...]) -> None:
        """(Re)build the limits; counters live in the storage and survive a reload."""
        # Settings hold parsed limits, shortest window first: a request refused by the minute
        # never touches the day's count.
        self.requests = settings.requests
        self.tokens = settings.tokens
        self.client_requests = {c.name: c.requests for c in clients if c.requests is not None}
        self.client_tokens = {c.name: c.tokens for c in clients if c.tokens is not None}
        self.rules = tuple(_Rule(r.route, r.model, r.requests, r.tokens) for r in settings.rules)
        self.any_tokens = bool(self.tokens or self.client_tokens
                               or any(r.tokens for r in self.rules))
        # The memory moving window's key tail and window length per request limit (by id: the
        # items live as long as this configuration). The tail is limits' own (amount, multiples,
        # granularity), so a limit that survives a reload keeps its counters.
        self._suffixes = {id(item): (f"/{item.amount}/{item.multiples}/{item.GRANULARITY.name}",
                                     item.get_expiry())
                          for items in (self.requests, *self.client_requests.values(),
                                        *(r.requests for r in self.rules))
                          for item in items}
        strategy = settings.strategy
        if strategy == "auto":
            strategy = "sliding-window-counter" if self.storage_url.is_shared else "moving-window"
        self.strategy = strategy
        if self._storage is not None:
            self._make_strategies()

    def _make_strategies(self) -> None:
        moving = self.strategy == "moving-window"
        self._req = (MovingWindowRateLimiter if moving else SlidingWindowCounterRateLimiter)(
            self._storage)
        # On the memory storage the moving window is read directly (see _hit_moving_memory).
        self._memory_window = (self._storage if moving and
                               isinstance(self._storage, SweepingMemoryStorage) else None)
        self._tok = SlidingWindowCounterRateLimiter(self._storage)

    @asynccontextmanager
    async def running(self):
        if self.storage_url.is_shared:
            self._storage = storage_from_string(self.storage_url.limits_uri())
        else:
            self._storage = SweepingMemoryStorage()
        self._make_strategies()
        log.info("rate limits: %s for requests, sliding-window-counter for tokens, on %s",
                 self.strategy, self.storage_url.kind)
        yield self

    # --- which limits apply --------------------------------------------------------------

    def _applicable(self, client: Client, route: str, model: str | None, tokens: bool):
        """(scope, items) pairs for this request: the client's own, then matching rules."""
        own = (self.client_tokens if tokens else self.client_requests).get(
            client.settings.name if client.settings else None)
        base = own if own is not None else (self.tokens if tokens else self.requests)
        out = [("all", base)] if base else []
        for i, rule in enumerate(self.rules):
            if (not rule.route or rule.route == route) and (not rule.model or rule.model == model):
                items = rule.tokens if tokens else rule.requests
                if items:
                    out.append((f"rule{i}", items))
        return out

    @staticmethod
    def _ident(client: Client) -> str:
        return hashlib.sha256(client.id.encode()).hexdigest()[:32]

    # --- storage calls, bounded and failing by policy -------------------------------------

    async def _guard(self, coro):
        try:
            if self.timeout is None:
                return await coro
            async with asyncio.timeout(self.timeout):
                return await coro
        except (RateLimited, asyncio.CancelledError):
            raise
        except Exception as exc:  # memcached clients raise many types; all mean "unavailable"
            return self._storage_failed(exc)

    def _storage_failed(self, exc: Exception):
        from .metrics import STORAGE_ERRORS  # local: metrics is optional at import time
        STORAGE_ERRORS.labels("ratelimit").inc()
        if self.on_error == "closed":
            log.warning("rate-limit storage failed (%s); refusing (storage.on_error=closed)",
                        type(exc).__name__)
            raise StorageUnavailable("Rate-limit storage is unavailable; try again shortly.")
        log.warning("rate-limit storage failed (%s); allowing (storage.on_error=open)",
                    type(exc).__name__)
        return None

    # --- the per-request API --------------------------------------------------------------

    async def check_requests(self, client: Client, route: str, model: str | None
                             ) -> LimitState | None:
        """Count one request; raise `RateLimited` (429 with Retry-After) when over a limit."""
        scopes = self._applicable(client, route, model, tokens=False)
        if not scopes:
            return None
        if self._memory_window is not None:  # cannot fail: no _guard, no coroutine
            return self._hit_moving_memory(client.id, scopes)
        return await self._guard(self._hit_requests(self._ident(client), scopes))

    async def _hit_requests(self, ident: str, scopes) -> LimitState:
        state = None
        for scope, items in scopes:
            for item in items:
                if not await self._req.hit(item, "req", ident, scope):
                    stats = await self._req.get_window_stats(item, "req", ident, scope)
                    _refuse_requests(item, stats.reset_time)
        for scope, items in scopes:
            for item in items:
                stats = await self._req.get_window_stats(item, "req", ident, scope)
                if state is None or stats.remaining < state.remaining:
                    state = LimitState(item.amount, stats.remaining,
                                       max(stats.reset_time - time.time(), 0.0))
        return state

    def _hit_moving_memory(self, client_id: str, scopes) -> LimitState:
        """MovingWindowRateLimiter.hit and .get_window_stats in one synchronous pass over the
        memory storage: each limit's key is built once (from a suffix made at configure time;
        no hashing, the key never leaves the process) and the window's count is the length of
        the list the hit just trimmed (no second search)."""
        storage, suffixes = self._memory_window, self._suffixes
        hits = []
        for scope, items in scopes:
            for item in items:
                suffix, expiry = suffixes[id(item)]
                key = f"req/{client_id}/{scope}{suffix}"
                events = storage.acquire_now(key, item.amount, expiry)
                if events is None:  # the window is full: its oldest entry leaves first
                    _refuse_requests(item, storage.events[key][-1])
                hits.append((item.amount, events))
        state, now = None, time.time()
        for limit, events in hits:
            remaining = limit - len(events)
            if state is None or remaining < state.remaining:
                state = LimitState(limit, remaining, max(events[-1] - now, 0.0))
        return state

    async def check_tokens(self, client: Client, route: str, model: str | None,
                           estimate: int) -> LimitState | None:
        """Refuse a request whose estimate cannot fit the budget, else reserve the estimate.

        Reserving (not only checking) keeps parallel requests from all seeing the same full
        budget; `settle_tokens` later charges or refunds the difference to the real usage.
        """
        scopes = self._applicable(client, route, model, tokens=True)
        if not scopes:
            return None
        return await self._guard(self._test_tokens(self._ident(client), scopes, estimate))

    async def _test_tokens(self, ident: str, scopes, estimate: int) -> LimitState:
        state = None
        for scope, items in scopes:
            for item in items:
                stats = await self._tok.get_window_stats(item, "tok", ident, scope)
                reset = max(stats.reset_time - time.time(), 0.0)
                if stats.remaining < max(estimate, 1):
                    raise TokensRateLimited(
                        f"Rate limit reached for tokens: {item.amount} per {_window(item)}, "
                        f"{stats.remaining} left, this request needs about {estimate}. "
                        f"Please try again in {format_reset(reset)}.",
                        headers={"Retry-After": str(max(math.ceil(reset), 1)),
                                 "x-ratelimit-limit-tokens": str(item.amount),
                                 "x-ratelimit-remaining-tokens": str(stats.remaining),
                                 "x-ratelimit-reset-tokens": format_reset(reset)})
                if state is None or stats.remaining < state.remaining:
                    state = LimitState(item.amount, stats.remaining, reset)
        for scope, items in scopes:
            for item in items:
                if not await self._tok.hit(item, "tok", ident, scope, cost=max(estimate, 1)):
                    raise TokensRateLimited(  # a parallel request took the room meanwhile
                        f"Rate limit reached for tokens: {item.amount} per {_window(item)}.",
                        headers={"Retry-After": "1", "x-ratelimit-limit-tokens": str(item.amount),
                                 "x-ratelimit-remaining-tokens": "0",
                                 "x-ratelimit-reset-tokens": "1s"})
        return state

    async def settle_tokens(self, client: Client, route: str, model: str | None,
                            reserved: int, actual: int) -> None:
        """Bring a reservation to the real usage: charge the overrun or refund the rest.

        Never raises: the answer was already delivered (or failed), so a storage error here
        is logged and counted, not turned into an error for the client.
        """
        scopes = self._applicable(client, route, model, tokens=True)
        if not scopes:
            return
        reserved = max(reserved, 1) if reserved else 0
        try:
            if actual > reserved:
                await self._guard(self._charge(self._ident(client), scopes, actual - reserved))
            elif actual < reserved:
                await self._guard(self._refund(self._ident(client), scopes, reserved - actual))
        except StorageUnavailable:
            pass  # already logged and counted by _guard

    async def _refund(self, ident: str, scopes, tokens: int) -> None:
        # limits has no public "give back"; its sliding-window counter is a plain counter per
        # window, so the refund decrements the current window's key (at worst, right after a
        # window turned, it lowers the new window instead: in the client's favour).
        storage = self._storage
        decr = getattr(storage, "decr", None) or storage.bridge.decr
        for scope, items in scopes:
            for item in items:
                key = storage.sliding_window_keys(item.key_for("tok", ident, scope),
                                                  item.get_expiry(), time.time())[1]
                await decr(key, tokens)

    async def charge_tokens(self, client: Client, route: str, model: str | None,
                            tokens: int) -> None:
        """Charge what the upstream reported; an overrun empties the budget, never more."""
        scopes = self._applicable(client, route, model, tokens=True)
        if scopes and tokens > 0:
            await self._guard(self._charge(self._ident(client), scopes, tokens))

    async def _charge(self, ident: str, scopes, tokens: int) -> None:
        for scope, items in scopes:
            for item in items:
                if not await self._tok.hit(item, "tok", ident, scope, cost=tokens):
                    stats = await self._tok.get_window_stats(item, "tok", ident, scope)
                    if stats.remaining > 0:
                        await self._tok.hit(item, "tok", ident, scope, cost=stats.remaining)


def _refuse_requests(item: RateLimitItem, reset_at: float):
    retry = max(reset_at - time.time(), 0.0)
    raise RateLimited(
        f"Rate limit reached for requests: {item.amount} per "
        f"{_window(item)}. Please try again in {format_reset(retry)}.",
        headers={"Retry-After": str(max(math.ceil(retry), 1)),
                 "x-ratelimit-limit-requests": str(item.amount),
                 "x-ratelimit-remaining-requests": "0",
                 "x-ratelimit-reset-requests": format_reset(retry)})


def _window(item: RateLimitItem) -> str:
    name = item.GRANULARITY.name
    return name if item.multiples == 1 else f"{item.multiples} {name}s"


def headers(requests: LimitState | None, tokens: LimitState | None) -> dict[str, str]:
    out = {}
    if requests is not None:
        out["x-ratelimit-limit-requests"] = str(requests.limit)
        out["x-ratelimit-remaining-requests"] = str(requests.remaining)
        out["x-ratelimit-reset-requests"] = format_reset(requests.reset)
    if tokens is not None:
        out["x-ratelimit-limit-tokens"] = str(tokens.limit)
        out["x-ratelimit-remaining-tokens"] = str(tokens.remaining)
        out["x-ratelimit-reset-tokens"] = format_reset(tokens.reset)
    return out

"""The in-process store (`memory://`): moving windows, counters and cached bytes of one process.

It is also a `limits.aio.storage.Storage` of our own (registered as "async+gateway-memory",
with `MovingWindowSupport`), so its moving windows are limits' storage interface, the same door
the Redis store reaches limits' own Redis storage through; its counting follows limits'
`MemoryStorage` exactly (tests compare the two). Nothing here awaits anything: no other
coroutine can interleave with a call, so counting is exact without a lock.

Why it is cheap:
- a moving window is a list of entry expiry times as floats, newest first: about 33 bytes an
  entry instead of 105 for limits' `Entry` object, and nothing for the garbage collector to
  traverse (a day limit keeps one entry per request for a day). An allowed hit trims the list
  to the entries still in the window, so it never holds more than `limit`.
- a counter is one list `[value, expires at]`; the sliding windows are two counters each.
- idle keys are forgotten by a sweep every SWEEP_SECONDS, run in the event loop in batches of
  SWEEP_BATCH keys (one pass over a million keys held the loop for ~70 ms; threads, as limits
  uses, cost more than the work).
- cached answers live in a byte-bounded LRU (`BoundedMemoryCache`), read in place.
"""
from __future__ import annotations

import asyncio
import bisect
import operator
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence

from aiocache.serializers import NullSerializer
from limits.aio.storage import MovingWindowSupport, Storage

from .base import Store
from .batch import Batch
from .memory_cache import BoundedMemoryCache

#: What a cached entry costs besides its value (key string, dict slot, deadline), so that the
#: cache's byte bound bounds the process's memory, not only the stored bodies.
ENTRY_OVERHEAD = 400


class MemoryStore(Store, Storage, MovingWindowSupport):
    STORAGE_SCHEME = ["async+gateway-memory"]
    kind = "memory"
    SWEEP_SECONDS = 5.0
    SWEEP_BATCH = 10_000  # keys per event-loop iteration: ~0.7 ms

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, *,
                 cache_bytes: int = 64 * 1024 * 1024, **options):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.moving = self
        self.events: dict[str, list[float]] = {}  # moving windows: expiry times, newest first
        self.counters: dict[str, list] = {}  # counters: [value, expires at]
        self.cache = BoundedMemoryCache(cache_bytes, ENTRY_OVERHEAD, timeout=None,
                                        serializer=NullSerializer(encoding=None))
        self._sweeper: asyncio.Task | None = None
        self._next_sweep = 0.0

    @property
    def base_exceptions(self) -> tuple[type[Exception], ...]:
        return ()  # nothing here does I/O: there is no storage error to translate

    def cache_backend(self) -> BoundedMemoryCache:
        return self.cache

    def bound_cache(self, max_bytes: int) -> None:
        self.cache.max_bytes = max_bytes

    # --- moving windows (limits' MovingWindowSupport) ---------------------------------------

    def acquire_now(self, key: str, limit: int, expiry: int, amount: int = 1) -> list | None:
        """limits' moving-window hit: the `limit - amount`-th newest entry decides. Returns the
        key's entries when allowed (newest first, all inside the window), None when refused."""
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

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.acquire_now(key, limit, expiry, amount) is not None

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """(start of the window, entries in it), from expiry times."""
        timestamp = time.time()
        if events := self.events.get(key):
            inside = bisect.bisect_left(events, -timestamp, key=operator.neg)  # newest first
            if inside:
                return events[inside - 1] - expiry, inside
        return timestamp, 0

    # --- counters: the batch primitives of the sliding windows ------------------------------

    def _live(self, key: str, now: float) -> list | None:
        entry = self.counters.get(key)
        return entry if entry is not None and entry[1] > now else None

    async def get_many(self, keys: Iterable[str]) -> Batch[bytes]:
        now, values = time.time(), {}
        for key in keys:
            entry = self._live(key, now)
            if entry is not None:
                values[key] = entry[0]
            else:
                cached = self.cache.lookup(key)
                if cached is not None:
                    values[key] = cached
        return Batch(values)

    async def incr_many(self, items: Iterable[tuple[str, int, int]],
                        existing: Collection[str] = ()) -> Batch[int]:
        self._schedule_sweep()
        now, values = time.time(), {}
        for key, amount, ttl in items:
            entry = self._live(key, now)
            if entry is None:  # created with its TTL, never pushed back by later hits
                entry = self.counters[key] = [0, now + ttl]
            entry[0] += amount
            values[key] = entry[0]
        return Batch(values)

    async def decr_many(self, items: Iterable[tuple[str, int]]) -> Batch[int]:
        now, values = time.time(), {}
        for key, amount in items:
            entry = self._live(key, now)
            if entry is None:
                values[key] = 0
                continue
            entry[0] = max(entry[0] - amount, 0)
            values[key] = entry[0]
        return Batch(values)

    async def get_and_incr(self, keys: Sequence[str], items: Sequence[tuple[str, int, int]]
                           ) -> tuple[Batch[bytes], Batch[int]]:
        return await self.get_many(keys), await self.incr_many(items)

    async def _adjust_batch(self, reads, refunds, charges):
        # In order, with nothing to wait for: no task per call, as gather would make.
        return (await self.get_many(reads), await self.decr_many(refunds),
                await self.incr_many(charges))

    # --- fixed-window counters: the base Storage contract ----------------------------------

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        self._schedule_sweep()
        now = time.time()
        entry = self._live(key, now)
        if entry is None:
            entry = self.counters[key] = [0, now + expiry]
        entry[0] += amount
        return entry[0]

    async def get(self, key: str) -> int:
        entry = self._live(key, time.time())
        return entry[0] if entry is not None else 0

    async def get_expiry(self, key: str) -> float:
        entry = self.counters.get(key)
        return entry[1] if entry is not None else time.time()

    async def clear(self, key: str) -> None:
        for table in (self.events, self.counters):
            table.pop(key, None)

    async def reset(self) -> int | None:
        count = len(self.events) + len(self.counters)
        for table in (self.events, self.counters):
            table.clear()
        return count

    async def check(self) -> bool:
        return True

    # --- forgetting idle keys --------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep and (self._sweeper is None or self._sweeper.done()):
            self._next_sweep = now + self.SWEEP_SECONDS
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.cache.close()

    async def _sweep(self) -> None:
        """Forget keys with nothing left in their window. A key is re-checked as it is
        dropped, so one hit while the sweep let other coroutines run is kept (hits change
        the stored lists in place: the value checked is always the live one)."""
        await self._drop(self.events, lambda entries, now: not entries or entries[0] <= now)
        await self._drop(self.counters, lambda entry, now: entry[1] <= now)

    async def _drop(self, table: dict, expired: Callable[[list, float], bool]) -> None:
        async for now, keys, values in self._batches(table):
            for key, value in zip(keys, values, strict=True):
                if expired(value, now) and table.get(key) is value:
                    del table[key]

    async def _batches(self, table: dict) -> AsyncIterator[tuple[float, list, list]]:
        """(now, keys, values) from a snapshot of `table`, SWEEP_BATCH keys at a time with the
        event loop let in between. The snapshot is taken in table order (a lookup per key
        would jump around a table of a million) and released batch by batch, so freeing what
        the sweep dropped is spread over the batches too."""
        batch = self.SWEEP_BATCH
        keys, values = list(table), list(table.values())
        while keys:
            batch_keys, batch_values = keys[-batch:], values[-batch:]
            del keys[-batch:], values[-batch:]
            yield time.time(), batch_keys, batch_values
            await asyncio.sleep(0)

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
- a sliding-window counter is one list `[window index, current, previous, seconds]` per
  window, counted in place: nothing to batch in memory (the shared stores batch theirs).
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
from collections.abc import AsyncIterator, Callable, Sequence

from aiocache.serializers import NullSerializer
from limits.aio.storage import MovingWindowSupport, Storage

from . import windows
from .base import Store
from .batch import Counted, Hit
from .memory_cache import BoundedMemoryCache
from .windows import Stats, Window

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
        self.windows: dict[str, list] = {}  # sliding windows: [index, current, previous, seconds]
        self.plain: dict[str, list] = {}  # limits' fixed-window counters: [count, expires at]
        self.cache = BoundedMemoryCache(cache_bytes, ENTRY_OVERHEAD, timeout=None,
                                        serializer=NullSerializer(encoding=None))
        self._sweeper: asyncio.Task | None = None
        self._next_sweep = 0.0

    @property
    def base_exceptions(self) -> tuple[type[Exception], ...]:
        return ()  # nothing here does I/O: there is no storage error to translate

    def cache_backend(self) -> BoundedMemoryCache:
        return self.cache

    async def read(self, key: str) -> bytes | str | None:
        return self.cache.lookup(key)  # a dict lookup: aiocache's layers cost 4x as much

    async def write(self, key: str, value: bytes, ttl: int) -> None:
        self.cache.store(key, value, ttl)

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

    async def _count_moving(self, hits: Sequence[Hit], out: Counted, fail_open: bool) -> None:
        """limits' moving-window hit and window stats in one pass of our own storage, without
        its async interface: the entries the hit leaves are the window (no second search)."""
        for hit in hits:
            w = hit.window
            events = self.acquire_now(w.key, w.amount, w.seconds, hit.cost)
            if events is None:  # the window is full: its oldest entry leaves first
                current = self.events.get(w.key)
                frees = current[-1] if current else time.time() + w.seconds
                out.moving[w] = Stats(frees, 0)
                out.allowed, out.refused_by = False, w
                return
            out.moving[w] = Stats(events[-1], w.amount - len(events))

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

    # --- sliding-window counters, counted in place -------------------------------------------

    def _now(self, w: Window, now: float) -> tuple[int, int]:
        """(previous, current) of the window at `now`, without creating it."""
        counter = self.windows.get(w.key)
        if counter is None:
            return 0, 0
        index = int(now / w.seconds)
        if counter[0] == index:
            return counter[2], counter[1]
        return (counter[1], 0) if counter[0] == index - 1 else (0, 0)

    def _add(self, w: Window, amount: int, now: float) -> None:
        """Count `amount` in the current window (no check: the caller decided)."""
        self._schedule_sweep()
        counter = self.windows.get(w.key)
        if counter is None:
            counter = self.windows[w.key] = [int(now / w.seconds), 0, 0, w.seconds]
        self._rotate(counter, now)
        counter[1] += amount

    def _give_back(self, w: Window, amount: int, at: float, now: float) -> None:
        """Take `amount` back from the window that was current at `at` (never below zero; a
        window that has left the sliding window has nothing to give back)."""
        counter = self.windows.get(w.key)
        if counter is None:
            return
        self._rotate(counter, now)
        index = int(at / w.seconds)
        slot = 1 if index == counter[0] else 2 if index == counter[0] - 1 else 0
        if slot:
            counter[slot] = max(counter[slot] - amount, 0)

    @staticmethod
    def _rotate(counter: list, now: float) -> None:
        """Make the counter's current window the one of `now` (in place: the sweep relies on
        the stored list staying the same object)."""
        index = int(now / counter[3])
        if counter[0] != index:
            counter[2] = counter[1] if counter[0] == index - 1 else 0
            counter[0], counter[1] = index, 0

    async def count(self, hits: Sequence[Hit], *, now: float, reads: Sequence[str] = (),
                    fail_open: bool = True) -> Counted:
        out = Counted(now=now)
        moving = [h for h in hits if h.moving]
        if moving:
            await self._count_moving(moving, out, fail_open)
            if not out.allowed:
                return out
        seen = []
        for h in hits:
            if h.moving:
                continue
            w = h.window
            prev, cur = self._now(w, now)
            if h.cost and out.allowed and windows.overshot(w, prev, cur + h.cost, now):
                out.allowed, out.refused_by = False, w
            seen.append((h, prev, cur))
        for h, prev, cur in seen:  # all or nothing: counted only when every one had room
            w = h.window
            if out.allowed and h.cost:
                self._add(w, h.cost, now)
                cur += h.cost
            out.counts[w] = (prev, cur)
        for key in reads:
            value = self.cache.lookup(key)
            if value is not None:
                out.extra[key] = value
        return out

    async def adjust(self, refunds: Sequence[tuple[Window, int, float]],
                     charges: Sequence[tuple[Window, int]], *, now: float,
                     also: Sequence[Window] = ()) -> dict[Window, tuple[int, int]]:
        for w, amount, at in refunds:
            self._give_back(w, amount, at, now)
        for w, amount in charges:
            prev, cur = self._now(w, now)
            room = windows.remaining(w, prev, cur, now)
            if room:  # an overrun empties the budget, never more
                self._add(w, min(amount, room), now)
        touched = [*(w for w, _, _ in refunds), *(w for w, _ in charges), *also]
        return {w: self._now(w, now) for w in touched}

    async def counts(self, wins: Sequence[Window], *, now: float
                     ) -> dict[Window, tuple[int, int]]:
        return {w: self._now(w, now) for w in wins}

    # --- fixed-window counters: the base Storage contract ----------------------------------

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        self._schedule_sweep()
        now = time.time()
        entry = self.plain.get(key)
        if entry is None or entry[1] <= now:
            entry = self.plain[key] = [0, now + expiry]
        entry[0] += amount
        return entry[0]

    async def get(self, key: str) -> int:
        entry = self.plain.get(key)
        return entry[0] if entry is not None and entry[1] > time.time() else 0

    async def get_expiry(self, key: str) -> float:
        entry = self.plain.get(key)
        return entry[1] if entry is not None else time.time()

    async def clear(self, key: str) -> None:
        for table in (self.events, self.windows, self.plain):
            table.pop(key, None)

    async def reset(self) -> int | None:
        count = len(self.events) + len(self.windows) + len(self.plain)
        for table in (self.events, self.windows, self.plain):
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
        await self._drop(self.windows, lambda c, now: (c[0] + 2) * c[3] <= now)
        await self._drop(self.plain, lambda entry, now: entry[1] <= now)

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

"""The gateway's in-process storage for `limits`: moving windows and sliding-window counters.

A `limits.aio.storage.Storage` of our own, registered as "async+gateway-memory", so limits'
public strategies (MovingWindowRateLimiter, SlidingWindowCounterRateLimiter) run on it. The
limiter also calls a synchronous fast path (`acquire_now`, `window_now`, `add_now`,
`give_back_now`): nothing here awaits, so no other coroutine can interleave and no lock is
needed. Counting follows limits' own MemoryStorage exactly (tests compare the two).

Why it is cheap:
- a moving window is a list of entry expiry times as floats, newest first: about 33 bytes an
  entry instead of 105 for limits' `Entry` object, and nothing for the garbage collector to
  traverse (a day limit keeps one entry per request for a day). An allowed hit trims the list
  to the entries still in the window, so it never holds more than `limit`.
- a sliding-window counter is one list `[window number, current count, previous count,
  expiry]` per limit, not two keys.
- idle keys are forgotten by a sweep every SWEEP_SECONDS, run in the event loop in batches of
  SWEEP_BATCH keys (one pass over a million keys held the loop for ~70 ms; threads, as limits
  uses, cost more than the work).
"""
from __future__ import annotations

import asyncio
import bisect
import math
import operator
import time
from collections.abc import AsyncIterator, Callable

from limits.aio.storage import MovingWindowSupport, SlidingWindowCounterSupport, Storage

#: (previous count, seconds the previous window still weighs, current count, its TTL):
#: what limits' `get_sliding_window` returns.
Window = tuple[int, float, int, float]


class MemoryStore(Storage, MovingWindowSupport, SlidingWindowCounterSupport):
    STORAGE_SCHEME = ["async+gateway-memory"]
    SWEEP_SECONDS = 5.0
    SWEEP_BATCH = 10_000  # keys per event-loop iteration: ~0.7 ms

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.events: dict[str, list[float]] = {}  # moving windows: expiry times, newest first
        self.counters: dict[str, list] = {}  # sliding-window counters: [window, cur, prev, expiry]
        self.plain: dict[str, list] = {}  # fixed-window counters: [count, expires at]
        self._sweeper: asyncio.Task | None = None
        self._next_sweep = 0.0

    @property
    def base_exceptions(self) -> tuple[type[Exception], ...]:
        return ()  # nothing here does I/O: there is no storage error to translate

    # --- moving window ---------------------------------------------------------------------

    def acquire_now(self, key: str, limit: int, expiry: int, amount: int = 1) -> list | None:
        """limits' moving-window hit: the `limit - amount`-th newest entry decides. Returns the
        key's entries when allowed (newest first, all inside the window, so their count is the
        window's count), None when refused."""
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

    def frees_at(self, key: str, expiry: int) -> float:
        """When a full moving window has room again: its oldest entry leaves."""
        events = self.events.get(key)
        return events[-1] if events else time.time() + expiry

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.acquire_now(key, limit, expiry, amount) is not None

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """(start of the window, entries in it), from expiry times."""
        timestamp = time.time()
        if events := self.events.get(key):
            inside = bisect.bisect_left(events, -timestamp, key=operator.neg)  # newest first
            return events[inside - 1] - expiry, inside
        return timestamp, 0

    # --- sliding-window counter ------------------------------------------------------------

    def window_now(self, key: str, expiry: int, now: float) -> Window:
        """limits' `get_sliding_window` answer at `now`, without creating the key."""
        counter = self.counters.get(key)
        current = previous = 0
        if counter is not None:
            window = int(now / expiry)
            if counter[0] == window:
                current, previous = counter[1], counter[2]
            elif counter[0] == window - 1:
                previous = counter[1]
        # limits' own arithmetic, kept as it is so decisions agree to the last bit.
        previous_ttl = (1 - (((now - expiry) / expiry) % 1)) * expiry if previous else 0.0
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous, previous_ttl, current, current_ttl

    def add_now(self, key: str, expiry: int, amount: int, now: float) -> None:
        """Count `amount` in the current window (no check: the caller decided)."""
        self._schedule_sweep()
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters[key] = [int(now / expiry), 0, 0, expiry]
        self._rotate(counter, now)
        counter[1] += amount

    def give_back_now(self, key: str, expiry: int, amount: int, at: float) -> None:
        """Take `amount` back from the window that was current at `at` (never below zero; a
        window that has left the sliding window has nothing to give back)."""
        counter = self.counters.get(key)
        if counter is None:
            return
        self._rotate(counter, time.time())
        window = int(at / expiry)
        slot = 1 if window == counter[0] else 2 if window == counter[0] - 1 else 0
        if slot:
            counter[slot] = max(counter[slot] - amount, 0)

    @staticmethod
    def _rotate(counter: list, now: float) -> None:
        """Make the counter's current window the one of `now` (in place: the sweep relies on
        the stored list staying the same object)."""
        window = int(now / counter[3])
        if counter[0] != window:
            counter[2] = counter[1] if counter[0] == window - 1 else 0
            counter[0], counter[1] = window, 0

    async def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int,
                                           amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = time.time()
        previous, previous_ttl, current, _ = self.window_now(key, expiry, now)
        if math.floor(previous * previous_ttl / expiry + current) + amount > limit:
            return False
        self.add_now(key, expiry, amount, now)
        return True

    async def get_sliding_window(self, key: str, expiry: int) -> Window:
        return self.window_now(key, expiry, time.time())

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        self.counters.pop(key, None)

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
        for table in (self.events, self.counters, self.plain):
            table.pop(key, None)

    async def reset(self) -> int | None:
        count = len(self.events) + len(self.counters) + len(self.plain)
        for table in (self.events, self.counters, self.plain):
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

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def _sweep(self) -> None:
        """Forget keys with nothing left in their window. A key is re-checked as it is
        dropped, so one hit while the sweep let other coroutines run is kept (hits change
        the stored lists in place: the value checked is always the live one)."""
        await self._drop(self.events, lambda entries, now: not entries or entries[0] <= now)
        await self._drop(self.counters, lambda c, now: (c[0] + 2) * c[3] <= now)
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

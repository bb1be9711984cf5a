"""Realtime sessions open at once per caller (`realtime.max_sessions`), counted in the store,
so the limit holds across the processes and VMs that share it.

A process that dies must not hold its callers' slots for ever, and no store can list keys or
extend a counter's life, so a session is not one counter for its whole life. It is counted in
a window of `period` seconds of the store's own sliding-window counters (the interface every
store offers: `count`, `adjust`): one counter per caller and bucket of `period` seconds, read
as of the bucket's start, when the previous bucket still weighs whole. So the sessions open
now are those counted in the current bucket or the previous one:
- opening: counted in the current bucket if, with the previous one, the caller has fewer than
  `max_sessions` (the store counts and re-checks: two processes opening at once cannot both
  pass); else 429 `too_many_sessions`;
- living: early in each bucket, each process moves its open sessions from the bucket they were
  counted in to the current one (one store call for all of them). Until it does they are still
  counted, in the previous bucket;
- closing: the session is taken out of the bucket it is counted in;
- a process that dies moves nothing any more: its sessions stop counting when their bucket is
  no longer the previous one, within two buckets (`2 * period`, a minute by default). That is
  also the longest a slot can stay taken too long; never too short while the process keeps its
  loop (a move late by more than a whole bucket would under-count).
With the store failing, `storage.on_error` decides as for every counter: "open" lets the
session start uncounted, "closed" refuses it (503).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import TooManySessions
from ..store import Hit, Store, Window
from .limiter import StoragePolicy

log = logging.getLogger("gateway.realtime")

#: Seconds of one bucket: a dead process's sessions free their slots within two of them.
PERIOD = 30
#: How far before a bucket's end its counts are read when a move charges it: the previous
#: bucket then weighs nothing, so a move is clamped by the current bucket alone.
_BEFORE_END = 0.001


@dataclass(eq=False, slots=True)
class Slot:
    """One open session's place: its caller's window and the bucket it is counted in."""

    window: Window
    bucket: int
    released: bool = False


class SessionSlots:
    """Built once per process on its store; `configure(limit)` on every reload."""

    def __init__(self, store: Store, policy: StoragePolicy, ident: Callable[[object], str], *,
                 period: int = PERIOD, clock: Callable[[], float] = time.time):
        self.store, self.policy, self._ident = store, policy, ident
        self.period, self._clock = period, clock
        self.limit = 0
        #: The open sessions of this process (moved to each new bucket).
        self.live: set[Slot] = set()

    def configure(self, limit: int) -> None:
        self.limit = limit

    def _bucket(self) -> int:
        return int(self._clock() // self.period)

    async def acquire(self, caller) -> Slot | None:
        """A slot for one more session of `caller`; TooManySessions (429) when its
        `max_sessions` are open. None: the store failed and `storage.on_error` is "open" (the
        session starts uncounted); StorageUnavailable (503) when "closed"."""
        w = Window("rt/open/" + self._ident(caller), self.limit, self.period)
        bucket = self._bucket()
        policy = self.policy
        try:
            counted = await self.store.count([Hit(w)], now=float(bucket * self.period),
                                             fail_open=policy.fail_open)
        except Exception as exc:  # any store failure means "not counted"
            policy.failed(exc)  # raises when on_error is "closed"
            return None
        if counted.error is not None:
            policy.failed(counted.error)
            return None
        if not counted.allowed:
            raise TooManySessions(
                f"Too many realtime sessions open: this gateway allows {self.limit} at once "
                "per caller (realtime.max_sessions). Close one and try again.",
                headers={"Retry-After": str(self.period)})
        slot = Slot(w, bucket)
        self.live.add(slot)
        return slot

    async def release(self, slot: Slot | None) -> None:
        """The session ended: it leaves the bucket it is counted in (once; a failure is
        logged, and the slot frees itself within two buckets)."""
        if slot is None or slot.released:
            return
        slot.released = True
        self.live.discard(slot)
        try:
            await self.store.adjust([(slot.window, 1, float(slot.bucket * self.period))], [],
                                    now=self._clock())
        except Exception as exc:
            self.policy.failed(exc, refuse=False)

    async def refresh(self) -> None:
        """Move every open session of this process counted in an earlier bucket to the
        current one (one store call)."""
        bucket = self._bucket()
        moved: dict[tuple[str, int], list[Slot]] = {}
        for slot in self.live:
            if slot.bucket < bucket:
                moved.setdefault((slot.window.key, slot.bucket), []).append(slot)
        if not moved:
            return
        refunds, charges = [], []
        for slots in moved.values():
            w, n = slots[0].window, len(slots)
            refunds.append((w, n, float(slots[0].bucket * self.period)))
            charges.append((w, n))
        try:
            await self.store.adjust(refunds, charges,
                                    now=(bucket + 1) * self.period - _BEFORE_END)
        except Exception as exc:
            self.policy.failed(exc, refuse=False)
            return
        for slots in moved.values():
            for slot in slots:
                slot.bucket = bucket

    async def _refreshing(self) -> None:
        while True:
            await self.refresh()
            # Early in each bucket (spread over its first tenth, so that processes do not all
            # write at once): until then its sessions count in the previous one.
            wait = (self._bucket() + 1) * self.period - self._clock()
            await asyncio.sleep(max(wait, 0) + random.uniform(0, self.period / 10))

    @contextlib.asynccontextmanager
    async def running(self):
        """Move the open sessions to each new bucket while the app runs."""
        task = asyncio.create_task(self._refreshing())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

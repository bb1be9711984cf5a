"""Realtime sessions open at once per caller (`realtime.max_sessions`), counted in the store,
so the limit holds across the processes and VMs that share it.

A process that dies must not hold its callers' slots for ever, and the store can neither list
keys nor extend a counter's life, so a session is not one counter for its whole life. Time is
cut into buckets of `period` seconds, and a caller has one counter per bucket: the sessions
that declared themselves alive for it. A session is counted in the bucket it starts in and
the next one; while it lives, its process counts it in each next bucket as that bucket's
predecessor begins (one batched `incr` per process and bucket, every caller at once). So at
any moment a live session is counted in the current bucket, and the current counter is the
number of sessions open:
- opening: both counters are incremented; when the current one passes the limit, both are
  given back and the session is refused (429 `too_many_sessions`). The store's `incr` is
  atomic, so two processes opening at once cannot both pass;
- closing: the counters it was counted in, from the current one on, are decremented;
- a process that dies stops counting its sessions: their slots are free again after at most
  two buckets (`2 * period`, a minute by default), when the buckets they were counted in are
  past. That is also the longest a slot can stay taken too long; never too short while the
  process keeps its loop (a refresh late by more than a whole bucket would under-count).
Counters live three buckets (TTL) and are never read after that.

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
from ..store import Store
from .limiter import StoragePolicy

log = logging.getLogger("gateway.realtime")

#: Seconds of one bucket: a dead process's sessions free their slots within two of them.
PERIOD = 30


@dataclass(eq=False, slots=True)
class Slot:
    """One open session's place: its caller's counter prefix and the last bucket it is
    counted in."""

    key: str
    registered: int
    released: bool = False


class SessionSlots:
    """Built once per process on its store; `configure(limit)` on every reload."""

    def __init__(self, store: Store, policy: StoragePolicy, ident: Callable[[object], str], *,
                 period: int = PERIOD, clock: Callable[[], float] = time.time):
        self.store, self.policy, self._ident = store, policy, ident
        self.period, self._clock = period, clock
        self.limit = 0
        #: The open sessions of this process (their buckets are refreshed).
        self.live: set[Slot] = set()

    def configure(self, limit: int) -> None:
        self.limit = limit

    def _bucket(self) -> int:
        return int(self._clock() // self.period)

    def _items(self, key: str, buckets, amount: int = 1) -> list[tuple[str, int, int]]:
        return [(f"{key}/{b}", amount, 3 * self.period) for b in buckets]

    async def acquire(self, caller) -> Slot | None:
        """A slot for one more session of `caller`; TooManySessions (429) when its
        `max_sessions` are open. None: the store failed and `storage.on_error` is "open" (the
        session starts uncounted); StorageUnavailable (503) when "closed"."""
        key = "rt/open/" + self._ident(caller)
        now = self._bucket()
        items = self._items(key, (now, now + 1))
        try:
            batch = await self.store.incr_many(items)
            batch.raise_failed()
        except Exception as exc:  # any store failure means "not counted"
            with contextlib.suppress(Exception):
                await self.store.decr_many([(k, 1) for k, _, _ in items])
            self.policy.failed(exc)  # raises when on_error is "closed"
            return None
        if batch.values[items[0][0]] > self.limit:
            with contextlib.suppress(Exception):  # a failure here over-counts: the safe side
                await self.store.decr_many([(k, 1) for k, _, _ in items])
            raise TooManySessions(
                f"Too many realtime sessions open: this gateway allows {self.limit} at once "
                "per caller (realtime.max_sessions). Close one and try again.",
                headers={"Retry-After": str(self.period)})
        slot = Slot(key, now + 1)
        self.live.add(slot)
        return slot

    async def release(self, slot: Slot | None) -> None:
        """The session ended: its counters, from the current bucket on, are given back (once;
        a failure is logged and the slot frees itself within two buckets)."""
        if slot is None or slot.released:
            return
        slot.released = True
        self.live.discard(slot)
        now = self._bucket()
        counted = range(now, slot.registered + 1)
        if not counted:
            return
        try:
            (await self.store.decr_many([(f"{slot.key}/{b}", 1) for b in counted])
             ).raise_failed()
        except Exception as exc:
            self.policy.failed(exc, refuse=False)

    async def refresh(self) -> None:
        """Count every open session of this process in the next bucket (where not yet)."""
        target = self._bucket() + 1
        due = [slot for slot in self.live if slot.registered < target]
        if not due:
            return
        per_key: dict[str, int] = {}
        for slot in due:
            per_key[slot.key] = per_key.get(slot.key, 0) + 1
        try:
            batch = await self.store.incr_many(
                [item for key, n in per_key.items() for item in self._items(key, (target,), n)])
        except Exception as exc:
            self.policy.failed(exc, refuse=False)
            return
        failed = {key.rsplit("/", 1)[0] for key in batch.failed}
        for slot in due:
            if slot.key not in failed and not slot.released:
                slot.registered = target
        if batch.failed:
            self.policy.failed(next(iter(batch.failed.values())), refuse=False)

    async def _refreshing(self) -> None:
        while True:
            await self.refresh()
            # Early in each bucket (spread over its first tenth, so that processes do not all
            # write at once): the whole bucket is left to count the next one.
            wait = (self._bucket() + 1) * self.period - self._clock()
            await asyncio.sleep(max(wait, 0) + random.uniform(0, self.period / 10))

    @contextlib.asynccontextmanager
    async def running(self):
        """Refresh the open sessions' buckets while the app runs."""
        task = asyncio.create_task(self._refreshing())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

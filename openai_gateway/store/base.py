"""The one interface the gateway's state goes through: memory, a memcached ring or Redis, chosen
once at start (`open_store`).

Every store offers the same four things (`Store`):
- `count(hits, reads=...)`: count a request against windows, all that fit or none (a moving
  window where the store keeps one, else a sliding-window counter), reading other keys (the
  cache entry) along, in as few round trips as the store allows;
- `adjust(...)`: give back or charge units after an answer (budgets settled to the usage);
- `counts(...)`: read windows without counting (reports);
- `cache_backend()`: the aiocache backend of its bytes, for the prompt cache, and `read` and
  `write` of one entry (memory answers in place, without aiocache's per-call layers).
Moving windows are `limits`' storage interface (`MovingWindowSupport`), ours in memory, limits'
own on Redis. The two shared stores count their sliding-window counters with one batched
algorithm (`BatchedStore`, `sliding.count`) over four primitives each implements (`get_many`,
`incr_many`, `decr_many`, `get_and_incr`), to keep a request to one round trip; memory counts
its own in place, with nothing to batch. Both read the one window arithmetic (windows.py).

A batch touches several servers; one of them may be down while the others answer. Results
keep both, key by key, so a caller applies its fail-open/fail-closed policy only to the windows
whose keys failed and stays exact for the rest.
"""
from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Sequence
from typing import ClassVar

from aiocache.base import BaseCache
from limits.aio.storage import MovingWindowSupport

from . import sliding, windows
from .batch import Batch, Counted, Hit
from .errors import StoreError
from .windows import Stats, Window


class Store(ABC):
    """Counters, moving windows and bytes with TTLs, behind one async interface."""

    #: "memory", "memcached" or "redis".
    kind: ClassVar[str]
    #: limits' moving-window storage, where the store keeps moving windows (None: memcached,
    #: where limits implements none).
    moving: MovingWindowSupport | None = None

    # --- what the gateway asks ------------------------------------------------------------

    @abstractmethod
    async def count(self, hits: Sequence[Hit], *, now: float, reads: Sequence[str] = (),
                    fail_open: bool = True) -> Counted:
        """Count every hit if all have room, reading `reads` along. Moving windows go first
        and are each counted as they are checked (limits' own behaviour: an earlier limit's
        entry stays when a later one refuses); a refused one ends the call. The sliding hits
        are all or nothing among themselves. With `fail_open=False` any failed window refuses
        (nothing of the sliding hits is then counted)."""

    @abstractmethod
    async def adjust(self, refunds: Sequence[tuple[Window, int, float]],
                     charges: Sequence[tuple[Window, int]], *, now: float,
                     also: Sequence[Window] = ()) -> dict[Window, tuple[int, int]]:
        """Budgets after an answer: each refund (window, units, when it was taken) goes back
        to the window current then (never below zero); each charge is counted now, but never
        past the window's amount (an overrun empties a budget, never more). Returns the
        (previous, current) afterwards of these windows and of `also`; raises the first
        storage failure once every write was sent."""

    @abstractmethod
    async def counts(self, wins: Sequence[Window], *, now: float
                     ) -> dict[Window, tuple[int, int]]:
        """(previous, current) of each window now, counting nothing; raises on failure."""

    async def _count_moving(self, hits: Sequence[Hit], out: Counted, fail_open: bool) -> None:
        """Moving windows through limits' storage interface (`self.moving`)."""
        storage = self.moving
        if storage is None:
            raise ValueError(f"{self.kind} keeps no moving windows (use the sliding counter)")
        for hit in hits:
            w = hit.window
            try:
                allowed = await self._guard(storage.acquire_entry(w.key, w.amount, w.seconds,
                                                                  hit.cost))
                start, inside = await self._guard(
                    storage.get_moving_window(w.key, w.amount, w.seconds))
            except StoreError as exc:
                out.fail(w, exc)
                if not fail_open:
                    out.allowed = False
                    return
                continue
            out.moving[w] = Stats(start + w.seconds, max(w.amount - inside, 0))
            if not allowed:
                out.allowed, out.refused_by = False, w
                return

    async def _guard(self, call):
        """Await a call to the moving-window storage, its failures as `StoreError`s."""
        return await call

    @abstractmethod
    def cache_backend(self) -> BaseCache:
        """The aiocache backend over this store's bytes (keys as given: hash them)."""

    async def read(self, key: str) -> bytes | str | None:
        """One entry's bytes (the prompt cache's read when nothing is counted along)."""
        return await self.cache_backend().get(key)

    async def write(self, key: str, value: bytes, ttl: int) -> None:
        """Keep `value` under `key` for `ttl` seconds (the prompt cache's write)."""
        await self.cache_backend().set(key, value, ttl=ttl)

    def bound_cache(self, max_bytes: int) -> None:  # noqa: B027 - only memory has one
        """The bound of the cache's bytes in this process (memory; shared stores bound
        themselves)."""

    # --- health and lifetime --------------------------------------------------------------

    async def ping(self) -> list[str]:
        """The servers down after asking each that is up (for /readyz)."""
        return []

    def down_servers(self) -> list[str]:
        return []

    def server_states(self) -> list[tuple[str, bool]]:
        """(server, up) for every server, in configuration order."""
        return []

    async def close(self) -> None:  # noqa: B027 - a store may hold nothing to release
        """Release connections and background tasks."""


class BatchedStore(Store):
    """A store whose calls cross a network (the memcached ring, Redis): its sliding-window
    counters are counted in batches, a request's counters and its cache read in one round
    trip (sliding.count), an answer's settlement in one more."""

    async def count(self, hits: Sequence[Hit], *, now: float, reads: Sequence[str] = (),
                    fail_open: bool = True) -> Counted:
        """Count every hit if all have room, reading `reads` along. Moving windows go first
        and are each counted as they are checked (limits' own behaviour: an earlier limit's
        entry stays when a later one refuses); a refused one ends the call. The sliding hits
        are all or nothing among themselves. With `fail_open=False` any failed window refuses
        (nothing of the sliding hits is then counted)."""
        out = Counted(now=now)
        moving = [h for h in hits if h.moving]
        if moving:
            await self._count_moving(moving, out, fail_open)
            if not out.allowed:
                return out
        sliding_hits = [h for h in hits if not h.moving]
        if sliding_hits or reads:
            await sliding.count(self, sliding_hits, now=now, reads=reads, fail_open=fail_open,
                                out=out)
        return out

    async def adjust(self, refunds: Sequence[tuple[Window, int, float]],
                     charges: Sequence[tuple[Window, int]], *, now: float,
                     also: Sequence[Window] = ()) -> dict[Window, tuple[int, int]]:
        """Budgets after an answer, in one round trip (a second only to clamp): each refund
        (window, units, when it was taken) goes back to the window current then (never below
        zero); each charge is counted now, but never past the window's amount (an overrun
        empties a budget, never more). Returns the (previous, current) afterwards of these
        windows and of `also`; raises the first storage failure once every write was sent."""
        touched = dict.fromkeys([*(w for w, _, _ in refunds), *(w for w, _ in charges), *also])
        keys = {w: windows.keys(w, now) for w in touched}
        back = [(windows.keys(w, at)[1], amount) for w, amount, at in refunds]
        more = [(keys[w][1], amount, w.ttl) for w, amount in charges]
        written = {k for k, _ in back} | {k for k, _, _ in more}
        reads = [k for w in touched for k in keys[w] if k not in written]
        got, given, charged = await self._adjust_batch(reads, back, more)
        for batch in (got, given, charged):
            batch.raise_failed()
        values = {k: windows.count(v) for k, v in got.values.items()}
        values.update(given.values)
        values.update(charged.values)
        out, clamp = {}, []
        for w in touched:
            prev_key, cur_key = keys[w]
            prev, cur = values.get(prev_key, 0), values.get(cur_key, 0)
            if cur_key in charged.values:
                over = math.floor(windows.weighted(w, prev, cur, now)) - w.amount
                if over > 0:  # an overrun empties the budget, never more
                    excess = min(over, sum(a for k, a, _ in more if k == cur_key))
                    clamp.append((cur_key, excess))
                    cur -= excess
            out[w] = (prev, cur)
        if clamp:
            (await self.decr_many(clamp)).raise_failed()
        return out

    async def _adjust_batch(self, reads: list[str], refunds: list[tuple[str, int]],
                            charges: list[tuple[str, int, int]]
                            ) -> tuple[Batch[bytes], Batch[int], Batch[int]]:
        got, given, charged = await asyncio.gather(
            self.get_many(reads), self.decr_many(refunds), self.incr_many(charges))
        return got, given, charged

    async def counts(self, wins: Sequence[Window], *, now: float
                     ) -> dict[Window, tuple[int, int]]:
        """(previous, current) of each window now, counting nothing; raises on failure."""
        pairs = [windows.keys(w, now) for w in wins]
        got = await self.get_many([k for pair in pairs for k in pair])
        got.raise_failed()
        return {w: (windows.count(got.values.get(p)), windows.count(got.values.get(c)))
                for w, (p, c) in zip(wins, pairs, strict=True)}

    # --- the batched primitives the sliding counters are built on ---------------------------

    @abstractmethod
    async def get_many(self, keys: Iterable[str]) -> Batch[bytes]:
        """Values of counters and bytes; a missing key is absent."""

    @abstractmethod
    async def incr_many(self, items: Iterable[tuple[str, int, int]],
                        existing: Collection[str] = ()) -> Batch[int]:
        """(key, amount, ttl) -> the new values; a missing counter counts from 0 and gets
        `ttl` seconds. `existing` names keys just read (a hint: correct either way)."""

    @abstractmethod
    async def decr_many(self, items: Iterable[tuple[str, int]]) -> Batch[int]:
        """(key, amount) -> the new values, floored at 0; missing counts as 0."""

    async def get_and_incr(self, keys: Sequence[str], items: Sequence[tuple[str, int, int]]
                           ) -> tuple[Batch[bytes], Batch[int]]:
        """`get_many(keys)` and `incr_many(items)` together (one round trip where it can)."""
        return await self.get_many(keys), await self.incr_many(items)

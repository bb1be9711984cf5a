"""Acquire a hit on several sliding windows at once, in two round trips to the store.

Round trip 1 fetches the previous and current counters of every window (plus any extra keys the
caller wants in the same multi-get, e.g. the cache entry); the decision is made locally.
Round trip 2, only when every window has room, increments every current counter together and
re-checks the values returned. A concurrent hit may have taken the last room in between: then
every increment is given back (a third round trip, only on a lost race) and the hit is refused.

All or nothing: a refused hit counts against no window (limits' `hit`, called per limit, keeps
the earlier limits' increments when a later one refuses).

Windows whose keys failed (server down) are neither checked nor counted: they are listed in
`Acquired.failed` and the caller's storage policy decides. With `fail_open=False` any failure
at round trip 1 ends the call before anything is counted.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from . import windows
from .batch import Batch, BatchStore
from .errors import StoreError
from .windows import Stats, Window


@dataclass
class Acquired:
    #: True when every window that answered had room and was counted.
    allowed: bool
    #: The first window without room (None when allowed or when only a failure refused).
    refused_by: Window | None = None
    #: Remaining and reset of each window that answered, after this hit when it was counted.
    stats: dict[Window, Stats] = field(default_factory=dict)
    #: Windows whose server failed: not decided, not counted.
    failed: list[Window] = field(default_factory=list)
    #: The first failure behind `failed` (names the server), for the log line or a re-raise.
    error: StoreError | None = None
    #: Values of the caller's extra keys from round trip 1 (missing keys absent).
    extra: dict[str, bytes] = field(default_factory=dict)
    #: A concurrent hit took the room between our read and our increment.
    lost_race: bool = False


async def acquire(store: BatchStore, wins: Sequence[Window], *, now: float,
                  cost: int | Sequence[int] = 1, extra_keys: Sequence[str] = (),
                  fail_open: bool = True) -> Acquired:
    """Count a hit on every window of `wins` if all have room at `now`. `cost`: one for all
    windows, or one per window (1 for a request limit, the estimate for a token budget); a
    window of cost 0 is checked (refused only when already over) and not counted."""
    costs = [cost] * len(wins) if isinstance(cost, int) else list(cost)
    if len(costs) != len(wins):
        raise ValueError("one cost per window")
    return await _Hit(store, now, fail_open).run(list(zip(wins, costs, strict=True)),
                                                 extra_keys)


@dataclass
class _Live:
    """A window that answered round trip 1."""

    window: Window
    cost: int
    previous: int
    key: str  # its current counter


@dataclass
class _Hit:
    store: BatchStore
    now: float
    fail_open: bool
    live: list[_Live] = field(default_factory=list)

    async def run(self, hits: list[tuple[Window, int]], extra_keys: Sequence[str]) -> Acquired:
        pairs = [windows.keys(w, self.now) for w, _ in hits]
        fetched = await self.store.get_many([k for pair in pairs for k in pair]
                                            + list(extra_keys))
        out = Acquired(True, extra={k: fetched.values[k] for k in extra_keys
                                    if k in fetched.values})
        for (w, cost), (prev_key, cur_key) in zip(hits, pairs, strict=True):
            if prev_key in fetched.failed or cur_key in fetched.failed:
                _fail(out, w, fetched)
                continue
            prev = windows.count(fetched.values.get(prev_key))
            cur = windows.count(fetched.values.get(cur_key))
            out.stats[w] = windows.stats(w, prev, cur, self.now)
            if out.refused_by is None and not windows.has_room(w, prev, cur, self.now, cost):
                out.allowed, out.refused_by = False, w
            if cost:
                self.live.append(_Live(w, cost, prev, cur_key))
        if out.failed and not self.fail_open:
            out.allowed = False
        if not out.allowed or not self.live:
            return out
        # Counters read a moment ago exist: the store need not create them (memcached: one
        # command per key instead of two).
        existing = {x.key for x in self.live if x.key in fetched.values}
        counted = await self.store.incr_many(
            [(x.key, x.cost, x.window.ttl) for x in self.live], existing)
        return await self._check(out, counted)

    async def _check(self, out: Acquired, counted: Batch[int]) -> Acquired:
        for x in self.live:
            if x.key in counted.failed:
                _fail(out, x.window, counted)
                out.stats.pop(x.window, None)
                out.allowed = out.allowed and self.fail_open
                continue
            cur = counted.values[x.key]
            out.stats[x.window] = windows.stats(x.window, x.previous, cur, self.now)
            if windows.overshot(x.window, x.previous, cur, self.now):
                out.allowed, out.lost_race = False, True
                out.refused_by = out.refused_by or x.window
        if not out.allowed:
            given_back = await self.store.decr_many([(x.key, x.cost) for x in self.live
                                                     if x.key in counted.values])
            for x in self.live:
                if x.key in given_back.values:
                    out.stats[x.window] = windows.stats(x.window, x.previous,
                                                        given_back.values[x.key], self.now)
        return out


def _fail(out: Acquired, w: Window, batch: Batch) -> None:
    out.failed.append(w)
    if out.error is None:
        out.error = next(iter(batch.failed.values()))


def charges(wins: Sequence[Window], amount: int, now: float) -> list[tuple[str, int, int]]:
    """`incr_many` items that charge `amount` to the current window of each of `wins`
    (budgets settled after the answer, from its usage)."""
    return [(windows.keys(w, now)[1], amount, w.ttl) for w in wins]


@dataclass
class Counted:
    """What `count` did: `acquired` as `acquire` reports it, plus each window's counts."""

    acquired: Acquired
    #: (previous, current) of each window that answered, the current count after this hit
    #: when it was counted, before it when it was refused or not counted.
    counts: dict[Window, tuple[int, int]] = field(default_factory=dict)


async def count(store: BatchStore, wins: Sequence[Window], *, now: float,
                cost: int | Sequence[int] = 1, extra_keys: Sequence[str] = (),
                fail_open: bool = True) -> Counted:
    """`acquire` in one round trip: count first, decide after.

    The previous counters (and `extra_keys`) are read and the current ones incremented in one
    burst. A window is over when its weighted count after the increment exceeds the amount:
    `floor(weighted + cost) > amount` is exactly `acquire`'s `floor(weighted) + cost > amount`
    for an integer cost, so decisions are the same as `acquire`'s (and limits'). A refused hit
    gives every increment back (a second round trip, only when refused); two racing hits for
    the last unit may then both be refused (early, never late), as with `acquire`.
    """
    costs = [cost] * len(wins) if isinstance(cost, int) else list(cost)
    if len(costs) != len(wins):
        raise ValueError("one cost per window")
    pairs = [windows.keys(w, now) for w in wins]
    # A window of cost 0 is only read: its current counter joins the multi-get.
    reads = [p for p, _ in pairs] + [c for (_, c), n in zip(pairs, costs, strict=True) if not n]
    incrs = [(c, n, w.ttl) for w, (_, c), n in zip(wins, pairs, costs, strict=True) if n]
    fetched, counted = await _both(store, reads + list(extra_keys), incrs)
    out = Counted(Acquired(True, extra={k: fetched.values[k] for k in extra_keys
                                        if k in fetched.values}))
    got = out.acquired
    for w, (prev_key, cur_key), n in zip(wins, pairs, costs, strict=True):
        failed = fetched if prev_key in fetched.failed or (
            not n and cur_key in fetched.failed) else counted if cur_key in counted.failed \
            else None
        if failed is not None:
            _fail(got, w, failed)
            continue
        prev = windows.count(fetched.values.get(prev_key))
        cur = counted.values[cur_key] if n else windows.count(fetched.values.get(cur_key))
        if n and got.refused_by is None and windows.overshot(w, prev, cur, now):
            got.allowed, got.refused_by = False, w
        out.counts[w] = (prev, cur)
        got.stats[w] = windows.stats(w, prev, cur, now)
    if got.failed and not fail_open:
        got.allowed = False
    if not got.allowed:
        back = [(c, n) for c, n, _ in incrs if c in counted.values]
        if back:
            await store.decr_many(back)
        for w, n in zip(wins, costs, strict=True):
            if n and w in out.counts:
                prev, cur = out.counts[w]
                out.counts[w] = (prev, cur - n)
                got.stats[w] = windows.stats(w, prev, cur - n, now)
    return out


async def _both(store: BatchStore, reads: list[str], incrs: list[tuple[str, int, int]]
                ) -> tuple[Batch[bytes], Batch[int]]:
    """The multi-get and the increments, sent together (one burst per server)."""
    if not incrs:
        return await store.get_many(reads), Batch()
    return await store.get_and_incr(reads, incrs)

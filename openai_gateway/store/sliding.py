"""Count a hit on several sliding-window counters at once, in one round trip: the one
implementation, for memory, the memcached ring and Redis alike (over their batch primitives).

Count first, decide after: the previous counters (and the caller's `reads`, e.g. the cache
entry) are read and the current ones incremented in one burst. A window is over when its
weighted count after the increment exceeds its amount: `floor(weighted + cost) > amount` is
exactly limits' `floor(weighted) + cost > amount` for an integer cost, so decisions are limits'
(tests/test_store_windows.py compares them with limits' own strategy). A refused hit gives every
increment back (a second round trip, only when refused); two racing hits for the last unit may
then both be refused (early, never late). In memory nothing suspends between the read, the
increment and the give-back, so nothing can interleave: counting there is exact.

All or nothing: a refused hit counts against no window. Windows whose keys failed (server down)
are neither checked nor counted: they are listed in `Counted.failed` and the caller's storage
policy decides; with `fail_open=False` any failure refuses.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Protocol

from . import windows
from .batch import Batch, Counted, Hit


class BatchOps(Protocol):
    async def get_many(self, keys: Iterable[str]) -> Batch[bytes]: ...

    async def decr_many(self, items: Iterable[tuple[str, int]]) -> Batch[int]: ...

    async def incr_many(self, items: Iterable[tuple[str, int, int]],
                        existing: Collection[str] = ()) -> Batch[int]: ...

    async def get_and_incr(self, keys: Sequence[str], items: Sequence[tuple[str, int, int]]
                           ) -> tuple[Batch[bytes], Batch[int]]: ...


async def count(store: BatchOps, hits: Sequence[Hit], *, now: float, reads: Sequence[str] = (),
                fail_open: bool = True, out: Counted | None = None) -> Counted:
    """Count `hits` (sliding windows; a hit of cost 0 is only read) and read `reads`, into
    `out` (a new `Counted` when None)."""
    out = out if out is not None else Counted()
    out.now = now
    pairs = [windows.keys(h.window, now) for h in hits]
    # A window of cost 0 is only read: its current counter joins the multi-get.
    keys = [p for p, _ in pairs] + [c for (_, c), h in zip(pairs, hits, strict=True)
                                    if not h.cost] + list(reads)
    incrs = [(c, h.cost, h.window.ttl) for h, (_, c) in zip(hits, pairs, strict=True) if h.cost]
    if incrs:
        fetched, counted = await store.get_and_incr(keys, incrs)
    else:
        fetched, counted = await store.get_many(keys), Batch()
    out.extra.update((k, fetched.values[k]) for k in reads if k in fetched.values)
    for h, (prev_key, cur_key) in zip(hits, pairs, strict=True):
        w, n = h.window, h.cost
        failed = fetched if prev_key in fetched.failed or (
            not n and cur_key in fetched.failed) else counted if cur_key in counted.failed \
            else None
        if failed is not None:
            out.fail(w, next(iter(failed.failed.values())))
            continue
        prev = windows.count(fetched.values.get(prev_key))
        cur = counted.values[cur_key] if n else windows.count(fetched.values.get(cur_key))
        if n and out.refused_by is None and windows.overshot(w, prev, cur, now):
            out.allowed, out.refused_by = False, w
        out.counts[w] = (prev, cur)
    if out.failed and not fail_open:
        out.allowed = False
    if not out.allowed:
        back = [(c, n) for c, n, _ in incrs if c in counted.values]
        if back:
            await store.decr_many(back)
        for h in hits:
            if h.cost and h.window in out.counts:
                prev, cur = out.counts[h.window]
                out.counts[h.window] = (prev, cur - h.cost)
    return out

"""Sliding-window counters as pure arithmetic over two counts: `limits`' sliding window counter
(`SlidingWindowCounterRateLimiter`), computed from counts fetched in a batch. The one copy of
this arithmetic: request limits, token and dollar budgets and their headers all read it.

A window of `seconds` has a counter per window index (`int(now / seconds)`); the count that
applies now is the previous window's count weighted by the share of it still inside the sliding
window, plus the current window's count. Each counter lives 2 x `seconds` (it serves as
"previous" for one more window). Formulas, key indices and rounding follow limits 5.8
(`aio/storage/memory.py`, `aio/strategies.py`) expression for expression, so decisions agree
with limits' own strategy; tests/test_store_windows.py compares them on random hit sequences.

The two keys of a window share a hash tag (`{key}/index`), so they live on one server.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import floor, inf


@dataclass(slots=True, eq=False)
class Window:
    """`amount` per `seconds` for one counter `key` (ASCII, no spaces, no braces: hash it).

    Compared by identity: a request's windows are built once and are the keys of what the
    store reports about them (hashing three fields on every lookup cost more than the rest).
    Not frozen: built for every request, and a frozen dataclass's __init__ costs three times
    as much; nothing changes one after it is built."""

    key: str
    amount: int
    seconds: int

    @property
    def ttl(self) -> int:
        return 2 * self.seconds


@dataclass(slots=True)
class Stats:
    """As limits' `WindowStats`: when the count next drops (Unix time) and what is left."""

    reset_at: float
    remaining: int


def keys(w: Window, now: float) -> tuple[str, str]:
    """(previous, current) counter keys at `now`."""
    tag = "{" + w.key + "}"
    return f"{tag}/{int((now - w.seconds) / w.seconds)}", f"{tag}/{int(now / w.seconds)}"


def previous_ttl(w: Window, previous: int, now: float) -> float:
    """Seconds the previous window still weighs (0 when it is empty)."""
    if previous == 0:
        return 0.0
    return (1 - (((now - w.seconds) / w.seconds) % 1)) * w.seconds


def current_ttl(w: Window, now: float) -> float:
    return (1 - ((now / w.seconds) % 1)) * w.seconds + w.seconds


def weighted(w: Window, previous: int, current: int, now: float) -> float:
    return previous * previous_ttl(w, previous, now) / w.seconds + current


def has_room(w: Window, previous: int, current: int, now: float, cost: int = 1) -> bool:
    """Whether a hit of `cost` fits (limits' acquire_sliding_window_entry, before its incr)."""
    if cost > w.amount:
        return False
    return floor(weighted(w, previous, current, now)) + cost <= w.amount


def overshot(w: Window, previous: int, current_after: int, now: float) -> bool:
    """After our increment returned `current_after`: did a concurrent hit take the room first?
    Then the increment must be given back (limits does the same decr)."""
    return floor(weighted(w, previous, current_after, now)) > w.amount


def stats(w: Window, previous: int, current: int, now: float) -> Stats:
    """limits' SlidingWindowCounterRateLimiter.get_window_stats over the same counts."""
    remaining = max(0, w.amount - floor(weighted(w, previous, current, now)))
    if not (previous or current):
        return Stats(now, remaining)
    previous_reset_in, current_reset_in = inf, inf
    if previous:
        previous_reset_in = previous_ttl(w, previous, now) % (w.seconds / previous)
    if current:
        current_reset_in = current_ttl(w, now) % w.seconds
    return Stats(now + min(previous_reset_in, current_reset_in), remaining)


def remaining(w: Window, previous: int, current: int, now: float) -> int:
    """What is left of the window's amount (limits' own test: floor(weighted) + n <= amount)."""
    return max(w.amount - floor(weighted(w, previous, current, now)), 0)


def full_reset(w: Window, previous: int, current: int, now: float) -> float:
    """Seconds until nothing counts any more (OpenAI's x-ratelimit-reset-* meaning)."""
    if current:
        return current_ttl(w, now)
    return previous_ttl(w, previous, now) if previous else 0.0


def wait_for(w: Window, previous: int, current: int, now: float, need: int) -> float:
    """Seconds until `need` units fit: the weighted count must fall below amount - need + 1."""
    expiry, room = w.seconds, w.amount - need + 1
    turn = current_ttl(w, now) - expiry  # until the current window becomes the previous one
    if room <= 0:
        return float(expiry)  # more than the whole amount: it never fits
    if current < room:  # the previous window's weight has to shrink, linearly, to zero
        if previous * turn / expiry + current < room:
            return 0.0
        return max(turn - (room - current) * expiry / previous, 0.0)
    # The current count has to become the previous window's and lose enough weight.
    return turn + expiry * (1 - room / current)


def count(raw: bytes | None) -> int:
    """A counter as stored (ASCII digits; memcached may pad a decremented value with spaces)."""
    return int(raw) if raw else 0

"""The in-process cache backend: bounded by bytes, least recently used out first, expiry on read.

An aiocache backend built the documented way (a `BaseCache` subclass implementing the
underscore hooks `BaseCache` declares for backends), so it works with aiocache's `get`/`set`,
its plugins and its locks. The gateway itself reads and writes it in place (`lookup`/`store`).
"""
from __future__ import annotations

import time
from collections import OrderedDict

from aiocache.base import BaseCache
from aiocache.serializers import NullSerializer

#: The deadline of an entry stored without a TTL.
NEVER = float("inf")


class BoundedMemoryCache(BaseCache):
    """A memory cache holding at most `max_bytes` of values (plus `entry_overhead` each).

    Values are bytes or str (their length is what counts against the bound); counters from
    `increment` are kept as decimal text, as memcached keeps them. aiocache's own memory cache
    has no bound and arms `loop.call_later(ttl)` for every set: thousands of hour-long timers
    in the loop's heap, each costing memory and a heap push/pop on the request path. Here an
    entry carries its deadline and a read past it is a miss (and removes it); entries nobody
    reads again leave through the byte bound, like any cold entry.
    """

    NAME = "bounded-memory"

    def __init__(self, max_bytes: int, entry_overhead: int = 0, *, serializer=None, **kwargs):
        # timeout=None: a dict lookup cannot hang, and aiocache's timeout wraps every call in
        # a task (asyncio.wait_for), most of a read's cost.
        kwargs.setdefault("timeout", None)
        super().__init__(serializer=serializer or NullSerializer(), **kwargs)
        # key -> (value, deadline), least recently used first. An OrderedDict, not a dict:
        # both the move to the end on a hit and the eviction of the first entry are O(1). A
        # plain dict used this way leaves a hole at its front per eviction that the next
        # `next(iter())` scans over until a resize compacts it: a full cache slowed every miss
        # by up to 25 us.
        self._entries: OrderedDict[str, tuple[bytes | str, float]] = OrderedDict()
        self.max_bytes = max_bytes
        #: Bytes counted per entry besides its value (key, dict slots, deadline).
        self.entry_overhead = entry_overhead
        #: What the entries count against `max_bytes` now.
        self.bytes = 0

    # --- the in-place fast path (no aiocache layers: timeout, plugins, logging) -------------

    def lookup(self, key: str):
        """The value under `key` (now the most recently used), or None when absent or expired."""
        item = self._entries.get(key)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return item[0]

    def store(self, key: str, value: bytes | str, ttl: float | None = None) -> bool:
        """Keep `value` under `key` for `ttl` seconds (None or 0: until evicted), then evict
        the least recently used entries until the bound holds (a value larger than the whole
        bound is therefore not kept)."""
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old[0]) + self.entry_overhead
        self._entries[key] = (value, time.monotonic() + ttl if ttl else NEVER)
        self.bytes += len(value) + self.entry_overhead
        while self.bytes > self.max_bytes and self._entries:
            _, (evicted, _) = self._entries.popitem(last=False)
            self.bytes -= len(evicted) + self.entry_overhead
        return True

    def items(self) -> list[tuple[str, bytes | str]]:
        """(key, value) pairs, least recently used first; neither refreshes nor expires any."""
        return [(key, value) for key, (value, _) in self._entries.items()]

    def _live(self, key: str) -> bool:
        return self.lookup(key) is not None

    def _remove(self, key: str) -> int:
        """The one way out (delete, expiry, clear, lock release): keeps `bytes` true."""
        item = self._entries.pop(key, None)
        if item is None:
            return 0
        self.bytes -= len(item[0]) + self.entry_overhead
        return 1

    # --- aiocache's backend hooks -------------------------------------------------------------

    async def _get(self, key, encoding="utf-8", _conn=None):
        return self.lookup(key)

    async def _gets(self, key, encoding="utf-8", _conn=None):
        return self.lookup(key)  # the value itself is the CAS token, as in aiocache's memory

    async def _multi_get(self, keys, encoding="utf-8", _conn=None):
        return [self.lookup(key) for key in keys]

    async def _set(self, key, value, ttl=None, _cas_token=None, _conn=None):
        if _cas_token is not None and _cas_token != self.lookup(key):
            return 0
        if not isinstance(value, bytes | str):
            raise TypeError(f"{type(self).__name__} stores bytes or str (bounded by their "
                            f"length), got {type(value).__name__}: use a serializer")
        return self.store(key, value, ttl)

    async def _multi_set(self, pairs, ttl=None, _conn=None):
        for key, value in pairs:
            await self._set(key, value, ttl=ttl)
        return True

    async def _add(self, key, value, ttl=None, _conn=None):
        if self._live(key):
            raise ValueError(f"Key {key} already exists, use .set to update the value")
        return await self._set(key, value, ttl=ttl)

    async def _exists(self, key, _conn=None):
        return self._live(key)

    async def _increment(self, key, delta, _conn=None):
        value = self.lookup(key)
        try:
            number = int(value or 0) + delta
        except ValueError:
            raise TypeError("Value is not an integer") from None
        item = self._entries.get(key)
        ttl = item[1] - time.monotonic() if item is not None and item[1] != NEVER else None
        self.store(key, str(number).encode(), ttl)  # keeps the entry's deadline
        return number

    async def _expire(self, key, ttl, _conn=None):
        value = self.lookup(key)
        if value is None:
            return False
        self._entries[key] = (value, time.monotonic() + ttl if ttl else NEVER)
        return True

    async def _delete(self, key, _conn=None):
        return self._remove(key)

    async def _clear(self, namespace=None, _conn=None):
        for key in [k for k in self._entries if not namespace or k.startswith(namespace)]:
            self._remove(key)
        return True

    async def _raw(self, command, *args, encoding="utf-8", _conn=None, **kwargs):
        # aiocache's memory backend hands its dict to any method name; writes through it would
        # bypass the byte count, so this backend has no raw commands.
        raise NotImplementedError(f"{type(self).__name__} has no raw commands")

    async def _redlock_release(self, key, value):
        return self._remove(key) if self.lookup(key) == value else 0

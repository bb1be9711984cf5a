"""limits' async memcached storage with what the budgets need from it (limits 5.8).

Registered as "async+gateway-memcached"; a later change replaces it with the gateway's own
memcached storage. Two additions, both through public doors:
- `decr`, a reservation's refund: limits' storage has no public decrement, and memcached's
  `incr` takes no negative amount. It sends memcached's own `decr` through a memcachio client of
  its own (memcachio's public API, same servers and same default key hashing as limits' client,
  so a key lands on the same server). memcached stops a decrement at zero.
- `incr` with a TTL over 30 days: memcached reads such a TTL as a Unix time, so limits'
  sliding-window counter of a month (kept for two windows, 60 days) expired at once and never
  counted (verified against memcached 1.6). It is sent as the absolute time it means.
"""
from __future__ import annotations

import time

import memcachio
from limits.aio.storage import MemcachedStorage

from .storage import parse_storage_url

#: memcached's longest relative TTL; a longer one is read as a Unix time (protocol.txt).
RELATIVE_TTL_MAX = 60 * 60 * 24 * 30


class RefundingMemcachedStorage(MemcachedStorage):
    STORAGE_SCHEME = ["async+gateway-memcached"]

    def __init__(self, uri: str, **options):
        super().__init__(uri, **options)
        self._servers = list(parse_storage_url("memcached://" + uri.split("://", 1)[1]).servers)
        self._client: memcachio.Client | None = None

    async def incr(self, key: str, expiry: float, amount: int = 1,
                   set_expiration_key: bool = True) -> int:
        if expiry > RELATIVE_TTL_MAX:
            expiry = time.time() + expiry
        return await super().incr(key, expiry, amount, set_expiration_key=set_expiration_key)

    async def decr(self, key: str, amount: int) -> None:
        """Lower a counter by `amount` (not below zero; a key that expired stays absent)."""
        if self._client is None:
            self._client = memcachio.Client(self._servers)
        await self._client.decr(key.encode(), amount)

    def close(self) -> None:
        if self._client is not None:
            self._client.connection_pool.close()

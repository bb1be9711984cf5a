"""`limits`' async storage interface over the memcached ring, for code that keeps using limits'
own strategies (`SlidingWindowCounterRateLimiter`, `FixedWindowRateLimiter`) on a cluster.

Registered under the scheme `async+memcached+ring` through limits' public storage registry
(`STORAGE_SCHEME`), so `limits.storage.storage_from_string("async+memcached+ring://h:p,h:p")`
builds one; pass `cluster=` to share the process's ring with the cache and the budgets.

Each limits call is its own round trip or two (limits asks one limit at a time); the batched
path (`sliding.acquire`) is what keeps a whole request at two. Failures raise `StoreError` /
`ServerDown`, wrapped in `limits.errors.StorageError` when `wrap_exceptions=True`.
"""
from __future__ import annotations

import asyncio
import time
from math import ceil
from urllib.parse import urlsplit

from limits.aio.storage import SlidingWindowCounterSupport, Storage

from . import windows
from .errors import StoreError
from .memcached import MemcachedCluster
from .sliding import acquire


def _expiry_key(key: str) -> str:
    # As limits' memcached storage: memcached cannot tell a key's TTL, so it is stored beside.
    return key + "/expires"


class RingStorage(Storage, SlidingWindowCounterSupport):
    STORAGE_SCHEME = ["async+memcached+ring"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, *,
                 cluster: MemcachedCluster | None = None, timeout: float = 0.5,
                 **options: float | str | bool) -> None:
        """`uri`: `async+memcached+ring://host:port[,host:port...]`, ignored when `cluster`
        is given. `timeout`: seconds per storage call (storage.timeout)."""
        if cluster is None:
            if not uri:
                raise ValueError("RingStorage needs a uri or a cluster")
            servers = [s.strip() for s in urlsplit(uri).netloc.split(",") if s.strip()]
            cluster = MemcachedCluster(servers, timeout=timeout)
        self.cluster = cluster
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return StoreError

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        ttl = ceil(expiry)
        counted, _ = await asyncio.gather(
            self.cluster.incr_many([(key, amount, ttl)]),
            # `add`: only the hit that creates the counter sets its expiry time.
            self.cluster.add(_expiry_key(key), str(time.time() + expiry).encode(), ttl))
        counted.raise_failed()
        return counted.values[key]

    async def get(self, key: str) -> int:
        return windows.count(await self.cluster.get(key))

    async def get_expiry(self, key: str) -> float:
        raw = await self.cluster.get(_expiry_key(key))
        return float(raw) if raw else time.time()

    async def check(self) -> bool:
        return not await self.cluster.ping()

    async def reset(self) -> int | None:
        raise NotImplementedError("memcached cannot list keys to reset")

    async def clear(self, key: str) -> None:
        await asyncio.gather(self.cluster.delete(key), self.cluster.delete(_expiry_key(key)))

    async def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int,
                                           amount: int = 1) -> bool:
        got = await acquire(self.cluster, [windows.Window(key, limit, expiry)],
                            now=time.time(), cost=amount, fail_open=False)
        if got.error is not None:
            raise got.error
        return got.allowed

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        now = time.time()
        w = windows.Window(key, 0, expiry)
        prev_key, cur_key = windows.keys(w, now)
        fetched = await self.cluster.get_many([prev_key, cur_key])
        fetched.raise_failed()
        prev = windows.count(fetched.values.get(prev_key))
        cur = windows.count(fetched.values.get(cur_key))
        return prev, windows.previous_ttl(w, prev, now), cur, windows.current_ttl(w, now)

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        keys = windows.keys(windows.Window(key, 0, expiry), time.time())
        await asyncio.gather(*(self.cluster.delete(k) for k in keys))

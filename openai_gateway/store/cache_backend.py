"""aiocache's backend interface over the memcached ring: the prompt cache's entries live on the
same servers, placed by the same ring, as the limits' counters (one health table for both).

Built the documented way (a `BaseCache` subclass implementing the underscore hooks BaseCache
declares for backends), so aiocache's `get`/`set`/`add`/`delete`, its serializers and plugins
work over it. Keys are used as given (hash them: memcached keys are at most 250 bytes without
spaces); values must be bytes (use `NullSerializer(encoding=None)`). Failures raise the store's
`StoreError`/`ServerDown`; the caller decides that a failed read is a miss.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from aiocache.base import BaseCache
from aiocache.serializers import NullSerializer

from .batch import Batch


class Bytes(Protocol):
    """What the backend asks of the ring (memcached.MemcachedCluster): bytes with TTLs."""

    async def get(self, key: str) -> bytes | None: ...

    async def get_many(self, keys: Iterable[str]) -> Batch[bytes]: ...

    async def set(self, key: str, value: bytes, ttl: int) -> bool: ...

    async def add(self, key: str, value: bytes, ttl: int) -> bool: ...

    async def delete(self, key: str) -> bool: ...


class RingCache(BaseCache):
    NAME = "memcached-ring"

    def __init__(self, cluster: Bytes, **kwargs):
        kwargs.setdefault("serializer", NullSerializer(encoding=None))
        # timeout=None: the cluster bounds every call itself (storage.timeout); aiocache's
        # own timeout would wrap each call in a task.
        kwargs.setdefault("timeout", None)
        super().__init__(**kwargs)
        self.cluster = cluster

    @staticmethod
    def _ttl(ttl) -> int:
        return int(ttl) if ttl else 0  # memcached: 0 = until evicted

    async def _get(self, key, encoding="utf-8", _conn=None):
        return await self.cluster.get(key)

    async def _multi_get(self, keys, encoding="utf-8", _conn=None):
        got = await self.cluster.get_many(keys)
        got.raise_failed()
        return [got.values.get(k) for k in keys]

    async def _set(self, key, value, ttl=0, _cas_token=None, _conn=None):
        if _cas_token is not None:
            raise NotImplementedError("compare-and-set is not offered by the ring")
        return await self.cluster.set(key, value, self._ttl(ttl))

    async def _multi_set(self, pairs, ttl=0, _conn=None):
        for key, value in pairs:
            await self.cluster.set(key, value, self._ttl(ttl))
        return True

    async def _add(self, key, value, ttl=0, _conn=None):
        if not await self.cluster.add(key, value, self._ttl(ttl)):
            raise ValueError(f"Key {key} already exists, use .set to update the value")
        return True

    async def _exists(self, key, _conn=None):
        return await self.cluster.get(key) is not None

    async def _delete(self, key, _conn=None):
        return 1 if await self.cluster.delete(key) else 0

    async def _close(self, *args, _conn=None, **kwargs):
        pass  # the cluster belongs to the process; its owner closes it

    def _build_key(self, key, namespace=None):
        return f"{namespace}{key}" if namespace else key

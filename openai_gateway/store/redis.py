"""Redis or Valkey: a store with counters, moving windows (limits' own Redis storage) and bytes.

One client library for all three users: redis-py (`redis.asyncio`). limits 5.8 defaults to
coredis for `async+redis://` but takes `implementation="redispy"`; aiocache 0.12.3's
`RedisCache` only speaks redis-py. So one pin (requirements.txt), one set of timeouts.

The password never appears in a URL we build (those get logged): it comes from the environment
variable the config names and is passed as a separate option. A URL that carries one is refused.

Round trips: `get_many` is one MGET; `incr_many` and `decr_many` are one EVALSHA each (a small
Lua script: INCRBY, and EXPIRE only when the counter has no TTL yet, atomically). All keys of a
batch go to one server, so Redis Cluster (keys spread over shards) is not supported; Sentinel
is not either (see docs/several-vms.md).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
import redis.exceptions
from aiocache import RedisCache
from aiocache.serializers import NullSerializer
from limits.aio.storage import MovingWindowSupport
from limits.errors import StorageError as LimitsStorageError
from limits.storage import storage_from_string
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .base import BatchedStore
from .batch import Batch
from .errors import ServerDown, StoreError
from .health import Health

T = TypeVar("T")

DEFAULT_PORT = 6379
#: Not "the server is down": a wrong password also lands here (AuthenticationError is a
#: ConnectionError in redis-py) and is reported the same way, by server name only.
_DOWN_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError,
                TimeoutError)

# INCRBY each key; give it its TTL only when it has none (it was just created), so a window's
# counter expires 2 x window after its first hit, never pushed back by later hits.
_INCR_MANY = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('INCRBY', key, ARGV[2 * i - 1])
  if redis.call('TTL', key) == -1 then redis.call('EXPIRE', key, ARGV[2 * i]) end
end
return out
"""
# DECRBY floored at 0 like memcached's decr; a missing key stays missing (no TTL-less zero).
_DECR_MANY = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = 0
  if redis.call('EXISTS', key) == 1 then
    local v = redis.call('DECRBY', key, ARGV[i])
    if v < 0 then redis.call('INCRBY', key, -v); v = 0 end
    out[i] = v
  end
end
return out
"""


@dataclass(frozen=True)
class RedisURL:
    """`redis://host[:port][/db]` or `rediss://...` (TLS); no password inside."""

    tls: bool
    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None

    @property
    def server(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def limits_uri(self) -> str:
        """For `limits.storage.storage_from_string`; safe to log (no password)."""
        return f"async+{'rediss' if self.tls else 'redis'}://{self.server}/{self.db}"

    def client_options(self, password: str | None, timeout: float, *,
                       ca_file: str | None = None) -> dict[str, Any]:
        """redis-py options: every call bounded by `timeout`, no retries (a retry would make
        each request wait through the outage; the store's health marks the server down).
        `ca_file`: the CA bundle that signed a `rediss://` server's certificate, when it is not
        in the system's store (a self-hosted Redis); hostnames are always checked."""
        options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                                   "retry": Retry(NoBackoff(), 0)}
        if password:
            options["password"] = password
        if self.username:
            options["username"] = self.username
        if self.tls and ca_file:
            options["ssl_ca_certs"] = ca_file
        return options

    def limits_options(self, password: str | None, timeout: float, *,
                       ca_file: str | None = None) -> dict[str, Any]:
        """Keyword arguments for `storage_from_string(self.limits_uri(), **...)`."""
        return {"implementation": "redispy",
                **self.client_options(password, timeout, ca_file=ca_file)}

    def aiocache_options(self, password: str | None, timeout: float, *,
                         ca_file: str | None = None) -> dict[str, Any]:
        """Keyword arguments for `aiocache.RedisCache(...)` (0.12.3)."""
        pool: dict[str, Any] = {"socket_timeout": timeout}
        if self.username:
            pool["username"] = self.username
        if self.tls and ca_file:
            pool["ssl_ca_certs"] = ca_file
        return {"endpoint": self.host, "port": self.port, "db": self.db, "password": password,
                "ssl": self.tls, "create_connection_timeout": timeout, "timeout": timeout,
                "connection_pool_kwargs": pool}


class RedisStore(BatchedStore):
    """The store over one Redis (or Valkey) server: counters in batched scripts, moving windows
    through limits' own Redis storage (its Lua scripts, exact across processes), the cache's
    bytes through aiocache's RedisCache."""

    kind = "redis"

    def __init__(self, url: RedisURL, *, password: str | None = None, timeout: float = 0.5,
                 ca_file: str | None = None, max_backoff: float = 1.0,
                 max_connections: int = 8,
                 on_change: Callable[[str, bool], None] | None = None) -> None:
        self.url = url
        self.server = url.server
        self._password, self._timeout, self._ca_file = password, timeout, ca_file
        moving = storage_from_string(url.limits_uri(),
                                     **url.limits_options(password, timeout, ca_file=ca_file))
        assert isinstance(moving, MovingWindowSupport)  # limits' Redis storage has one
        self.moving = moving
        # A bounded pool whose callers wait for a free connection (up to `timeout`): redis-py's
        # default pool opens a connection per concurrent command, and a burst of requests then
        # spends its time connecting (100 concurrent reservations timed out at 0.5 s).
        options = url.client_options(password, timeout, ca_file=ca_file)
        if url.tls:
            options["connection_class"] = aioredis.SSLConnection
        pool = aioredis.BlockingConnectionPool(host=url.host, port=url.port, db=url.db,
                                               max_connections=max_connections,
                                               timeout=timeout, **options)
        self.client = aioredis.Redis(connection_pool=pool)
        self._incr = self.client.register_script(_INCR_MANY)
        self._decr = self.client.register_script(_DECR_MANY)
        self.health = Health([self.server], self._probe, max_backoff=max_backoff,
                             on_change=on_change)

    def cache_backend(self) -> RedisCache:
        # No default ttl on the object (aiocache 0.12.3); timeout=None: every call is bounded
        # by redis-py's socket timeouts (storage.timeout), with no task per call.
        options = self.url.aiocache_options(self._password, self._timeout,
                                            ca_file=self._ca_file)
        options["timeout"] = None
        return RedisCache(serializer=NullSerializer(encoding=None), **options)

    async def _guard(self, call):
        return await self.guarded(call)

    def down_servers(self) -> list[str]:
        return self.health.down()

    def server_states(self) -> list[tuple[str, bool]]:
        return self.health.states()

    def _ping(self) -> Awaitable[bool]:
        # redis-py types its commands for both its sync and async clients.
        return cast(Awaitable[bool], self.client.ping())

    async def _probe(self, server: str) -> None:
        await self._ping()

    async def ping(self) -> list[str]:
        if self.health.is_up(self.server):
            try:
                await self.guarded(self._ping())
            except StoreError:
                pass
        return self.down_servers()

    async def guarded(self, call: Awaitable[T]) -> T:
        """Await `call` (anything talking to this server, limits' strategies included): fail
        at once while the server is down, and mark it down when the call cannot reach it."""
        try:
            self.health.check(self.server)
        except ServerDown:
            if asyncio.iscoroutine(call):
                call.close()
            raise
        try:
            return await call
        except LimitsStorageError as exc:
            if isinstance(exc.storage_error, _DOWN_ERRORS):
                self.health.failed(self.server)
                raise ServerDown(self.server) from exc
            raise StoreError(f"storage server {self.server} failed a command") from exc
        except _DOWN_ERRORS as exc:
            self.health.failed(self.server)
            raise ServerDown(self.server) from exc
        except redis.exceptions.RedisError as exc:
            raise StoreError(f"storage server {self.server} refused a command") from exc

    async def _batch(self, keys: list[str], call: Awaitable[list[T]]) -> Batch[T]:
        try:
            values = await self.guarded(call)
        except StoreError as exc:
            return Batch(failed=dict.fromkeys(keys, exc))
        return Batch({k: v for k, v in zip(keys, values, strict=True) if v is not None})

    async def get_many(self, keys: Iterable[str]) -> Batch[bytes]:
        keys = list(keys)
        return await self._batch(keys, self.client.mget(keys))

    async def incr_many(self, items: Iterable[tuple[str, int, int]],
                        existing: Collection[str] = ()) -> Batch[int]:
        items = list(items)  # `existing` changes nothing here: the script checks the TTL
        keys = [k for k, _, _ in items]
        args = [x for _, amount, ttl in items for x in (amount, ttl)]
        return await self._batch(keys, self._incr(keys=keys, args=args))

    async def get_and_incr(self, keys: Sequence[str], items: Sequence[tuple[str, int, int]]
                           ) -> tuple[Batch[bytes], Batch[int]]:
        """An MGET and the increments' script, concurrently (two pooled connections)."""
        got, counted = await asyncio.gather(self.get_many(keys), self.incr_many(items))
        return got, counted

    async def decr_many(self, items: Iterable[tuple[str, int]]) -> Batch[int]:
        items = list(items)
        keys = [k for k, _ in items]
        return await self._batch(keys, self._decr(keys=keys, args=[a for _, a in items]))

    async def get(self, key: str) -> bytes | None:
        return await self.guarded(self.client.get(key))

    async def set(self, key: str, value: bytes, ttl: int) -> bool:
        return bool(await self.guarded(self.client.set(key, value, ex=ttl)))

    async def add(self, key: str, value: bytes, ttl: int) -> bool:
        return bool(await self.guarded(self.client.set(key, value, ex=ttl, nx=True)))

    async def delete(self, key: str) -> bool:
        return bool(await self.guarded(self.client.delete(key)))

    async def close(self) -> None:
        await self.health.close()
        await self.client.aclose()
        await self.client.connection_pool.disconnect()  # ours, not the client's to close

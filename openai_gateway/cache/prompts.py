"""The prompt cache (aiocache): canonical keys, policy, single-flight.

Backends: memory (`BoundedMemoryCache`), the memcached ring (`store.RingCache`, on the same
`MemcachedCluster` as the limits, so one ring places every key), Redis (aiocache's
`RedisCache`). On a shared store the proxy reads an entry in the same batch as the request's
counters (`RateLimiter.admit(extra_keys=[key])`) and hands the raw value to `decode`.

Never wrong before fast: the key is SHA-256 of the route, the client's cache scope, every client
header the upstream receives and the canonical JSON body (sorted keys, every field counts);
only complete 200 answers are stored; sampled answers (temperature > 0, or unset which means 1)
are not cached unless configured; a value that does not parse is a miss; storage trouble
bypasses the cache, never fails a request.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import orjson
from aiocache import RedisCache
from aiocache.serializers import NullSerializer
from multidict import istr

from ..config.settings import CacheSettings
from ..config.storage import StorageURL
from ..pipeline.validation import ParsedRequest
from ..store import MemcachedCluster
from ..store.cache_backend import RingCache
from ..store.memory_cache import BoundedMemoryCache
from ..store.redis import RedisStore
from ..upstream.client import FORWARDED_HEADERS
from ..upstream.sse import DONE, RESPONSES_DONE

log = logging.getLogger("gateway.cache")

#: Routes whose answers are deterministic for a given body: cached whatever the temperature.
DETERMINISTIC = frozenset({"/v1/embeddings", "/v1/moderations"})
#: Entry format: one kind byte, then the body exactly as the client received it.
KIND_JSON, KIND_SSE = b"J", b"S"
#: What a memory entry costs besides its value (key string, dict slot, deadline), so that
#: cache.max_bytes bounds the process's memory, not only the stored bodies.
ENTRY_OVERHEAD = 400
#: Client headers that are part of the key: exactly those the upstream receives, since an
#: answer may depend on anything it was sent. Each one, by its exact value (absent is not ""):
#: - OpenAI-Beta: opts into a beta's behaviour and shapes; an answer given under one beta is
#:   not the answer without it.
#: - Accept: forwarded as sent; an OpenAI-compatible upstream may choose its format by it. One
#:   front-end (one SDK) always sends the same value, so hits within an app are unaffected.
#: - Idempotency-Key: keyed, not bypassed. The same key means the same operation, and its retry
#:   (say, after the connection dropped) should get the same answer without a second charge:
#:   what the client asks for by sending the key. A different key is a distinct operation and
#:   never gets another's answer. The cost is one entry per key, which ages out like any cold
#:   entry. (The official SDKs send none unless the app sets one.)
VARY_HEADERS = FORWARDED_HEADERS
# istr: multidict finds these without case-folding the name on every call (an absent header
# cost 400 ns per lookup as a str, 120 ns as an istr).
_VARY_NAMES = tuple(istr(name) for name in VARY_HEADERS)


@dataclass(frozen=True, slots=True)
class Entry:
    stream: bool
    body: bytes

    def encode(self) -> bytes:
        return (KIND_SSE if self.stream else KIND_JSON) + self.body

    @staticmethod
    def decode(value, trusted: bool = False) -> Entry | None:
        """A stored value, or None for anything that is not one of ours (a miss, not a 500).

        `trusted`: the value comes from this process's memory, where only `encode` writes;
        a shared store can hold anything, so its values are checked in full.
        """
        if trusted and isinstance(value, bytes) and value[:1] in (KIND_JSON, KIND_SSE):
            return Entry(value[:1] == KIND_SSE, value[1:])
        if not isinstance(value, bytes) or len(value) < 2:
            return None
        kind, body = value[:1], value[1:]
        if kind == KIND_SSE:  # only complete streams are stored: no end marker, not ours
            complete = DONE in body or any(end in body for end in RESPONSES_DONE)
            return Entry(True, body) if complete else None
        if kind == KIND_JSON:
            try:
                return Entry(False, body) if isinstance(orjson.loads(body), dict) else None
            except orjson.JSONDecodeError:
                return None
        return None


def cache_key(route: str, scope: str, body: dict, headers: Mapping[str, str]) -> str:
    """The storage key of an answer. `headers` is the client's request headers (looked up
    case-insensitively, as aiohttp's `request.headers` does); only `VARY_HEADERS` count."""
    vary = [headers.get(name) for name in _VARY_NAMES]
    try:  # a JSON array ends where its grammar says: no value can pose as two, absent is null
        prefix = orjson.dumps([route, scope, vary])
    except orjson.JSONEncodeError:
        # Header bytes that are not UTF-8 reach us as surrogates (aiohttp decodes with
        # surrogateescape), which JSON cannot hold: their repr stands in, a string where the
        # array would be, so it cannot equal any other request's prefix.
        prefix = orjson.dumps([route, scope, repr(vary)])
    h = hashlib.sha256(prefix)
    # Apart from the prefix: wrapped in it, a body at the validator's depth limit would not
    # serialise again.
    h.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    return "c:" + h.hexdigest()  # 66 bytes: far below memcached's 250, no spaces


class PromptCache:
    """Built once per settings; the proxy asks `policy`, `get`, `set` and `single_flight`."""

    def __init__(self, settings: CacheSettings, storage: StorageURL, *, timeout: float,
                 store: MemcachedCluster | RedisStore | None = None, password: str = ""):
        """`store`: the limiter's shared store when both use the same URL (its owner closes
        it); None builds what `storage` names. `password`: Redis's, from storage.password_env."""
        self.storage = storage
        self.timeout = timeout
        #: The shared store whose batches may carry this cache's reads (None: not shared).
        self.store = store
        self._own_store: MemcachedCluster | None = None
        self._password = password
        self._backends: list = []
        #: The in-process store when storage is memory:// (None on memcached), once running.
        self.memory: BoundedMemoryCache | None = None
        self._inflight: dict[str, asyncio.Future] = {}
        self.configure(settings)

    def configure(self, settings: CacheSettings) -> None:
        """(Re)read the policy; stored entries survive a reload."""
        self.s = settings
        self.routes = frozenset(settings.routes) if settings.enabled else frozenset()
        if self.memory is not None:
            self.memory.max_bytes = settings.max_bytes

    @asynccontextmanager
    async def running(self):
        if self.storage.kind == "memcached":
            cluster = self.store
            if not isinstance(cluster, MemcachedCluster):
                from ..metering.stores import server_name
                cluster = self._own_store = MemcachedCluster(
                    [server_name(h, p) for h, p in self.storage.servers], timeout=self.timeout)
                self.store = cluster
            self._backends = [RingCache(cluster)]
        elif self.storage.kind == "redis":
            [(host, port)] = self.storage.servers
            from ..store.redis import RedisURL
            url = RedisURL(self.storage.tls, host, port, self.storage.db,
                           self.storage.username or None)
            # No default ttl on the object (aiocache 0.12.3); timeout=None: `_shared` bounds
            # each call with one asyncio.timeout instead of a task per call.
            options = url.aiocache_options(self._password or None, self.timeout)
            options["timeout"] = None
            self._backends = [RedisCache(serializer=NullSerializer(encoding=None), **options)]
        else:
            self.memory = BoundedMemoryCache(self.s.max_bytes, ENTRY_OVERHEAD, timeout=None,
                                             serializer=NullSerializer(encoding=None))
            self._backends = [self.memory]
        try:
            yield self
        finally:
            for b in self._backends:
                await b.close()
            if self._own_store is not None:
                await self._own_store.close()

    # --- policy ---------------------------------------------------------------------------

    def policy(self, route: str, parsed: ParsedRequest, cache_control: str | None) -> str | None:
        """'BYPASS', or None when the request is cacheable."""
        if route not in self.routes:
            return "BYPASS"
        # Directives compare case-insensitively (RFC 9111 section 5.2).
        directives = (cache_control or "").lower()
        if "no-cache" in directives or "no-store" in directives:
            return "BYPASS"
        if route not in DETERMINISTIC and not self.s.sampled:
            temperature = parsed.body.get("temperature")
            if temperature != 0:
                return "BYPASS"
        return None

    # --- storage --------------------------------------------------------------------------

    def _backend(self, key: str):
        return self._backends[0]

    def batched(self, store) -> bool:
        """Whether `store`'s batches can read this cache's entries (same store, keys stored
        as given: memcached ring or Redis)."""
        return store is not None and store is self.store

    @staticmethod
    def decode(raw: bytes | None) -> Entry | None:
        """An entry read by someone else's batch (a shared store: checked in full)."""
        return None if raw is None else Entry.decode(raw)

    async def get(self, key: str) -> Entry | None:
        if self.memory is not None:
            return Entry.decode(self.memory.lookup(key), trusted=True)
        try:
            return Entry.decode(await self._shared(self._backend(key).get(key)))
        except Exception as exc:  # storage trouble is a miss, never a failed request
            self._failed("get", exc)
            return None

    async def set(self, key: str, entry: Entry) -> bool:
        value = entry.encode()
        if len(value) > self.s.max_item_bytes:
            return False  # memcached refuses items over 1 MB; memory would thrash
        if self.memory is not None:
            return self.memory.store(key, value, self.s.ttl)
        try:
            await self._shared(self._backend(key).set(key, value, ttl=self.s.ttl))
            return True
        except Exception as exc:
            self._failed("set", exc)
            return False

    async def _shared(self, call):
        """One shared-store call: the ring (memcachio) and redis-py bound it by storage.timeout
        themselves, so no timer of ours (one per call cost CPU on every miss)."""
        return await call

    def _failed(self, op: str, exc: Exception) -> None:
        from ..observability.metrics import STORAGE_ERRORS
        STORAGE_ERRORS.labels("cache").inc()
        log.warning("cache %s failed (%s); bypassing the cache", op, type(exc).__name__)

    # --- single flight --------------------------------------------------------------------

    async def single_flight(self, key: str, fill, *args):
        """Run `fill(*args)` once for concurrent identical requests; everyone gets its result.

        Returns (result, whether this call ran `fill`). The first request fills; the others
        wait on a future (shielded, so a waiter that disconnects does not cancel it). The
        proxy runs the filler in a task its client cannot cancel; if it is cancelled anyway
        (shutdown), the waiters try again themselves.
        Not across processes: a cross-process lock (memcached `add`, then `delete`) cost two
        round trips on every cacheable miss to save an upstream call only when identical
        requests reach different processes within one answer's time.
        """
        while True:
            fut = self._inflight.get(key)
            if fut is None:
                break
            try:
                return await asyncio.shield(fut), False
            except asyncio.CancelledError:
                if not fut.cancelled():
                    raise  # we were cancelled, not the filler
        fut = self._inflight[key] = asyncio.get_running_loop().create_future()
        try:
            result = await fill(*args)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        else:
            fut.set_result(result)
            return result, not isinstance(result, Entry)
        finally:
            self._inflight.pop(key, None)

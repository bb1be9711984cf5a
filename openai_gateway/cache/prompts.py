"""The prompt cache (aiocache): policy, reads and writes, single flight.

Its entries live in the process's store, through the store's aiocache backend (a byte-bounded
LRU in memory, the memcached ring, Redis); on a shared store the pipeline's admission reads an
entry in the same batch as the request's counters and hands the raw value to `decode`.

Never wrong before fast: keys cover everything the upstream receives (cache/keys.py); only
complete 200 answers are stored; sampled answers (temperature > 0, or unset which means 1) are
not cached unless configured; a value that does not parse is a miss; storage trouble bypasses
the cache, never fails a request.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from contextlib import asynccontextmanager

from ..config.serving import CacheSettings
from ..observability.metrics import Metrics
from ..policy import ParsedRequest
from ..store import Store
from .keys import Entry, cache_key

log = logging.getLogger("gateway.cache")

#: Routes whose answers are deterministic for a given body: cached whatever the temperature.
DETERMINISTIC = frozenset({"/v1/embeddings", "/v1/moderations"})


def media_cacheable(parsed: ParsedRequest, sampled: bool) -> bool:
    """Whether a voice or pictures answer may be replayed (its route listed in cache.routes):
    - never a stream (a transcript or an image shown as it forms is a live view, and an image
      stream's events are megabytes);
    - speech: yes: the words are the request's own, and any reading of them in the voice,
      format and speed asked is as right as another;
    - transcriptions and translations: at `temperature` 0 or unset (their default is 0), or
      with `sampled`;
    - images: only with `sampled` (no request fixes its image), and never an answer of URLs,
      which expire after an hour (`response_format: "url"`, DALL-E's default).
    """
    if parsed.stream or parsed.units is None:
        return False
    kind, body = parsed.units.kind, parsed.body
    if kind == "speech":
        return True
    if kind in ("transcription", "translation"):
        return sampled or _is_zero(body.get("temperature"))
    urls = body.get("response_format") == "url" or (
        str(parsed.model or "").startswith("dall-e") and body.get("response_format") != "b64_json")
    return sampled and not urls


def _is_zero(temperature) -> bool:
    """Unset, or 0 (a multipart field is text: "0", "0.0")."""
    if temperature is None:
        return True
    try:
        return float(temperature) == 0
    except (TypeError, ValueError):
        return False


class PromptCache:
    """Built once per process on its store; `configure` on every settings (entries survive)."""

    def __init__(self, settings: CacheSettings, store: Store, metrics: Metrics):
        self.store = store
        self.metrics = metrics
        self.backend = store.cache_backend()
        #: Values only this process writes (memory) need no full check when read back.
        self._trusted = store.kind == "memory"
        self._inflight: dict[str, asyncio.Future] = {}
        self.configure(settings)

    def configure(self, settings: CacheSettings) -> None:
        """(Re)read the policy; stored entries survive a reload."""
        self.s = settings
        self.routes = frozenset(settings.routes) if settings.enabled else frozenset()
        self.store.bound_cache(settings.max_bytes)

    @asynccontextmanager
    async def running(self):
        try:
            yield self
        finally:
            await self.backend.close()

    # --- policy ---------------------------------------------------------------------------

    def policy(self, route: str, parsed: ParsedRequest, cache_control: str | None) -> str | None:
        """'BYPASS', or None when the request is cacheable."""
        if route not in self.routes:
            return "BYPASS"
        # Directives compare case-insensitively (RFC 9111 section 5.2).
        directives = (cache_control or "").lower()
        if "no-cache" in directives or "no-store" in directives:
            return "BYPASS"
        if parsed.units is not None:
            return None if media_cacheable(parsed, self.s.sampled) else "BYPASS"
        if route not in DETERMINISTIC and not self.s.sampled:
            temperature = parsed.body.get("temperature")
            if temperature != 0:
                return "BYPASS"
        return None

    @staticmethod
    def key(caller, route: str, body: object, headers: Mapping[str, str]) -> str:
        """The entry's key; a client key with cache_scope "client" has entries of its own."""
        settings = caller.settings
        scope = caller.id if settings is not None and settings.cache_scope == "client" \
            else "shared"
        return cache_key(route, scope, body, headers)

    # --- storage --------------------------------------------------------------------------

    def decode(self, raw: bytes | str | None) -> Entry | None:
        """An entry read by someone else's batch."""
        return None if raw is None else Entry.decode(raw, trusted=self._trusted)

    async def get(self, key: str) -> Entry | None:
        try:
            return self.decode(await self.store.read(key))
        except Exception as exc:  # storage trouble is a miss, never a failed request
            self._failed("get", exc)
            return None

    async def set(self, key: str, entry: Entry) -> bool:
        value = entry.encode()
        if len(value) > self.s.max_item_bytes:
            return False  # memcached refuses items over 1 MB; memory would thrash
        try:
            await self.store.write(key, value, self.s.ttl)
            return True
        except Exception as exc:
            self._failed("set", exc)
            return False

    def _failed(self, op: str, exc: Exception) -> None:
        self.metrics.storage_errors.labels("cache").inc()
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
            return result, True
        finally:
            self._inflight.pop(key, None)

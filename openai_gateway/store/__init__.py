"""The gateway's state: memory, a memcached ring or Redis behind one interface (`Store`), chosen
once at start from `storage.url` (`open_store`). One store serves the request limits, the
budgets and the cache of a process, so a request's counters and its cache entry travel in the
same batches, and one health table says which servers are down.

Below everything but the config: it imports nothing else of the gateway.
"""
from __future__ import annotations

from collections.abc import Callable

from ..config.storage import StorageURL
from .base import Store
from .batch import Batch, Counted, Hit
from .errors import ServerDown, StoreError
from .memcached import MemcachedCluster
from .memory import MemoryStore
from .redis import RedisStore, RedisURL
from .windows import Stats, Window

__all__ = ["Batch", "Counted", "Hit", "MemcachedCluster", "MemoryStore", "RedisStore",
           "ServerDown", "Stats", "Store", "StoreError", "Window", "open_store", "server_name"]


def server_name(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def open_store(url: StorageURL, *, timeout: float, password: str = "",
               cache_bytes: int = 64 * 1024 * 1024,
               on_change: Callable[[str, bool], None] | None = None) -> Store:
    """The store `url` names (nothing connects before first use). `password`: Redis only;
    `cache_bytes`: the bound of memory's cache; `on_change(server, up)`: health transitions
    of shared stores (called once per server at once, so a gauge starts with every server)."""
    store: Store
    if url.kind == "memory":
        return MemoryStore(cache_bytes=cache_bytes)
    if url.kind == "memcached":
        store = MemcachedCluster([server_name(h, p) for h, p in url.servers], timeout=timeout,
                                 on_change=on_change)
    else:
        [(host, port)] = url.servers
        store = RedisStore(RedisURL(url.tls, host, port, url.db, url.username or None),
                           password=password or None, timeout=timeout, on_change=on_change)
    if on_change is not None:
        for server, up in store.server_states():
            on_change(server, up)
    return store

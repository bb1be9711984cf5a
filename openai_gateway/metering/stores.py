"""The process's shared store, built from `storage.url`: a memcached ring or one Redis.

One object serves the request limits, the budgets and the cache (`store/`), so a request's
counters and its cache entry travel in the same batches, and one health table says which
servers are down (for /readyz and the `gateway_storage_server_up` gauge).
"""
from __future__ import annotations

from ..config.storage import StorageURL
from ..observability import metrics
from ..store import MemcachedCluster
from ..store.redis import RedisStore, RedisURL

SharedStore = MemcachedCluster | RedisStore


def server_name(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _gauge(server: str, up: bool) -> None:
    metrics.STORAGE_SERVER_UP.labels(server).value = 1 if up else 0


def shared_store(url: StorageURL, *, timeout: float, password: str = "") -> SharedStore:
    """The store for a memcached:// or redis:// URL (nothing connects until first use).
    `password`: Redis only, from storage.password_env."""
    if url.kind == "memcached":
        store: SharedStore = MemcachedCluster([server_name(h, p) for h, p in url.servers],
                                              timeout=timeout, on_change=_gauge)
    elif url.kind == "redis":
        [(host, port)] = url.servers
        store = RedisStore(RedisURL(url.tls, host, port, url.db, url.username or None),
                           password=password or None, timeout=timeout, on_change=_gauge)
    else:
        raise ValueError("memory:// has no shared store")
    for server, up in store.server_states():
        _gauge(server, up)  # exported from the start, not only after a first failure
    return store

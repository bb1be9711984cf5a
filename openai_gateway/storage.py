"""Storage URLs shared by the limiter and the cache, and their reachability check.

`memory://` keeps everything in this process; `memcached://host:port[,host:port]` shares rate
limits and cache between processes and VMs.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass


class StorageError(Exception):
    """A storage URL is malformed, or the storage could not be reached in time."""


@dataclass(frozen=True)
class StorageURL:
    kind: str  # "memory" | "memcached"
    servers: tuple[tuple[str, int], ...] = ()

    @property
    def is_shared(self) -> bool:
        return self.kind == "memcached"

    def limits_uri(self) -> str:
        """The URI the `limits` library's async storage factory understands."""
        if self.kind == "memory":
            return "async+memory://"
        return "async+memcached://" + ",".join(f"{h}:{p}" for h, p in self.servers)


def parse_storage_url(url: str) -> StorageURL:
    if url == "memory://":
        return StorageURL("memory")
    prefix = "memcached://"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise StorageError('"memory://" or "memcached://host:port[,host:port]"')
    servers = []
    for part in url[len(prefix):].split(","):
        host, sep, port = part.strip().rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise StorageError('"memcached://host:port[,host:port]" with numeric ports')
        servers.append((host, int(port)))
    return StorageURL("memcached", tuple(servers))


async def memcached_reachable(url: StorageURL, timeout: float) -> bool:
    """True when every memcached server answers `version` within `timeout` seconds."""

    async def one(host: str, port: int) -> bool:
        writer = None
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"version\r\n")
            line = await reader.readline()
            return line.startswith(b"VERSION")
        finally:
            if writer is not None:
                writer.close()

    try:
        async with asyncio.timeout(timeout):
            results = await asyncio.gather(*(one(h, p) for h, p in url.servers))
    except (OSError, TimeoutError):
        return False
    return all(results)

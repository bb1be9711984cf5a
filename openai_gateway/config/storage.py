"""Storage URLs shared by the limiter and the cache, and their reachability check.

`memory://` keeps everything in this process; `memcached://host:port[,host:port...]` (a
cluster) and `redis://host:port[/db]` (`rediss://` with TLS) share rate limits and cache
between processes and VMs. A Redis password never sits in the URL: it comes from the
environment variable named by `storage.password_env` and is handed to the store that connects.

This module imports nothing from the package: settings and components import it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlsplit


class StorageError(ValueError):
    """A storage URL is malformed; the text says what was expected (the loader's converters
    raise ValueError so)."""


#: What a storage URL may look like (the tail of every parse error: "expected ...").
EXPECTED = ('"memory://", "memcached://host:port[,host:port...]" or '
            '"redis://host:port[/db]" (rediss:// for TLS)')


@dataclass(frozen=True)
class StorageURL:
    kind: Literal["memory", "memcached", "redis"]
    servers: tuple[tuple[str, int], ...] = ()
    #: Redis only: the database number, TLS (rediss://) and an ACL user name.
    db: int = 0
    tls: bool = False
    username: str = ""

    @property
    def is_shared(self) -> bool:
        return self.kind != "memory"

    def __str__(self) -> str:
        """The URL as written in the config (canonical form), never with a password."""
        if self.kind == "memory":
            return "memory://"
        hosts = ",".join(f"{_bracket(h)}:{p}" for h, p in self.servers)
        if self.kind == "memcached":
            return f"memcached://{hosts}"
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        return f"{'rediss' if self.tls else 'redis'}://{user}{hosts}/{self.db}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_storage_url(url: str) -> StorageURL:
    """Parse a storage URL; raises StorageError whose text says what was expected."""
    if not isinstance(url, str):
        raise StorageError(EXPECTED)
    if url == "memory://":
        return StorageURL("memory")
    scheme, sep, rest = url.partition("://")
    if not sep or not rest or scheme not in ("memcached", "redis", "rediss"):
        raise StorageError(EXPECTED)
    if scheme == "memcached":
        return StorageURL("memcached", _memcached_servers(rest))
    return _redis(url, scheme == "rediss")


def _memcached_servers(rest: str) -> tuple[tuple[str, int], ...]:
    servers = []
    for part in rest.split(","):
        host, sep, port = part.strip().rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise StorageError('"memcached://host:port[,host:port...]" with numeric ports')
        servers.append((host, int(port)))
    return tuple(servers)


def _redis(url: str, tls: bool) -> StorageURL:
    form = '"redis://host:port[/db]" (one server, numeric port and db, no query)'
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError:
        raise StorageError(form) from None
    if u.password is not None:
        raise StorageError("a URL without a password: put the password in the environment "
                           "variable named by storage.password_env")
    db = u.path.removeprefix("/")
    if (not u.hostname or port is None or not 0 < port < 65536 or "," in u.netloc
            or u.query or u.fragment or not (db == "" or db.isdigit())):
        raise StorageError(form)
    return StorageURL("redis", ((u.hostname, port),), db=int(db or 0), tls=tls,
                      username=u.username or "")

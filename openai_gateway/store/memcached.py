"""A memcached cluster: one `memcachio.Client` per server, keys placed by our own ring.

Not memcachio's cluster routing: when a server dies it hands that server's keys to the others,
which silently restarts those counters at zero (a client over its limit gets a fresh one).
Here a key stays on its server; while the server is down its keys fail with `ServerDown` and
the caller applies its fail-open/fail-closed policy to them alone.

Timeouts: memcachio's own connect, read and pool-wait timeouts are all `timeout`, so the first
call to a dead or hung server fails within about 2 x `timeout`; it marks the server down and
later calls fail without I/O until the background probe gets an answer.

Round trips, measured in tests/test_store_memcached.py with a counting relay:
`get_many` is one multi-get per server, servers in parallel (one round trip); `incr_many`
pipelines `add key 0 <ttl> noreply` + `incr` per key, all keys at once (one round trip, also
for counters that do not exist yet); `decr_many` one.
"""
from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from io import BytesIO
from typing import TypeVar, cast

import memcachio
from memcachio.commands import Command, Request
from memcachio.constants import Commands
from memcachio.errors import MemcachedError, NotEnoughData

from .base import BatchedStore
from .batch import Batch
from .cache_backend import RingCache
from .errors import ServerDown, StoreError
from .health import Health
from .ring import Ring

T = TypeVar("T")

#: memcached reads an expiry above 30 days as an absolute Unix time ("1/month" windows keep
#: 60 days): longer TTLs are sent as now + ttl.
MAX_RELATIVE_TTL = 30 * 24 * 3600
#: Keys are at most 250 bytes of printable ASCII without spaces (the text protocol's rule).
MAX_KEY_BYTES = 250
#: Failures that mean "the server is not there": refused, reset, timed out, no pool slot.
_DOWN_ERRORS = (OSError, TimeoutError, memcachio.errors.MemcachioConnectionError)


def memcached_ttl(ttl: int, now: float | None = None) -> int:
    if ttl > MAX_RELATIVE_TTL:
        return int(now if now is not None else time.time()) + ttl
    return ttl


def check_key(key: str) -> None:
    if not (0 < len(key) <= MAX_KEY_BYTES and key.isascii() and key.isprintable()
            and " " not in key):
        raise ValueError("memcached keys are 1-250 printable ASCII characters without spaces")


class _Burst(Command[list[bytes | None]]):
    """Meta commands for one server (`mg key v`, `ma key N<ttl> J<n> D<n> v`) written as one
    request and answered in order: one write and one future for all of a request's keys on
    that server, instead of a command (two futures, a write) per key. memcachio's extension
    point: a `Command` subclass, dispatched by the pool's `execute_command`.

    The request starts with `mn` (meta no-op, answered "MN"): memcachio writes the command's
    name first. `ma` with `N` creates a missing counter with `J` (the amount) and its TTL
    under the item lock, so a new counter costs nothing extra (memcached >= 1.6)."""

    __slots__ = ("lines",)
    name = cast(Commands, b"mn")

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        super().__init__()

    def build_request(self) -> Request[list[bytes | None]]:
        return Request(weakref.proxy(self), b"", [b"".join(line + b"\r\n" for line in self.lines)])

    def parse(self, data: BytesIO, _endpoint) -> list[bytes | None]:
        start, error = data.tell(), None
        out: list[bytes | None] = []

        def line() -> bytes:
            got = data.readline()
            if not got.endswith(b"\r\n"):
                raise NotEnoughData(data.tell() - start)  # memcachio rewinds and waits
            return got

        if line() != b"MN\r\n":
            error = "unexpected answer to mn"
        for _ in self.lines:  # one answer per line, errors included: read them all
            head = line()
            if head.startswith(b"VA "):
                size = int(head.split()[1])
                value = data.read(size + 2)
                if len(value) < size + 2:
                    raise NotEnoughData(data.tell() - start)
                out.append(value[:-2])
            elif head.startswith((b"EN", b"NF", b"NS")):
                out.append(None)
            else:
                out.append(None)
                error = error or head.decode(errors="replace").strip()[:100]
        if error is not None:
            raise MemcachedError(error)
        return out


def split_server(server: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    host, sep, port = server.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {server!r}")
    return host.strip("[]"), int(port)


class MemcachedCluster(BatchedStore):
    """Servers are "host:port" strings. `timeout` bounds each call (storage.timeout);
    `max_backoff` caps the delay between probes of a down server. No moving windows: limits
    implements none on memcached, so request limits use the sliding-window counter here."""

    kind = "memcached"

    def __init__(self, servers: Sequence[str], *, timeout: float = 0.5,
                 max_connections: int = 2, max_backoff: float = 1.0,
                 on_change: Callable[[str, bool], None] | None = None) -> None:
        self.ring = Ring(servers)
        self.timeout = timeout
        self._clients: dict[str, memcachio.Client[bytes]] = {
            server: memcachio.Client(
                split_server(server), decode_responses=False,
                connect_timeout=timeout, read_timeout=timeout,
                blocking_timeout=timeout, max_connections=max_connections,
                # memcachio opens another connection once the average answer takes 50 ms;
                # we would rather pipeline on one until the call times out.
                max_average_response_time_for_connection_reuse=timeout,
                socket_nodelay=True)
            for server in self.ring.servers}
        self.health = Health(self.ring.servers, self._probe, max_backoff=max_backoff,
                             on_change=on_change)

    def cache_backend(self) -> RingCache:
        return RingCache(self)

    # --- health ------------------------------------------------------------------------------

    def down_servers(self) -> list[str]:
        return self.health.down()

    def server_states(self) -> list[tuple[str, bool]]:
        return self.health.states()

    async def _probe(self, server: str) -> None:
        await self._clients[server].version()

    async def ping(self) -> list[str]:
        """Ask every server that is up for its version (marking failures down); return the
        servers down afterwards. For /readyz."""
        await asyncio.gather(*(self._run(s, self._probe(s)) for s in self.ring.servers
                               if self.health.is_up(s)), return_exceptions=True)
        return self.down_servers()

    async def _run(self, server: str, call: Awaitable[T]) -> T:
        """Await `call` (an operation on `server`), converting its failures to ours."""
        try:
            self.health.check(server)
        except ServerDown:
            if asyncio.iscoroutine(call):
                call.close()  # never started: no "was never awaited" warning
            raise
        try:
            return await call
        except _DOWN_ERRORS as exc:
            self.health.failed(server)
            raise ServerDown(server) from exc
        except MemcachedError as exc:
            raise StoreError(f"storage server {server} refused a command: {exc}") from exc

    # --- batched counters --------------------------------------------------------------------

    async def get_many(self, keys: Iterable[str]) -> Batch[bytes]:
        """One multi-get per server, all servers at once."""
        groups = self.ring.group(keys)
        for group in groups.values():
            for key in group:
                check_key(key)
        parts = await _gather([self._get_group(s, ks) for s, ks in groups.items()])
        out: Batch[bytes] = Batch()
        for part in parts:
            out.values.update(part.values)
            out.failed.update(part.failed)
        return out

    async def _get_group(self, server: str, keys: list[str]) -> Batch[bytes]:
        try:
            items = await self._run(server, self._clients[server].get(*keys))
        except StoreError as exc:
            return Batch(failed=dict.fromkeys(keys, exc))
        return Batch(values={k.decode(): item.value for k, item in items.items()})

    async def get_and_incr(self, keys: Sequence[str], items: Sequence[tuple[str, int, int]]
                           ) -> tuple[Batch[bytes], Batch[int]]:
        """`get_many(keys)` and `incr_many(items)` (amounts >= 1) in one burst per server,
        all servers at once: one round trip, one write per server."""
        per: dict[str, list[bytes]] = {}
        order: dict[str, list[tuple[str, bool]]] = {}
        now = int(time.time())
        for key in keys:
            check_key(key)
            server = self.ring.server_for(key)
            per.setdefault(server, []).append(b"mg %b v" % key.encode())
            order.setdefault(server, []).append((key, False))
        for key, amount, ttl in items:
            check_key(key)
            server = self.ring.server_for(key)
            per.setdefault(server, []).append(b"ma %b N%d J%d D%d v" % (
                key.encode(), memcached_ttl(ttl, now), amount, amount))
            order.setdefault(server, []).append((key, True))
        parts = await _gather([self._burst(s, lines) for s, lines in per.items()])
        got: Batch[bytes] = Batch()
        counted: Batch[int] = Batch()
        for server, answers in zip(per, parts, strict=True):
            for (key, incr), answer in zip(order[server], answers, strict=True):
                target = counted if incr else got
                if isinstance(answer, StoreError):
                    target.failed[key] = answer
                elif answer is not None:
                    target.values[key] = int(answer) if incr else answer  # type: ignore[assignment]
                elif incr:
                    counted.failed[key] = StoreError(f"storage server {server} did not count")
        return got, counted

    async def _burst(self, server: str, lines: list[bytes]) -> list:
        command = _Burst(lines)

        async def send() -> list[bytes | None]:
            await self._clients[server].connection_pool.execute_command(command)
            return await command.response

        try:
            return await self._run(server, send())
        except StoreError as exc:
            return [exc] * len(lines)

    async def incr_many(self, items: Iterable[tuple[str, int, int]],
                        existing: Collection[str] = ()) -> Batch[int]:
        """(key, amount, ttl) -> the new values; a missing counter starts from 0 with `ttl`.
        Keys in `existing` were just read: they skip the creating `add` (one command, not two)."""
        items = list(items)
        for key, _, _ in items:
            check_key(key)  # all keys first: a bad one must not leave calls unawaited
        calls = []
        for key, amount, ttl in items:
            server = self.ring.server_for(key)
            create = key not in existing
            calls.append((key, self._run(server, self._incr(server, key, amount, ttl, create))))
        return await _collect(calls)

    async def _incr(self, server: str, key: str, amount: int, ttl: int, create: bool) -> int:
        client = self._clients[server]
        if create:
            # `add` creates the counter with its TTL only if it is missing; noreply, so it costs
            # no round trip: it goes out just before the incr (same connection and burst).
            await client.add(key, b"0", expiry=memcached_ttl(ttl), noreply=True)
        value = await client.incr(key, amount)
        if value is None:
            # Missing after all: expired or evicted since it was read, or the add went out on
            # another pooled connection after the incr. The slow path: one or two round trips.
            if await client.add(key, b"%d" % amount, expiry=memcached_ttl(ttl)):
                return amount
            value = await client.incr(key, amount)
            if value is None:
                raise MemcachedError("counter vanished twice")
        return value

    async def decr_many(self, items: Iterable[tuple[str, int]]) -> Batch[int]:
        """(key, amount) -> the new values, floored at 0 by memcached; missing counts as 0."""
        items = list(items)
        for key, _ in items:
            check_key(key)
        calls = []
        for key, amount in items:
            server = self.ring.server_for(key)
            calls.append((key, self._run(server, self._clients[server].decr(key, amount))))
        batch = await _collect(calls)
        return Batch({k: v or 0 for k, v in batch.values.items()}, batch.failed)

    # --- bytes with a TTL (the cache) ------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """Raises `ServerDown` or `StoreError`."""
        check_key(key)
        server = self.ring.server_for(key)
        items = await self._run(server, self._clients[server].get(key))
        item = items.get(key.encode())
        return None if item is None else item.value

    async def set(self, key: str, value: bytes, ttl: int) -> bool:
        check_key(key)
        server = self.ring.server_for(key)
        return await self._run(server, self._clients[server].set(
            key, value, expiry=memcached_ttl(ttl)))

    async def add(self, key: str, value: bytes, ttl: int) -> bool:
        """Store only if missing; False when the key exists."""
        check_key(key)
        server = self.ring.server_for(key)
        return await self._run(server, self._clients[server].add(
            key, value, expiry=memcached_ttl(ttl)))

    async def delete(self, key: str) -> bool:
        check_key(key)
        server = self.ring.server_for(key)
        return await self._run(server, self._clients[server].delete(key))

    async def close(self) -> None:
        await self.health.close()
        for client in self._clients.values():
            client.connection_pool.close()


async def _gather(calls: Sequence[Awaitable[T]]) -> list[T]:
    # One server (the common case) skips gather's task per call.
    if len(calls) == 1:
        return [await calls[0]]
    return list(await asyncio.gather(*calls))


async def _collect(calls: Sequence[tuple[str, Awaitable[T]]]) -> Batch[T]:
    """Run keyed calls concurrently (so they pipeline); sort answers from `StoreError`s."""
    results = await asyncio.gather(*(c for _, c in calls), return_exceptions=True)
    out: Batch[T] = Batch()
    for (key, _), result in zip(calls, results, strict=True):
        if isinstance(result, StoreError):
            out.failed[key] = result
        elif isinstance(result, BaseException):
            raise result
        else:
            out.values[key] = result
    return out

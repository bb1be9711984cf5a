"""Up or down, per server: a failed call marks its server down at once; a background probe
brings it back.

While a server is down, calls for its keys fail before any I/O (`check` raises `ServerDown`),
so no request waits for a dead server's timeout. The probe retries with a doubling delay
capped at `max_backoff` (default 1 s), so a server that comes back is used again within about
a second plus one probe.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from .errors import ServerDown

log = logging.getLogger("openai_gateway.store")

#: First delay before probing a server that just failed: short, so a blip heals at once.
FIRST_PROBE_DELAY = 0.05


class Health:
    """`probe(server)` must raise when the server does not answer and must bound its own time
    (the client's timeouts): it is never cancelled mid-call, because cancelling a client inside
    its connect can leak a pooled connection slot.

    `on_change(server, up)` is called on every transition (for a gauge or a log line).
    """

    def __init__(self, servers: Iterable[str], probe: Callable[[str], Awaitable[object]], *,
                 max_backoff: float = 1.0,
                 on_change: Callable[[str, bool], None] | None = None) -> None:
        self.servers = tuple(servers)
        self._probe = probe
        self._max_backoff = max_backoff
        self._on_change = on_change
        self._down: dict[str, asyncio.Task[None]] = {}

    def check(self, server: str) -> None:
        """Raise `ServerDown` when `server` is marked down."""
        if server in self._down:
            raise ServerDown(server)

    def is_up(self, server: str) -> bool:
        return server not in self._down

    def failed(self, server: str) -> None:
        """Mark `server` down (idempotent) and start probing it."""
        if server in self._down:
            return
        self._down[server] = asyncio.get_running_loop().create_task(self._recover(server))
        log.warning("storage server %s is down; its keys fail until it answers again", server)
        if self._on_change:
            self._on_change(server, False)

    def down(self) -> list[str]:
        return [s for s in self.servers if s in self._down]

    def states(self) -> list[tuple[str, bool]]:
        """(server, up) for every server, in configuration order: for a gauge per server."""
        return [(s, s not in self._down) for s in self.servers]

    async def _recover(self, server: str) -> None:
        delay = FIRST_PROBE_DELAY
        while True:
            await asyncio.sleep(delay)
            try:
                await self._probe(server)
            except Exception:  # any failure means "still down"; the probe logs nothing
                delay = min(delay * 2, self._max_backoff)
                continue
            break
        del self._down[server]
        log.warning("storage server %s answers again", server)
        if self._on_change:
            self._on_change(server, True)

    async def close(self) -> None:
        tasks = list(self._down.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._down.clear()

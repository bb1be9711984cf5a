"""A listening site that closes connections whose request head never completes (slowloris).

aiohttp bounds idle keep-alive connections but not a client that trickles its first request
line and headers forever; enough of those hold every file descriptor. nginx in front has
`client_header_timeout`; this gives the gateway the same bound when it faces clients itself.
"""
from __future__ import annotations

import asyncio
import socket

from aiohttp import web

END_OF_HEAD = b"\r\n\r\n"


class HeaderGuard(asyncio.Protocol):
    """Wraps aiohttp's protocol; only the first request head is timed, then it steps aside."""

    __slots__ = ("inner", "timeout", "timer", "tail")

    def __init__(self, inner: asyncio.Protocol, timeout: float):
        self.inner = inner
        self.timeout = timeout
        self.timer: asyncio.TimerHandle | None = None
        self.tail = b""

    def connection_made(self, transport) -> None:
        self.timer = asyncio.get_running_loop().call_later(self.timeout, transport.close)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.timer is not None:
            if END_OF_HEAD in self.tail + data:
                self.timer.cancel()
                self.timer = None
            else:
                self.tail = data[-3:]
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def connection_lost(self, exc) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class GuardedTCPSite(web.BaseSite):
    """aiohttp's TCPSite with every connection wrapped in a HeaderGuard."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, header_timeout: float,
                 reuse_port: bool = False, backlog: int = 1024):
        super().__init__(runner, backlog=backlog)
        self._host, self._port = host, port
        self._header_timeout = header_timeout
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server, timeout = self._runner.server, self._header_timeout
        self._server = await asyncio.get_running_loop().create_server(
            lambda: HeaderGuard(server(), timeout), self._host, self._port,
            backlog=self._backlog, reuse_address=True, reuse_port=self._reuse_port or None,
            family=socket.AF_UNSPEC)

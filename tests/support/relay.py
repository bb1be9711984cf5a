"""A TCP relay on loopback in front of one server that counts round trips.

A round trip is a turn of the conversation: the client sends after having received something
(or for the first time) on that connection. Pipelined commands written in one burst are one
turn, however the bytes are split into reads; a client that waits for an answer before sending
again makes a new turn. Run the relay in the test's own event loop: the client's writes of one
loop iteration then all arrive before any answer, so counts are exact, not timing-dependent.
"""
from __future__ import annotations

import asyncio


class Relay:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.turns = 0          # round trips, summed over connections
        self.connections = 0    # connections accepted
        self.bytes_up = 0       # client -> server
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    def reset(self) -> None:
        self.turns = self.connections = self.bytes_up = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        state = {"answered": True}  # the first client bytes start a turn
        up = asyncio.ensure_future(self._pipe(reader, up_writer, state, client_side=True))
        down = asyncio.ensure_future(self._pipe(up_reader, writer, state, client_side=False))
        self._tasks.update((up, down))
        await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        for w in (writer, up_writer):
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    state: dict[str, bool], client_side: bool) -> None:
        try:
            while data := await reader.read(65536):
                if client_side:
                    self.bytes_up += len(data)
                    if state["answered"]:
                        self.turns += 1
                        state["answered"] = False
                else:
                    state["answered"] = True
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

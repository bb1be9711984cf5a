"""send_answer and write_within: an answer is sent whole to a reading client, and a client
that reads nothing is dropped after the write timeout instead of holding the answer."""
from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from openai_gateway.upstream.sse import PIECE, send_answer

BIG = bytes(range(256)) * (8 * 1024 * 1024 // 256)  # 8 MiB: far more than socket buffers hold


def app(body: bytes, outcome: list, write_timeout: float = 0.5) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        out = await send_answer(request, 200, body, {"X-Test": "1"}, "application/json",
                                write_timeout=write_timeout)
        outcome.append(request.transport is None or request.transport.is_closing())
        return out

    application = web.Application()
    application.router.add_get("/", handler)
    return application


async def test_a_reading_client_gets_every_byte(aiohttp_client):
    for body in (b"", b"{}", b"x" * (PIECE - 1), b"y" * PIECE, BIG):
        outcome: list = []
        client = await aiohttp_client(app(body, outcome))
        r = await client.get("/")
        assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        assert r.headers["X-Test"] == "1" and int(r.headers["Content-Length"]) == len(body)
        assert await r.read() == body
        assert outcome == [False]


async def test_a_client_that_reads_nothing_is_dropped(aiohttp_server):
    outcome: list = []
    server = await aiohttp_server(app(BIG, outcome))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(50):  # the handler gives up within the write timeout (0.5 s)
        await asyncio.sleep(0.1)
        if outcome:
            break
    assert outcome == [True]
    sock.setblocking(False)
    got = 0
    loop = asyncio.get_running_loop()
    try:
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 2):
            got += len(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    assert got < len(BIG)

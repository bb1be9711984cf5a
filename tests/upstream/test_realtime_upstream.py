"""OpenAI's realtime socket as the gateway opens it (upstream/realtime_upstream.py)."""
from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from openai_gateway.upstream.realtime_upstream import RealtimeUpstream


async def test_an_upstream_that_never_answers_the_close_is_cut_off(aiohttp_server):
    """A session ending (its client gone, its budget spent) closes the upstream socket first;
    an upstream that never answers the close must not hold the session (its slot among
    realtime.max_sessions, its reservation) for aiohttp's default 10 s."""
    opened = asyncio.Event()

    async def deaf(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoclose=False)
        await ws.prepare(request)
        opened.set()
        await asyncio.sleep(30)  # never reads: our close frame is never answered
        return ws

    app = web.Application()
    app.router.add_get("/v1/realtime", deaf)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        upstream = RealtimeUpstream(session, str(server.make_url("/v1")), "sk-test")
        ws = await upstream.connect(model="gpt-realtime")
        await opened.wait()
        start = time.monotonic()
        await ws.close()
        assert ws.closed
        assert time.monotonic() - start < 5  # CLOSE_TIMEOUT; aiohttp alone waits 10 s

"""Speech audio relayed chunk by chunk (upstream.chunks): chunks reach the client as the
upstream writes them, a broken upstream cuts the client's answer short, a client that leaves
is noted."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest
from aiohttp import web

from openai_gateway.demo.fake_media import FakeMedia
from openai_gateway.demo.fake_openai import FakeOpenAI
from openai_gateway.demo.media_formats import wav_seconds
from openai_gateway.upstream.chunks import ChunksOutcome, relay_chunks

from ..conftest import free_port


def relay_to(url: str, outcomes: list[ChunksOutcome],
             ended: asyncio.Event | None = None) -> web.Application:
    """`ended` is set when the handler is over, returned or cancelled."""
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.post(url, data=body,
                                        headers={"Content-Type": "application/json"}) as up:
                    outcomes.append(ChunksOutcome())
                    return await relay_chunks(request, up, {}, outcomes[-1], idle_timeout=5)
        finally:
            if ended is not None:
                ended.set()

    app = web.Application()
    app.router.add_post("/v1/audio/speech", handler)
    return app


async def test_speech_chunks_arrive_over_time(aiohttp_server, aiohttp_client):
    media = FakeMedia(pace=0.03, chunk_bytes=9600)
    upstream = await aiohttp_server(FakeOpenAI(media=media).app())
    outcomes: list[ChunksOutcome] = []
    client = await aiohttp_client(relay_to(str(upstream.make_url("/v1/audio/speech")),
                                           outcomes))
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=0)
    arrivals, audio = [], b""
    async with sdk.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="alloy", input="Read this aloud, please.",
            response_format="wav") as resp:
        assert resp.headers["content-type"] == "audio/wav"
        async for chunk in resp.iter_bytes():
            arrivals.append(time.monotonic())
            audio += chunk
    await sdk.close()
    assert len(arrivals) >= 5 and arrivals[-1] - arrivals[0] >= 0.1
    assert wav_seconds(audio) == pytest.approx(len("Read this aloud, please.") / 15, abs=0.01)
    assert outcomes[-1].complete and outcomes[-1].sent_bytes == len(audio)


async def test_a_broken_upstream_cuts_the_answer_short(aiohttp_server, aiohttp_client):
    async def dying(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        out.enable_chunked_encoding()
        await out.prepare(request)
        await out.write(b"ID3" + b"\0" * 5000)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return out

    app = web.Application()
    app.router.add_post("/speech", dying)
    upstream = await aiohttp_server(app)
    outcomes: list[ChunksOutcome] = []
    client = await aiohttp_client(relay_to(str(upstream.make_url("/speech")), outcomes))
    resp = await client.post("/v1/audio/speech", json={})
    assert resp.headers["Content-Type"] == "audio/mpeg"
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert outcomes[-1].upstream_failed and not outcomes[-1].complete
    assert outcomes[-1].sent_bytes == 5003


@pytest.mark.parametrize("cancellation", [False, True])
async def test_a_client_that_leaves_is_noted(aiohttp_server, cancellation):
    """run_app's servers keep the handler running (the write fails: client_gone); the test
    server's cancel it (the relay stops where it was)."""
    media = FakeMedia(pace=0.05, chunk_bytes=4800)
    upstream = await aiohttp_server(FakeOpenAI(media=media).app())
    outcomes: list[ChunksOutcome] = []
    ended = asyncio.Event()
    runner = web.AppRunner(relay_to(str(upstream.make_url("/v1/audio/speech")), outcomes, ended),
                           handler_cancellation=cancellation)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"http://127.0.0.1:{port}/v1/audio/speech", json={
                "model": "tts-1", "voice": "alloy", "input": "x" * 300,
                "response_format": "pcm"})
            await resp.content.read(4800)
            resp.close()
        await asyncio.wait_for(ended.wait(), 5)
    finally:
        await runner.cleanup()
    assert not outcomes[-1].complete
    assert outcomes[-1].client_gone is not cancellation
    assert outcomes[-1].sent_bytes < 300 / 15 * 48_000

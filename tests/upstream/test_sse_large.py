"""Streams of voice and pictures through the SSE relay: events of megabytes (whole base64
images) pass without being held or tripping a line limit, the last one's usage is still read,
and each kind of stream is whole at its own end event."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import tracemalloc

import aiohttp
import openai
import pytest
from aiohttp import web

from openai_gateway.policy.usage import Usage
from openai_gateway.upstream.sse import MAX_HELD, TAIL_BYTES, StreamOutcome, _Inspector, relay

from ..conftest import ROOT, free_port

MB3 = 3_000_000


def image_events(partials: int, size: int, *, kind: str = "image_generation",
                 end: bytes = b"\n\n") -> bytes:
    """An image stream as OpenAI sends it: partial images, then the completed event whose
    image is followed by its usage."""
    def event(name: str, doc: dict) -> bytes:
        return b"event: " + name.encode() + end[:len(end) // 2] + b"data: " + json.dumps(
            doc).encode() + end

    image = "A" * size
    out = b"".join(event(f"{kind}.partial_image", {
        "type": f"{kind}.partial_image", "b64_json": image, "partial_image_index": i,
        "size": "1024x1024", "quality": "high"}) for i in range(partials))
    return out + event(f"{kind}.completed", {
        "type": f"{kind}.completed", "b64_json": image, "created_at": 1, "size": "1024x1024",
        "quality": "high", "background": "opaque", "output_format": "png",
        "usage": {"total_tokens": 4470, "input_tokens": 10, "output_tokens": 4460,
                  "input_tokens_details": {"text_tokens": 10, "image_tokens": 0}}})


IMAGE_USAGE = Usage(input=10, output=4460)


def feed(chunks: list[bytes], strip: bool = False) -> tuple[_Inspector, bytes]:
    insp = _Inspector(strip)
    sent = b"".join(insp.feed(c) for c in chunks)
    insp.finish_oversized(whole=False)  # as relay() does at the end of the stream
    return insp, sent


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("end", [b"\n\n", b"\r\n\r\n"])
@pytest.mark.parametrize("size", [1 << 16, 100_003, 1 << 20])
def test_megabyte_events_pass_and_the_last_ones_usage_is_read(size, end):
    data = image_events(2, MB3, end=end)
    chunks = split(data, size)
    insp, sent = feed(chunks)
    assert sent == data
    assert insp.outcome.usage == IMAGE_USAGE
    assert insp.outcome.complete and not insp.terminal  # more images may follow
    assert insp.outcome.events == 3
    assert len(insp.held) <= MAX_HELD and insp.big is None
    assert insp.outcome.output.tokens >= len(data) - 2 * len(end) - 1000


def test_the_blank_line_may_straddle_two_chunks():
    data = image_events(1, MB3, end=b"\r\n\r\n")
    first_end = data.index(b"\r\n\r\n") + 2  # between the two line ends
    insp, sent = feed([data[:first_end - 1], data[first_end - 1:first_end + 1],
                       data[first_end + 1:]])
    assert sent == data and insp.outcome.events == 2 and insp.outcome.usage == IMAGE_USAGE


def test_an_edit_stream_is_whole_at_its_completed_event():
    insp, _ = feed(split(image_events(0, MB3, kind="image_edit"), 1 << 16))
    assert insp.outcome.complete and insp.outcome.usage == IMAGE_USAGE


def test_a_stream_cut_inside_the_last_image_is_not_whole_and_has_no_usage():
    data = image_events(1, MB3)
    insp, _ = feed(split(data[:-5000], 1 << 16))
    assert not insp.outcome.complete and insp.outcome.usage is None


def test_the_last_event_without_its_blank_line_is_read_at_the_end():
    data = image_events(0, MB3)[:-2]
    insp, _ = feed(split(data, 1 << 16))
    assert insp.outcome.complete and insp.outcome.usage == IMAGE_USAGE


def test_a_usage_that_is_not_the_roots_is_not_taken():
    doc = {"type": "image_generation.completed", "b64_json": "A" * MB3,
           "echo": {"usage": {"input_tokens": 0, "output_tokens": 0}}, "size": "1024x1024"}
    data = b"data: " + json.dumps(doc).encode() + b"\n\n"
    insp, _ = feed(split(data, 1 << 16))
    assert insp.outcome.complete and insp.outcome.usage is None


def test_a_usage_further_back_than_the_kept_tail_is_not_seen():
    """The tail kept is TAIL_BYTES: a usage written before 64 KB of other fields is lost (the
    caller then charges the reservation), never misread."""
    doc = {"type": "image_generation.completed", "b64_json": "A" * MB3,
           "usage": {"input_tokens": 1, "output_tokens": 2}, "note": "B" * TAIL_BYTES}
    insp, _ = feed(split(b"data: " + json.dumps(doc).encode() + b"\n\n", 1 << 16))
    assert insp.outcome.complete and insp.outcome.usage is None


@pytest.mark.parametrize("events, terminal", [
    ([{"type": "speech.audio.delta", "audio": "AAAA"},
      {"type": "speech.audio.done", "usage": {"input_tokens": 3, "output_tokens": 27,
                                              "total_tokens": 30}}], True),
    ([{"type": "transcript.text.delta", "delta": "Hi"},
      {"type": "transcript.text.done", "text": "Hi", "usage": {
          "type": "tokens", "input_tokens": 50, "input_token_details": {
              "text_tokens": 0, "audio_tokens": 50}, "output_tokens": 1, "total_tokens": 51}}],
     True),
    ([{"type": "speech.audio.delta", "audio": "AAAA"}], False),
])
def test_speech_and_transcription_streams_end_at_their_done_event(events, terminal):
    data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    insp, _ = feed(split(data, 7))
    assert insp.terminal is terminal and insp.outcome.complete is terminal
    if terminal:
        assert insp.outcome.usage is not None and insp.outcome.usage.output in (27, 1)


def test_a_delta_that_mentions_an_end_type_is_not_the_end():
    data = b'data: {"type":"transcript.text.delta","delta":"say speech.audio.done"}\n\n'
    insp, _ = feed([data])
    assert not insp.outcome.complete


# --- through relay(), with a real upstream in another process ---------------------------------


UPSTREAM = """
import sys
from aiohttp import web
from openai_gateway.demo.fake_media import FakeMedia
from openai_gateway.demo.fake_openai import FakeOpenAI
web.run_app(FakeOpenAI(media=FakeMedia(image_event_bytes=int(sys.argv[2]))).app(),
            host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


@pytest.fixture
def upstream_url():
    """The package's fake upstream in its own process, with 3 MB image events: its memory is
    not the relay's."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(port), str(MB3)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_relay_carries_3mb_image_events_with_flat_memory(aiohttp_server, upstream_url):
    """4 events of 3 MB (3 partial images and the completed one) through relay(); the client
    is curl in its own process, so the memory traced here is the relay's (and its server's)."""
    outcomes: list[StreamOutcome] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        # The session as upstream.client builds it: default read_bufsize and line limits.
        async with aiohttp.ClientSession() as session:
            async with session.post(upstream_url + "/images/generations", json={
                    "model": "gpt-image-1", "prompt": "a fox", "stream": True,
                    "partial_images": 3, "quality": "high"}) as up:
                outcomes.append(StreamOutcome())
                return await relay(request, up, {}, outcomes[-1], idle_timeout=30,
                                   strip_usage_chunk=False, record=False)

    app = web.Application()
    app.router.add_post("/relay", handler)
    server = await aiohttp_server(app)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        curl = await asyncio.create_subprocess_exec(
            "curl", "-sS", "-N", "-o", "/dev/null", "-w", "%{size_download}", "-X", "POST",
            str(server.make_url("/relay")), stdout=asyncio.subprocess.PIPE)
        size = int((await curl.communicate())[0])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    outcome = outcomes[-1]
    assert size > 4 * MB3 and outcome.events == 4
    assert outcome.complete and not outcome.upstream_failed
    assert outcome.usage is not None and outcome.usage.output == 4160 + 3 * 100
    # A relay that held one event would hold 3 MB: this one holds aiohttp's reads (a few of
    # 256 KB) and a 64 KB tail, whatever the size of the events.
    print(f"\nrelay of 4 events of 3 MB: peak traced memory {peak / 1e6:.2f} MB")
    assert peak < MB3 * 2 // 3


async def test_a_stream_of_image_events_reaches_the_sdk_whole(aiohttp_client, upstream_url):
    """The official SDK reads 3 MB events relayed by relay() (its own line handling)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        async with aiohttp.ClientSession() as session:
            async with session.post(upstream_url + "/images/generations", json=body) as up:
                return await relay(request, up, {}, StreamOutcome(), idle_timeout=30,
                                   strip_usage_chunk=False, record=False)

    app = web.Application()
    app.router.add_post("/v1/images/generations", handler)
    client = await aiohttp_client(app)
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=0)
    stream = await sdk.images.generate(model="gpt-image-1", prompt="p", stream=True,
                                       partial_images=1)
    events = [e async for e in stream]
    await sdk.close()
    assert [e.type for e in events] == ["image_generation.partial_image",
                                        "image_generation.completed"]
    assert len(events[-1].b64_json) >= MB3 - 4 and events[-1].usage.output_tokens == 1156

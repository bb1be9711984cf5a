"""SSE relay through the whole app: headers, no buffering, disconnects, broken upstreams."""
from __future__ import annotations

import asyncio
import time

import pytest

from ..conftest import ORIGIN

STREAM = {"model": "gpt-4o-mini", "stream": True,
          "messages": [{"role": "user", "content": "hi"}]}


async def read_events(resp) -> list[tuple[float, bytes]]:
    """(arrival time, bytes) for each chunk the client receives."""
    out = []
    async for chunk in resp.content.iter_any():
        out.append((time.perf_counter(), chunk))
    return out


async def test_stream_headers_and_frames(gw, fake):
    r = await gw.post("/v1/chat/completions", json=STREAM,
                      headers={"Accept-Encoding": "gzip, br", "Origin": ORIGIN})
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["Cache-Control"] == "no-cache"
    assert r.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in r.headers  # compression would hold chunks back
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert r.headers["X-Request-ID"].startswith("req_")
    text = await r.text()
    events = [e for e in text.split("\n\n") if e]
    assert len(events) == 6 and events[-1] == "data: [DONE]"


async def test_the_answer_ends_with_its_done_event(gw, fake):
    """The client's response ends with [DONE], not when the upstream's ends: a client that
    stops reading at [DONE] (SDKs do) finds its connection's response complete and keeps the
    connection for its next request instead of closing it."""
    fake.hold_after_done = asyncio.Event()
    try:
        r = await gw.post("/v1/chat/completions", json=STREAM, headers={"Origin": ORIGIN})
        async with asyncio.timeout(10):  # without the fix: until the upstream lets go
            text = await r.text()
        assert text.endswith("data: [DONE]\n\n")
        assert fake.active == 1  # the upstream's response is still open
    finally:
        fake.hold_after_done.set()
    r = await gw.post("/v1/chat/completions", json=STREAM, headers={"Origin": ORIGIN})
    assert (await r.text()).endswith("data: [DONE]\n\n")
    assert not fake.aborted  # the upstream was read to its end, not cut


async def test_each_chunk_is_written_as_it_arrives(gw, fake):
    fake.chunk_delay = 0.15
    t0 = time.perf_counter()
    r = await gw.post("/v1/chat/completions", json=STREAM)
    arrivals = await read_events(r)
    data = [c for _, c in arrivals if c.strip()]
    assert len(arrivals) >= 5, "chunks were coalesced"
    first, last = arrivals[0][0] - t0, arrivals[-1][0] - t0
    assert first < 0.15 and last - first > 0.5, (first, last)
    assert b"".join(data).count(b"data: ") == 6


@pytest.mark.parametrize("cancellation", [True, False])
async def test_client_disconnect_closes_upstream(make_gateway, fake, cancellation):
    # The test server cancels handlers on disconnect; run_app's default does not, so the
    # gateway must also notice at its next write. Both must close the upstream request.
    gw = await make_gateway(server_kwargs={"handler_cancellation": cancellation})
    fake.chunk_delay = 0.3
    fake.chunks = 40
    r = await gw.post("/v1/chat/completions", json=STREAM)
    await r.content.readany()
    t_close = time.monotonic()
    r.close()
    for _ in range(40):
        if fake.aborted:
            break
        await asyncio.sleep(0.05)
    assert fake.aborted, "the upstream request stayed open"
    assert fake.aborted[0] - t_close < 1.0
    # And the gateway keeps serving.
    fake.chunk_delay = 0
    r2 = await gw.post("/v1/chat/completions", json=STREAM)
    assert (await r2.text()).endswith("data: [DONE]\n\n")


async def test_upstream_drop_mid_stream_ends_cleanly(gw, fake):
    fake.script = [{"drop_after": 2}]
    r = await gw.post("/v1/chat/completions", json=STREAM)
    text = await asyncio.wait_for(r.text(), 5)
    assert text.count("chat.completion.chunk") == 2
    assert '"code":"upstream_interrupted"' in text
    assert "[DONE]" not in text
    r2 = await gw.post("/v1/chat/completions", json=STREAM)
    assert r2.status == 200 and (await r2.text()).endswith("data: [DONE]\n\n")


async def test_stream_without_done_is_reported(gw, fake):
    fake.script = [{"no_done": True}]
    r = await gw.post("/v1/chat/completions", json=STREAM)
    text = await asyncio.wait_for(r.text(), 5)
    assert '"upstream_interrupted"' in text


async def test_stall_between_chunks_hits_idle_timeout(make_gateway, fake):
    gw = await make_gateway({"upstream": {"idle_timeout": 0.3}})
    fake.script = [{"chunk_delay": 2}]
    t0 = time.perf_counter()
    r = await gw.post("/v1/chat/completions", json=STREAM)
    text = await asyncio.wait_for(r.text(), 5)
    assert time.perf_counter() - t0 < 1.5
    assert '"upstream_interrupted"' in text


async def test_upstream_error_before_stream_is_json(gw, fake):
    fake.script = [{"status": 404}]
    r = await gw.post("/v1/chat/completions", json=STREAM)
    assert r.status == 404
    assert (await r.json())["error"]["message"] == (
        "The upstream does not know the requested model or resource.")


@pytest.mark.parametrize("status", [401, 403])
async def test_upstream_refusing_our_key_is_502_not_the_clients_fault(gw, fake, status):
    fake.script = [{"status": status}]
    r = await gw.post("/v1/chat/completions", json=STREAM)
    err = (await r.json())["error"]
    assert r.status == 502 and err["code"] == "upstream_auth_error"
    assert "fake upstream" not in err["message"]


async def test_stream_usage_chunk_only_when_asked(gw, fake):
    body = dict(STREAM, stream_options={"include_usage": True})
    text = await (await gw.post("/v1/chat/completions", json=body)).text()
    assert '"usage":{"prompt_tokens"' in text
    # Without token budgets the gateway does not change the request.
    assert fake.posts[-1].json().get("stream_options") == {"include_usage": True}

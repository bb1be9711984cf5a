"""End to end, a side goes away mid-stream: when the client does (the SDK closes, curl is
killed) the gateway closes its upstream request; when the upstream does, the client's stream
ends with an error in OpenAI's shape and the gateway still serves.
"""
from __future__ import annotations

import asyncio
import json
import time

import openai
import pytest

from ..conftest import KEY
from ..support.clients import (
    CHAT,
    ERROR_FIELDS,
    MESSAGES,
    curl,
    json_headers,
    sdk,
    still_serves,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("curl_installed")


# --- 6. the client goes away mid-stream ---------------------------------------------------------


async def test_sdk_disconnect_mid_stream_closes_upstream(gateway_process, fake):
    gp = await gateway_process()
    fake.chunk_delay = 0.5
    fake.chunks = 20
    async with sdk(gp) as client:
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                      stream=True)
        got = []
        async for chunk in stream:
            got.append(chunk)
            if len(got) == 2:
                break
        assert fake.active == 1 and fake.aborted == []
        await stream.close()
        closed_at = time.monotonic()
        took = await wait_for(lambda: fake.aborted, 1.5)
    # At once: not at the next chunk (0.5 s later), which is all a write error would catch.
    assert fake.aborted[0] - closed_at < 0.3, took
    assert fake.active == 0
    await still_serves(gp)
    assert "Traceback" not in gp.log()


async def test_curl_killed_mid_stream_closes_upstream(gateway_process, fake):
    gp = await gateway_process()
    fake.chunk_delay = 0.5
    fake.chunks = 20
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}).encode()
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sN", *json_headers(), "--data-binary", "@-", gp.url + CHAT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    proc.stdin.write(body)
    proc.stdin.close()
    seen = 0
    try:
        while seen < 2:
            line = await asyncio.wait_for(proc.stdout.readline(), 5)
            assert line, "the stream ended early"
            seen += line.startswith(b"data: ")
    finally:
        proc.kill()
        await proc.wait()
    killed_at = time.monotonic()
    await wait_for(lambda: fake.aborted, 1.5)
    assert fake.aborted[0] - killed_at < 0.3
    await still_serves(gp)


# --- 7. the upstream drops mid-stream -----------------------------------------------------------


async def test_upstream_drop_mid_stream_ends_client_stream(gateway_process, fake):
    gp = await gateway_process()
    fake.script = [{"drop_after": 2}]
    parts = []

    async def consume():
        async with sdk(gp) as client:
            stream = await client.chat.completions.create(model="gpt-4o-mini",
                                                          messages=MESSAGES, stream=True)
            async for chunk in stream:
                parts.append(chunk.choices[0].delta.content)

    with pytest.raises(openai.APIError) as e:
        await asyncio.wait_for(consume(), 5)
    assert parts == ["w0 ", "w1 "]
    assert isinstance(e.value.body, dict)
    assert set(e.value.body) == ERROR_FIELDS
    assert e.value.body["code"] == "upstream_interrupted"
    assert KEY not in repr(e.value.body)
    await still_serves(gp)


async def test_upstream_drop_mid_stream_curl(gateway_process, fake):
    gp = await gateway_process()
    fake.script = [{"drop_after": 2}]
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}).encode()
    r = await curl(gp.url + CHAT, "-N", *json_headers(), data=body, timeout=5)
    assert r.status == 200 and r.rc == 0  # a cleanly terminated chunked body
    events = [e for e in r.body.split(b"\n\n") if e.strip()]
    assert len(events) == 3, events
    last = json.loads(events[-1].removeprefix(b"data: "))
    assert set(last) == {"error"} and set(last["error"]) == ERROR_FIELDS
    assert b"[DONE]" not in r.body
    await still_serves(gp)

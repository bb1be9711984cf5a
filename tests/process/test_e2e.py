"""End to end: the real `python gateway.py` process, driven by the official `openai` SDK and curl
(tests/support/clients.py): chat, streams, the cache, embeddings, the model list, CORS preflight.

Each test starts its own gateway process (about 0.3 s) against the in-test fake upstream, so the
test event loop must never block. Every response a test reads is added to the leak scan.
"""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from ..conftest import KEY, ORIGIN, SEEN_RESPONSES
from ..support.clients import (
    CHAT,
    DUMMY,
    FOREIGN,
    MESSAGES,
    assert_error_shape,
    curl,
    json_headers,
    scan,
    sdk,
)

pytestmark = pytest.mark.usefixtures("curl_installed")


# --- 1. a plain chat completion ---------------------------------------------------------------


async def test_chat_completion_injects_key_and_forwards_body_unchanged(gateway_process, fake):
    gp = await gateway_process()
    sent: list = []
    async with sdk(gp, sent=sent, Cookie="session=browser-cookie") as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=20)
        completion = raw.parse()
    scan(raw.headers, raw.http_response.text)
    assert completion.choices[0].message.content == "w0 w1 w2 w3 w4 "
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 5
    assert raw.headers.get("x-request-id", "").startswith("req_")
    assert raw.headers["x-cache"] == "BYPASS"  # temperature unset: sampled, not cached

    (up,) = fake.posts
    assert up.path == CHAT
    h = {k.lower(): v for k, v in up.headers.items()}
    assert h["authorization"] == f"Bearer {KEY}"
    assert DUMMY not in repr(up.headers)
    assert "cookie" not in h
    assert not any(k.startswith("x-stainless") for k in h), h
    # What the SDK put on the wire reached the upstream unchanged.
    (req,) = sent
    assert json.loads(up.body) == json.loads(req.content)
    assert up.body == req.content


async def test_chat_completion_with_curl_forwards_exact_bytes(gateway_process, fake):
    gp = await gateway_process()
    # Odd spacing, key order, escapes and non-ASCII: any re-serialisation would change them.
    body = ('{ "messages":[ {"content":"h\\u00e9llo \u2603 \\"q\\"", "role":"user"} ],\n'
            '  "model" : "gpt-4o-mini",  "max_tokens": 7 }').encode()
    r = await curl(gp.url + CHAT, *json_headers(), "-H", "Cookie: a=b", data=body)
    assert r.status == 200, r.text()
    doc = json.loads(r.body)
    assert doc["choices"][0]["message"]["content"] == "w0 w1 w2 w3 w4 "
    assert doc["usage"]["completion_tokens"] == 5
    assert r.headers["x-request-id"].startswith("req_")
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "origin" in r.headers["vary"].lower()
    (up,) = fake.posts
    assert up.body == body
    h = {k.lower(): v for k, v in up.headers.items()}
    assert h["authorization"] == f"Bearer {KEY}"
    assert "cookie" not in h and DUMMY not in repr(up.headers)


# --- 2. streaming, chunk by chunk ---------------------------------------------------------------


async def test_stream_chunks_arrive_as_sent_sdk(gateway_process, fake):
    gp = await gateway_process()
    fake.chunk_delay = 0.2
    fake.chunks = 5
    arrivals, parts = [], []
    async with sdk(gp) as client:
        start = time.monotonic()
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                      stream=True)
        headers = stream.response.headers
        async for chunk in stream:
            arrivals.append(time.monotonic())
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        end = time.monotonic()
    scan(headers)
    assert "".join(parts) == "w0 w1 w2 w3 w4 "
    assert len(arrivals) == 5
    assert arrivals[-1] - arrivals[0] >= 0.6, arrivals  # 4 gaps of 0.2 s, not one burst
    assert end - arrivals[0] >= 0.6  # the first chunk came long before the end
    assert arrivals[0] - start < 0.6
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in headers
    assert headers["x-request-id"].startswith("req_")
    # The client did not ask for usage and no token limit is set: the body went as it came.
    assert "stream_options" not in fake.posts[-1].json()


async def test_stream_chunks_arrive_as_sent_curl(gateway_process, fake):
    gp = await gateway_process()
    fake.chunk_delay = 0.2
    fake.chunks = 5
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}).encode()
    proc = await asyncio.create_subprocess_exec(
        # --compressed: ask for gzip/br (and decode it), as browsers do.
        "curl", "-siN", "--compressed", *json_headers(), "--data-binary", "@-", gp.url + CHAT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    proc.stdin.write(body)
    proc.stdin.close()
    start = time.monotonic()
    head, events = [], []
    try:
        while (line := await asyncio.wait_for(proc.stdout.readline(), 5)) not in (b"\r\n", b""):
            head.append(line.decode("latin-1").strip())
        while line := await asyncio.wait_for(proc.stdout.readline(), 5):
            if line.startswith(b"data: "):
                events.append((time.monotonic(), line[6:].strip()))
    finally:
        rc = await asyncio.wait_for(proc.wait(), 5)
    end = time.monotonic()
    SEEN_RESPONSES.extend(head + [e[1].decode() for e in events])
    assert rc == 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
    assert head[0].split()[1] == "200", head
    assert headers["content-type"].startswith("text/event-stream")
    assert "content-encoding" not in headers, headers  # a compressor holds bytes back
    assert headers["x-accel-buffering"] == "no" and headers["cache-control"] == "no-cache"
    payloads = [e[1] for e in events]
    assert payloads[-1] == b"[DONE]"
    chunks = [(t, json.loads(p)) for t, p in events if p != b"[DONE]"]
    assert "".join(c["choices"][0]["delta"]["content"] for _, c in chunks) == "w0 w1 w2 w3 w4 "
    times = [t for t, _ in chunks]
    assert times[-1] - times[0] >= 0.6, times  # uncompressed, unbuffered despite Accept-Encoding
    assert end - times[0] >= 0.6
    assert times[0] - start < 0.6


async def test_stream_usage_chunk_only_when_the_client_asks(gateway_process, fake):
    # A token budget makes the gateway ask the upstream for usage; the SDK must not see the
    # extra chunk unless it asked for it itself.
    gp = await gateway_process({"rate_limit": {"tokens": ["100000/minute"]}})
    async with sdk(gp) as client:
        plain = [c async for c in await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True)]
        asked = [c async for c in await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True})]
    assert len(plain) == 5 and all(c.choices and c.usage is None for c in plain)
    assert fake.posts[0].json()["stream_options"] == {"include_usage": True}
    assert len(asked) == 6 and asked[-1].choices == [] and asked[-1].usage.completion_tokens == 5


async def test_identical_deterministic_request_is_served_from_cache(gateway_process, fake):
    gp = await gateway_process()
    async with sdk(gp) as client:
        answers = []
        for _ in range(2):
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MESSAGES, temperature=0)
            scan(raw.headers)
            answers.append((raw.headers["x-cache"], raw.parse().choices[0].message.content))
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, temperature=0,
            extra_headers={"Cache-Control": "no-cache"})
        assert raw.headers["x-cache"] == "BYPASS"
    assert answers == [("MISS", "w0 w1 w2 w3 w4 "), ("HIT", "w0 w1 w2 w3 w4 ")]
    assert len(fake.posts) == 2


# --- 3. embeddings and the model list -----------------------------------------------------------


async def test_embeddings(gateway_process, fake):
    gp = await gateway_process()
    async with sdk(gp) as client:
        r = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [d.index for d in r.data] == [0, 1]
    assert r.data[0].embedding == [0.1, 0.2, 0.3]
    assert r.usage.prompt_tokens == 3
    (up,) = fake.posts
    assert up.path == "/v1/embeddings"
    assert up.headers["Authorization"] == f"Bearer {KEY}"


async def test_models_list_is_filtered_to_the_allowlist(gateway_process, fake):
    gp = await gateway_process()
    async with sdk(gp) as client:
        page = await client.models.list()
        ids = sorted(m.id for m in page.data)
    assert ids == ["gpt-4o-mini", "text-embedding-3-small"]  # gpt-4o is offered, not allowed
    (up,) = fake.seen
    assert (up.method, up.path) == ("GET", "/v1/models")
    assert up.headers["Authorization"] == f"Bearer {KEY}"
    assert DUMMY not in repr(up.headers)


# --- 9. CORS preflight --------------------------------------------------------------------------


async def test_preflight_allowed_and_foreign(gateway_process, fake):
    gp = await gateway_process()
    pre = ["-X", "OPTIONS", "-H", "Access-Control-Request-Method: POST",
           "-H", "Access-Control-Request-Headers: authorization,content-type,x-stainless-os"]
    r = await curl(gp.url + CHAT, *pre, "-H", f"Origin: {ORIGIN}")
    assert r.status == 200, (r.status, r.text())
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "origin" in r.headers.get("vary", "").lower()
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = {x.strip().lower() for x in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-stainless-os"} <= allowed
    assert "access-control-allow-credentials" not in r.headers

    r = await curl(gp.url + CHAT, *pre, "-H", f"Origin: {FOREIGN}")
    assert r.status == 403
    assert "access-control-allow-origin" not in r.headers
    assert_error_shape(r.status, r.headers, r.text(), code="origin_not_allowed")
    assert fake.seen == []

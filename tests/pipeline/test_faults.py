"""Upstream and client faults: the right status, nothing cached or charged, still serving."""
from __future__ import annotations

import asyncio
import gc
import os
import socket

import aiohttp
import pytest

from ..conftest import KEY, free_port

CHAT = {"model": "gpt-4o-mini", "temperature": 0,
        "messages": [{"role": "user", "content": "hi"}]}
STREAM = dict(CHAT, stream=True)


async def raw_server(handler):
    """A TCP server that misbehaves exactly as `handler(reader, writer)` says."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def canned_server(response: bytes):
    """An upstream that reads one request head, writes exactly `response` and hangs up."""
    async def handler(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()
    return await raw_server(handler)


async def status_of(gw, body=CHAT, route="/v1/chat/completions"):
    r = await gw.post(route, json=body)
    data = await r.read()
    return r.status, r, data


async def assert_still_serving(gw, fake):
    fake.script = []
    status, _, _ = await status_of(gw, dict(CHAT, seed=99))
    assert status == 200


# --- the upstream fails -------------------------------------------------------------------

@pytest.mark.parametrize("base_url,status,code", [
    ("http://127.0.0.1:{closed}/v1", 502, "upstream_unavailable"),       # connection refused
    ("http://does-not-exist.invalid/v1", 502, "upstream_unavailable"),   # DNS failure
    ("https://127.0.0.1:{fake}/v1", 502, "upstream_unavailable"),        # TLS to a plain server
])
async def test_unreachable_upstreams(make_gateway, upstream, fake, base_url, status, code):
    url = base_url.format(closed=free_port(), fake=upstream.port)
    gw = await make_gateway({"upstream": {"base_url": url}})
    st, r, data = await status_of(gw)
    assert st == status and code.encode() in data
    assert KEY.encode() not in data


async def test_reset_before_headers_is_retried_then_502(make_gateway):
    hits = []

    async def reset(reader, writer):
        hits.append(1)
        await reader.read(10)
        writer.transport.abort()

    server, port = await raw_server(reset)
    async with server:
        gw = await make_gateway({"upstream": {"base_url": f"http://127.0.0.1:{port}/v1",
                                              "retries": 2}})
        st, _, data = await status_of(gw)
    assert st == 502 and b"upstream_unavailable" in data
    assert len(hits) == 3


async def test_truncated_json_is_502_and_not_cached(make_gateway):
    server, port = await canned_server(  # promises 500 bytes, sends 40
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: 500\r\n\r\n{\"id\": \"chatcmpl-x\", \"choi")
    async with server:
        gw = await make_gateway({"upstream": {"base_url": f"http://127.0.0.1:{port}/v1"}})
        st, _, data = await status_of(gw)
        assert st == 502
        st, r, _ = await status_of(gw)
        assert r.headers.get("X-Cache") != "HIT"


async def test_non_json_200_passes_through_uncached(gw, fake):
    fake.script = [{"raw": b"<html>maintenance</html>", "ctype": "text/html"}] * 2
    st, r, data = await status_of(gw)
    assert st == 200 and data == b"<html>maintenance</html>"
    st, r, _ = await status_of(gw)
    assert r.headers["X-Cache"] == "MISS"


async def test_5xx_and_429_bursts_end_with_the_upstreams_status(make_gateway, fake):
    gw = await make_gateway({"upstream": {"retries": 2}})
    fake.script = [{"status": 429, "headers": {"Retry-After": "0"}}] * 3
    st, r, data = await status_of(gw)
    assert st == 429 and len(fake.posts) == 3
    fake.script = [{"status": 502}] * 3
    st, r, _ = await status_of(gw)
    assert st == 502 and len(fake.posts) == 6
    await assert_still_serving(gw, fake)


async def test_enormous_response_is_refused(make_gateway, fake):
    gw = await make_gateway({"upstream": {"max_response_bytes": 1000}})
    fake.script = [{"raw": b"x" * 5000, "ctype": "application/json"}]
    st, _, data = await status_of(gw)
    assert st == 502 and b"too large" in data


async def test_failover_to_the_next_upstream_with_its_own_key(aiohttp_client, upstream_url,
                                                              fake):
    from openai_gateway.app import create_app
    from openai_gateway.config.settings import parse

    from ..conftest import base_config, merge, trace_config
    cfg = merge(base_config(f"http://127.0.0.1:{free_port()}/v1"), {"upstream": {
        "retries": 0, "fallbacks": [{"base_url": upstream_url, "api_key_env": "BACKUP_KEY"}]}})
    settings = parse(cfg, environ={"OPENAI_API_KEY": KEY, "BACKUP_KEY": "sk-backup-key"})
    assert "sk-backup-key" not in repr(settings) and "sk-backup-key" not in str(settings.redacted())
    gw = await aiohttp_client(create_app(settings), trace_configs=[trace_config()])
    st, _, _ = await status_of(gw)
    assert st == 200
    assert fake.posts[0].headers["Authorization"] == "Bearer sk-backup-key"


async def test_failover_on_5xx(aiohttp_server, make_gateway, fake, upstream_url):
    from ..support.fake_upstream import FakeOpenAI
    primary = FakeOpenAI(script=[{"status": 503}])
    server = await aiohttp_server(primary.app())
    gw = await make_gateway({"upstream": {"base_url": str(server.make_url("/v1")), "retries": 0,
                                          "fallbacks": [{"base_url": upstream_url}]}})
    st, _, _ = await status_of(gw)
    assert st == 200 and len(primary.posts) == 1 and len(fake.posts) == 1
    assert fake.posts[0].headers["Authorization"] == f"Bearer {KEY}"


async def test_refused_answers_are_free_cut_ones_cost_their_reservation(make_gateway, fake):
    gw = await make_gateway({"rate_limit": {"tokens": ["1000/minute"]}, "upstream": {"retries": 0},
                             "validation": {"max_tokens": 100}})
    fake.script = [{"status": 500}]  # an error answer: OpenAI bills nothing for it
    await status_of(gw)
    st, r, _ = await status_of(gw, dict(CHAT, seed=2))
    # Only this probe's own answer (6 tokens, settled before its headers) was charged.
    assert st == 200 and r.headers["x-ratelimit-remaining-tokens"] == str(1000 - 6)
    fake.script = [{"drop_after": 0}]  # cut before its first event: usage unknown
    r = await gw.post("/v1/chat/completions", json=dict(STREAM, seed=1))
    await r.read()
    st, r, _ = await status_of(gw, dict(CHAT, seed=3))
    # The cut stream's whole reservation (its prompt and the 100-token cap) is kept.
    assert r.headers["x-ratelimit-remaining-tokens"] == str(1000 - 6 - 101 - 6)


# --- the client misbehaves ------------------------------------------------------------------

async def test_disconnect_while_waiting_for_a_stream_aborts_upstream(gw, fake):
    """A stream's client that leaves before the first byte closes the upstream request at
    once (a non-stream answer is read to its end instead: tests/test_proxy.py)."""
    fake.script = [{"delay": 3}]
    task = asyncio.ensure_future(gw.post("/v1/chat/completions", json=dict(STREAM, seed=9)))
    await asyncio.sleep(0.3)
    task.cancel()
    for _ in range(40):
        if fake.aborted:
            break
        await asyncio.sleep(0.05)
    assert fake.aborted
    await assert_still_serving(gw, fake)


async def test_disconnect_during_body_upload_forwards_nothing(gw, fake):
    host, port = gw.server.host, gw.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\"")
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.transport.abort()
    await asyncio.sleep(0.2)
    assert fake.seen == []
    await assert_still_serving(gw, fake)


async def test_slow_body_upload_times_out_with_408(make_gateway, fake):
    gw = await make_gateway({"server": {"body_timeout": 0.3}})
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), 3)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408") and b"request_timeout" in head
    assert fake.seen == []


async def test_slow_reader_gets_backpressure_not_a_buffer(gw, fake):
    fake.script = [{"chunks": 12000, "pad": 8192}]
    r = await gw.post("/v1/chat/completions", json=dict(STREAM, seed=5))
    await r.content.readany()
    await asyncio.sleep(1.5)
    stalled_at = fake.written
    await asyncio.sleep(0.5)
    # The upstream cannot run ahead of a client that does not read (12000 x 8 KB = 96 MB):
    # what is in flight is bounded by socket buffers, not by the gateway's memory.
    assert stalled_at < 6000 and fake.written - stalled_at < 50, (stalled_at, fake.written)
    r.close()


def _open_fds() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


async def test_aborted_streams_leave_no_tasks_or_fds(make_gateway, fake):
    gw = await make_gateway({"rate_limit": {"requests": ["10000/minute"]}})
    fake.chunk_delay = 0.02
    fake.chunks = 50
    url = str(gw.make_url("/v1/chat/completions"))

    async def abort_many(start: int, n: int):
        # A session of its own, closed afterwards: its idle pool is not the gateway's doing.
        async with aiohttp.ClientSession() as s:
            async def abort_one(i):
                r = await s.post(url, json=dict(STREAM, seed=i))
                await r.content.readany()
                r.close()
            await asyncio.gather(*(abort_one(start + i) for i in range(n)))

    await abort_many(0, 20)  # warm up pools
    await asyncio.sleep(0.5)
    gc.collect()
    fds, tasks = _open_fds(), len(asyncio.all_tasks())
    for batch in range(10):
        await abort_many(100 + batch * 100, 100)
    for _ in range(60):
        await asyncio.sleep(0.1)
        if fake.active == 0 and len(asyncio.all_tasks()) <= tasks + 2:
            break
    gc.collect()
    assert fake.active == 0, "an upstream stream was left open"
    assert len(asyncio.all_tasks()) <= tasks + 2, [t.get_coro() for t in asyncio.all_tasks()]
    assert _open_fds() <= fds + 10, (fds, _open_fds())
    await assert_still_serving(gw, fake)


@pytest.mark.parametrize("raw", [
    # Request smuggling: both framings at once.
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Content-Length: 6\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
])
async def test_malformed_http_is_refused_and_never_forwarded(gw, fake, raw):
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    writer.write(raw)
    await writer.drain()
    head = await asyncio.wait_for(reader.read(200), 3)
    writer.close()
    assert head.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431", b"HTTP/1.1 501", b"HTTP/1.0 400"))
    assert fake.seen == []


async def test_host_header_and_forwarded_headers_do_not_steer(gw, fake, upstream):
    r = await gw.post("/v1/chat/completions", json=CHAT, headers={
        "Host": "evil.example", "X-Real-IP": "1.2.3.4", "Forwarded": "for=1.2.3.4;host=evil",
        "X-Forwarded-Host": "evil.example"})
    assert r.status == 200
    seen = {k.lower(): v for k, v in fake.posts[0].headers.items()}
    assert seen["host"] == f"127.0.0.1:{upstream.port}"
    assert not {"x-real-ip", "forwarded", "x-forwarded-host"} & set(seen)


def test_socket_helper_sanity():
    # free_port() returns a bindable port (used throughout the fault tests).
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


async def test_slowloris_headers_are_cut_and_the_server_stays_responsive(gateway_process, fake):
    gp = await gateway_process({"server": {"header_timeout": 0.5}})
    port = int(gp.url.rsplit(":", 1)[1])
    slow = []
    for _ in range(50):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-A: ")
        slow.append((reader, writer))
    async with aiohttp.ClientSession() as s:  # others are served meanwhile
        async with s.post(gp.url + "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 200
    closed = await asyncio.wait_for(asyncio.gather(*(r.read() for r, _ in slow)), 3)
    assert closed == [b""] * 50  # the gateway hung up on every one of them
    for _, w in slow:
        w.close()


async def test_connect_timeout_is_retried_then_504(make_gateway):
    # A listener whose accept queue is full drops further SYNs: connecting hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        await asyncio.sleep(0.2)
        gw = await make_gateway({"upstream": {"base_url": f"http://127.0.0.1:{port}/v1",
                                              "connect_timeout": 0.3, "retries": 1}})
        t0 = asyncio.get_running_loop().time()
        st, _, data = await status_of(gw)
        elapsed = asyncio.get_running_loop().time() - t0
        for s in fillers:
            s.close()
    assert st == 504 and b"upstream_timeout" in data
    assert 0.6 <= elapsed < 3  # two attempts of 0.3 s each, plus backoff


async def test_malformed_upstream_response_is_502(make_gateway):
    server, port = await canned_server(b"HTTP/1.1 200 OK\r\nthis is not a header\r\n\r\n{}")
    async with server:
        gw = await make_gateway({"upstream": {"base_url": f"http://127.0.0.1:{port}/v1"}})
        st, _, data = await status_of(gw)
    assert st == 502 and b"upstream_unavailable" in data

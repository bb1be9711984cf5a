"""deploy/nginx/gateway.conf with the real nginx in front of a small aiohttp backend.

What the site must do for the gateway: pass server-sent events on chunk by chunk, replace
a client's X-Forwarded-For, keep /metrics private, close the backend stream when the client
leaves, and let the gateway (not nginx) answer bodies just over its size limit.
"""

import asyncio
import subprocess
import time

import aiohttp
import pytest
from aiohttp import web

from ..conftest import free_port, need
from ..support.nginx_helper import SITE, Nginx, plain_http_site, stock_site

EVENTS, PACE = 5, 0.2  # the backend sends 5 events, 0.2 s apart
# As a server-wide nginx.conf might: the site has to switch compression off itself.
GZIP_EVERYTHING = "gzip on; gzip_min_length 1; gzip_types text/event-stream application/json;"
DISCONNECTED = web.AppKey("disconnected", asyncio.Event)


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    if request.query.get("accel") == "no":
        response.headers["X-Accel-Buffering"] = "no"
    await response.prepare(request)
    for i in range(int(request.query.get("n", EVENTS))):
        if i:
            await asyncio.sleep(PACE)
        await response.write(f"data: {i}\n\n".encode())
    return response


async def forever(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    try:
        while True:
            await response.write(b"data: tick\n\n")
            await asyncio.sleep(0.05)
    finally:  # cancelled or the write failed: nginx let go of us
        request.app[DISCONNECTED].set()


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    names = ("Host", "X-Forwarded-For", "X-Real-IP", "X-Forwarded-Proto", "Connection")
    headers = {name: request.headers.get(name) for name in names}
    return web.json_response({"headers": headers, "body_bytes": len(body)})


@pytest.fixture
async def backend(aiohttp_server):
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[DISCONNECTED] = asyncio.Event()
    app.router.add_get("/v1/stream", stream)
    app.router.add_get("/v1/forever", forever)
    app.router.add_post("/v1/echo", echo)
    app.router.add_post("/v1/audio/transcriptions", echo)
    app.router.add_get("/metrics", lambda request: web.Response(text="requests_total 1\n"))
    return await aiohttp_server(app)


@pytest.fixture
def site_nginx(backend, tmp_path):
    """The shipped site over plain HTTP; yields its base URL."""
    port = free_port()
    site = plain_http_site(SITE.read_text(), port=port, backend=f"127.0.0.1:{backend.port}")
    with Nginx(site, port, tmp_path / "nginx", http_extra=GZIP_EVERYTHING):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def stock_nginx(backend, tmp_path):
    port = free_port()
    with Nginx(stock_site(port=port, backend=f"127.0.0.1:{backend.port}"), port, tmp_path / "n"):
        yield f"http://127.0.0.1:{port}"


async def arrival_times(url: str) -> tuple[list[float], bytes]:
    """When each event arrived, and the whole body."""
    times, body = [], b""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers.get("Content-Encoding") is None
        while chunk := await response.content.readuntil(b"\n\n"):
            times.append(time.monotonic())
            body += chunk
    return times, body


def test_nginx_accepts_the_generated_config(tmp_path):
    site = plain_http_site(SITE.read_text(), port=free_port(), backend="127.0.0.1:9")
    result = Nginx(site, 0, tmp_path).test()
    assert result.returncode == 0, result.stderr


def test_nginx_accepts_the_tls_site_as_shipped(tmp_path):
    """The file unchanged except the certificate paths: TLS and http2 syntax included."""
    key, cert = tmp_path / "privkey.pem", tmp_path / "fullchain.pem"
    subprocess.run(
        [need("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=gw.example.com", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    site = SITE.read_text().replace("/etc/letsencrypt/live/gw.example.com/", f"{tmp_path}/")
    result = Nginx(site, 0, tmp_path / "nginx").test()
    assert result.returncode == 0, result.stderr


async def test_site_streams_events_as_they_come(site_nginx):
    times, body = await arrival_times(f"{site_nginx}/v1/stream")
    assert body == b"".join(f"data: {i}\n\n".encode() for i in range(EVENTS))
    assert len(times) == EVENTS
    assert times[-1] - times[0] > (EVENTS - 1) * PACE * 0.8


async def test_site_replaces_a_spoofed_x_forwarded_for(site_nginx):
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{site_nginx}/v1/echo", json={}, headers={"X-Forwarded-For": "1.2.3.4"}
        ) as response:
            seen = (await response.json())["headers"]
    assert seen == {
        "Host": "127.0.0.1",  # $host: the request's host name, without the port
        "X-Forwarded-For": "127.0.0.1",
        "X-Real-IP": "127.0.0.1",
        "X-Forwarded-Proto": "http",
        "Connection": None,  # emptied so nginx can keep the upstream connection alive
    }


@pytest.mark.parametrize(("source", "status"), [("127.0.0.1", 200), ("127.0.0.2", 403)])
async def test_site_keeps_metrics_private(site_nginx, source, status):
    # Any 127.0.0.0/8 address is local on Linux, so 127.0.0.2 stands in for a stranger.
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{site_nginx}/metrics") as response:
            assert response.status == status


@pytest.mark.parametrize("size", [1024 * 1024 + 1, 3 * 1024 * 1024])
async def test_site_lets_the_gateway_answer_bodies_just_over_its_limit(site_nginx, size):
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{site_nginx}/v1/echo", data=b"x" * size) as response:
            answer = await response.json(content_type=None)
    if size < 2 * 1024 * 1024:  # reaches the gateway, which owns the 1 MiB rule
        assert (response.status, answer["body_bytes"]) == (200, size)
    else:  # absurd: nginx stops it, still in OpenAI's error shape
        assert response.status == 413
        assert answer["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("size", [5 * 1024 * 1024, 51 * 1024 * 1024])
async def test_site_lets_uploads_through_to_the_gateways_own_limit(site_nginx, size):
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{site_nginx}/v1/audio/transcriptions",
                                data=b"x" * size) as response:
            answer = await response.json(content_type=None)
    if size < 50 * 1024 * 1024:  # the gateway owns validation.max_upload_bytes (25 MiB)
        assert (response.status, answer["body_bytes"]) == (200, size)
    else:
        assert response.status == 413
        assert answer["error"]["code"] == "request_too_large"


async def test_site_closes_the_backend_stream_when_the_client_leaves(site_nginx, backend):
    async with aiohttp.ClientSession() as session:
        response = await session.get(f"{site_nginx}/v1/forever")
        await response.content.readuntil(b"\n\n")
        response.close()  # drop the connection mid-stream
    await asyncio.wait_for(backend.app[DISCONNECTED].wait(), timeout=5)


async def test_stock_proxy_holds_events_back(stock_nginx):
    """Control: without the header, default proxy buffering delivers everything at the end."""
    times, _ = await arrival_times(f"{stock_nginx}/v1/stream")
    assert times[-1] - times[0] < PACE / 2


async def test_stock_proxy_streams_when_backend_sends_x_accel_buffering_no(stock_nginx):
    times, body = await arrival_times(f"{stock_nginx}/v1/stream?accel=no")
    assert len(times) == EVENTS and body.endswith(b"data: 4\n\n")
    assert times[-1] - times[0] > (EVENTS - 1) * PACE * 0.8

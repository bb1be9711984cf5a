"""The shipped nginx site (TLS swapped for plain HTTP) in front of a real `python gateway.py`."""
from __future__ import annotations

import time

import aiohttp
import pytest

from ..conftest import free_port
from ..support.nginx_helper import SITE, Nginx, plain_http_site, stock_site

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
STREAM = dict(CHAT, stream=True)


@pytest.fixture
async def behind_nginx(gateway_process, tmp_path):
    """start(config) -> (nginx URL, gateway) with the production site in front."""
    started = []

    async def start(config=None, site=None):
        gp = await gateway_process(config)
        port = free_port()
        backend = f"127.0.0.1:{gp.port}"
        text = site(port=port, backend=backend) if site else plain_http_site(
            SITE.read_text(), port=port, backend=backend)
        nginx = Nginx(text, port, tmp_path / f"nginx-{port}").__enter__()
        started.append(nginx)
        return f"http://127.0.0.1:{port}", gp

    yield start
    for n in started:
        n.__exit__()


def session_from(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from another loopback address (another client)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def chunk_times(session, url) -> tuple[list[float], bytes]:
    times, body = [], b""
    async with session.post(url + "/v1/chat/completions", json=STREAM) as r:
        assert r.status == 200 and r.headers.get("Content-Encoding") is None
        async for chunk in r.content.iter_any():
            times.append(time.monotonic())
            body += chunk
    return times, body


@pytest.mark.parametrize("site", [None, stock_site], ids=["shipped-site", "stock-proxy_pass"])
async def test_streams_arrive_incrementally_through_nginx(behind_nginx, fake, site):
    # The stock proxy_pass buffers by default; the gateway's X-Accel-Buffering: no undoes it.
    url, _ = await behind_nginx(site=site)
    fake.chunks, fake.chunk_delay = 5, 0.25
    async with aiohttp.ClientSession() as s:
        times, body = await chunk_times(s, url)
    assert body.endswith(b"data: [DONE]\n\n") and body.count(b"chat.completion.chunk") == 5
    assert len(times) >= 4 and times[-1] - times[0] > 0.75


async def test_each_client_gets_its_own_identity_through_nginx(behind_nginx, fake):
    url, gp = await behind_nginx({"rate_limit": {"requests": ["2/minute"]}})
    statuses = {}
    for address in ("127.0.0.2", "127.0.0.3"):
        async with session_from(address) as s:
            statuses[address] = []
            for _ in range(3):
                async with s.post(url + "/v1/chat/completions", json=CHAT) as r:
                    statuses[address].append(r.status)
    assert statuses == {"127.0.0.2": [200, 200, 429], "127.0.0.3": [200, 200, 429]}


async def test_a_client_cannot_spoof_its_identity_through_nginx(behind_nginx, fake):
    url, gp = await behind_nginx({"rate_limit": {"requests": ["2/minute"]},
                                  "log": {"format": "json"}})
    async with session_from("127.0.0.4") as s:
        results = []
        for i in range(4):  # a new made-up address each time: still one client
            async with s.post(url + "/v1/chat/completions", json=CHAT, headers={
                    "X-Forwarded-For": f"203.0.113.{i}", "X-Real-IP": f"198.51.100.{i}"}) as r:
                results.append(r.status)
    assert results == [200, 200, 429, 429]
    assert '"client":"127.0.0.4"' in gp.log() and "203.0.113." not in gp.log()

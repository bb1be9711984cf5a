"""The realtime WebSocket through the shipped nginx site (TLS swapped for plain HTTP) in front
of a real gateway: the upgrade passes, and each browser keeps its own address (its own
sessions and budgets)."""
from __future__ import annotations

import aiohttp
import pytest

from openai_gateway.demo.fake_openai import FakeOpenAI
from openai_gateway.demo.fake_realtime import FakeRealtime

from ..conftest import KEY, free_port
from ..support.nginx_helper import SITE, Nginx, plain_http_site
from ..support.realtime_gateway import ANY_KEY, MODELS, BrowserSocket, browser_ws, config


@pytest.fixture
def rt() -> FakeRealtime:
    return FakeRealtime(api_key=KEY, models=MODELS)


@pytest.fixture
def fake(rt) -> FakeOpenAI:
    return FakeOpenAI(realtime=rt)


@pytest.fixture
async def behind_nginx(gateway_process, tmp_path):
    """start(config) -> the URL of the shipped site in front of a started gateway."""
    started: list[Nginx] = []

    async def start(config: dict) -> str:
        gp = await gateway_process(config)
        port = free_port()
        site = plain_http_site(SITE.read_text(), port=port, backend=f"127.0.0.1:{gp.port}")
        started.append(Nginx(site, port, tmp_path / f"nginx-{port}").__enter__())
        return f"http://127.0.0.1:{port}"

    yield start
    for nginx in started:
        nginx.__exit__()


def session_from(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from another loopback address (another browser)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def test_browsers_hold_realtime_sockets_through_nginx(rt, behind_nginx):
    url = await behind_nginx(config(realtime={"max_sessions": 1}))
    async with session_from("127.0.0.2") as one, session_from("127.0.0.3") as two:
        async with browser_ws(one, url, ANY_KEY) as a, browser_ws(two, url, ANY_KEY) as b:
            for ws in (a, b):
                assert ws.protocol == "realtime"
                sock = BrowserSocket(ws)
                await sock.until("session.updated")
                await sock.send("response.create", response={"output_modalities": ["text"]})
                await sock.until("response.done")
            # One session each: a second one from the same browser is refused.
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with browser_ws(one, url, ANY_KEY):
                    pass
            assert refused.value.status == 429
    assert len(rt.ledger.sockets) == 2

"""The demo package: demo_settings, the demo's texts, and its place in the gateway (attached
beside the app, importing none of it)."""
from __future__ import annotations

import subprocess
import sys

import aiohttp
import pytest
from aiohttp import web

from openai_gateway.config.secrets import DEMO_SECRETS
from openai_gateway.config.settings import Settings, as_limits, parse
from openai_gateway.demo import DEMO_KEY, DEMO_MODELS, DemoUpstream, demo_settings, reply_text
from openai_gateway.demo.fake_openai import FakeOpenAI

from ..conftest import ROOT
from ..support import fake_upstream

# --- demo_settings, a pure function -----------------------------------------------------------


def test_demo_settings_replace_only_defaults_and_always_point_at_the_demo():
    s = parse({"server": {"port": 9000, "workers": 2, "allow_unshared_workers": True},
               "cache": {"sampled": False},  # equal to the default: the demo's value wins
               "rate_limit": {"requests": ["5/second"]},
               "cors": {"allow_origins": ["https://app.example"]}}, {}, secrets=DEMO_SECRETS)
    d = demo_settings(s, "http://127.0.0.1:1234/v1")
    assert d.upstream.base_url == "http://127.0.0.1:1234/v1" and d.api_key == DEMO_KEY
    assert d.playground.enabled and d.cache.sampled and d.server.workers == 1
    assert d.rate_limit.requests == as_limits(["5/second"])
    assert d.validation.allowed_models == DEMO_MODELS
    assert d.cors.allow_origins == ("https://app.example", "http://127.0.0.1:9000",
                                    "http://localhost:9000")
    assert Settings().playground.enabled is False  # never on unless asked for


# --- the demo's texts and its place in the gateway -------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_demo_text_says_only_what_happened(stream):
    text = reply_text("Say  hi\n", stream)
    assert text.startswith("[demo] ") and 'you wrote "Say hi"' in text
    # Only a streamed answer came word by word; only a whole one came as one JSON answer.
    assert ("one word per server-sent event" in text) is stream
    assert ("one JSON answer" in text) is not stream
    assert ("replayed at once" in text) is stream  # a stream's cache hit is not paced
    assert reply_text("Say hi", stream) == text  # the same prompt, the same answer: cacheable


def test_one_fake_openai_and_no_app_import():
    # The tests' fake upstream is the demo's fake OpenAI API, configured.
    assert issubclass(fake_upstream.FakeOpenAI, FakeOpenAI)
    # The demo package is wired by the caller (cli, server): it imports no app.
    code = "import sys, openai_gateway.demo; print('openai_gateway.app' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=30)
    assert p.stdout.strip() == "False", p.stderr


async def ping(request):
    return web.Response(text="pong")


async def test_attach_serves_the_demo_while_the_app_runs(aiohttp_client, leak_scan):
    demo = DemoUpstream()
    app = web.Application()
    app.router.add_get("/ping", ping)
    demo.attach(app, playground_url="http://127.0.0.1:8080/")
    client = await aiohttp_client(app)
    r = await client.get("/ping")
    assert r.headers["X-Demo"] == "true"  # every answer of the app says it is a demo
    async with aiohttp.ClientSession() as s:
        async with s.get(demo.base_url + "/models") as r:
            assert r.headers["X-Demo"] == "true"
            assert [m["id"] for m in (await r.json())["data"]] == list(DEMO_MODELS)
        assert any("demo mode" in t and "playground: http://127.0.0.1:8080/" in t
                   for t in leak_scan.texts)
        await client.close()  # the app's cleanup stops the demo upstream
        with pytest.raises(aiohttp.ClientConnectionError):
            await s.get(demo.base_url + "/models")

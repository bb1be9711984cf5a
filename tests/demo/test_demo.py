"""Demo mode and the playground page, without a browser (tests/test_browser.py has one).

`python gateway.py --demo` runs as a real process with no OPENAI_API_KEY in its environment: it
must start, answer every forwarded route in OpenAI's format, say it is a demo, and show what the
gateway adds (streaming, cache hits, 429s, CORS). Without --demo and without a key, it must not.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zipapp

import aiohttp
import pytest
from aiohttp import web
from openai.types import Completion, CreateEmbeddingResponse, Model, ModerationCreateResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from openai_gateway.config.secrets import DEMO_SECRETS
from openai_gateway.config.settings import Settings, as_limits, parse
from openai_gateway.demo import DEMO_KEY, DEMO_MODELS, DemoUpstream, demo_settings, reply_text
from openai_gateway.demo.fake_openai import FakeOpenAI

from ..conftest import ROOT, GatewayProcess, free_port
from ..support import fake_upstream

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}]}
STREAM = dict(CHAT, stream=True)


@pytest.fixture
def demo_process(tmp_path):
    """start(config, args) -> a ready `gateway.py --demo` process whose env has no key."""
    started: list[GatewayProcess] = []

    async def start(config: dict | None = None, args=("--demo",)) -> GatewayProcess:
        cfg = {"log": {"format": "json"}, **(config or {})}
        gp = GatewayProcess(cfg, tmp_path, args=args)
        gp.env.pop("OPENAI_API_KEY")
        started.append(gp.start())
        await gp.wait_ready()
        return gp

    yield start
    for gp in started:
        gp.stop()


async def sse_chunks(resp) -> list[dict]:
    text = (await resp.read()).decode()
    assert text.endswith("data: [DONE]\n\n"), text[-200:]
    return [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]


# --- the demo process -----------------------------------------------------------------------


async def test_demo_starts_without_a_key_and_answers_chat(demo_process):
    gp = await demo_process()
    assert "demo mode" in gp.log() and "X-Demo: true" in gp.log()
    async with aiohttp.ClientSession() as s:
        async with s.post(gp.url + "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 200 and r.headers["X-Demo"] == "true"
            doc = await r.json()
        assert doc["object"] == "chat.completion" and doc["model"] == "gpt-4o-mini"
        whole = doc["choices"][0]["message"]["content"]
        assert whole.startswith("[demo] ") and "Say hi" in whole
        assert "server-sent event" not in whole and "one JSON answer" in whole  # it was not
        assert doc["usage"]["completion_tokens"] > 10
        # A stream without include_usage: content chunks only, no usage chunk.
        async with s.post(gp.url + "/v1/chat/completions", json=STREAM) as r:
            assert r.headers["X-Demo"] == "true"
            assert r.headers["Content-Type"].startswith("text/event-stream")
            chunks = await sse_chunks(r)
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text.startswith("[demo] ") and len(chunks) > 10
        assert "one word per server-sent event" in text and "one JSON answer" not in text
        assert all("usage" not in c for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        # With include_usage: one last chunk with no choices and the counts.
        async with s.post(gp.url + "/v1/chat/completions",
                          json=dict(STREAM, stream_options={"include_usage": True})) as r:
            chunks = await sse_chunks(r)
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 10
        assert all(c["usage"] is None for c in chunks[:-1])


async def test_demo_streams_word_by_word_at_a_human_pace(demo_process):
    gp = await demo_process()
    arrivals = []
    async with aiohttp.ClientSession() as s:
        async with s.post(gp.url + "/v1/chat/completions", json=STREAM) as r:
            t0 = time.monotonic()
            async for chunk in r.content.iter_any():
                arrivals.append((time.monotonic() - t0, chunk.count(b"data: ")))
    words = sum(n for _, n in arrivals) - 3  # minus role chunk, finish chunk and [DONE]
    duration = arrivals[-1][0]
    assert words > 30
    assert 0.025 * words < duration < 0.15 * words  # 30-60 ms a word, slack for a busy machine
    assert len(arrivals) > words / 2  # arrived in many pieces, not at the end


async def test_demo_answers_every_route_in_openais_format(demo_process):
    gp = await demo_process()
    async with aiohttp.ClientSession() as s:
        async def post(route, body):
            async with s.post(gp.url + route, json=body) as r:
                assert r.status == 200 and r.headers["X-Demo"] == "true", await r.text()
                return await r.json()

        emb = await post("/v1/embeddings", {"model": "text-embedding-3-small",
                                            "input": ["a", "b"]})
        assert [d["index"] for d in emb["data"]] == [0, 1]
        assert len(emb["data"][0]["embedding"]) == 1536 and emb["usage"]["prompt_tokens"] > 0
        again = await post("/v1/embeddings", {"model": "text-embedding-3-small", "input": "a",
                                              "dimensions": 8, "encoding_format": "base64"})
        assert len(struct.unpack("<8f", base64.b64decode(again["data"][0]["embedding"]))) == 8

        comp = await post("/v1/completions", {"model": "gpt-4o-mini", "prompt": "Once"})
        assert comp["object"] == "text_completion"
        assert comp["choices"][0]["text"].startswith("[demo] ")

        resp = await post("/v1/responses", {"model": "gpt-4o-mini", "input": "Hello"})
        assert resp["object"] == "response" and resp["status"] == "completed"
        assert resp["output"][0]["content"][0]["text"].startswith("[demo] ")
        assert resp["usage"]["output_tokens"] > 0

        mod = await post("/v1/moderations", {"input": ["x", "y"]})
        assert [m["flagged"] for m in mod["results"]] == [False, False]

        cut = await post("/v1/chat/completions", dict(CHAT, max_tokens=3))
        assert cut["choices"][0]["finish_reason"] == "length"
        assert cut["usage"]["completion_tokens"] == 3

        async with s.get(gp.url + "/v1/models") as r:
            assert r.headers["X-Demo"] == "true"
            assert [m["id"] for m in (await r.json())["data"]] == list(DEMO_MODELS)


async def test_the_official_sdk_works_against_the_demo(demo_process):
    import openai

    gp = await demo_process()
    client = openai.AsyncOpenAI(base_url=gp.url + "/v1", api_key="anything", max_retries=0)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text.startswith("[demo] ")
    emb = await client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert len(emb.data[0].embedding) == 1536  # the SDK asked for base64 and decoded it
    resp = await client.responses.create(model="gpt-4o-mini", input="hi")
    assert resp.output_text.startswith("[demo] ")
    mod = await client.moderations.create(input="hi")
    assert mod.results[0].flagged is False
    await client.close()


async def test_demo_repeats_are_cache_hits(demo_process):
    gp = await demo_process()
    async with aiohttp.ClientSession() as s:
        for body in (CHAT, dict(STREAM, stream_options={"include_usage": True})):
            seen = []
            for _ in range(2):
                async with s.post(gp.url + "/v1/chat/completions", json=body) as r:
                    seen.append((r.headers["X-Cache"], await r.read()))
            assert [c for c, _ in seen] == ["MISS", "HIT"]
            assert seen[0][1] == seen[1][1]


async def test_demo_limits_requests_and_allows_its_own_origin(demo_process):
    port = free_port()
    gp = await demo_process({"server": {"port": port}})
    async with aiohttp.ClientSession() as s:
        for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
            async with s.options(gp.url + "/v1/chat/completions", headers={
                    "Origin": origin, "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "content-type"}) as r:
                assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == origin
        async with s.post(gp.url + "/v1/chat/completions", json=CHAT,
                          headers={"Origin": "https://elsewhere.example"}) as r:
            assert r.status == 403
        statuses = []
        for _ in range(21):  # the demo's 20/minute
            async with s.post(gp.url + "/v1/chat/completions", json=CHAT,
                              headers={"Origin": f"http://127.0.0.1:{port}"}) as r:
                statuses.append(r.status)
                last = r
        assert statuses.count(200) == 20 and statuses[-1] == 429
        assert last.headers["X-Demo"] == "true" and int(last.headers["Retry-After"]) > 0


async def test_config_file_values_win_over_demo_defaults(demo_process):
    # A value the file changed wins; one still at its default (as in the shipped
    # config.toml, which lists every default) takes the demo's value.
    gp = await demo_process({"rate_limit": {"requests": ["3/minute"]},
                             "playground": {"enabled": False},
                             "validation": {"allowed_models": ["gpt-4o"]}})
    async with aiohttp.ClientSession() as s:
        async with s.post(gp.url + "/v1/chat/completions", json=dict(CHAT, model="gpt-4o")) as r:
            assert r.status == 200 and r.headers["x-ratelimit-limit-requests"] == "3"
        async with s.get(gp.url + "/") as r:
            assert r.status == 200  # enabled = false is the default: the demo turns it on
        async with s.get(gp.url + "/v1/models") as r:
            assert [m["id"] for m in (await r.json())["data"]] == ["gpt-4o"]


def test_without_demo_and_without_a_key_the_gateway_refuses_to_start(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[server]\nport = {free_port()}\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    p = subprocess.run([sys.executable, str(ROOT / "gateway.py"), "--config", str(cfg)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "OPENAI_API_KEY" in p.stderr and "demo" not in p.stdout


def test_demo_with_the_shipped_config_gets_the_demo_defaults():
    """`make run ARGS=--demo` uses ./config.toml, which spells out every default."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    p = subprocess.run([sys.executable, str(ROOT / "gateway.py"), "--check", "--demo"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["playground"]["enabled"] is True and doc["cache"]["sampled"] is True
    assert doc["rate_limit"]["requests"] == ["20/minute"]
    assert "http://127.0.0.1:8080" in doc["cors"]["allow_origins"]
    assert doc["upstream"]["base_url"].startswith("http://127.0.0.1:")
    assert DEMO_KEY not in p.stdout


async def test_demo_and_playground_work_from_a_zipapp(tmp_path):
    build = tmp_path / "build"
    shutil.copytree(ROOT / "openai_gateway", build / "openai_gateway",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "gateway.py", build / "__main__.py")
    pyz = tmp_path / "gateway.pyz"
    zipapp.create_archive(build, pyz)
    shutil.rmtree(build)
    port = free_port()
    cfg = tmp_path / "z.toml"
    cfg.write_text(f"[server]\nport = {port}\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.Popen([sys.executable, str(pyz), "--config", str(cfg), "--demo"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                try:
                    async with s.get(f"http://127.0.0.1:{port}/") as r:
                        page = await r.text()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            assert r.status == 200 and "Gateway playground" in page
            async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT) as r:
                assert (await r.json())["choices"][0]["message"]["content"].startswith("[demo]")
    finally:
        proc.terminate()
        proc.wait(10)


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


# --- the fake OpenAI API (the demo's upstream, and the tests' in tests/fake_upstream.py) ------

FAKES = {"package": FakeOpenAI, "tests": fake_upstream.FakeOpenAI}
ASK = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "Say hi"}]}
RESPOND = {"model": "gpt-4o-mini", "instructions": "Be brief.", "input": "Say hi"}
COMPLETE = {"model": "gpt-4o-mini", "prompt": "Once upon"}


@pytest.fixture(params=list(FAKES))
async def api(request, aiohttp_client):
    """(fake, client of it): the fake OpenAI API itself, no gateway; the package's and the
    tests' configuration of it."""
    fake = FAKES[request.param]()
    return fake, await aiohttp_client(fake.app())


async def post(client, route: str, body: dict) -> dict:
    r = await client.post(route, json=body)
    assert r.status == 200, await r.text()
    return await r.json()


async def events(client, route: str, body: dict) -> list[tuple[str | None, dict | str]]:
    """A stream's events as (event name, parsed data); "[DONE]" stays a string."""
    r = await client.post(route, json=dict(body, stream=True))
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    out = []
    for block in (await r.text()).split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        data = fields["data"]
        out.append((fields.get("event"), data if data == "[DONE]" else json.loads(data)))
    return out


@pytest.mark.parametrize("route,body,kind", [
    ("/v1/chat/completions", dict(ASK, n=2), ChatCompletion),
    ("/v1/completions", COMPLETE, Completion),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"]},
     CreateEmbeddingResponse),
    ("/v1/responses", RESPOND, Response),
    ("/v1/moderations", {"input": ["x", "y"]}, ModerationCreateResponse),
])
async def test_fake_answers_are_openais_types(api, route, body, kind):
    _, client = api
    kind.model_validate(await post(client, route, body))  # required fields and their types


async def test_fake_model_list_is_openais_type(api):
    fake, client = api
    r = await client.get("/v1/models")
    doc = await r.json()
    assert doc["object"] == "list" and [m["id"] for m in doc["data"]] == list(fake.models)
    for m in doc["data"]:
        Model.model_validate(m)


async def test_fake_usage_has_openais_details(api):
    fake, client = api
    fake.cached_tokens, fake.reasoning_tokens = 2, 3
    chat = await post(client, "/v1/chat/completions", ASK)
    said = len(chat["choices"][0]["message"]["content"].split())
    tin = len("Be brief.Say hi") // 4 + 1  # every message counts, about 4 characters a token
    assert chat["usage"] == {
        "prompt_tokens": tin, "completion_tokens": said + 3, "total_tokens": tin + said + 3,
        "prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 3, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0}}
    assert list(chat["usage"])[:3] == ["prompt_tokens", "completion_tokens", "total_tokens"]
    resp = await post(client, "/v1/responses", RESPOND)
    said = len(resp["output"][0]["content"][0]["text"].split())
    assert resp["usage"] == {"input_tokens": tin,
                             "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0},
                             "output_tokens": said + 3,
                             "output_tokens_details": {"reasoning_tokens": 3},
                             "total_tokens": tin + said + 3}


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("route,body,kind,text", [
    ("/v1/chat/completions", ASK, ChatCompletionChunk,
     lambda c: c["delta"].get("content") or ""),
    ("/v1/completions", COMPLETE, Completion, lambda c: c["text"]),
])
async def test_fake_streams_chat_and_completions_as_openai_does(api, route, body, kind, text,
                                                                include_usage):
    _, client = api
    whole = await post(client, route, body)
    asked = dict(body, stream_options={"include_usage": True}) if include_usage else body
    got = await events(client, route, asked)
    assert got[-1] == (None, "[DONE]")
    chunks = [c for _, c in got[:-1]]
    for c in chunks:
        # The SDK types a completions chunk as a Completion, whose finish_reason is never
        # null; OpenAI sends null on every chunk but the one that finishes.
        kind.model_validate(c if kind is not Completion else dict(c, choices=[
            dict(ch, finish_reason=ch["finish_reason"] or "stop") for ch in c["choices"]]))
    if include_usage:  # "usage": null on every chunk but the last, which has no choices
        *chunks, last = chunks
        assert last["choices"] == [] and last["usage"] == whole["usage"]
        assert all("usage" in c and c["usage"] is None for c in chunks)
    else:
        assert not any("usage" in c for c in chunks)
    choices = [c["choices"][0] for c in chunks]
    assert "".join(map(text, choices)) == text(whole["choices"][0] | {"delta": {
        "content": whole["choices"][0].get("message", {}).get("content")}})
    assert [c["finish_reason"] for c in choices] == [None] * (len(choices) - 1) + ["stop"]


async def test_package_fake_frames_a_chat_stream_as_openai_does(aiohttp_client):
    client = await aiohttp_client(FakeOpenAI().app())
    chunks = [c for _, c in (await events(client, "/v1/chat/completions", ASK))[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "",
                                                "refusal": None}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert all(list(c["choices"][0]["delta"]) == ["content"] for c in chunks[1:-1])


@pytest.mark.parametrize("capped", [False, True])
async def test_fake_streams_a_response_as_openai_does(api, capped):
    _, client = api
    body = dict(RESPOND, max_output_tokens=3) if capped else RESPOND
    got = await events(client, "/v1/responses", body)
    end = "response.incomplete" if capped else "response.completed"
    kinds = [k for k, _ in got]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", end]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [d["sequence_number"] for _, d in got] == list(range(len(got)))
    adapter = TypeAdapter(ResponseStreamEvent)
    for k, data in got:
        assert data["type"] == k
        adapter.validate_python(data)
    final = got[-1][1]["response"]
    said = final["output"][0]["content"][0]["text"]
    assert "".join(d["delta"] for k, d in got if k == "response.output_text.delta") == said
    assert final["status"] == ("incomplete" if capped else "completed")
    assert final["usage"]["output_tokens"] == len(said.split())
    assert len(said.split()) == 3 if capped else len(said.split()) > 3


@pytest.mark.parametrize("route,body,cap", [
    ("/v1/chat/completions", ASK, "max_completion_tokens"),
    ("/v1/chat/completions", ASK, "max_tokens"),
    ("/v1/completions", COMPLETE, "max_tokens"),
    ("/v1/responses", RESPOND, "max_output_tokens"),
])
async def test_fake_cuts_the_answer_at_the_token_cap(api, route, body, cap):
    _, client = api
    doc = await post(client, route, dict(body, **{cap: 3}))
    if route == "/v1/responses":
        assert doc["status"] == "incomplete"
        assert doc["incomplete_details"] == {"reason": "max_output_tokens"}
        said, used = doc["output"][0]["content"][0]["text"], doc["usage"]["output_tokens"]
    else:
        choice = doc["choices"][0]
        assert choice["finish_reason"] == "length"
        said = choice["message"]["content"] if "message" in choice else choice["text"]
        used = doc["usage"]["completion_tokens"]
    assert len(said.split()) == used == 3


async def test_fake_answers_n_choices_and_counts_them(api):
    _, client = api
    doc = await post(client, "/v1/chat/completions", dict(ASK, n=2))
    assert [c["index"] for c in doc["choices"]] == [0, 1]
    said = len(doc["choices"][0]["message"]["content"].split())
    assert doc["usage"]["completion_tokens"] == 2 * said


async def test_package_fake_embeddings_are_stable_unit_vectors(aiohttp_client):
    client = await aiohttp_client(FakeOpenAI().app())
    body = {"model": "text-embedding-3-small", "input": ["a", "b", "a"]}
    a, b, again = (d["embedding"] for d in (await post(client, "/v1/embeddings", body))["data"])
    assert len(a) == 1536 and a == again and a != b
    assert abs(sum(x * x for x in a) - 1) < 1e-3
    doc = await post(client, "/v1/embeddings", dict(body, dimensions=8,
                                                     encoding_format="base64"))
    decoded = struct.unpack("<8f", base64.b64decode(doc["data"][0]["embedding"]))
    assert abs(sum(x * x for x in decoded) - 1) < 1e-3


# --- the playground page (in-process app) -------------------------------------------------


async def test_playground_is_404_unless_enabled(make_gateway):
    gw = await make_gateway()
    assert (await gw.get("/")).status == 404


async def test_playground_page_is_self_contained(make_gateway):
    gw = await make_gateway({"playground": {"enabled": True}})
    r = await gw.get("/")
    assert r.status == 200 and r.content_type == "text/html" and r.charset == "utf-8"
    page = await r.text()
    # Nothing is loaded from elsewhere: no absolute or protocol-relative URL at all...
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href|action)\s*=\s*["']?//""", page)
    assert "<script src" not in page and "<link" not in page
    # ...and the browser is told to refuse anything but this page and the gateway.
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert (await gw.post("/", json={})).status == 405


async def test_playground_warns_when_its_own_origin_is_not_allowed(make_gateway, leak_scan):
    await make_gateway({"playground": {"enabled": True}})
    assert any("playground enabled" in t and "cors.allow_origins" in t for t in leak_scan.texts)
    leak_scan.texts.clear()
    await make_gateway({"playground": {"enabled": True},
                        "cors": {"allow_origins": ["http://localhost:8080"]}})
    assert not any("playground enabled" in t for t in leak_scan.texts)

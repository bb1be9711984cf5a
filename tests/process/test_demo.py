"""Demo mode as a real process, without a browser (tests/process/test_browser.py has one).

`python gateway.py --demo` runs with no OPENAI_API_KEY in its environment: it must start, answer
every forwarded route in OpenAI's format, say it is a demo, and show what the gateway adds
(streaming, cache hits, 429s, CORS). Without --demo and without a key, it must not.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipapp

import aiohttp

from openai_gateway.demo import DEMO_KEY, DEMO_MODELS

from ..conftest import ROOT, free_port

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}]}
STREAM = dict(CHAT, stream=True)


async def sse_chunks(resp) -> list[dict]:
    text = (await resp.read()).decode()
    assert text.endswith("data: [DONE]\n\n"), text[-200:]
    return [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]


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

"""`GET /v1/realtime` and `POST /v1/realtime/client_secrets` through a real gateway process,
against the fake realtime upstream: the official SDK, a browser's WebSocket, the policy on
each event, the time limit, and sessions that end from either side."""
from __future__ import annotations

import asyncio
import json
import signal
import time

import aiohttp
import openai
import pytest

from openai_gateway.demo.fake_openai import FakeOpenAI
from openai_gateway.demo.fake_realtime import FakeRealtime
from openai_gateway.identity.keys import hash_key

from ..conftest import KEY
from ..support.realtime_gateway import (
    ANY_KEY,
    CAP,
    MODELS,
    SECOND_OF_AUDIO,
    BrowserSocket,
    browser_ws,
    config,
    eventually,
    said,
    sdk,
    until,
)


@pytest.fixture
def rt() -> FakeRealtime:
    return FakeRealtime(api_key=KEY, models=MODELS)


@pytest.fixture
def fake(rt) -> FakeOpenAI:
    return FakeOpenAI(realtime=rt)


async def test_the_sdk_gets_a_gateway_secret_and_talks_through_it(rt, gateway_process):
    gw = await gateway_process(config())
    secret = await sdk(gw.url).realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 7200},
        session={"type": "realtime", "model": "gpt-realtime-mini", "instructions": "Be brief.",
                 "output_modalities": ["text"]})
    # The gateway's own secret: OpenAI was never asked for one.
    assert not secret.value.startswith("ek_") and rt.ledger.secrets == {}
    assert secret.expires_at - time.time() <= 600  # realtime.max_ttl
    assert secret.session.model == "gpt-realtime-mini"
    async with sdk(gw.url, secret.value).realtime.connect(model="gpt-realtime-mini") as conn:
        await until(conn, "session.created")
        # The bounded session, sent by the gateway before any client event.
        bounded = (await until(conn, "session.updated"))["session"]
        assert (bounded["instructions"], bounded["max_output_tokens"]) == ("Be brief.", CAP)
        await conn.conversation.item.create(item=said("Hello there"))
        await conn.response.create()
        done = (await until(conn, "response.done"))["response"]
        assert done["status"] == "completed" and done["usage"]["output_tokens"] == 5
    opened = rt.ledger.sockets[0]
    assert (opened.token, opened.model, opened.via) == (KEY, "gpt-realtime-mini", "websocket")
    # The socket's access line: the session's tokens and cost, as for any request.
    line = await eventually(lambda: next((json.loads(x) for x in gw.log().splitlines()
                                          if '"path":"/v1/realtime"' in x), None))
    assert (line["status"], line["tokens_out"], line["charged"]) == (101, 5, "usage")
    assert line["cost_usd"] > 0
    # A secret is no API key: another route refuses it, saying why.
    with pytest.raises(openai.AuthenticationError, match="realtime client secret"):
        await sdk(gw.url, secret.value).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


async def test_a_browser_socket_with_the_key_in_a_subprotocol(rt, gateway_process):
    gw = await gateway_process(config())
    async with aiohttp.ClientSession() as http:
        async with browser_ws(http, gw.url, ANY_KEY) as ws:
            # The handshake selects "realtime" (a browser drops a socket that selects none)
            # and never echoes the key's subprotocol.
            assert ws.protocol == "realtime"
            sock = BrowserSocket(ws)
            await sock.until("session.updated")
            await sock.send("conversation.item.create", item=said("Hi"))
            await sock.send("response.create", response={"output_modalities": ["text"]})
            await sock.until("response.done")
        # A page of a foreign origin is refused at the upgrade; nothing opened upstream.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with browser_ws(http, gw.url, ANY_KEY, origin="https://evil.example"):
                pass
        assert refused.value.status == 403
    assert len(rt.ledger.sockets) == 1
    assert rt.ledger.sockets[0].headers.get("Sec-WebSocket-Protocol") is None


async def test_events_the_policy_refuses_get_an_error_event_and_go_nowhere(rt,
                                                                         gateway_process):
    gw = await gateway_process(config())
    async with aiohttp.ClientSession() as http, browser_ws(http, gw.url, ANY_KEY) as ws:
        sock = BrowserSocket(ws)
        await sock.until("session.updated")
        # A hosted tool: OpenAI would call a server the client names.
        await sock.send("session.update", event_id="evt_1", session={"type": "realtime", "tools": [
            {"type": "mcp", "server_label": "x", "server_url": "https://mcp.example"}]})
        error = (await sock.until("error"))["error"]
        assert (error["code"], error["param"], error["event_id"]) == (
            "tool_not_allowed", "session.tools[0].type", "evt_1")
        # A frame over realtime.max_frame_bytes.
        await sock.send("conversation.item.create", item=said("x" * 70_000))
        error = (await sock.until("error"))["error"]
        assert error["code"] == "frame_too_large"
        # The session goes on.
        await sock.send("response.create", response={"output_modalities": ["text"]})
        await sock.until("response.done")
    kinds = [e["type"] for e in rt.ledger.events()]
    assert kinds == ["session.update", "response.create"]  # the gateway's bounds, the response
    assert "tools" not in rt.ledger.events("session.update")[0]["session"]


async def test_refusals_before_the_upgrade_are_openai_errors(rt, gateway_process):
    gw = await gateway_process(config())
    async with aiohttp.ClientSession() as http:
        for model, status in (("gpt-4o", 400), ("gpt-realtime-2", 400)):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with browser_ws(http, gw.url, ANY_KEY, model=model):
                    pass
            assert refused.value.status == status
        # A call's sideband is the gateway's own.
        url = gw.url.replace("http", "ws") + "/v1/realtime?call_id=rtc_1"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with http.ws_connect(url):
                pass
        assert refused.value.status == 400
        async with http.get(gw.url + "/v1/realtime?model=gpt-realtime") as r:
            assert r.status == 400 and (await r.json())["error"]["type"] == \
                "invalid_request_error"
    assert rt.ledger.sockets == []


async def test_a_session_ends_after_max_session_seconds(rt, gateway_process):
    gw = await gateway_process(config(realtime={"max_session_seconds": 1}))
    async with aiohttp.ClientSession() as http, browser_ws(http, gw.url, ANY_KEY) as ws:
        sock = BrowserSocket(ws)
        t0 = time.monotonic()
        assert await sock.closed(10) == 1000
        assert 0.9 < time.monotonic() - t0 < 5
        assert sock.seen("error")[-1]["error"]["code"] == "session_expired"
    await eventually(lambda: rt.ledger.sockets[0].closed)


async def test_the_upstream_closing_mid_response_closes_the_client_and_settles(
        rt, gateway_process):
    rt.words, rt.pace, rt.close_after = 50, 0.01, 10
    gw = await gateway_process(config(rate_limit={"tokens": ["100000/day"]}))
    async with aiohttp.ClientSession() as http, browser_ws(http, gw.url, ANY_KEY) as ws:
        sock = BrowserSocket(ws)
        await sock.until("session.updated")
        await sock.send("response.create", response={"output_modalities": ["text"]})
        assert await sock.closed() == 1011
    assert rt.ledger.responses[0].status == "dropped"
    # The response never reported usage: it is charged its reservation, which covers what
    # the fake billed; the next request sees the budget's remaining tokens after that.
    await eventually(lambda: "ended (upstream_closed)" in gw.log())
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + "/v1/embeddings", json={
                "model": "text-embedding-3-small", "input": "x"}) as r:
            left = int(r.headers["x-ratelimit-remaining-tokens"])
    billed = rt.ledger.responses[0].usage["total_tokens"]
    assert 100_000 - left >= billed


async def test_a_client_that_vanishes_closes_the_upstream_at_once(rt, gateway_process):
    rt.words, rt.pace = 400, 0.01
    gw = await gateway_process(config())
    async with aiohttp.ClientSession() as http:
        ws = await browser_ws(http, gw.url, ANY_KEY)
        sock = BrowserSocket(ws)
        await sock.until("session.updated")
        await sock.send("response.create", response={"output_modalities": ["text"]})
        await sock.until("response.output_text.delta")
        ws._response.connection.transport.abort()  # no close frame: the peer just vanishes
        t0 = time.monotonic()
    await eventually(lambda: rt.ledger.sockets[0].closed)
    assert rt.ledger.sockets[0].closed - t0 < 1.0
    billed = await eventually(lambda: rt.ledger.responses)
    assert billed[0].status == "dropped" and billed[0].usage["output_tokens"] < 150


async def test_shutdown_ends_open_sessions_at_once(rt, gateway_process):
    gw = await gateway_process(config())
    async with aiohttp.ClientSession() as http, browser_ws(http, gw.url, ANY_KEY) as ws:
        sock = BrowserSocket(ws)
        await sock.until("session.updated")
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        assert await sock.closed() == 1001
        assert sock.seen("error")[-1]["error"]["code"] == "server_shutting_down"
    assert await asyncio.to_thread(gw.proc.wait, 10) == 0
    print(f"\nstopped in {time.monotonic() - t0:.2f} s")
    assert time.monotonic() - t0 < 5


async def test_the_relay_adds_little_per_frame(rt, gateway_process, upstream_url):
    """Round trips of one small event (input_audio_buffer.clear -> .cleared) straight to the
    fake and through the gateway, in the same run; the difference is what the relay adds to
    a frame's way there and back (two loopback hops, the event's checks, a read of the
    answer's type)."""
    # Faster than realtime.max_events_per_second allows by default (100).
    gw = await gateway_process(config(realtime={"max_events_per_second": 10_000}))
    direct_url = upstream_url.replace("http", "ws") + "/realtime?model=gpt-realtime"
    rounds = 200

    async def round_trips(ws) -> list[float]:
        sock = BrowserSocket(ws)
        await sock.until("session.created")
        times = []
        for _ in range(rounds + 20):
            t0 = time.perf_counter()
            await sock.send("input_audio_buffer.clear")
            await sock.until("input_audio_buffer.cleared")
            times.append(time.perf_counter() - t0)
        return sorted(times[20:])  # the first ones warm up

    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(direct_url, headers={"Authorization": f"Bearer {KEY}"},
                                   compress=0) as ws:
            direct = await round_trips(ws)
        async with browser_ws(http, gw.url, ANY_KEY, compress=0) as ws:
            relayed = await round_trips(ws)

    def ms(times: list[float], q: float) -> float:
        return 1000 * times[int(q * (len(times) - 1))]

    added = ms(relayed, 0.5) - ms(direct, 0.5)
    print(f"\nround trip of one event, median (p95): direct {ms(direct, .5):.3f} "
          f"({ms(direct, .95):.3f}) ms, through the gateway {ms(relayed, .5):.3f} "
          f"({ms(relayed, .95):.3f}) ms: the relay adds {added:.3f} ms per round trip "
          f"({added / 2:.3f} ms per frame)")
    assert added < 20  # loose: a loaded machine shares two cores


async def test_a_backends_secret_opens_a_browsers_socket_under_its_client_key(
        rt, gateway_process):
    """The browser holds no key: its backend (a client key) gets a secret for it, and the
    secret, in the browser's subprotocol, is the session's identity: the key's budgets."""
    backend = "ck-backend-0123456789abcdef"
    gw = await gateway_process(config(
        auth={"require_client_key": True},
        clients=[{"name": "backend", "key_sha256": hash_key(backend),
                  "tokens": ["100000/day"]}]))
    secret = await sdk(gw.url, backend).realtime.client_secrets.create(
        session={"type": "realtime", "model": "gpt-realtime"})
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with browser_ws(http, gw.url, ANY_KEY):
                pass
        assert refused.value.status == 401
        async with browser_ws(http, gw.url, secret.value) as ws:
            await BrowserSocket(ws).until("session.updated")
    line = await eventually(lambda: next((json.loads(x) for x in gw.log().splitlines()
                                          if '"path":"/v1/realtime"' in x
                                          and '"status":101' in x), None))
    assert line["client"] == "key:backend"


async def test_spoken_turns_and_their_transcription_are_charged(rt, gateway_process):
    gw = await gateway_process(config())
    async with aiohttp.ClientSession() as http:
        async with browser_ws(http, gw.url, ANY_KEY) as ws:
            sock = BrowserSocket(ws)
            await sock.until("session.updated")
            await sock.send("session.update", session={"type": "realtime", "audio": {
                "input": {"transcription": {"model": "gpt-4o-transcribe"},
                          "turn_detection": None}}})
            await sock.until("session.updated")
            await sock.send("input_audio_buffer.append", audio=SECOND_OF_AUDIO)
            await sock.send("input_audio_buffer.commit")
            await sock.send("response.create")
            await sock.until("conversation.item.input_audio_transcription.completed")
            await sock.until("response.done")
        heard = rt.ledger.transcriptions[0].usage
        spoken = rt.ledger.responses[0].usage
        assert spoken["output_token_details"]["audio_tokens"] > 0
        expected = {("gpt-4o-transcribe", "in"): heard["input_tokens"],
                    ("gpt-4o-transcribe", "out"): heard["output_tokens"],
                    ("gpt-realtime", "in"): spoken["input_tokens"],
                    ("gpt-realtime", "out"): spoken["output_tokens"]}
        text = ""
        for _ in range(50):
            async with http.get(gw.url + "/metrics") as r:
                text = await r.text()
            if 'gateway_realtime_sessions_ended_total{reason="client_closed"' in text:
                break
            await asyncio.sleep(0.05)
    for (model, direction), tokens in expected.items():
        assert (f'gateway_tokens_total{{direction="{direction}",model="{model}"}} '
                f'{float(tokens)}') in text
    assert 'gateway_spend_usd_total{model="gpt-4o-transcribe",tier="none"}' in text
    assert 'gateway_realtime_session_seconds_total{model="gpt-realtime",' in text

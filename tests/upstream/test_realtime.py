"""The realtime WebSocket relay against the fake realtime upstream, with the official SDK (and a
browser-style socket) as the client and a counting meter."""
from __future__ import annotations

import asyncio
import base64
import statistics
import time

import aiohttp
import openai
import orjson
import pytest
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from openai_gateway.config.realtime import RealtimeSettings
from openai_gateway.demo.fake_openai import FakeOpenAI
from openai_gateway.demo.fake_realtime import FakeRealtime
from openai_gateway.errors import BudgetExceeded, TokensRateLimited
from openai_gateway.policy.usage import usage_of
from openai_gateway.upstream.realtime_meter import Stop

from ..conftest import KEY
from ..support.realtime_app import CLIENT_TOKEN, MODELS, Harness, build_app, event

SERVER_EVENT = TypeAdapter(RealtimeServerEvent)


@pytest.fixture
def rt() -> FakeRealtime:
    return FakeRealtime(api_key=KEY, models=MODELS[:2])


@pytest.fixture
async def rt_url(rt, aiohttp_server) -> str:
    return str((await aiohttp_server(FakeOpenAI(realtime=rt).app())).make_url("/v1"))


@pytest.fixture
def harness() -> Harness:
    return Harness()


@pytest.fixture
def gateway(harness, rt_url, aiohttp_server):
    """gateway(key=KEY) -> the test app's base URL (".../v1")."""

    async def start(key: str = KEY) -> str:
        server = await aiohttp_server(build_app(harness, rt_url, key))
        return str(server.make_url("/v1"))

    return start


def sdk(url: str, key: str = CLIENT_TOKEN) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=url, max_retries=0)


async def until(conn, kind: str, seen: list | None = None) -> dict:
    """Server events until one of `kind`, each read by the SDK's own types; returns it."""
    while True:
        raw = await asyncio.wait_for(conn.recv_bytes(), 5)
        ev = SERVER_EVENT.validate_json(raw).model_dump(exclude_unset=True)
        if seen is not None:
            seen.append(ev)
        if ev["type"] == kind:
            return ev


async def ended(harness: Harness, count: int = 1) -> None:
    """Wait until `count` relayed sessions have ended (the handler returned)."""
    for _ in range(200):
        if len(harness.outcomes) >= count:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the relay did not end")


def said(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def test_a_conversation_is_relayed_and_every_response_metered(rt, harness, gateway):
    url = await gateway()
    async with sdk(url).realtime.connect(model="gpt-realtime") as conn:
        await until(conn, "session.created")
        # The gateway bounded the session before any client event: the output cap is set.
        assert (await until(conn, "session.updated"))["session"]["max_output_tokens"] == 1000
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                           "max_output_tokens": "inf"})
        updated = await until(conn, "session.updated")
        assert updated["session"]["max_output_tokens"] == 1000  # "inf" is the gateway's cap
        assert updated["session"]["output_modalities"] == ["text"]
        await conn.conversation.item.create(item=said("Hello there"))
        await conn.response.create()
        first = (await until(conn, "response.done"))["response"]
        await conn.response.create(response={"max_output_tokens": 3})
        second = (await until(conn, "response.done"))["response"]
    await ended(harness)
    meter, outcome = harness.meters[0], harness.outcomes[0]
    assert [c.usage for c in meter.charges] == [usage_of(first["usage"]),
                                                usage_of(second["usage"])]
    assert [b.usage for b in rt.ledger.responses] == [first["usage"], second["usage"]]
    assert [c.response_id for c in meter.charges] == [first["id"], second["id"]]
    assert meter.charges[0].model == "gpt-realtime" and second["status"] == "incomplete"
    assert meter.order == ["reserve", "response", "reserve", "response", "end"]
    assert meter.ended == 0
    assert (outcome.reason, outcome.responses, outcome.in_flight) == ("client_closed", 2, 0)
    # Upstream, the gateway's own update came first; the client's events as they were sent,
    # but for the "inf" the cap replaced.
    sent = rt.ledger.events()
    assert sent[0] == {"type": "session.update", "session": {"type": "realtime",
                                                             "max_output_tokens": 1000}}
    assert [e["type"] for e in sent[1:]] == ["session.update", "conversation.item.create",
                                             "response.create", "response.create"]
    assert sent[1]["session"]["max_output_tokens"] == 1000
    assert rt.ledger.sockets[0].token == KEY  # the real key upstream, the client's never


async def test_a_refused_event_gets_an_error_event_and_is_not_forwarded(rt, harness, gateway):
    url = await gateway()
    async with sdk(url).realtime.connect(model="gpt-realtime") as conn:
        await until(conn, "session.updated")
        await conn.session.update(event_id="evt_1", session={"type": "realtime", "tools": [
            {"type": "mcp", "server_label": "mail", "server_url": "https://mcp.example"}]})
        error = (await until(conn, "error"))["error"]
        assert (error["code"], error["param"], error["event_id"]) == (
            "tool_not_allowed", "session.tools[0].type", "evt_1")
        await conn.send({"type": "input_audio_buffer.append", "event_id": "evt_2",
                         "audio": "A" * 70_000})
        error = (await until(conn, "error"))["error"]
        assert (error["code"], error["event_id"]) == ("frame_too_large", None)
        await conn.send({"type": "transcription_session.update", "event_id": "evt_3"})
        assert (await until(conn, "error"))["error"]["code"] == "invalid_event_type"
        # The session goes on.
        await conn.response.create(response={"output_modalities": ["text"]})
        assert (await until(conn, "response.done"))["response"]["status"] == "completed"
    await ended(harness)
    assert [e["type"] for e in rt.ledger.events()] == ["session.update", "response.create"]


async def test_an_exhausted_budget_ends_the_session_with_its_code(rt, harness, gateway):
    harness.meter = {"budget": 3}
    url = await gateway()
    async with sdk(url).realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await conn.response.create()
        seen: list[dict] = []
        with pytest.raises(ConnectionClosed) as closed:
            await until(conn, "never", seen)
    kinds = [e["type"] for e in seen]
    assert kinds.index("response.done") < kinds.index("error")  # the usage first, then why
    error = next(e for e in seen if e["type"] == "error")["error"]
    assert (error["type"], error["code"]) == ("tokens", "tokens_limit_exceeded")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    await ended(harness)
    assert harness.outcomes[0].reason == "stopped"
    assert rt.ledger.sockets[0].closed is not None  # the upstream socket is closed too


async def test_a_response_the_budget_cannot_reserve_is_never_asked_for(rt, harness, gateway):
    harness.meter = {"responses": 0}
    url = await gateway()
    async with sdk(url).realtime.connect(model="gpt-realtime") as conn:
        await until(conn, "session.updated")
        await conn.response.create(event_id="evt_9")
        error = (await until(conn, "error"))["error"]
        assert error["code"] == "spend_limit_exceeded" and error["type"] == "insufficient_quota"
        with pytest.raises(ConnectionClosed):
            await until(conn, "never")
    await ended(harness)
    assert rt.ledger.events("response.create") == [] and rt.ledger.responses == []
    assert harness.meters[0].order == ["reserve", "end"]


async def test_a_response_the_server_starts_by_itself_is_reserved_too(rt, harness, gateway):
    """Server VAD starts responses no client event asked for: the relay reserves one when it
    sees `response.created`, and refuses none it already reserved for a client's create."""
    url = await gateway()
    async with sdk(url).realtime.connect(model="gpt-realtime") as conn:
        await until(conn, "session.updated")
        session = next(iter(rt.sessions.values()))
        await session.on_response_create({"type": "response.create"}, None)  # as VAD does
        await until(conn, "response.done")
        await conn.response.create()
        await until(conn, "response.done")
    await ended(harness)
    assert harness.meters[0].order == ["reserve", "response", "reserve", "response", "end"]


async def test_a_stop_carries_the_limiters_refusal():
    assert Stop.of(BudgetExceeded("The gateway's daily budget is spent.")) == Stop(
        "budget_exceeded", "The gateway's daily budget is spent.", "insufficient_quota")
    assert Stop.of(TokensRateLimited("Slow down.")) == Stop("rate_limit_exceeded",
                                                            "Slow down.", "tokens")


async def test_a_client_that_vanishes_closes_the_upstream_at_once(rt, harness, gateway):
    rt.words, rt.pace = 1000, 0.01
    url = await gateway()
    ws_url = url.replace("http", "ws", 1) + "/realtime?model=gpt-realtime"
    async with ws_connect(ws_url, additional_headers={
            "Authorization": f"Bearer {CLIENT_TOKEN}"}) as ws:
        await ws.send(event("response.create", response={"output_modalities": ["text"]}))
        while orjson.loads(await ws.recv())["type"] != "response.output_text.delta":
            pass
        ws.transport.abort()  # no close frame: the network went away
        gone = time.monotonic()
    await ended(harness)
    upstream = rt.ledger.sockets[0]
    assert upstream.closed is not None and upstream.closed - gone < 0.5
    billed = rt.ledger.responses[0]
    assert billed.status == "dropped" and billed.usage["output_tokens"] < 100
    outcome, meter = harness.outcomes[0], harness.meters[0]
    assert (outcome.reason, outcome.in_flight, meter.ended) == ("client_closed", 1, 1)


async def test_an_upstream_that_dies_mid_response_closes_the_client(rt, harness, gateway):
    rt.close_after = 2
    url = await gateway()
    async with sdk(url).realtime.connect(model="gpt-realtime") as conn:
        await conn.response.create()
        with pytest.raises(ConnectionClosed) as closed:
            await until(conn, "response.done")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    await ended(harness)
    outcome = harness.outcomes[0]
    assert (outcome.reason, outcome.upstream_code, outcome.in_flight) == (
        "upstream_closed", 1011, 1)
    assert harness.meters[0].ended == 1  # the reservation is charged, not released


async def test_the_session_ends_after_max_session_seconds(harness, gateway):
    harness.realtime = RealtimeSettings(max_session_seconds=1)
    url = await gateway()
    started = time.monotonic()
    async with sdk(url).realtime.connect(model="gpt-realtime") as conn:
        error = (await until(conn, "error"))["error"]
        with pytest.raises(ConnectionClosed) as closed:
            await until(conn, "never")
    assert error["code"] == "session_expired" and "realtime.max_session_seconds" in \
        error["message"]
    assert 1 <= time.monotonic() - started < 3
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    await ended(harness)
    assert harness.outcomes[0].reason == "expired"


async def test_a_browser_socket_gets_realtime_selected_and_its_key_never_echoed(gateway):
    url = await gateway()
    answered: list[dict] = []

    async def on_end(session, ctx, params):
        answered.append(dict(params.response.headers))

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    async with aiohttp.ClientSession(trace_configs=[trace]) as http:
        async with http.ws_connect(url + "/realtime?model=gpt-realtime", protocols=(
                "realtime", "openai-insecure-api-key." + CLIENT_TOKEN)) as ws:
            assert ws.protocol == "realtime"
            assert (await ws.receive_json(timeout=5))["type"] == "session.created"
    assert answered[0]["Sec-WebSocket-Protocol"] == "realtime"
    assert CLIENT_TOKEN not in repr(answered)


async def test_an_upstream_refusal_is_an_http_error_before_the_handshake(gateway):
    url = await gateway(key="sk-wrong-key")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url + "/realtime?model=gpt-realtime",
                                  headers={"Authorization": f"Bearer {CLIENT_TOKEN}"})
        assert refused.value.status == 502  # OpenAI refused the gateway's key, not the client's
        async with http.get(url + "/realtime?model=o3", headers={
                "Authorization": f"Bearer {CLIENT_TOKEN}"}) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "session.model"


async def test_a_gateway_secret_opens_its_bounded_session(rt, harness, gateway):
    url = await gateway()
    secret = await sdk(url).realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 7200},
        session={"type": "realtime", "model": "gpt-realtime-mini", "instructions": "Be brief."})
    assert not secret.value.startswith("ek_") and rt.ledger.secrets == {}
    assert secret.expires_at - time.time() <= 600 + 5  # realtime.max_ttl
    assert secret.session.model == "gpt-realtime-mini"
    assert secret.session.max_output_tokens == 1000
    async with sdk(url, secret.value).realtime.connect(model="gpt-realtime-mini") as conn:
        await until(conn, "session.created")
        updated = (await until(conn, "session.updated"))["session"]
    assert (updated["instructions"], updated["max_output_tokens"]) == ("Be brief.", 1000)
    await ended(harness)


async def test_the_relay_adds_little_latency_per_frame(rt_url, harness, gateway):
    """Round trips of a small event (input_audio_buffer.clear -> .cleared), straight to the
    fake and through the relay, interleaved in one run on loopback (as fast as they go: the
    event rate is not what is measured)."""
    harness.realtime = RealtimeSettings(max_events_per_second=1_000_000)
    url = await gateway()
    rounds = 300
    async with aiohttp.ClientSession() as http:
        direct_ws = await http.ws_connect(rt_url + "/realtime?model=gpt-realtime",
                                          headers={"Authorization": f"Bearer {KEY}"})
        relay_ws = await http.ws_connect(url + "/realtime?model=gpt-realtime",
                                         headers={"Authorization": f"Bearer {CLIENT_TOKEN}"})
        for ws, ready in ((direct_ws, "session.created"), (relay_ws, "session.updated")):
            while (await ws.receive_json(timeout=5))["type"] != ready:
                pass
        direct: list[float] = []
        relayed: list[float] = []
        audio: dict[str, list[float]] = {"direct": [], "relayed": []}
        for _ in range(3):  # interleaved, so load on the machine hits both alike
            direct += await _round_trips(direct_ws, rounds)
            relayed += await _round_trips(relay_ws, rounds)
            audio["direct"].append(await _appends(direct_ws, rounds))
            audio["relayed"].append(await _appends(relay_ws, rounds))
        await direct_ws.close()
        await relay_ws.close()
    per_append = (min(audio["relayed"]) - min(audio["direct"])) / rounds
    print(f"\n{rounds} appends of 100 ms of audio (6.4 KB frames) and a clear: direct "
          f"{min(audio['direct']) * 1e3:.1f} ms, relayed {min(audio['relayed']) * 1e3:.1f} ms; "
          f"added {per_append * 1e6:.0f} us per frame")
    p50 = statistics.median(relayed) - statistics.median(direct)
    p90 = _pct(relayed, 0.9) - _pct(direct, 0.9)
    print(f"\nround trip, {len(direct)} each: direct p50 {statistics.median(direct) * 1e6:.0f} us,"
          f" relayed p50 {statistics.median(relayed) * 1e6:.0f} us; added p50 {p50 * 1e6:.0f} us,"
          f" p90 {p90 * 1e6:.0f} us (both directions)")
    assert len(relayed) == len(direct) == 3 * rounds
    assert p50 < 0.02  # well under a 20 ms audio frame, even on a loaded machine


async def _round_trips(ws, rounds: int) -> list[float]:
    frame = event("input_audio_buffer.clear")
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        await ws.send_str(frame)
        while (await ws.receive_json(timeout=5))["type"] != "input_audio_buffer.cleared":
            pass
        out.append(time.perf_counter() - start)
    return out


async def _appends(ws, rounds: int) -> float:
    """Seconds to send `rounds` appends of 100 ms of 24 kHz audio, then a clear, until the
    clear is answered: the appends' one-way cost, including the policy's check of each."""
    frame = event("input_audio_buffer.append", audio=base64.b64encode(bytes(4800)).decode())
    start = time.perf_counter()
    for _ in range(rounds):
        await ws.send_str(frame)
    await ws.send_str(event("input_audio_buffer.clear"))
    while (await ws.receive_json(timeout=5))["type"] != "input_audio_buffer.cleared":
        pass
    return time.perf_counter() - start


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[int(q * (len(values) - 1))]

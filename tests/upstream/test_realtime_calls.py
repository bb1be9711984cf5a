"""WebRTC calls created with the real key and supervised through their sideband, against the
fake realtime upstream. The browser's data channel is stood in for by a transport attached to
the call's session in the fake (what tests/webrtc_peer.py attaches for a real browser)."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import orjson
import pytest

from openai_gateway.config.realtime import RealtimeSettings
from openai_gateway.config.settings import ValidationSettings
from openai_gateway.demo.fake_openai import FakeOpenAI
from openai_gateway.demo.fake_realtime import FakeRealtime
from openai_gateway.demo.realtime_session import Call
from openai_gateway.policy.usage import usage_of

from ..conftest import KEY
from ..support.realtime_app import CLIENT_TOKEN, MODELS, Harness, build_app, event

OFFER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


@pytest.fixture
def rt() -> FakeRealtime:
    return FakeRealtime(api_key=KEY, models=MODELS[:2])


@pytest.fixture
def harness() -> Harness:
    return Harness()


@pytest.fixture
def gateway(rt, harness, aiohttp_server):
    """gateway() -> the test app's base URL, built from the harness as the test left it."""

    async def start() -> str:
        upstream = await aiohttp_server(FakeOpenAI(realtime=rt).app())
        server = await aiohttp_server(build_app(harness, str(upstream.make_url("/v1")), KEY))
        return str(server.make_url("/v1"))

    return start


def sdk(url: str, key: str = CLIENT_TOKEN) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=url, max_retries=0)


async def eventually(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


class Channel:
    """The browser's "oai-events" data channel, attached to the call's session in the fake."""

    def __init__(self, call: Call) -> None:
        self.call, self.events = call, []
        self.closed = False

    async def open(self) -> Channel:
        async def send(text: str) -> None:
            self.events.append(orjson.loads(text))

        async def close(code: int) -> None:
            self.closed = True

        await self.call.session.attach("datachannel", send, close)
        return self

    async def send(self, kind: str, **fields) -> None:
        await self.call.session.receive(event(kind, **fields), "datachannel")

    def seen(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


async def call(rt: FakeRealtime, url: str, **session) -> tuple[str, Channel]:
    """A call created through the gateway with the SDK; its id and its data channel, once
    the gateway's sideband is attached."""
    answer = await sdk(url).realtime.calls.with_raw_response.create(
        sdp=OFFER, session={"type": "realtime", "model": "gpt-realtime",
                            "output_modalities": ["text"], **session})
    assert answer.http_response.status_code == 201
    call_id = answer.headers["location"].rsplit("/", 1)[1]
    await eventually(lambda: any(s.via == "sideband" and s.call_id == call_id
                                 for s in rt.ledger.sockets))
    return call_id, await Channel(rt.ledger.calls[call_id]).open()


async def test_a_call_is_created_with_the_bounded_session_and_metered(rt, harness, gateway):
    url = await gateway()
    answer = await sdk(url).realtime.calls.with_raw_response.create(
        sdp=OFFER, session={"type": "realtime", "model": "gpt-realtime",
                            "instructions": "Be brief.", "output_modalities": ["text"]})
    assert answer.http_response.status_code == 201
    assert answer.headers["content-type"].startswith("application/sdp")
    assert answer.http_response.content.startswith(b"v=0")
    call_id = answer.headers["location"].rsplit("/", 1)[1]
    assert answer.headers["location"] == f"/v1/realtime/calls/{call_id}"
    upstream_call = rt.ledger.calls[call_id]
    # Created with the real key and the bounded session: the output cap was added.
    assert (upstream_call.token, upstream_call.content_type) == (KEY, "multipart/form-data")
    assert upstream_call.session.config["max_output_tokens"] == 1000
    assert upstream_call.session.config["instructions"] == "Be brief."
    await eventually(lambda: [s for s in rt.ledger.sockets if s.via == "sideband"])
    assert rt.ledger.sockets[0].token == KEY
    channel = await Channel(upstream_call).open()
    # The browser asks for responses on its data channel: the gateway never sees the asking,
    # only the sideband's response.created and response.done.
    for _ in range(2):
        await channel.send("response.create")
        await eventually(lambda: len(harness.meters[0].charges) == len(rt.ledger.responses)
                         and rt.ledger.responses)
    await eventually(lambda: len(harness.meters[0].charges) == 2)
    meter = harness.meters[0]
    assert [c.usage for c in meter.charges] == [usage_of(b.usage) for b in rt.ledger.responses]
    assert meter.order == ["reserve", "response", "reserve", "response"]
    # The browser hangs up (OpenAI ends the call): the supervision ends without a hangup.
    await upstream_call.session.end()
    await eventually(lambda: meter.outcome)
    assert (meter.outcome.reason, meter.outcome.responses, meter.ended) == (
        "upstream_closed", 2, 0)
    assert rt.ledger.hangups == []


async def test_a_raw_sdp_offer_with_a_gateway_secret_gets_the_secrets_session(rt, gateway):
    url = await gateway()
    secret = await sdk(url).realtime.client_secrets.create(
        session={"type": "realtime", "model": "gpt-realtime-mini", "instructions": "Hi."})
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/realtime/calls", data=OFFER, headers={
                "Authorization": f"Bearer {secret.value}",
                "Content-Type": "application/sdp"}) as r:
            assert r.status == 201 and (await r.text()).startswith("v=0")
            call_id = r.headers["Location"].rsplit("/", 1)[1]
        config = rt.ledger.calls[call_id].session.config
        assert (config["model"], config["instructions"], config["max_output_tokens"]) == (
            "gpt-realtime-mini", "Hi.", 1000)
        # A raw offer with no secret needs ?model=; a model not allowed is refused here.
        async with http.post(url + "/realtime/calls?model=o3", data=OFFER, headers={
                "Authorization": f"Bearer {CLIENT_TOKEN}",
                "Content-Type": "application/sdp"}) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "session.model"
    assert len(rt.ledger.calls) == 1


async def test_an_exhausted_budget_hangs_the_call_up(rt, harness, gateway):
    harness.meter = {"budget": 3}
    url = await gateway()
    call_id, channel = await call(rt, url)
    await channel.send("response.create")
    meter = harness.meters[0]
    await eventually(lambda: meter.outcome)
    assert rt.ledger.hangups == [call_id] and channel.closed
    assert meter.outcome.reason == "stopped"
    assert meter.outcome.stop is not None and meter.outcome.stop.code == "tokens_limit_exceeded"
    # What was billed is what was charged: one response, within its cap.
    assert meter.output_tokens == rt.ledger.output_tokens() == 5


async def test_a_response_the_budget_cannot_cover_is_cut_by_a_hangup(rt, harness, gateway):
    harness.meter = {"responses": 0}
    rt.words, rt.pace = 200, 0.01
    url = await gateway()
    call_id, channel = await call(rt, url)
    await channel.send("response.create")
    meter = harness.meters[0]
    await eventually(lambda: meter.outcome)
    assert rt.ledger.hangups == [call_id]
    billed = rt.ledger.responses[0]
    assert billed.status == "dropped" and billed.usage["output_tokens"] < 50
    assert (meter.outcome.stop.code, meter.ended) == ("spend_limit_exceeded", 0)


async def test_a_session_changed_out_of_bounds_is_put_back(rt, harness, gateway):
    url = await gateway()
    call_id, channel = await call(rt, url)
    await channel.send("session.update", session={
        "type": "realtime", "max_output_tokens": "inf", "instructions": "x" * 20_000,
        "tools": [{"type": "function", "name": "f"},
                  {"type": "mcp", "server_label": "m", "server_url": "https://m.example"}]})
    session = rt.ledger.calls[call_id].session
    assert session.config["max_output_tokens"] == "inf"  # the client's change went through
    await eventually(lambda: [r for r in rt.ledger.received if r.via == "sideband"])
    fixed = await eventually(lambda: session.config["max_output_tokens"] == 1000
                             and session.config)
    assert fixed["tools"] == [{"type": "function", "name": "f"}]
    assert fixed["instructions"] == ""  # as the call was created: none
    sent = [r for r in rt.ledger.received if r.via == "sideband"]
    assert [r.event["type"] for r in sent] == ["session.update"]
    await asyncio.sleep(0.2)
    assert rt.ledger.hangups == [] and harness.meters[0].outcome is None


async def test_a_session_that_stays_out_of_bounds_is_hung_up(rt, harness, gateway):
    url = await gateway()
    call_id, channel = await call(rt, url)
    for _ in range(2):  # the second change lands before the gateway's fix of the first
        await channel.send("session.update", session={"type": "realtime",
                                                      "max_output_tokens": "inf"})
    meter = await eventually(lambda: harness.meters[0].outcome and harness.meters[0])
    assert meter.outcome.stop.code == "session_out_of_bounds"
    assert rt.ledger.hangups == [call_id]


async def test_a_response_over_the_output_cap_is_cancelled(rt, harness, gateway):
    rt.words, rt.pace = 300, 0.005
    url = await gateway()
    call_id, channel = await call(rt, url)
    await channel.send("response.create", response={"max_output_tokens": "inf"})
    await eventually(lambda: rt.ledger.responses)
    billed = rt.ledger.responses[0]
    assert billed.status == "cancelled" and billed.usage["output_tokens"] < 300
    assert [r.event["type"] for r in rt.ledger.received if r.via == "sideband"] == [
        "response.cancel"]
    await eventually(lambda: harness.meters[0].charges)
    assert harness.meters[0].charges[0].status == "cancelled"
    assert rt.ledger.hangups == []


async def test_an_mcp_tool_running_hangs_the_call_up(rt, harness, gateway):
    url = await gateway()
    call_id, channel = await call(rt, url)
    await channel.call.session.emit({"type": "mcp_list_tools.in_progress", "event_id": "e1",
                                     "item_id": "item_1"})
    meter = await eventually(lambda: harness.meters[0].outcome and harness.meters[0])
    assert meter.outcome.stop.code == "tool_not_allowed" and rt.ledger.hangups == [call_id]


async def test_a_call_ends_after_max_session_seconds(rt, harness, gateway):
    harness.realtime = RealtimeSettings(max_session_seconds=1)
    url = await gateway()
    call_id, _ = await call(rt, url)
    meter = await eventually(lambda: harness.meters[0].outcome and harness.meters[0], 10)
    assert meter.outcome.reason == "expired" and rt.ledger.hangups == [call_id]


async def test_a_call_whose_sideband_cannot_open_is_hung_up(rt, harness, gateway):
    url = await gateway()
    call_id, _ = await call(rt, url)
    upstream_call = rt.ledger.calls[call_id]
    assert harness.calls is not None
    await upstream_call.session.end()
    rt.ledger.hangups.clear()
    task = harness.calls.supervise(call_id, {"model": "gpt-realtime"},
                                   meter := harness.new_meter())
    outcome = await asyncio.wait_for(task, 5)
    assert outcome.reason == "upstream_closed" and meter.ended == 0
    assert rt.ledger.hangups == [call_id]  # a call the gateway cannot meter must not go on


async def test_a_meter_that_fails_hangs_the_call_up(rt, harness, gateway, leak_scan):
    harness.meter = {"broken": True}
    url = await gateway()
    call_id, channel = await call(rt, url)
    await channel.send("response.create")
    meter = await eventually(lambda: harness.meters[0].outcome and harness.meters[0])
    assert meter.outcome.reason == "stopped" and rt.ledger.hangups == [call_id]
    assert leak_scan.gateway and not any("Traceback" in t for t in leak_scan.gateway)


async def test_shutdown_hangs_up_every_supervised_call(rt, harness, gateway):
    url = await gateway()
    first, _ = await call(rt, url)
    second, _ = await call(rt, url)
    assert harness.calls is not None
    await harness.calls.close()
    assert sorted(rt.ledger.hangups) == sorted([first, second])
    assert all(m.outcome is not None for m in harness.meters) and not harness.calls.tasks


async def test_an_upstream_refusal_of_the_call_keeps_its_status(rt, harness, gateway):
    harness.validation = ValidationSettings(allowed_models=(*MODELS, "gpt-realtime-2"))
    url = await gateway()
    with pytest.raises(openai.BadRequestError):
        await sdk(url).realtime.calls.create(
            sdp=OFFER, session={"type": "realtime", "model": "gpt-realtime-2"})

"""The fake realtime upstream speaks the official SDK's protocol (openai 3.57), and a real
Chromium negotiates a WebRTC call with it through an aiortc peer standing in for OpenAI.

Every server event the SDK receives here is validated against the SDK's own event types.
"""
from __future__ import annotations

import asyncio
import base64
import time

import aiohttp
import openai
import pytest
from aiohttp import web
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter
from websockets.exceptions import ConnectionClosed

from openai_gateway.demo.fake_openai import FakeOpenAI
from openai_gateway.demo.fake_realtime import FakeRealtime
from openai_gateway.demo.formats import count_tokens
from openai_gateway.demo.realtime_formats import AUDIO_TOKENS_PER_WORD

from ..support.browser import start_chromium
from ..support.webrtc_peer import OpenAIPeer

#: Not the gateway's key: these tests talk to the fake directly, and the websockets library
#: logs handshake headers (the autouse leak scan would take that for a leak).
KEY = "sk-fake-realtime-key"
SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
OFFER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
SECOND_OF_AUDIO = base64.b64encode(bytes(48000)).decode()  # 24 kHz 16-bit mono: 10 tokens


@pytest.fixture
def rt() -> FakeRealtime:
    return FakeRealtime(api_key=KEY, models=("gpt-realtime", "gpt-realtime-mini"))


@pytest.fixture
async def rt_url(rt, aiohttp_server) -> str:
    server = await aiohttp_server(FakeOpenAI(realtime=rt).app())
    return str(server.make_url("/v1"))


def client(url: str, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=url, max_retries=0)


async def until(conn, kind: str, seen: list | None = None) -> dict:
    """Server events until one of `kind`, each validated by the SDK's types; returns it."""
    while True:
        raw = await asyncio.wait_for(conn.recv_bytes(), 5)
        event = SERVER_EVENT.validate_json(raw).model_dump(exclude_unset=True)
        if seen is not None:
            seen.append(event)
        if event["type"] == kind:
            return event


def said(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def test_client_secret_opens_a_session_with_its_configuration(rt, rt_url):
    secret = await client(rt_url).realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 60},
        session={"type": "realtime", "model": "gpt-realtime-mini", "instructions": "Be brief."})
    assert secret.value.startswith("ek_") and secret.value in rt.ledger.secrets
    assert abs(secret.expires_at - (time.time() + 60)) < 5
    assert secret.session.model == "gpt-realtime-mini"
    # The ephemeral key opens a session with the secret's configuration, by itself.
    async with client(rt_url, secret.value).realtime.connect(model="gpt-realtime-mini") as conn:
        created = await until(conn, "session.created")
    assert created["session"]["instructions"] == "Be brief."
    assert rt.ledger.sockets[0].token == secret.value
    # Only the real key creates secrets; an unknown key opens nothing.
    with pytest.raises(openai.AuthenticationError):
        await client(rt_url, secret.value).realtime.client_secrets.create(
            session={"type": "realtime", "model": "gpt-realtime"})
    with pytest.raises(openai.BadRequestError):
        await client(rt_url).realtime.client_secrets.create(
            expires_after={"anchor": "created_at", "seconds": 5})


async def test_a_conversation_over_the_sdk_with_usage_in_openai_shape(rt, rt_url):
    async with client(rt_url).realtime.connect(model="gpt-realtime") as conn:
        await until(conn, "session.created")
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                           "instructions": "Be brief."})
        updated = await until(conn, "session.updated")
        assert updated["session"]["output_modalities"] == ["text"]
        await conn.conversation.item.create(item=said("Hello there"))
        await until(conn, "conversation.item.done")
        await conn.response.create()
        seen: list[dict] = []
        done = (await until(conn, "response.done", seen))["response"]
        deltas = [e["delta"] for e in seen if e["type"] == "response.output_text.delta"]
        assert "".join(deltas) == "w0 w1 w2 w3 w4 " and done["status"] == "completed"
        read = count_tokens("Be brief.") + count_tokens("Hello there")
        assert done["usage"] == {
            "total_tokens": read + 5, "input_tokens": read, "output_tokens": 5,
            "input_token_details": {"text_tokens": read, "audio_tokens": 0, "image_tokens": 0,
                                    "cached_tokens": 0, "cached_tokens_details": {
                                        "text_tokens": 0, "audio_tokens": 0,
                                        "image_tokens": 0}},
            "output_token_details": {"text_tokens": 5, "audio_tokens": 0}}
        # The next response reads the answer too; what the first one read is now cached.
        await conn.response.create()
        usage = (await until(conn, "response.done"))["response"]["usage"]
        assert usage["input_tokens"] == read + count_tokens("w0 w1 w2 w3 w4")
        assert usage["input_token_details"]["cached_tokens"] == read
    assert [b.status for b in rt.ledger.responses] == ["completed", "completed"]
    assert rt.ledger.responses[1].usage == usage
    assert [e["type"] for e in rt.ledger.events()] == [
        "session.update", "conversation.item.create", "response.create", "response.create"]


async def test_spoken_audio_and_its_transcription_are_counted(rt, rt_url):
    async with client(rt_url).realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "transcription": {"model": "gpt-4o-transcribe"}, "turn_detection": None}}})
        await conn.input_audio_buffer.append(audio=SECOND_OF_AUDIO)
        await conn.input_audio_buffer.commit()
        heard = await until(conn, "conversation.item.input_audio_transcription.completed")
        assert heard["usage"] == {"type": "tokens", "total_tokens": 14, "input_tokens": 10,
                                  "input_token_details": {"text_tokens": 0,
                                                          "audio_tokens": 10},
                                  "output_tokens": 4}
        await conn.response.create(response={"max_output_tokens": 2 * (1 + AUDIO_TOKENS_PER_WORD)})
        seen: list[dict] = []
        done = (await until(conn, "response.done", seen))["response"]
    assert sum(e["type"] == "response.output_audio.delta" for e in seen) == 2
    assert done["status"] == "incomplete"
    assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert done["usage"]["output_token_details"] == {"text_tokens": 2,
                                                     "audio_tokens": 2 * AUDIO_TOKENS_PER_WORD}
    assert done["usage"]["input_token_details"]["audio_tokens"] == 10
    assert rt.ledger.transcriptions[0].model == "gpt-4o-transcribe"


async def test_cancel_bills_the_words_so_far_and_errors_are_openai_events(rt, rt_url):
    rt.words, rt.pace = 200, 0.01
    async with client(rt_url).realtime.connect(model="gpt-realtime") as conn:
        await conn.send({"type": "no.such.event", "event_id": "evt_1"})
        error = (await until(conn, "error"))["error"]
        assert error["param"] == "type" and error["event_id"] == "evt_1"
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_value"
        await conn.response.cancel()
        assert (await until(conn, "error"))["error"]["code"] == "response_cancel_not_active"
        await conn.response.create()
        await until(conn, "response.output_audio.delta")
        await conn.response.create(event_id="evt_2")
        error = (await until(conn, "error"))["error"]
        assert (error["code"], error["event_id"]) == (
            "conversation_already_has_active_response", "evt_2")
        await conn.response.cancel()
        done = (await until(conn, "response.done"))["response"]
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    words = done["usage"]["output_token_details"]["text_tokens"]
    assert 1 <= words < 200 and rt.ledger.responses[0].usage == done["usage"]


async def test_a_call_its_sideband_and_its_hangup(rt, rt_url):
    answer = await client(rt_url).realtime.calls.with_raw_response.create(
        sdp=OFFER, session={"type": "realtime", "model": "gpt-realtime",
                            "output_modalities": ["text"]})
    assert answer.http_response.status_code == 201
    assert answer.headers["content-type"].startswith("application/sdp")
    call_id = answer.headers["location"].rsplit("/", 1)[1]
    assert answer.headers["location"] == f"/v1/realtime/calls/{call_id}"
    assert call_id.startswith("rtc_") and rt.ledger.calls[call_id].offer == OFFER
    async with client(rt_url).realtime.connect(call_id=call_id) as conn:
        created = await until(conn, "session.created")
        assert created["session"]["output_modalities"] == ["text"]
        await conn.response.create()
        assert (await until(conn, "response.done"))["response"]["usage"]["output_tokens"] == 5
        await client(rt_url).realtime.calls.hangup(call_id)
        with pytest.raises(ConnectionClosed) as closed:
            await until(conn, "never")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert rt.ledger.hangups == [call_id]
    assert rt.ledger.responses[0].call_id == call_id
    assert [s.via for s in rt.ledger.sockets] == ["sideband"]


async def test_calls_by_sdp_with_a_secret_and_sockets_by_browser_subprotocol(rt, rt_url):
    secret = await client(rt_url).realtime.client_secrets.create(
        session={"type": "realtime", "model": "gpt-realtime"})
    async with aiohttp.ClientSession() as http:
        async with http.post(rt_url + "/realtime/calls", data=OFFER, headers={
                "Authorization": f"Bearer {secret.value}",
                "Content-Type": "application/sdp"}) as r:
            assert r.status == 201 and (await r.text()).startswith("v=0")
            call_id = r.headers["Location"].rsplit("/", 1)[1]
        # The sideband takes the real key only; an unknown call is OpenAI's 404.
        async with http.get(rt_url + f"/realtime?call_id={call_id}",
                            headers={"Authorization": f"Bearer {secret.value}"}) as r:
            assert r.status == 401
        async with http.get(rt_url + "/realtime?call_id=rtc_nope",
                            headers={"Authorization": f"Bearer {KEY}"}) as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "call_id_not_found"
        # A browser: the secret in a subprotocol, `realtime` selected in the answer.
        ws_url = rt_url.replace("http", "ws") + "/realtime?model=gpt-realtime"
        async with http.ws_connect(ws_url, protocols=(
                "realtime", "openai-insecure-api-key." + secret.value)) as ws:
            assert ws.protocol == "realtime"
            assert (await ws.receive_json(timeout=5))["type"] == "session.created"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url, protocols=("realtime", "openai-insecure-api-key.x"))
        assert refused.value.status == 401


async def test_a_slow_upstream_that_dies_mid_response(rt, rt_url):
    rt.close_after, rt.delay = 2, 0.2
    started = time.monotonic()
    async with client(rt_url).realtime.connect(model="gpt-realtime") as conn:
        assert time.monotonic() - started >= 0.2  # the handshake waited
        await conn.response.create()
        seen: list[dict] = []
        with pytest.raises(ConnectionClosed) as closed:
            await until(conn, "response.done", seen)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert sum(e["type"] == "response.output_audio_transcript.delta" for e in seen) == 2
    billed = rt.ledger.responses[0]
    assert billed.status == "dropped"
    assert billed.usage["output_tokens"] == 2 * (1 + AUDIO_TOKENS_PER_WORD)


# --- a real browser calls the fake through an aiortc peer -----------------------------------

#: The browser's side of OpenAI's WebRTC guide, on the page's own origin: a (fake) microphone,
#: the "oai-events" data channel, the offer posted as application/sdp with the ephemeral key.
CALL_PAGE = """<!doctype html><title>call</title><script>
window.call = {events: [], status: null, location: null, state: 'new', channel: 'none'};
async function start(key) {
  const pc = new RTCPeerConnection();
  pc.onconnectionstatechange = () => { call.state = pc.connectionState; };
  pc.ontrack = (e) => { call.track = e.track.kind; };
  const mic = await navigator.mediaDevices.getUserMedia({audio: true});
  pc.addTrack(mic.getTracks()[0]);
  const dc = pc.createDataChannel('oai-events');
  window.dc = dc;
  dc.onopen = () => { call.channel = 'open'; };
  dc.onclose = () => { call.channel = 'closed'; };
  dc.onmessage = (e) => call.events.push(JSON.parse(e.data));
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  const r = await fetch('/v1/realtime/calls', {method: 'POST', body: offer.sdp,
    headers: {'Authorization': 'Bearer ' + key, 'Content-Type': 'application/sdp'}});
  call.status = r.status;
  call.location = r.headers.get('Location');
  await pc.setRemoteDescription({type: 'answer', sdp: await r.text()});
}
</script>"""
#: Chromium's fake microphone, granted without a prompt. With the microphone granted, Chromium
#: gathers its host candidates as real addresses rather than mDNS names (which the aiortc peer
#: would have to resolve by multicast), so no flag about mDNS is needed; the page posts its
#: offer before gathering anyway, as OpenAI's guide does, and ICE finds the peer from the
#: answer's candidates and the browser's own checks.
WEBRTC_ARGS = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")


@pytest.fixture
def call_browser(tmp_path):
    browser = start_chromium(tmp_path / "chromium-profile", WEBRTC_ARGS)
    yield browser
    browser.driver.quit()


async def test_chromium_calls_through_an_aiortc_peer(rt, aiohttp_server, call_browser):
    peer = OpenAIPeer()
    rt.answerer = peer.answer
    app = web.Application()
    app.router.add_get("/", lambda request: web.Response(text=CALL_PAGE,
                                                         content_type="text/html"))
    rt.add_to(app)
    server = await aiohttp_server(app)
    url = str(server.make_url("/"))
    try:
        secret = await client(url + "v1").realtime.client_secrets.create(
            session={"type": "realtime", "model": "gpt-realtime"})
        started = time.monotonic()
        await call_browser.get(url)
        await call_browser.js("start(arguments[0])", secret.value)
        first = await call_browser.wait(
            "return call.events.length && call.channel === 'open' && call.events[0]")
        took = time.monotonic() - started
        assert first["type"] == "session.created"
        assert first["session"]["model"] == "gpt-realtime"
        call_id = (await call_browser.js("return call.location")).rsplit("/", 1)[1]
        assert await call_browser.js("return call.status") == 201
        # The call's session is one: what the page asks on its channel, a sideband sees.
        async with client(url + "v1").realtime.connect(call_id=call_id) as side:
            await until(side, "session.created")
            await call_browser.js("dc.send(JSON.stringify({type: 'response.create'}))")
            done = (await until(side, "response.done"))["response"]
            await call_browser.wait(
                "return call.events.some(e => e.type === 'response.done')")
            assert done["usage"]["output_token_details"]["audio_tokens"] == 5 * (
                AUDIO_TOKENS_PER_WORD)
            # Audio flows both ways: the page gets the peer's track, the peer the fake mic.
            assert await call_browser.wait("return call.track") == "audio"
            deadline = time.monotonic() + 10
            while peer.frames == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert peer.frames > 0
            await client(url + "v1").realtime.calls.hangup(call_id)
            await call_browser.wait("return call.channel === 'closed'")
        assert [r.via for r in rt.ledger.received] == ["datachannel"]
        print(f"browser call: session.created on the data channel {took:.2f}s after load")
    finally:
        await peer.close()

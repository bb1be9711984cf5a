"""A real Chromium holds a WebRTC call through a real gateway process: OpenAI's browser code,
changed only in its base URL and its key source.

The page (on an origin of its own, listed in cors.allow_origins) gets a client secret from the
gateway, creates an offer with a (fake) microphone and the "oai-events" data channel, posts it
to the gateway's /v1/realtime/calls with the secret, and sets the answer. The gateway creates
the call at the fake upstream with the real key, whose SDP answerer is an aiortc peer standing
in for OpenAI's media server; the page then hears `session.created` on its data channel, and a
response it asks for there is metered by the gateway through the call's sideband.
"""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from openai_gateway.demo.fake_openai import FakeOpenAI
from openai_gateway.demo.fake_realtime import FakeRealtime

from ..conftest import KEY, free_port
from ..support.browser import start_chromium
from ..support.realtime_gateway import MODELS, config, eventually, stopped
from ..support.webrtc_peer import OpenAIPeer

#: Chromium's fake microphone, granted without a prompt.
WEBRTC_ARGS = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")

#: OpenAI's browser flow (its WebRTC guide and the agents SDK), with two changes: the secret
#: comes from the gateway's /v1/realtime/client_secrets, and the calls go to the gateway.
CALL_PAGE = """<!doctype html><title>call</title><script>
const GATEWAY = %r;
window.call = {events: [], status: null, location: null, channel: 'none', error: null};
async function start() {
  // Your backend would do this for its signed-in user; the gateway answers with its own secret.
  const secret = await (await fetch(GATEWAY + '/v1/realtime/client_secrets', {method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({session: {type: 'realtime', model: 'gpt-realtime'}})})).json();
  const pc = new RTCPeerConnection();
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
  const r = await fetch(GATEWAY + '/v1/realtime/calls', {method: 'POST', body: offer.sdp,
    headers: {'Authorization': 'Bearer ' + secret.value, 'Content-Type': 'application/sdp'}});
  call.status = r.status;
  call.location = r.headers.get('Location');
  await pc.setRemoteDescription({type: 'answer', sdp: await r.text()});
}
start().catch((e) => { call.error = String(e); });
</script>"""


@pytest.fixture
def rt() -> FakeRealtime:
    return FakeRealtime(api_key=KEY, models=MODELS)


@pytest.fixture
def fake(rt) -> FakeOpenAI:
    return FakeOpenAI(models=("gpt-4o-mini", *MODELS), realtime=rt)


@pytest.fixture
def call_browser(tmp_path):
    browser = start_chromium(tmp_path / "chromium-profile", WEBRTC_ARGS)
    yield browser
    browser.driver.quit()


async def test_chromium_calls_through_the_gateway(rt, gateway_process, aiohttp_server,
                                                 call_browser):
    peer = OpenAIPeer()
    rt.answerer = peer.answer
    page = web.Application()
    page.router.add_get("/", lambda request: web.Response(
        text=CALL_PAGE % gw.url, content_type="text/html"))
    site = await aiohttp_server(page)
    origin = str(site.make_url("")).rstrip("/")
    gw = await gateway_process(config(cors={"allow_origins": [origin]}))
    try:
        started = time.monotonic()
        await call_browser.get(origin + "/")
        first = await call_browser.wait(
            "return call.error || (call.channel === 'open' && call.events[0])", 20)
        took = time.monotonic() - started
        assert first["type"] == "session.created", first
        assert await call_browser.js("return call.status") == 201
        call_id = (await call_browser.js("return call.location")).rsplit("/", 1)[1]
        upstream = rt.ledger.calls[call_id]
        # Created with the real key and the bounded session; the page never saw OpenAI's key.
        assert upstream.token == KEY and upstream.content_type == "multipart/form-data"
        assert upstream.session.config["max_output_tokens"] == 200
        assert rt.ledger.secrets == {}
        await eventually(lambda: any(s.via == "sideband" and s.call_id == call_id
                                     for s in rt.ledger.sockets))
        # The page asks for a response on its data channel: the gateway never sees the asking,
        # only the sideband's response.done, which it charges.
        await call_browser.js("dc.send(JSON.stringify({type: 'response.create'}))")
        await call_browser.wait("return call.events.some(e => e.type === 'response.done')")
        async with aiohttp.ClientSession() as http:
            async def metrics() -> str:
                async with http.get(gw.url + "/metrics") as r:
                    return await r.text()

            text = ""
            for _ in range(50):
                text = await metrics()
                if 'gateway_tokens_total{direction="out",model="gpt-realtime"}' in text:
                    break
                await asyncio.sleep(0.05)
        assert 'gateway_realtime_sessions{transport="webrtc"} 1.0' in text
        billed = rt.ledger.responses[0].usage["output_tokens"]
        assert f'gateway_tokens_total{{direction="out",model="gpt-realtime"}} {billed}.0' in text
        # Stopping the gateway hangs the call up: nothing would meter it any more.
        await stopped(gw)
        assert rt.ledger.hangups == [call_id]
        await call_browser.wait("return call.channel === 'closed'")
        print(f"\nbrowser call through the gateway: session.created on the data channel "
              f"{took:.2f} s after the page loaded")
    finally:
        await peer.close()


async def test_the_playgrounds_talk_button_calls_through_the_gateway(rt, gateway_process,
                                                                    call_browser):
    peer = OpenAIPeer()
    rt.answerer = peer.answer
    port = free_port()
    gw = await gateway_process(config(server={"port": port}, playground={"enabled": True},
                                      cors={"allow_origins": [f"http://127.0.0.1:{port}"]}))
    try:
        await call_browser.open_playground(gw.url)
        await call_browser.js("document.getElementById('talk').click()")
        state = await call_browser.wait(
            "const t = document.getElementById('call-state').textContent;"
            "return t.startsWith('In a call') && t", 20)
        assert state == "In a call with gpt-realtime: speak."
        call = next(iter(rt.ledger.calls.values()))
        assert call.token == KEY and call.session.config["model"] == "gpt-realtime"
        await call_browser.js("document.getElementById('talk').click()")
        assert await call_browser.text("call-state") == "Call ended."
        assert await call_browser.text("talk") == "Talk"
        # The page closed its side; the gateway still supervises the call until OpenAI ends
        # it, and hangs it up when it stops (in a thread: the fake answers from this loop).
        await stopped(gw)
        assert rt.ledger.hangups == [call.id]
    finally:
        await peer.close()


async def test_the_talk_button_says_why_it_cannot_in_demo_mode(demo_process, call_browser):
    gp = await demo_process()
    await call_browser.open_playground(gp.url)
    await call_browser.js("document.getElementById('talk').click()")
    message = await call_browser.wait(
        "const e = document.getElementById('error'); return !e.hidden && e.textContent")
    assert "needs a real upstream" in message and "--demo" in message

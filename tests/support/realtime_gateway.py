"""Helpers for the realtime routes through real gateway processes: the fake upstream with its
realtime API, the gateway's config, and the SDK's and a browser's ways of talking to it.

A test module uses them with its own `fake` fixture (conftest's `gateway_process` then points
the gateway at it):

    @pytest.fixture
    def rt(): return FakeRealtime(api_key=KEY, models=MODELS)

    @pytest.fixture
    def fake(rt): return FakeOpenAI(realtime=rt)
"""
from __future__ import annotations

import asyncio
import base64
import time
from decimal import Decimal

import aiohttp
import openai
import orjson
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from openai_gateway.metering.prices import PriceTable, cost
from openai_gateway.policy.usage import usage_of

from ..conftest import ORIGIN, merge

MODELS = ("gpt-realtime", "gpt-realtime-mini", "gpt-4o-transcribe")
#: The output cap the config below gives (validation.max_tokens).
CAP = 200
SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
#: A client token the gateway treats as anonymous (no client keys are configured).
ANY_KEY = "sk-browser-dummy"
SECOND_OF_AUDIO = base64.b64encode(bytes(48000)).decode()  # 24 kHz pcm16: 10 tokens in the fake
OFFER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


def config(**extra) -> dict:
    """The gateway's config for realtime tests (merged over conftest's base_config)."""
    models = [*MODELS, "gpt-4o-mini", "text-embedding-3-small"]
    return merge({"validation": {"allowed_models": models, "max_tokens": CAP},
                  "cors": {"allow_origins": [ORIGIN]},
                  "realtime": {"max_frame_bytes": 65536}}, extra)


def sdk(gateway_url: str, key: str = ANY_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=gateway_url + "/v1", max_retries=0)


async def until(conn, kind: str, seen: list | None = None, timeout: float = 5.0) -> dict:
    """The SDK connection's server events until one of `kind`, each validated by the SDK's
    own types; returns it."""
    while True:
        raw = await asyncio.wait_for(conn.recv_bytes(), timeout)
        event = SERVER_EVENT.validate_json(raw).model_dump(exclude_unset=True)
        if seen is not None:
            seen.append(event)
        if event["type"] == kind:
            return event


def said(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


class BrowserSocket:
    """A WebSocket as a browser opens one: `Origin`, and the key in a subprotocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.events: list[dict] = []

    async def send(self, kind: str, **fields) -> None:
        await self.ws.send_str(orjson.dumps({"type": kind, **fields}).decode())

    async def until(self, kind: str, timeout: float = 5.0) -> dict:
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), timeout)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"the socket ended ({msg.type}, {self.ws.close_code}) "
                                     f"before {kind}: {[e['type'] for e in self.events]}")
            event = orjson.loads(msg.data)
            self.events.append(event)
            if event["type"] == kind:
                return event

    async def closed(self, timeout: float = 5.0) -> int | None:
        """Read until the gateway closes the socket; its close code."""
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), timeout)
            if msg.type is aiohttp.WSMsgType.TEXT:
                self.events.append(orjson.loads(msg.data))
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                              aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return self.ws.close_code

    def seen(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


def browser_ws(http: aiohttp.ClientSession, gateway_url: str, token: str, *,
               model: str = "gpt-realtime", origin: str = ORIGIN, **kw):
    """`new WebSocket(url, ["realtime", "openai-insecure-api-key." + token])`, as OpenAI's
    browser client opens it (the context manager of aiohttp's ws_connect)."""
    url = gateway_url.replace("http://", "ws://") + f"/v1/realtime?model={model}"
    return http.ws_connect(url, protocols=("realtime", "openai-insecure-api-key." + token),
                           origin=origin, autoclose=False, **kw)


async def eventually(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


async def stopped(gateway) -> None:
    """Stop a gateway process (SIGTERM) while this loop keeps serving the fake: a gateway
    with calls open hangs them up as it stops, and the fake answers from this loop."""
    await asyncio.to_thread(gateway.stop)


def billed_usd(rt, prices: PriceTable | None = None) -> Decimal:
    """What the fake billed for every response and transcription, in US dollars at the
    gateway's shipped prices."""
    prices = prices or PriceTable()
    micro = 0
    for b in rt.ledger.responses:
        micro += cost(prices.price_for(b.model), usage_of(b.usage))
    for t in rt.ledger.transcriptions:
        micro += cost(prices.price_for(t.model), usage_of(t.usage))
    return Decimal(micro) / 1_000_000

"""The realtime building blocks composed into the smallest app, for their tests: the relay, the
calls with their sideband, the client secrets, against the fake realtime upstream.

It stands in for the gateway's wiring: identity is a fixed token (or a realtime secret), and
the meter is `CountingMeter`, a real implementation of `RealtimeMeter` that counts what it is
told and stops at a token budget.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
import orjson
from aiohttp import BodyPartReader, web

from openai_gateway.config.realtime import RealtimeSettings
from openai_gateway.config.settings import ValidationSettings
from openai_gateway.errors import GatewayError, InvalidRequest, InvalidToken
from openai_gateway.identity.realtime_secrets import (
    RealtimeSecrets,
    is_realtime_secret,
    presented_token,
)
from openai_gateway.policy.realtime import RealtimePolicy
from openai_gateway.policy.realtime_usage import Charge
from openai_gateway.policy.refusal import Refusal
from openai_gateway.upstream.realtime import RealtimeRelay
from openai_gateway.upstream.realtime_calls import RealtimeCalls
from openai_gateway.upstream.realtime_meter import Outcome, Stop
from openai_gateway.upstream.realtime_upstream import RealtimeUpstream

#: The one client credential the test app knows (besides its realtime secrets).
CLIENT_TOKEN = "client-token"
MODELS = ("gpt-realtime", "gpt-realtime-mini", "gpt-4o-transcribe")
UPSTREAM = web.AppKey("upstream", RealtimeUpstream)


@dataclass
class CountingMeter:
    """Counts reservations and charges; stops when `budget` output tokens are used up,
    refuses every reservation past `responses`, or fails when `broken`."""

    budget: int | None = None
    responses: int | None = None
    #: Raise on every charge (storage down, say).
    broken: bool = False
    reserved: int = 0
    charges: list[Charge] = field(default_factory=list)
    outcome: Outcome | None = None  # what on_end was told
    order: list[str] = field(default_factory=list)

    @property
    def output_tokens(self) -> int:
        return sum(c.usage.output for c in self.charges if c.usage is not None)

    async def before_response(self) -> Stop | None:
        self.order.append("reserve")
        if self.responses is not None and self.reserved >= self.responses:
            return Stop("spend_limit_exceeded", "The spend limit is reached.")
        self.reserved += 1
        return None

    async def on_usage(self, charge: Charge) -> Stop | None:
        self.order.append(charge.kind)
        if self.broken:
            raise ConnectionError("the store is down")
        self.charges.append(charge)
        if self.budget is not None and self.output_tokens >= self.budget:
            return Stop("tokens_limit_exceeded", "The token budget is used up.", "tokens")
        return None

    async def on_end(self, outcome: Outcome) -> None:
        self.order.append("end")
        self.outcome = outcome

    @property
    def ended(self) -> int | None:
        """The responses on_end was told were in flight (None: not ended)."""
        return None if self.outcome is None else self.outcome.in_flight


@dataclass
class Harness:
    """What a test sets and reads: the meters made, the outcomes, the policy's settings."""

    realtime: RealtimeSettings = field(default_factory=lambda: RealtimeSettings(
        max_frame_bytes=64 * 1024))
    validation: ValidationSettings = field(default_factory=lambda: ValidationSettings(
        allowed_models=MODELS, max_tokens=1000))
    meter: dict = field(default_factory=dict)  # keyword arguments of each new CountingMeter
    meters: list[CountingMeter] = field(default_factory=list)
    calls: RealtimeCalls | None = None
    supervised: list[asyncio.Task] = field(default_factory=list)

    @property
    def outcomes(self) -> list[Outcome]:
        """How each ended session ended, as its meter was told."""
        return [m.outcome for m in self.meters if m.outcome is not None]

    def new_meter(self) -> CountingMeter:
        self.meters.append(CountingMeter(**self.meter))
        return self.meters[-1]


def build_app(harness: Harness, upstream_url: str, api_key: str) -> web.Application:
    policy = RealtimePolicy(harness.validation, harness.realtime)
    secrets = RealtimeSecrets(max_ttl=harness.realtime.max_ttl)
    relay = RealtimeRelay(max_session_seconds=harness.realtime.max_session_seconds,
                          max_frame_bytes=harness.realtime.max_frame_bytes)
    app = web.Application()

    async def context(app: web.Application):
        async with aiohttp.ClientSession() as session:
            upstream = RealtimeUpstream(session, upstream_url, api_key)
            app[UPSTREAM] = upstream
            harness.calls = RealtimeCalls(upstream, policy.rules,
                                          max_session_seconds=harness.realtime.max_session_seconds)
            yield
            await harness.calls.close()

    app.cleanup_ctx.append(context)

    def identify(request: web.Request) -> dict | None:
        """The granted session of a realtime secret, or None for the client token."""
        token = presented_token(request.headers)
        if token is not None and is_realtime_secret(token):
            return secrets.verify(token).session
        if token != CLIENT_TOKEN:
            raise InvalidToken("Unknown token.")
        return None

    def refusal(exc: Refusal) -> web.Response:
        return InvalidRequest(exc.message, param=exc.param, code=exc.code).response()

    async def client_secrets(request: web.Request) -> web.StreamResponse:
        try:
            identify(request)
            asked = policy.client_secret(await request.read())
            value, expires_at = secrets.issue(caller="test", tier=None, models=None,
                                              session=asked.session, ttl=asked.ttl)
        except Refusal as exc:
            return refusal(exc)
        except GatewayError as exc:
            return exc.response()
        return web.json_response({"value": value, "expires_at": expires_at,
                                  "session": {**asked.session, "object": "realtime.session",
                                              "expires_at": 0}})

    async def websocket(request: web.Request) -> web.StreamResponse:
        try:
            granted = identify(request)
            model = (granted or {}).get("model") or request.query.get("model", "")
            checker = policy.events(model)
            start = granted or policy.rules.new_session({"model": model})
            upstream = await app[UPSTREAM].connect(model=model)
        except Refusal as exc:
            return refusal(exc)
        except GatewayError as exc:
            return exc.response()
        client = await relay.accept(request)
        await relay.run(client, upstream, checker=checker, meter=harness.new_meter(),
                        start=start)
        return client

    async def calls(request: web.Request) -> web.StreamResponse:
        try:
            granted = identify(request)
            parts: dict[str, bytes] = {}
            if request.content_type == "multipart/form-data":
                async for part in await request.multipart():
                    if isinstance(part, BodyPartReader) and part.name in ("sdp", "session"):
                        parts[part.name] = await part.read()
            else:
                parts["sdp"] = await request.read()
            offer, session = policy.call(parts.get("sdp"), session=parts.get("session"),
                                         model=request.query.get("model"), granted=granted)
            assert harness.calls is not None
            answer = await harness.calls.create(offer, session)
        except Refusal as exc:
            return refusal(exc)
        except GatewayError as exc:
            return exc.response()
        harness.supervised.append(harness.calls.supervise(answer.call_id, session,
                                                          harness.new_meter()))
        return web.Response(status=201, text=answer.sdp, content_type="application/sdp",
                            headers={"Location": answer.location})

    app.router.add_post("/v1/realtime/client_secrets", client_secrets)
    app.router.add_get("/v1/realtime", websocket)
    app.router.add_post("/v1/realtime/calls", calls)
    return app


def event(kind: str, **fields) -> str:
    return orjson.dumps({"type": kind, **fields}).decode()

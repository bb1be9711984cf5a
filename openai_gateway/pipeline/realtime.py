"""The realtime routes: one session's path through the pipeline, as `proxy` is one request's.

- `POST /v1/realtime/client_secrets`: identify, count the request, read the body, bound the
  session (policy.realtime) and answer with the gateway's own secret (identity.realtime_secrets)
  bound to the caller, its tier and models and that session. Nothing goes upstream.
- `POST /v1/realtime/calls`: identify (the gateway's secret or any accepted identity), count,
  read the offer (raw `application/sdp`, or multipart `sdp` + `session`), bound the session,
  take a session slot and reserve the first response, create the call upstream with the real
  key (upstream.realtime_calls), answer 201 with the SDP answer and a `Location`, and
  supervise the call through its sideband in a task of its own.
- `GET /v1/realtime?model=...` (WebSocket): identify (the `Authorization` bearer, or the
  browser's `openai-insecure-api-key.<token>` subprotocol), count, bound the session, take a
  slot and reserve, open OpenAI's socket with the real key (a refusal is an HTTP error before
  the client's handshake is answered), then relay (upstream.realtime) until one side ends.
The Origin check is the app's middleware: a foreign Origin on the upgrade is a 403 before any
of this runs. Every session is metered by a `SessionMeter` (pipeline.realtime_budget) and
counted against `realtime.max_sessions` in the store (metering.sessions); when it ends, its
slot is given back, its metrics counted and a line logged.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import BodyPartReader, web

from ..config.realtime import RealtimeSettings
from ..config.serving import ServerSettings, UpstreamSettings
from ..errors import BodyTooLarge, GatewayError, InvalidRequest, ModelNotAllowed, RequestTimeout
from ..identity.callers import Callers
from ..identity.realtime_secrets import RealtimeSecrets, is_realtime_secret, presented_token
from ..metering.budgets import Budgets
from ..metering.limiter import RateLimiter
from ..metering.prices import MICRO, PriceTable
from ..metering.sessions import SessionSlots, Slot
from ..observability.logs import RequestRecord
from ..observability.metrics import Metrics
from ..policy.inputs import serialised_chars
from ..policy.realtime import RealtimePolicy
from ..policy.refusal import Refusal
from ..upstream.client import Upstream
from ..upstream.realtime import RealtimeRelay
from ..upstream.realtime_calls import RealtimeCalls
from ..upstream.realtime_meter import Outcome
from ..upstream.realtime_upstream import RealtimeUpstream
from .admission import Admission
from .bodies import body_coding, read_body
from .exchange import RECORD, Exchange, route_of
from .realtime_budget import SessionMeter

log = logging.getLogger("gateway.realtime")

#: The subprotocol and header by which a client asks for OpenAI's beta protocol, which the
#: gateway does not speak (its checks know the GA events and session fields).
BETA_PROTOCOL = "openai-beta.realtime-v1"
#: Query parameters of OpenAI's socket the gateway does not serve: attaching to a call (the
#: sideband is the gateway's own) and transcription sessions (not bounded by this policy).
REFUSED_QUERY = ("call_id", "intent")


@dataclass(frozen=True, slots=True)
class RealtimePlan:
    """What the realtime routes read from the settings of the moment (`configure`)."""

    callers: Callers
    policy: RealtimePolicy
    server: ServerSettings
    upstream: UpstreamSettings
    api_key: str
    prices: PriceTable


class Realtime:
    """The realtime routes' handlers and what they keep for the process's lifetime: the relay,
    the supervised calls, the session slots."""

    def __init__(self, *, upstream: Upstream, admission: Admission, limiter: RateLimiter,
                 budgets: Budgets, slots: SessionSlots, secrets: RealtimeSecrets,
                 metrics: Metrics):
        self.upstream, self.admission = upstream, admission
        self.limiter, self.budgets, self.slots = limiter, budgets, slots
        self.secrets, self.metrics = secrets, metrics
        self.relay = RealtimeRelay(max_session_seconds=1, max_frame_bytes=1)  # configure sets
        self.calls: RealtimeCalls | None = None
        #: The sessions open in this process, by their meter.
        self.open: dict[SessionMeter, _Open] = {}

    def configure(self, plan: RealtimePlan, settings: RealtimeSettings) -> None:
        """The policy of sessions started from now on (open ones keep theirs)."""
        self.p = plan
        self.settings = settings
        self.relay.configure(max_session_seconds=settings.max_session_seconds,
                             max_frame_bytes=settings.max_frame_bytes)
        self.slots.configure(settings.max_sessions)
        self.secrets.max_ttl = settings.max_ttl
        if self.calls is not None:
            self._configure_calls(self.calls)

    def _configure_calls(self, calls: RealtimeCalls) -> None:
        calls.upstream = self._realtime_upstream()
        calls.rules = self.p.policy.rules
        calls.max_session_seconds = self.settings.max_session_seconds

    def _realtime_upstream(self) -> RealtimeUpstream:
        u = self.p.upstream
        return RealtimeUpstream(self.upstream.client_session(), u.base_url, self.p.api_key,
                                connect_timeout=u.connect_timeout)

    @asynccontextmanager
    async def running(self):
        """While the app runs (the upstream's session is open): the calls' supervisions and
        the slots' refresh."""
        self.calls = RealtimeCalls(self._realtime_upstream(), self.p.policy.rules,
                                   max_session_seconds=self.settings.max_session_seconds)
        async with self.slots.running():
            try:
                yield self
            finally:
                await self.shutdown()

    async def shutdown(self, app: web.Application | None = None) -> None:
        """End every session (on_shutdown, before the server waits for its handlers): each
        socket gets `server_shutting_down` and a 1001 close, each call is hung up (nothing
        would meter it any more); each is then settled as it ends."""
        await self.relay.close()
        if self.calls is not None:
            await self.calls.close()

    # --- POST /v1/realtime/client_secrets ---------------------------------------------------

    async def client_secrets(self, request: web.Request) -> web.StreamResponse:
        ex, _ = await self._begin(request, identify=False)
        await self.admission.count_request(ex)
        server = self.p.server
        raw = await read_body(request, max_bytes=server.max_body_bytes,
                              timeout=server.body_timeout, compressed=server.compressed_bodies)
        caller = ex.caller
        asked = _bounded(lambda: self.p.policy.client_secret(raw, caller.models))
        model = asked.session["model"]
        ex.record.model = model
        meter = self._meter(ex, asked.session)  # a model it could never pay for: 400 now
        meter.priced(model, "session.model")
        meter.priced(_transcription_model(asked.session),
                     "session.audio.input.transcription.model")
        value, expires_at = self.secrets.issue(caller=caller.id, tier=caller.tier,
                                               models=caller.models, session=asked.session,
                                               ttl=asked.ttl)
        return web.json_response(
            {"value": value, "expires_at": expires_at,
             "session": {**asked.session, "object": "realtime.session", "expires_at": 0}},
            headers={**ex.headers, "Cache-Control": "no-store"})

    # --- POST /v1/realtime/calls ----------------------------------------------------------

    async def create_call(self, request: web.Request) -> web.StreamResponse:
        ex, granted = await self._begin(request)
        await self.admission.count_request(ex)
        sdp, part = await self._offer(request)
        plan = self.p
        offer, session = _bounded(lambda: plan.policy.call(
            sdp, session=part, model=request.query.get("model"), granted=granted,
            models=ex.caller.models))
        ex.record.model = session["model"]
        meter = self._meter(ex, session)
        slot = await self._open(ex, meter, session)
        try:
            calls = self.calls
            if calls is None:
                raise GatewayError("The gateway is not serving realtime calls yet.")
            answer = await calls.create(offer, session)
        except BaseException:
            await self._abandon(meter, slot)
            raise
        ex.record.upstream_status = 201
        self._opened(meter, slot, "webrtc", f"call {answer.call_id}")
        calls.supervise(answer.call_id, session, meter)
        return web.Response(status=201, text=answer.sdp, content_type="application/sdp",
                            headers={**ex.headers, "Location": answer.location})

    async def _offer(self, request: web.Request) -> tuple[bytes, bytes | None]:
        """(the SDP offer, the `session` part or None): a raw body, or multipart `sdp` and
        `session` (no other part: OpenAI's request has no other field)."""
        server = self.p.server
        if request.content_type != "multipart/form-data":
            return await read_body(request, max_bytes=server.max_body_bytes,
                                   timeout=server.body_timeout,
                                   compressed=server.compressed_bodies), None
        body_coding(request.headers.get("Content-Encoding"), "refuse")
        if request.content_length is not None and request.content_length > server.max_body_bytes:
            raise BodyTooLarge(f"Request body is {request.content_length} bytes; this gateway "
                               f"accepts at most {server.max_body_bytes}.")
        parts: dict[str, bytes] = {}
        size = 0
        try:
            async with asyncio.timeout(server.body_timeout):
                reader = await request.multipart()
                while (part := await reader.next()) is not None:
                    if not isinstance(part, BodyPartReader) or part.name not in ("sdp",
                                                                                 "session"):
                        raise InvalidRequest("A call's multipart body has two parts, 'sdp' and "
                                             "'session'.", param=getattr(part, "name", None))
                    if part.name in parts:
                        raise InvalidRequest(f"The part '{part.name}' is given twice.",
                                             param=part.name)
                    data = bytearray()
                    while chunk := await part.read_chunk():
                        size += len(chunk)
                        if size > server.max_body_bytes:
                            raise BodyTooLarge(f"Request body is larger than "
                                               f"{server.max_body_bytes} bytes.")
                        data += chunk
                    parts[part.name] = bytes(data)
        except TimeoutError:
            raise RequestTimeout("The request body was not received in time.") from None
        except ValueError as exc:  # a bad boundary, a truncated body
            raise InvalidRequest(f"The multipart body is malformed: {exc}"[:200]) from None
        return parts.get("sdp", b""), parts.get("session")

    # --- GET /v1/realtime -----------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ex, granted = await self._begin(request)
        await self.admission.count_request(ex)
        if not web.WebSocketResponse(protocols=("realtime",)).can_prepare(request).ok:
            raise InvalidRequest("This route is a WebSocket: connect with an upgrade "
                                 "(wss://.../v1/realtime?model=...).")
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        if BETA_PROTOCOL in offered or "realtime" in request.headers.get("OpenAI-Beta", ""):
            raise InvalidRequest("The beta realtime protocol (OpenAI-Beta: realtime=v1) is not "
                                 "available through this gateway: use the GA protocol.",
                                 param="OpenAI-Beta")
        for name in REFUSED_QUERY:
            if name in request.query:
                raise InvalidRequest(f"'{name}' is not available through this gateway: it "
                                     "opens realtime sessions by model.", param=name)
        plan, caller = self.p, ex.caller
        asked = request.query.get("model")
        if granted is not None:
            start = granted
            if asked is not None and asked != start.get("model"):
                raise InvalidRequest("The model differs from the client secret's session "
                                     f"('{str(start.get('model'))[:100]}').", param="model")
        else:
            if not asked:
                raise InvalidRequest("Missing required parameter: 'model' (?model=...).",
                                     param="model")
            start = _bounded(lambda: plan.policy.rules.new_session(
                {"type": "realtime", "model": asked}, caller.models))
        model = str(start["model"])
        ex.record.model = model
        checker = _bounded(lambda: plan.policy.events(model, caller.models))
        meter = self._meter(ex, start)
        slot = await self._open(ex, meter, start)
        try:
            upstream = await self._realtime_upstream().connect(model=model)
        except BaseException:
            await self._abandon(meter, slot)
            raise
        ex.record.upstream_status = 101
        try:
            client = await self.relay.accept(request)
        except BaseException:
            await upstream.close()
            await self._abandon(meter, slot)
            raise
        self._opened(meter, slot, "websocket", ex.record.request_id, ex.record)
        try:
            await self.relay.run(client, upstream, checker=checker, meter=meter, start=start)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not client.closed or task is None:
                raise
            # A client that closed its socket, then its connection, while the session was
            # being settled: aiohttp cancels the handler of a lost connection, but the
            # session ended as the client asked (the relay finished it): answered, not cut.
            task.uncancel()
        return client

    # --- shared steps ---------------------------------------------------------------------

    async def _begin(self, request: web.Request, *, identify: bool = True
                     ) -> tuple[Exchange, dict | None]:
        """The exchange of a realtime request (who sends it), and the session of the realtime
        secret it presents (None: none). With `identify` (the routes that open sessions) a
        realtime secret is taken, from `Authorization` or the browser's subprotocol; the
        client-secrets route reads `Authorization` only, like any route."""
        rec: RequestRecord = request[RECORD]
        route = rec.route = route_of(request)
        callers = self.p.callers
        rec.client = callers.addresses.of(request)
        token = presented_token(request.headers) if identify else None
        granted = None
        if token is not None and is_realtime_secret(token):
            grant = self.secrets.verify(token)
            caller = callers.granted(grant.caller, grant.tier, rec.client)
            granted = grant.session
        else:
            caller = await callers.identify(request, token)
        if caller.settings is not None or not caller.id.startswith("ip:"):
            rec.client = caller.id
        return Exchange(request, rec, route, caller), granted

    def _meter(self, ex: Exchange, session: dict) -> SessionMeter:
        chars = len(str(session.get("instructions") or "")) + serialised_chars(
            session.get("tools"))
        return SessionMeter(limiter=self.limiter, budgets=self.budgets, prices=self.p.prices,
                            metrics=self.metrics, caller=ex.caller, route=ex.route,
                            model=str(session["model"]),
                            output_cap=self.p.policy.rules.bounds.output_cap,
                            prompt_chars=chars, closed=self._closed)

    async def _open(self, ex: Exchange, meter: SessionMeter, session: dict) -> Slot | None:
        """A slot (max_sessions) and the first response reserved, or the refusal (429, 400)
        with nothing held."""
        slot = await self.slots.acquire(ex.caller)
        try:
            await meter.start(_transcription_model(session))
        except BaseException:
            await self.slots.release(slot)
            raise
        return slot

    async def _abandon(self, meter: SessionMeter, slot: Slot | None) -> None:
        """A session that never opened: its reservation and its slot go back."""
        await asyncio.shield(meter.on_end(Outcome(reason="refused")))
        await asyncio.shield(self.slots.release(slot))

    def _opened(self, meter: SessionMeter, slot: Slot | None, transport: str, name: str,
                record: RequestRecord | None = None) -> None:
        self.open[meter] = _Open(transport, name, time.monotonic(), slot, record)
        self.metrics.realtime_sessions.labels(transport).inc()

    async def _closed(self, outcome: Outcome, meter: SessionMeter) -> None:
        """A session is over (the meter settled it): its slot, metrics and log line."""
        opened = self.open.pop(meter, None)
        if opened is None:
            return  # never opened: _abandon gives its slot back
        await self.slots.release(opened.slot)
        seconds = time.monotonic() - opened.at
        metrics, spent = self.metrics, meter.spent
        metrics.realtime_sessions.labels(opened.transport).dec()
        metrics.realtime_seconds.labels(opened.transport,
                                        self.p.prices.label_for(meter.model)).inc(seconds)
        metrics.realtime_ended.labels(opened.transport, outcome.reason or "unknown").inc()
        rec = opened.record
        if rec is not None:  # the socket's access line, logged when its handler returns
            rec.tokens_in, rec.tokens_out = spent.tokens_in, spent.tokens_out
            rec.charged = "usage"
            if meter.price is not None:
                rec.cost_usd = spent.micro / MICRO
        stop = outcome.stop
        log.info("realtime %s %s ended (%s%s) after %.1f s: %d responses, %d tokens in, %d out, "
                 "$%.6f", opened.transport, opened.name, outcome.reason,
                 f": {stop.code}" if stop is not None else "", seconds, spent.responses,
                 spent.tokens_in, spent.tokens_out, spent.micro / MICRO)


@dataclass(slots=True)
class _Open:
    """An open session's bookkeeping."""

    transport: str
    name: str
    at: float
    slot: Slot | None
    record: RequestRecord | None


def _bounded(check):
    """Run a policy check; its Refusal as the gateway's 400 (ModelNotAllowed for a model)."""
    try:
        return check()
    except Refusal as refusal:
        kind = ModelNotAllowed if refusal.code == ModelNotAllowed.code else InvalidRequest
        raise kind(refusal.message, param=refusal.param, code=refusal.code) from None


def _transcription_model(session: dict) -> str | None:
    audio = session.get("audio")
    inner = audio.get("input") if isinstance(audio, dict) else None
    transcription = inner.get("transcription") if isinstance(inner, dict) else None
    model = transcription.get("model") if isinstance(transcription, dict) else None
    return model if isinstance(model, str) else None

"""WebRTC calls the gateway creates with the real key and supervises through their sideband.

Media flows between the browser and OpenAI; control stays here. `RealtimeCalls.create(sdp,
session)` posts the offer to OpenAI's `/realtime/calls` as multipart `sdp` + `session` (the
bounded session, with the real key: OpenAI's ephemeral key never exists), and returns the SDP
answer and the call id. `supervise(call_id, session, meter)` then opens the call's sideband,
OpenAI's WebSocket `?call_id=...`, in a task of its own, and on it:
- asks the meter before each response (`response.created`: over WebRTC the client's data
  channel and server VAD start responses the gateway never sees asked for) and charges every
  `response.done` and input transcription; a `Stop` hangs the call up;
- cancels (`response.cancel`) a response whose `max_output_tokens` breaks the output cap (the
  data channel can ask for "inf");
- re-asserts the bounded session with a `session.update` when `session.updated` shows the
  client changed it out of bounds (policy.realtime_session.drift), and hangs up if the next
  `session.updated` is still out of bounds (tracing, once on, cannot be turned off);
- hangs up when an MCP tool runs while `mcp` is not an allowed tool type, when the sideband
  cannot be opened (a call the gateway cannot meter must not go on), and after
  `realtime.max_session_seconds`.
`close()` hangs up every supervised call (at shutdown: nothing would meter them any more).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass

import aiohttp
import orjson

from ..errors import GatewayError, UpstreamTimeout, UpstreamUnavailable
from ..policy.realtime_session import SessionRules
from ..policy.realtime_usage import (
    RESPONSE_CREATED,
    RESPONSE_DONE,
    SESSION_EVENTS,
    TRANSCRIBED,
    max_output_of,
    response_charge,
    session_models,
    transcription_charge,
)
from .realtime_meter import Outcome, RealtimeMeter, Stop
from .realtime_upstream import RealtimeUpstream, UpstreamRefused

log = logging.getLogger("gateway.realtime")

#: What a call id looks like (OpenAI's are "rtc_" and hex or base62): anything else in a
#: `Location` is not passed on or used in a URL.
CALL_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: Server events of MCP tools: OpenAI calling a server the session names.
MCP_EVENTS = ("mcp_list_tools.", "response.mcp_call")


@dataclass(frozen=True, slots=True)
class CallAnswer:
    """OpenAI's answer to a call: its id, the SDP answer, and the `Location` to give."""

    call_id: str
    sdp: str

    @property
    def location(self) -> str:
        return f"/v1/realtime/calls/{self.call_id}"


class RealtimeCalls:
    """Built once (per app) from the upstream and the session rules; owns the supervisions."""

    def __init__(self, upstream: RealtimeUpstream, rules: SessionRules, *,
                 max_session_seconds: float, request_timeout: float = 30.0):
        self.upstream, self.rules = upstream, rules
        self.max_session_seconds = max_session_seconds
        self.request_timeout = request_timeout
        self.tasks: dict[str, asyncio.Task[Outcome]] = {}

    async def create(self, sdp: str, session: dict) -> CallAnswer:
        """Create the call upstream with the bounded session; UpstreamRefused et al."""
        form = aiohttp.FormData()
        form.add_field("sdp", sdp, content_type="application/sdp")
        form.add_field("session", orjson.dumps(session).decode(),
                       content_type="application/json")
        status, headers, body = await self._post("/realtime/calls", form,
                                                 {"Accept": "application/sdp"})
        if status not in (200, 201):
            raise UpstreamRefused(status, headers.get("Content-Type", "").split(";")[0], body)
        call_id = headers.get("Location", "").rsplit("/", 1)[-1]
        if not CALL_ID.fullmatch(call_id):
            log.warning("realtime call created without a usable Location")
            raise UpstreamUnavailable("The upstream's answer named no call.")
        return CallAnswer(call_id, body.decode("utf-8", "replace"))

    async def hangup(self, call_id: str) -> bool:
        """End the call upstream; False when that failed (logged)."""
        try:
            status, _, _ = await self._post(f"/realtime/calls/{call_id}/hangup", None, {})
        except GatewayError as exc:
            log.warning("realtime hangup of %s failed: %s", call_id, exc.message)
            return False
        if status >= 400:
            log.warning("realtime hangup of %s answered %d", call_id, status)
        return status < 400

    def supervise(self, call_id: str, session: dict, meter: RealtimeMeter) -> asyncio.Task:
        """Start supervising a call (a task, kept until it ends): `session` is the bounded
        session it was created with."""
        task = asyncio.create_task(self._supervise(call_id, session, meter))
        self.tasks[call_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(call_id, None))
        return task

    async def close(self) -> None:
        """Hang up every supervised call and wait for their supervisions to settle."""
        tasks = list(self.tasks.items())
        await asyncio.gather(*(self.hangup(call_id) for call_id, _ in tasks))
        for _, task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(self.request_timeout):
                    await task

    async def _supervise(self, call_id: str, session: dict, meter: RealtimeMeter) -> Outcome:
        sideband = _Sideband(self, call_id, session, meter)
        try:
            async with asyncio.timeout(self.max_session_seconds):
                await sideband.watch()
        except TimeoutError:
            await sideband.end("expired", Stop(
                "session_expired", "The call reached this gateway's time limit of "
                f"{self.max_session_seconds:g} seconds (realtime.max_session_seconds).",
                "invalid_request_error"))
        except GatewayError as exc:  # the sideband could not be opened
            log.warning("realtime sideband of %s: %s", call_id, exc.message)
            await sideband.end("upstream_closed", None)
        except Exception as exc:  # the meter failed: a call nobody meters must not go on
            log.warning("realtime call %s: supervision failed (%s), hung up", call_id,
                        type(exc).__name__)
            await sideband.end("stopped", None)
        finally:
            if not sideband.outcome.reason:  # cancelled (shutdown)
                await asyncio.shield(sideband.end("stopped", None))
            sideband.outcome.in_flight = sideband.in_flight
            await meter.on_end(sideband.outcome)
        return sideband.outcome

    async def _post(self, path: str, data: aiohttp.FormData | None,
                    headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        try:
            async with asyncio.timeout(self.request_timeout):
                async with self.upstream.session.post(
                        self.upstream.url(path), data=data, allow_redirects=False,
                        headers={**self.upstream.auth, **headers}) as resp:
                    return resp.status, dict(resp.headers), await resp.read()
        except TimeoutError:
            raise UpstreamTimeout("The upstream did not answer in time.") from None
        except aiohttp.ClientError as exc:
            log.warning("realtime upstream unreachable: %s", type(exc).__name__)
            raise UpstreamUnavailable("The upstream could not be reached.") from None


class _Sideband:
    """One call's sideband socket and what it has seen."""

    def __init__(self, calls: RealtimeCalls, call_id: str, bounded: dict,
                 meter: RealtimeMeter):
        self.calls, self.call_id, self.bounded, self.meter = calls, call_id, bounded, meter
        self.rules = calls.rules
        self.model = str(bounded.get("model", ""))
        self.transcription_model: str | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.outcome = Outcome()
        self.in_flight = 0
        #: A session.update the gateway sent to put the session back within bounds, not yet
        #: answered by a session.updated.
        self.fixing = False

    async def watch(self) -> None:
        self.ws = await self.calls.upstream.connect(call_id=self.call_id)
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            try:
                event = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict) and await self._read(event):
                return
        self.outcome.upstream_code = self.ws.close_code
        await self.end("upstream_closed", None)

    async def _read(self, event: dict) -> bool:
        """Act on one server event; True when the call was ended."""
        kind = event.get("type")
        stop: Stop | None = None
        if kind == RESPONSE_CREATED:
            stop = await self.meter.before_response()
            if stop is None:
                self.in_flight += 1
                await self._cap(event)
        elif kind == RESPONSE_DONE:
            self.in_flight = max(self.in_flight - 1, 0)
            self.outcome.responses += 1
            stop = await self.meter.on_usage(response_charge(event, self.model))
        elif kind == TRANSCRIBED:
            stop = await self.meter.on_usage(
                transcription_charge(event, self.transcription_model or ""))
        elif kind in SESSION_EVENTS:
            stop = await self._session(kind, event)
        elif isinstance(kind, str) and kind.startswith(MCP_EVENTS) \
                and "mcp" not in self.rules.bounds.tools:
            stop = Stop("tool_not_allowed", "An MCP tool ran in this call, which this gateway "
                        "does not allow (validation.allowed_tools).", "invalid_request_error")
        if stop is None:
            return False
        await self.end("stopped", stop)
        return True

    async def _cap(self, event: dict) -> None:
        cap, limit = max_output_of(event), self.rules.bounds.output_cap
        if isinstance(cap, int) and not isinstance(cap, bool) and 0 < cap <= limit:
            return
        response = event.get("response")
        rid = response.get("id") if isinstance(response, dict) else None
        log.info("realtime call %s: response over the output cap (%r), cancelled",
                 self.call_id, cap)
        await self._send({"type": "response.cancel", **({"response_id": rid}
                                                         if isinstance(rid, str) else {})})

    async def _session(self, kind: str, event: dict) -> Stop | None:
        model, asr = session_models(event)
        self.model = model or self.model
        if kind == "session.created" or asr is not None:
            self.transcription_model = asr
        config = event.get("session")
        fix = self.rules.drift(config, self.bounded) if isinstance(config, dict) else {}
        if not fix:
            self.fixing = False
            return None
        if self.fixing:
            return Stop("session_out_of_bounds", "The call's session was changed beyond this "
                        "gateway's bounds and could not be put back.", "invalid_request_error")
        log.info("realtime call %s: session changed out of bounds (%s), put back",
                 self.call_id, ", ".join(sorted(fix)))
        self.fixing = True
        await self._send({"type": "session.update", "session": {"type": "realtime", **fix}})
        return None

    async def _send(self, event: dict) -> None:
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_str(orjson.dumps(event).decode())

    async def end(self, reason: str, stop: Stop | None) -> None:
        """End the supervision once: hang the call up unless it ended upstream by itself."""
        if self.outcome.reason:
            return
        self.outcome.reason, self.outcome.stop = reason, stop
        if reason != "upstream_closed" or self.ws is None:
            if stop is not None:
                log.info("realtime call %s hung up: %s", self.call_id, stop.code)
            await self.calls.hangup(self.call_id)
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()

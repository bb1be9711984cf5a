"""The realtime WebSocket relay: a client's socket and OpenAI's, frames both ways, metered.

`RealtimeUpstream.connect(model=...)` (upstream.realtime_upstream) opens OpenAI's socket with
the real key (a refused handshake is an OpenAI-shaped HTTP error, raised before the client's
handshake is answered); `RealtimeRelay.accept(request)` answers the client's handshake,
selecting the `realtime` subprotocol (browsers drop a socket whose answer selects none of the
offered ones; the `openai-insecure-api-key.<token>` one is never echoed);
`RealtimeRelay.run(...)` relays until one side ends, and returns an `Outcome`.

While it runs:
- every frame is passed on as it comes, nothing buffered (compression off on both sockets:
  base64 audio barely compresses and deflate would cost time on every frame);
- each client event passes the `EventChecker` (policy.realtime): a refused one is answered
  with an OpenAI `error` event and not forwarded;
- the meter (`RealtimeMeter`, upstream.realtime_meter) is asked before each response: before
  a client's `response.create` is forwarded, and on a `response.created` nobody asked for
  through the relay (server VAD starts responses by itself). Every `response.done` and input
  transcription is charged as it arrives. A `Stop` from the meter sends an `error` event with
  its code and closes both sockets;
- a client that goes away closes the upstream socket at once (OpenAI ends the session, and
  with it any response being generated), also when the server cancels the handler of a lost
  connection (`handler_cancellation`): the cleanup runs in a task of its own; an upstream that
  closes closes the client's with the same code (1011 when it gave none);
  `max_session_seconds` ends the session (`session_expired`); `close()` ends every session
  (shutdown: `server_shutting_down`, 1001).
At the end `meter.on_end(outcome)` settles what is still reserved.
"""
from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from ..policy.realtime import EventChecker, EventRefused, error_event
from ..policy.realtime_usage import (
    RESPONSE_CREATED,
    RESPONSE_DONE,
    SESSION_EVENTS,
    TRANSCRIBED,
    response_charge,
    session_models,
    transcription_charge,
    watched,
)
from ..policy.refusal import Refusal
from .realtime_meter import Outcome, RealtimeMeter, Stop
from .realtime_upstream import HEARTBEAT

#: The one subprotocol the handshake selects (OpenAI's browser client offers it).
SUBPROTOCOL = "realtime"
#: Close codes a peer's close may be passed on with; others become 1011.
PASSED_CLOSE_CODES = frozenset({1000, 1001, 1008, 1011, 1013})


class RealtimeRelay:
    """Built once from [realtime]; `accept` and `run` per socket."""

    def __init__(self, *, max_session_seconds: float, max_frame_bytes: int,
                 close_timeout: float = 5.0):
        self.configure(max_session_seconds=max_session_seconds,
                       max_frame_bytes=max_frame_bytes)
        self.close_timeout = close_timeout
        #: Cleanups that outlive a cancelled handler (held: the loop keeps tasks weakly).
        self._cleanups: set[asyncio.Task] = set()
        #: The sessions being relayed (`close` ends them).
        self._sessions: set[_Session] = set()

    def configure(self, *, max_session_seconds: float, max_frame_bytes: int) -> None:
        """The bounds of sessions started from now on (a reload)."""
        self.max_session_seconds = max_session_seconds
        # A frame over the policy's limit must still be read whole to be answered with an
        # error event; past four times the limit aiohttp closes the socket itself (1009).
        self.transport_limit = 4 * max_frame_bytes

    async def close(self) -> None:
        """End every session being relayed (shutdown): each client gets an `error` event
        (`server_shutting_down`) and a 1001 close; their handlers then meter them."""
        stop = Stop("server_shutting_down", "The gateway is shutting down; open a new "
                    "session.", "server_error")
        await asyncio.gather(*(s.end("shutdown", stop, code=WSCloseCode.GOING_AWAY)
                               for s in list(self._sessions)))

    async def accept(self, request: web.Request) -> web.WebSocketResponse:
        """The client's socket, its handshake answered (with `realtime` when offered)."""
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), compress=False,
                                   heartbeat=HEARTBEAT, max_msg_size=self.transport_limit,
                                   timeout=self.close_timeout)
        await ws.prepare(request)
        return ws

    async def run(self, client: web.WebSocketResponse,
                  upstream: aiohttp.ClientWebSocketResponse, *, checker: EventChecker,
                  meter: RealtimeMeter, start: dict | None = None) -> Outcome:
        """Relay until one side ends. `start`: the bounded session, sent upstream as a
        `session.update` before any client event (its `model` is the socket's already).

        Call it from the request's handler task: it reads the client's socket there (aiohttp
        wants a server socket read by its handler) and the upstream's in a task of its own.
        If the handler is cancelled (the client's connection was lost), the session is ended
        and metered all the same, and the cancellation goes on.
        """
        s = _Session(client, upstream, checker, meter, self.close_timeout)
        self._sessions.add(s)
        tasks: list[asyncio.Task] = []
        try:
            if start:
                update = {k: v for k, v in start.items() if k != "model"}
                with contextlib.suppress(ConnectionError):  # gone: from_upstream ends it
                    await upstream.send_str(orjson.dumps({"type": "session.update",
                                                          "session": update}).decode())
            tasks = [asyncio.create_task(s.from_upstream()),
                     asyncio.create_task(s.expire(self.max_session_seconds))]
            await s.from_client()
        finally:
            cleanup = asyncio.create_task(s.finish(tasks))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            cleanup.add_done_callback(lambda _: self._sessions.discard(s))
            try:
                await asyncio.shield(cleanup)
            except asyncio.CancelledError:
                # The connection ended while the session was being closed (a client's close
                # frame, then its FIN): the session is metered before the cancellation goes
                # on, so whoever handles it sees the session settled.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(cleanup)
                raise
        return s.outcome


class _Session:
    """One relayed session's state: which responses are reserved, started and done."""

    def __init__(self, client: web.WebSocketResponse,
                 upstream: aiohttp.ClientWebSocketResponse, checker: EventChecker,
                 meter: RealtimeMeter, close_timeout: float):
        self.client, self.upstream, self.checker, self.meter = client, upstream, checker, meter
        self.close_timeout = close_timeout
        self.outcome = Outcome()
        self.model = checker.model
        self.transcription_model: str | None = None
        #: Responses reserved for client `response.create`s not yet seen started.
        self.pending = 0
        #: Responses started (and reserved) whose response.done has not come.
        self.in_flight = 0
        #: The meter is called from both directions' tasks, one call at a time.
        self.metering = asyncio.Lock()

    async def finish(self, tasks: list[asyncio.Task]) -> None:
        """After the client's side: end the session, wait for the other side, meter it."""
        if self.outcome.reason != "expired" and tasks:
            tasks[1].cancel()  # the clock, unless it is the one ending the session
        await self.end("client_closed")
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.outcome.in_flight = self.in_flight
        await self.meter.on_end(self.outcome)

    async def from_client(self) -> None:
        async for msg in self.client:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break  # an error: the socket is gone
            try:
                checked = self.checker.check(msg.data)
            except EventRefused as refused:
                await self._tell(error_event(refused))
                continue
            if checked.type == "response.create":
                async with self.metering:
                    stop = await self.meter.before_response()
                if stop is not None:
                    return await self.end("stopped", stop)
                self.pending += 1
            try:
                await self.upstream.send_str(checked.text)
            except ConnectionError:
                return  # the upstream is gone: from_upstream ends the session

    async def from_upstream(self) -> None:
        async for msg in self.upstream:
            if msg.type is WSMsgType.TEXT:
                frame: str = msg.data
                if watched(frame) and await self._read(frame):
                    return
                await self._tell_raw(frame)
            elif msg.type is WSMsgType.BINARY:
                await self._tell_raw(msg.data)
            else:
                break
        self.outcome.upstream_code = self.upstream.close_code
        code = self.upstream.close_code
        await self.end("upstream_closed",
                       code=code if code in PASSED_CLOSE_CODES else WSCloseCode.INTERNAL_ERROR)

    async def _read(self, frame: str) -> bool:
        """Meter one watched server event; True when it ended the session (the event is
        passed on first)."""
        try:
            event = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return False
        kind = event.get("type") if isinstance(event, dict) else None
        stop: Stop | None = None
        if kind == RESPONSE_CREATED:
            if self.pending:
                self.pending -= 1
            else:  # started by the server (VAD): reserve now, or cut it at once
                async with self.metering:
                    stop = await self.meter.before_response()
            self.in_flight += stop is None
        elif kind == RESPONSE_DONE:
            self.in_flight = max(self.in_flight - 1, 0)
            self.outcome.responses += 1
            async with self.metering:
                stop = await self.meter.on_usage(response_charge(event, self.model))
        elif kind == TRANSCRIBED:
            async with self.metering:
                stop = await self.meter.on_usage(
                    transcription_charge(event, self.transcription_model or ""))
        elif kind in SESSION_EVENTS:
            model, asr = session_models(event)
            self.model = model or self.model
            if kind == "session.created" or asr is not None:
                self.transcription_model = asr
        if stop is None:
            return False
        await self._tell_raw(frame)
        await self.end("stopped", stop)
        return True

    async def expire(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.end("expired", Stop(
            "session_expired", f"The session reached this gateway's time limit of "
            f"{seconds:g} seconds (realtime.max_session_seconds).", "invalid_request_error"),
            code=WSCloseCode.OK)

    async def end(self, reason: str, stop: Stop | None = None, *,
                  code: int = WSCloseCode.POLICY_VIOLATION) -> None:
        """End the session once: the first reason wins. A stop is told to the client first."""
        if self.outcome.reason:
            return
        self.outcome.reason, self.outcome.stop = reason, stop
        if stop is not None:
            await self._tell(error_event(Refusal(stop.message, None, stop.code),
                                         kind=stop.type))
        # The upstream first: a client gone must stop the generation at once.
        with contextlib.suppress(Exception):
            await self.upstream.close()
        if reason == "client_closed":
            code = WSCloseCode.OK
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.close_timeout):
                await self.client.close(code=code)

    async def _tell(self, event: dict) -> None:
        await self._tell_raw(orjson.dumps(event).decode())

    async def _tell_raw(self, frame: str | bytes) -> None:
        if self.client.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            if isinstance(frame, str):
                await self.client.send_str(frame)
            else:
                await self.client.send_bytes(frame)

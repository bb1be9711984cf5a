"""A fake OpenAI Realtime API: client secrets, WebRTC calls, their hangup and the WebSocket.

Routes (`add_to(app)` mounts them; `FakeOpenAI(realtime=...)` does it for the fake API):
- `POST /v1/realtime/client_secrets`: an `ek_...` secret it remembers, bound to the session
  configuration given (the real key only);
- `POST /v1/realtime/calls`: an SDP offer, as `application/sdp` (the session comes from the
  `ek_` secret or `?model=`) or multipart `sdp` + `session`; answers 201 with the answerer's SDP
  and `Location: /v1/realtime/calls/rtc_...`;
- `POST /v1/realtime/calls/{call_id}/hangup`: ends the call (recorded, its sockets closed);
- `GET /v1/realtime?model=...` (a new session) or `?call_id=...` (the sideband of a call, the
  real key only, as OpenAI's guide has it): a WebSocket speaking OpenAI's GA events.

Auth: `Authorization: Bearer <key>` or, on the WebSocket, the browser subprotocol
`openai-insecure-api-key.<key>`; the key is `api_key` (any non-`ek_` token when None) or an
unexpired `ek_` secret the fake issued. The handshake selects the `realtime` subprotocol.

A call's session is the same object for every transport attached to it: the sideband
WebSocket and whatever the SDP answerer attaches (tests/webrtc_peer.py attaches its data
channel), so a response asked for on one is seen, with its usage, on all.

`ledger` keeps everything the fake did and was told (see `Ledger`). `words`, `pace`, `delay`
and `close_after` make it talk longer, slower, answer late or die mid-response. Token counting
is in realtime_formats.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import BodyPartReader, WSMsgType, web

from .formats import count_tokens, new_id
from .realtime_formats import (
    AUDIO_CHUNK,
    AUDIO_TOKENS_PER_WORD,
    Tokens,
    audio_tokens,
    default_session,
    error_event,
    event,
    http_error,
    item_tokens,
    merge_session,
    public_item,
    session_problem,
    transcription_usage,
    usage_doc,
)

Send = Callable[[str], Awaitable[None]]
Close = Callable[[int], Awaitable[None]]  # the WebSocket close code
#: answerer(offer_sdp, call) -> answer_sdp; it may attach a transport to `call.session`.
SdpAnswerer = Callable[[str, "Call"], Awaitable[str]]
KEY_PROTOCOL = "openai-insecure-api-key."
CLIENT_EVENTS = ("session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                 "input_audio_buffer.clear", "conversation.item.create",
                 "conversation.item.retrieve", "conversation.item.truncate",
                 "conversation.item.delete", "response.create", "response.cancel",
                 "output_audio_buffer.clear")
#: OpenAI's own example answer (its API reference, "Create call").
CANNED_ANSWER = (
    "v=0\r\no=- 4227147428 1719357865 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
    "a=group:BUNDLE 0 1\r\na=msid-semantic:WMS *\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\na=mid:0\r\na=ice-ufrag:kZ2qkHXX/u11\r\n"
    "a=ice-pwd:uoD16Di5OGx3VbqgA3ymjEQV2kwiOjw6\r\na=setup:active\r\na=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    "a=mid:1\r\na=sctp-port:5000\r\n")


async def canned_answerer(offer: str, call: Call) -> str:
    return CANNED_ANSWER


# --- the ledger ----------------------------------------------------------------------------


@dataclass
class Billed:
    """A response as OpenAI would bill it. status: completed, incomplete, cancelled, or
    dropped (the socket or call ended mid-response: billed the words generated so far)."""

    session_id: str
    call_id: str | None
    model: str
    response_id: str
    status: str
    usage: dict


@dataclass
class Transcribed:
    session_id: str
    item_id: str
    model: str
    usage: dict


@dataclass
class Received:
    """A client event, as parsed (the raw text when it was not a JSON object)."""

    session_id: str
    via: str  # "websocket", "sideband" or whatever the answerer attached ("datachannel")
    event: dict | str


@dataclass
class Opened:
    """A session, or one WebSocket onto one (the sideband of a call opens one more)."""

    session_id: str
    via: str
    model: str
    call_id: str | None
    token: str  # the credential it was opened with
    headers: dict
    opened: float = field(default_factory=time.monotonic)
    closed: float | None = None


@dataclass
class Ledger:
    #: value -> {"expires_at", "session" (as answered), "request" (the session asked for)}
    secrets: dict[str, dict] = field(default_factory=dict)
    calls: dict[str, Call] = field(default_factory=dict)
    sockets: list[Opened] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    responses: list[Billed] = field(default_factory=list)
    transcriptions: list[Transcribed] = field(default_factory=list)
    hangups: list[str] = field(default_factory=list)

    def events(self, kind: str | None = None, session_id: str | None = None) -> list[dict]:
        """The client events received, of one type and/or one session."""
        return [r.event for r in self.received if isinstance(r.event, dict)
                and (kind is None or r.event.get("type") == kind)
                and (session_id is None or r.session_id == session_id)]

    def output_tokens(self, session_id: str | None = None) -> int:
        return sum(b.usage["output_tokens"] for b in self.responses
                   if session_id is None or b.session_id == session_id)


# --- a session -----------------------------------------------------------------------------


@dataclass
class Call:
    id: str
    offer: str
    session: Session
    token: str
    content_type: str


@dataclass(eq=False)
class Attachment:
    via: str
    send: Send
    close: Close


class Session:
    """One realtime session: its configuration, conversation, audio buffer and response."""

    def __init__(self, fake: FakeRealtime, config: dict, call_id: str | None = None) -> None:
        self.fake = fake
        self.config = config
        self.id: str = config["id"]
        self.call_id = call_id
        self.items: list[dict] = []
        self.buffer = bytearray()
        self.attachments: list[Attachment] = []
        self.response: asyncio.Task | None = None
        self.response_id: str | None = None
        self.stopping: str | None = None  # why the response task is being cancelled
        self.read_before = Tokens()  # what the previous response read: cached this time
        self.ended = False
        self.order = asyncio.Lock()  # one event at a time, in order, to every attachment

    async def attach(self, via: str, send: Send, close: Close) -> Attachment:
        """A transport onto this session; it gets `session.created` first, as on OpenAI."""
        attachment = Attachment(via, send, close)
        self.attachments.append(attachment)
        await self._deliver(attachment, event("session.created", session=self.config))
        return attachment

    def detach(self, attachment: Attachment) -> None:
        with contextlib.suppress(ValueError):
            self.attachments.remove(attachment)

    async def emit(self, ev: dict) -> None:
        async with self.order:
            for attachment in list(self.attachments):
                await self._deliver(attachment, ev)

    async def _deliver(self, attachment: Attachment, ev: dict) -> None:
        try:
            await attachment.send(orjson.dumps(ev).decode())
        except (ConnectionError, RuntimeError):  # that transport is gone
            self.detach(attachment)

    async def end(self, code: int = 1000) -> None:
        """The session is over (hangup, the socket of a plain session closed, or a drop):
        its response stops (billed as dropped) and every transport is closed with `code`."""
        if self.ended:
            return
        self.ended = True
        current = asyncio.current_task()
        if self.response is not None and self.response is not current:
            self.stopping = "ended"
            self.response.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.response
        for attachment in list(self.attachments):
            self.detach(attachment)
            with contextlib.suppress(Exception):
                await attachment.close(code)

    # --- client events -------------------------------------------------------------------

    async def receive(self, raw: str | bytes, via: str) -> None:
        """Handle one client event; what is wrong with it is answered with an `error` event."""
        try:
            ev = orjson.loads(raw)
        except orjson.JSONDecodeError:
            ev = None
        if not isinstance(ev, dict):
            text = raw if isinstance(raw, str) else raw.decode(errors="replace")
            self.fake.ledger.received.append(Received(self.id, via, text))
            return await self.emit(error_event(
                "We could not parse the JSON body of your event.", code="invalid_json"))
        self.fake.ledger.received.append(Received(self.id, via, ev))
        kind, eid = ev.get("type"), ev.get("event_id")
        if kind not in CLIENT_EVENTS:
            return await self.emit(error_event(
                f"Invalid value: '{kind}'. Supported values are: "
                + ", ".join(f"'{k}'" for k in CLIENT_EVENTS) + ".",
                code="invalid_value", param="type", event_id=eid))
        handler = getattr(self, "on_" + kind.replace(".", "_"))
        await handler(ev, eid)

    async def on_session_update(self, ev: dict, eid: str | None) -> None:
        update = ev.get("session")
        problem = session_problem(update)
        if problem:
            return await self.emit(error_event(problem[0], code="invalid_value",
                                               param=problem[1], event_id=eid))
        assert isinstance(update, dict)
        self.config = merge_session(self.config, update)
        await self.emit(event("session.updated", session=self.config))

    async def on_input_audio_buffer_append(self, ev: dict, eid: str | None) -> None:
        try:
            self.buffer += base64.b64decode(ev.get("audio") or "", validate=True)
        except (binascii.Error, TypeError):
            await self.emit(error_event("Invalid 'audio': expected base64-encoded audio.",
                                        code="invalid_value", param="audio", event_id=eid))

    async def on_input_audio_buffer_clear(self, ev: dict, eid: str | None) -> None:
        self.buffer.clear()
        await self.emit(event("input_audio_buffer.cleared"))

    async def on_input_audio_buffer_commit(self, ev: dict, eid: str | None) -> None:
        if len(self.buffer) < 4800:  # OpenAI wants at least 100 ms
            return await self.emit(error_event(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"100ms of audio, but buffer only has {len(self.buffer) / 48:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty", event_id=eid))
        pcm, self.buffer = bytes(self.buffer), bytearray()
        item = {"id": new_id("item_"), "type": "message", "object": "realtime.item",
                "status": "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": None,
                             "_audio_tokens": audio_tokens(pcm)}]}
        previous = self.items[-1]["id"] if self.items else None
        await self.emit(event("input_audio_buffer.committed", previous_item_id=previous,
                              item_id=item["id"]))
        await self._add_item(item, previous)
        transcription = self.config["audio"]["input"].get("transcription")
        if isinstance(transcription, dict) and transcription.get("model"):
            await self._transcribe(item, pcm, str(transcription["model"]))

    async def _transcribe(self, item: dict, pcm: bytes, model: str) -> None:
        heard = audio_tokens(pcm)
        transcript = self.fake.transcript(pcm)
        usage = transcription_usage(heard, transcript)
        self.fake.ledger.transcriptions.append(Transcribed(self.id, item["id"], model, usage))
        item["content"][0]["transcript"] = transcript
        await self.emit(event("conversation.item.input_audio_transcription.completed",
                              item_id=item["id"], content_index=0, transcript=transcript,
                              usage=usage))

    async def on_conversation_item_create(self, ev: dict, eid: str | None) -> None:
        item = ev.get("item")
        if not isinstance(item, dict) or item.get("type") not in (
                "message", "function_call", "function_call_output"):
            return await self.emit(error_event("Invalid 'item'.", code="invalid_value",
                                               param="item", event_id=eid))
        item = {"id": new_id("item_"), "object": "realtime.item", "status": "completed",
                **item}
        for part in item.get("content") or []:
            if isinstance(part, dict) and part.get("type") == "input_audio":
                try:
                    pcm = base64.b64decode(part.get("audio") or "", validate=True)
                except (binascii.Error, TypeError):
                    return await self.emit(error_event(
                        "Invalid 'item.content.audio'.", code="invalid_value",
                        param="item.content.audio", event_id=eid))
                part["_audio_tokens"] = audio_tokens(pcm)
        previous = ev.get("previous_item_id") or (self.items[-1]["id"] if self.items else None)
        await self._add_item(item, previous)

    async def _add_item(self, item: dict, previous: str | None) -> None:
        self.items.append(item)
        shown = public_item(item)
        await self.emit(event("conversation.item.added", previous_item_id=previous, item=shown))
        await self.emit(event("conversation.item.done", previous_item_id=previous, item=shown))

    def _item(self, item_id: object) -> dict | None:
        return next((i for i in self.items if i["id"] == item_id), None)

    async def on_conversation_item_retrieve(self, ev: dict, eid: str | None) -> None:
        item = self._item(ev.get("item_id"))
        if item is None:
            return await self._no_item(ev, eid, "retrieve")
        await self.emit(event("conversation.item.retrieved", item=public_item(item)))

    async def on_conversation_item_delete(self, ev: dict, eid: str | None) -> None:
        item = self._item(ev.get("item_id"))
        if item is None:
            return await self._no_item(ev, eid, "delete")
        self.items.remove(item)
        await self.emit(event("conversation.item.deleted", item_id=item["id"]))

    async def on_conversation_item_truncate(self, ev: dict, eid: str | None) -> None:
        item = self._item(ev.get("item_id"))
        index, end_ms = ev.get("content_index", 0), ev.get("audio_end_ms")
        if item is None:
            return await self._no_item(ev, eid, "truncate")
        if not isinstance(end_ms, int) or not isinstance(index, int) or not (
                0 <= index < len(item.get("content") or [])):
            return await self.emit(error_event("Invalid 'audio_end_ms' or 'content_index'.",
                                               code="invalid_value", param="audio_end_ms",
                                               event_id=eid))
        part = item["content"][index]
        part["_audio_tokens"] = min(part.get("_audio_tokens", 0), -(-end_ms // 100))
        await self.emit(event("conversation.item.truncated", item_id=item["id"],
                              content_index=index, audio_end_ms=end_ms))

    async def _no_item(self, ev: dict, eid: str | None, verb: str) -> None:
        await self.emit(error_event(
            f"Error {verb}ing item: the item with id '{ev.get('item_id')}' does not exist.",
            code=f"item_{verb}_invalid_item_id", param="item_id", event_id=eid))

    async def on_output_audio_buffer_clear(self, ev: dict, eid: str | None) -> None:
        await self.emit(event("output_audio_buffer.cleared", response_id=self.response_id))

    async def on_response_create(self, ev: dict, eid: str | None) -> None:
        if self.response is not None:
            return await self.emit(error_event(
                "Conversation already has an active response in progress: "
                f"{self.response_id}. Wait until the response is finished before creating a "
                "new one.", code="conversation_already_has_active_response", event_id=eid))
        params = ev.get("response") or {}
        problem = session_problem({k: v for k, v in params.items()
                                   if k in ("max_output_tokens", "output_modalities")})
        if problem:
            return await self.emit(error_event(problem[0].replace("session.", "response."),
                                               code="invalid_value", event_id=eid,
                                               param=problem[1].replace("session", "response")))
        self.response_id = new_id("resp_")
        self.stopping = None
        self.response = asyncio.create_task(self._respond(self.response_id, params))
        self.response.add_done_callback(self._response_over)

    def _response_over(self, task: asyncio.Task) -> None:
        if self.response is task:
            self.response = None

    async def on_response_cancel(self, ev: dict, eid: str | None) -> None:
        if self.response is None:
            return await self.emit(error_event(
                "Cancellation failed: no active response found.",
                code="response_cancel_not_active", event_id=eid))
        self.stopping = "cancelled"
        task = self.response
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # --- a response ----------------------------------------------------------------------

    async def _respond(self, rid: str, params: dict) -> None:
        """The response events, one word at a time; response.done carries the usage."""
        config = {**self.config, **{k: v for k, v in params.items() if k in (
            "instructions", "max_output_tokens", "output_modalities")}}
        read = Tokens(text=count_tokens(config["instructions"] or ""))
        for item in self.items:
            read = read + item_tokens(item)
        cached, self.read_before = self.read_before.capped(read), read
        r = Reply(rid, config, read, cached, self.fake.text(self, params).split(),
                  metadata=params.get("metadata"))
        status, details = "completed", None
        try:
            await self.emit(event("response.created", response=r.doc("in_progress")))
            await self.emit(event("response.output_item.added", response_id=rid,
                                  output_index=0, item=r.item))
            await self.emit(event("conversation.item.added", item=r.item, previous_item_id=(
                self.items[-1]["id"] if self.items else None)))
            await self.emit(event("response.content_part.added", part=r.part(""), **r.where))
            if r.spoken and self.call_id:
                await self.emit(event("output_audio_buffer.started", response_id=rid))
            for word in r.say:
                if self.fake.close_after is not None and r.done >= self.fake.close_after:
                    status = "dropped"
                    return await self.end(code=1011)
                await self._say(r, word + " ")
                if self.fake.pace:
                    await asyncio.sleep(self.fake.pace)
            if len(r.say) < len(r.words):
                status, details = "incomplete", {"type": "incomplete",
                                                 "reason": "max_output_tokens"}
        except asyncio.CancelledError:
            if self.stopping != "cancelled":
                status = "dropped"
                raise
            status, details = "cancelled", {"type": "cancelled", "reason": "client_cancelled"}
        finally:
            self.fake.ledger.responses.append(Billed(
                self.id, self.call_id, self.config["model"], rid, status, r.usage()))
        await self._finish(r, status, details)

    async def _say(self, r: Reply, delta: str) -> None:
        if r.spoken:
            await self.emit(event("response.output_audio_transcript.delta", delta=delta,
                                  **r.where))
            if not self.call_id:  # over WebRTC the audio goes by the media track
                await self.emit(event("response.output_audio.delta", **r.where,
                                      delta=base64.b64encode(AUDIO_CHUNK).decode()))
        else:
            await self.emit(event("response.output_text.delta", delta=delta, **r.where))
        r.done += 1

    async def _finish(self, r: Reply, status: str, details: dict | None) -> None:
        text = " ".join(r.words[:r.done])
        if r.spoken:
            final = {"type": "output_audio", "transcript": text}
            await self.emit(event("response.output_audio.done", **r.where))
            await self.emit(event("response.output_audio_transcript.done", transcript=text,
                                  **r.where))
        else:
            final = {"type": "output_text", "text": text}
            await self.emit(event("response.output_text.done", text=text, **r.where))
        await self.emit(event("response.content_part.done", part=r.part(text), **r.where))
        item = {**r.item, "status": "completed" if status == "completed" else "incomplete",
                "content": [final]}
        # The answer is read again by the next response: its audio, or its text.
        self.items.append({**item, "content": [
            {**final, "_audio_tokens": r.audio_out} if r.spoken else final]})
        await self.emit(event("response.output_item.done", response_id=r.id, output_index=0,
                              item=item))
        await self.emit(event("conversation.item.done", item=item))
        if r.spoken and self.call_id:
            await self.emit(event("output_audio_buffer.stopped", response_id=r.id))
        await self.emit(event("response.done", response=r.doc(status, details, [item])))


@dataclass
class Reply:
    """One response being generated: what it read, the words it may say, how many it did."""

    id: str
    config: dict
    read: Tokens
    cached: Tokens
    words: list[str]
    metadata: object = None
    done: int = 0  # words generated so far

    def __post_init__(self) -> None:
        self.spoken = self.config["output_modalities"] == ["audio"]
        self.per_word = 1 + (AUDIO_TOKENS_PER_WORD if self.spoken else 0)
        cap = self.config["max_output_tokens"]
        self.say = self.words if cap == "inf" else self.words[:cap // self.per_word]
        self.item = {"id": new_id("item_"), "type": "message", "object": "realtime.item",
                     "status": "in_progress", "role": "assistant", "content": []}
        self.where = {"response_id": self.id, "item_id": self.item["id"], "output_index": 0,
                      "content_index": 0}

    @property
    def audio_out(self) -> int:
        return self.done * (self.per_word - 1)

    def usage(self) -> dict:
        return usage_doc(self.read, self.cached, self.done, self.audio_out)

    def part(self, text: str) -> dict:
        return {"type": "audio", "transcript": text} if self.spoken else {"type": "text",
                                                                          "text": text}

    def doc(self, status: str, details: dict | None = None, output: list | None = None) -> dict:
        """The `realtime.response` object; usage once it is over."""
        return {"object": "realtime.response", "id": self.id, "status": status,
                "status_details": details, "output": output or [],
                "conversation_id": "conv_" + self.config["id"],
                "output_modalities": self.config["output_modalities"],
                "max_output_tokens": self.config["max_output_tokens"],
                "audio": {"output": {k: self.config["audio"]["output"][k]
                                     for k in ("format", "voice")}},
                "usage": None if status == "in_progress" else self.usage(),
                "metadata": self.metadata}


# --- the fake API --------------------------------------------------------------------------


@dataclass
class FakeRealtime:
    """The fake Realtime API; `add_to(app)` mounts its routes on an aiohttp app."""

    #: The real key; None accepts any token that is not an `ek_` secret as the key.
    api_key: str | None = None
    #: Models a session may name; empty: any.
    models: tuple[str, ...] = ()
    #: Words in every answer, and seconds after each streamed one.
    words: int = 5
    pace: float = 0.0
    #: Seconds before answering each HTTP request and WebSocket handshake.
    delay: float = 0.0
    #: When set, a response that has generated this many words drops its session (the
    #: sockets close with 1011, no response.done; billed the words generated).
    close_after: int | None = None
    answerer: SdpAnswerer = canned_answerer
    ledger: Ledger = field(default_factory=Ledger)
    sessions: dict[str, Session] = field(default_factory=dict)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/realtime/client_secrets", self.client_secrets),
                web.post("/v1/realtime/calls", self.create_call),
                web.post("/v1/realtime/calls/{call_id}/hangup", self.hangup),
                web.get("/v1/realtime", self.websocket)]

    def add_to(self, app: web.Application) -> None:
        app.add_routes(self.routes())

    def app(self) -> web.Application:
        app = web.Application()
        self.add_to(app)
        return app

    # --- what a test may change ----------------------------------------------------------

    def text(self, session: Session, params: dict) -> str:
        """The words of every answer."""
        return " ".join(f"w{i}" for i in range(self.words))

    def transcript(self, pcm: bytes) -> str:
        """What the fake hears in committed audio."""
        return f"heard {audio_tokens(pcm)} audio tokens"

    # --- auth ----------------------------------------------------------------------------

    def credential(self, request: web.Request) -> str | None:
        bearer = request.headers.get("Authorization", "")
        if bearer.lower().startswith("bearer ") and bearer[7:].strip():
            return bearer[7:].strip()
        for protocol in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            if protocol.strip().startswith(KEY_PROTOCOL):
                return protocol.strip()[len(KEY_PROTOCOL):]
        return None

    def authorize(self, token: str | None, secret_ok: bool = True) -> dict | str | None:
        """"key" for the real key, the secret's record for a live `ek_` secret, else None."""
        if token is None:
            return None
        if token.startswith("ek_"):
            secret = self.ledger.secrets.get(token)
            ok = secret_ok and secret is not None and secret["expires_at"] > time.time()
            return secret if ok else None
        return "key" if self.api_key is None or token == self.api_key else None

    def refuse(self, status: int, message: str, code: str | None = None,
               param: str | None = None) -> web.Response:
        return web.json_response(http_error(message, code, param), status=status)

    def unauthorized(self) -> web.Response:
        return self.refuse(401, "Incorrect API key provided.", "invalid_api_key")

    def new_session(self, model: str, update: dict, call_id: str | None = None) -> Session:
        config = merge_session(default_session(model), update)
        session = self.sessions[config["id"]] = Session(self, config, call_id)
        return session

    def model_problem(self, model: object) -> web.Response | None:
        if not isinstance(model, str) or not model:
            return self.refuse(400, "Missing required parameter: 'model'.",
                               "missing_required_parameter", "model")
        if self.models and model not in self.models:
            return self.refuse(400, f"The model '{model}' does not exist or you do not have "
                               "access to it.", "model_not_found", "model")
        return None

    # --- the routes ------------------------------------------------------------------------

    async def client_secrets(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        if self.authorize(self.credential(request), secret_ok=False) != "key":
            return self.unauthorized()
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return self.refuse(400, "The body of your request must be a JSON object.")
        expires = body.get("expires_after") or {}
        seconds = expires.get("seconds", 600) if isinstance(expires, dict) else None
        if not (isinstance(seconds, int) and 10 <= seconds <= 7200) or (
                expires.get("anchor", "created_at") != "created_at"):
            return self.refuse(400, "Invalid 'expires_after': seconds must be between 10 and "
                               "7200, anchor 'created_at'.", "invalid_value",
                               "expires_after.seconds")
        update = body.get("session") or {"type": "realtime"}
        problem = session_problem(update)
        if problem:
            return self.refuse(400, problem[0], "invalid_value", problem[1])
        model = update.get("model", "gpt-realtime")
        if refused := self.model_problem(model):
            return refused
        session = merge_session(default_session(model), update)
        value, expires_at = new_id("ek_"), int(time.time()) + seconds
        self.ledger.secrets[value] = {"expires_at": expires_at, "session": session,
                                      "request": update}
        return web.json_response({"value": value, "expires_at": expires_at,
                                  "session": {**session, "expires_at": 0}})

    async def create_call(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        token = self.credential(request)
        who = self.authorize(token)
        if who is None:
            return self.unauthorized()
        update: object = dict(who["request"]) if isinstance(who, dict) else {}
        ctype = request.content_type
        if ctype == "application/sdp":
            offer = await request.text()
        elif ctype == "multipart/form-data":
            parts: dict[str, str] = {}
            async for part in await request.multipart():
                if isinstance(part, BodyPartReader) and part.name in ("sdp", "session"):
                    parts[part.name] = await part.text()
            offer = parts.get("sdp", "")
            if "session" in parts:
                try:
                    update = orjson.loads(parts["session"])
                except orjson.JSONDecodeError:
                    update = None
        else:
            return self.refuse(400, "Send the SDP offer as application/sdp or as multipart "
                               "'sdp' and 'session' parts.")
        if not offer.startswith("v=0"):
            return self.refuse(400, "Invalid 'sdp': expected an SDP offer.", "invalid_offer",
                               "sdp")
        problem = session_problem(update)
        if problem:
            return self.refuse(400, problem[0], "invalid_value", problem[1])
        assert isinstance(update, dict)
        model = update.get("model") or request.query.get("model")
        if refused := self.model_problem(model):
            return refused
        call_id = new_id("rtc_")
        session = self.new_session(str(model), update, call_id)
        call = self.ledger.calls[call_id] = Call(call_id, offer, session, token or "", ctype)
        answer = await self.answerer(offer, call)
        return web.Response(status=201, text=answer, content_type="application/sdp",
                            headers={"Location": f"/v1/realtime/calls/{call_id}"})

    async def hangup(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        if self.authorize(self.credential(request)) is None:
            return self.unauthorized()
        call = self.ledger.calls.get(request.match_info["call_id"])
        if call is None:
            return self.refuse(404, "No call found with that id.", "call_id_not_found",
                               "call_id")
        self.ledger.hangups.append(call.id)
        await call.session.end()
        return web.Response(status=200)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(self.delay)
        token = self.credential(request)
        who = self.authorize(token)
        call_id = request.query.get("call_id")
        if who is None or (call_id and who != "key"):
            return self.unauthorized()
        if call_id:
            call = self.ledger.calls.get(call_id)
            if call is None or call.session.ended:
                return self.refuse(404, "No session found for the provided call_id",
                                   "call_id_not_found", "")
            session, via = call.session, "sideband"
        else:
            secret = who["request"] if isinstance(who, dict) else {}
            model = request.query.get("model") or secret.get("model")
            if refused := self.model_problem(model):
                return refused
            session, via = self.new_session(str(model), secret), "websocket"
        ws = web.WebSocketResponse(protocols=("realtime",), max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        opened = Opened(session.id, via, session.config["model"], session.call_id, token or "",
                        dict(request.headers))
        self.ledger.sockets.append(opened)

        async def close(code: int) -> None:
            await ws.close(code=code)

        attachment = await session.attach(via, ws.send_str, close)
        try:
            async for message in ws:
                if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await session.receive(message.data, via)
        finally:
            opened.closed = time.monotonic()
            session.detach(attachment)
            if via == "websocket":
                await session.end()
        return ws

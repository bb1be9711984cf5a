"""One session of the fake realtime upstream: configuration, conversation, input audio buffer,
and the client events that change them, answered as OpenAI answers them; and its responses,
one word at a time, then `response.done` with the usage (cancelled, cut at the output cap, or
dropped mid-way).

A session has transports attached to it (`attach`): a WebSocket, a call's sideband, a WebRTC
data channel. Each gets `session.created` first; every server event goes to all of them, in
order; a client event from any of them is handled the same way.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import orjson

from .formats import count_tokens, new_id
from .realtime_formats import (
    AUDIO_CHUNK,
    AUDIO_TOKENS_PER_WORD,
    Tokens,
    audio_tokens,
    error_event,
    event,
    item_tokens,
    merge_session,
    public_item,
    session_problem,
    transcription_usage,
    usage_doc,
)
from .realtime_ledger import Billed, Ledger, Received, Transcribed


class Host(Protocol):
    """What a session asks of the fake that runs it (fake_realtime.FakeRealtime)."""

    ledger: Ledger
    pace: float
    close_after: int | None

    def transcript(self, pcm: bytes) -> str: ...

    def text(self, session: Session, params: dict) -> str: ...


Send = Callable[[str], Awaitable[None]]
Close = Callable[[int], Awaitable[None]]  # the WebSocket close code
CLIENT_EVENTS = ("session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                 "input_audio_buffer.clear", "conversation.item.create",
                 "conversation.item.retrieve", "conversation.item.truncate",
                 "conversation.item.delete", "response.create", "response.cancel",
                 "output_audio_buffer.clear")


@dataclass
class Call:
    """A WebRTC call: the offer it was created with, and its session."""

    id: str
    offer: str
    session: Session
    token: str
    content_type: str


@dataclass(eq=False)
class Attachment:
    """A transport attached to a session: how to send it an event and how to close it."""

    via: str
    send: Send
    close: Close


class Session:
    """One realtime session: its configuration, conversation, audio buffer and response."""

    def __init__(self, fake: Host, config: dict, call_id: str | None = None) -> None:
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
        self.response = asyncio.create_task(respond(self, self.response_id, params))
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


# --- a response: its events one word at a time, then response.done with the usage ---------


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


async def respond(session: Session, rid: str, params: dict) -> None:
    """The response events, one word at a time; response.done carries the usage."""
    config = {**session.config, **{k: v for k, v in params.items() if k in (
        "instructions", "max_output_tokens", "output_modalities")}}
    read = Tokens(text=count_tokens(config["instructions"] or ""))
    for item in session.items:
        read = read + item_tokens(item)
    cached, session.read_before = session.read_before.capped(read), read
    r = Reply(rid, config, read, cached, session.fake.text(session, params).split(),
              metadata=params.get("metadata"))
    status, details = "completed", None
    try:
        await session.emit(event("response.created", response=r.doc("in_progress")))
        await session.emit(event("response.output_item.added", response_id=rid,
                              output_index=0, item=r.item))
        await session.emit(event("conversation.item.added", item=r.item, previous_item_id=(
            session.items[-1]["id"] if session.items else None)))
        await session.emit(event("response.content_part.added", part=r.part(""), **r.where))
        if r.spoken and session.call_id:
            await session.emit(event("output_audio_buffer.started", response_id=rid))
        for word in r.say:
            if session.fake.close_after is not None and r.done >= session.fake.close_after:
                status = "dropped"
                return await session.end(code=1011)
            await _say(session, r, word + " ")
            if session.fake.pace:
                await asyncio.sleep(session.fake.pace)
        if len(r.say) < len(r.words):
            status, details = "incomplete", {"type": "incomplete",
                                             "reason": "max_output_tokens"}
    except asyncio.CancelledError:
        if session.stopping != "cancelled":
            status = "dropped"
            raise
        status, details = "cancelled", {"type": "cancelled", "reason": "client_cancelled"}
    finally:
        session.fake.ledger.responses.append(Billed(
            session.id, session.call_id, session.config["model"], rid, status, r.usage()))
    await _finish(session, r, status, details)

async def _say(session: Session, r: Reply, delta: str) -> None:
    if r.spoken:
        await session.emit(event("response.output_audio_transcript.delta", delta=delta,
                              **r.where))
        if not session.call_id:  # over WebRTC the audio goes by the media track
            await session.emit(event("response.output_audio.delta", **r.where,
                                  delta=base64.b64encode(AUDIO_CHUNK).decode()))
    else:
        await session.emit(event("response.output_text.delta", delta=delta, **r.where))
    r.done += 1

async def _finish(session: Session, r: Reply, status: str, details: dict | None) -> None:
    text = " ".join(r.words[:r.done])
    if r.spoken:
        final = {"type": "output_audio", "transcript": text}
        await session.emit(event("response.output_audio.done", **r.where))
        await session.emit(event("response.output_audio_transcript.done", transcript=text,
                              **r.where))
    else:
        final = {"type": "output_text", "text": text}
        await session.emit(event("response.output_text.done", text=text, **r.where))
    await session.emit(event("response.content_part.done", part=r.part(text), **r.where))
    item = {**r.item, "status": "completed" if status == "completed" else "incomplete",
            "content": [final]}
    # The answer is read again by the next response: its audio, or its text.
    session.items.append({**item, "content": [
        {**final, "_audio_tokens": r.audio_out} if r.spoken else final]})
    await session.emit(event("response.output_item.done", response_id=r.id, output_index=0,
                          item=item))
    await session.emit(event("conversation.item.done", item=item))
    if r.spoken and session.call_id:
        await session.emit(event("output_audio_buffer.stopped", response_id=r.id))
    await session.emit(event("response.done", response=r.doc(status, details, [item])))

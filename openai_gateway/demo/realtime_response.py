"""A response of the fake realtime session: its events one word at a time, then
`response.done` with the usage; cancelled, cut at the output cap, or dropped mid-way."""
from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .formats import count_tokens, new_id
from .realtime_formats import (
    AUDIO_CHUNK,
    AUDIO_TOKENS_PER_WORD,
    Tokens,
    event,
    item_tokens,
    usage_doc,
)
from .realtime_ledger import Billed

if TYPE_CHECKING:
    from .realtime_session import Session


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

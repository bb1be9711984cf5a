"""Relaying Server-Sent Events chunk by chunk, noticing disconnects, capturing usage.

A stream is a sequence of states: headers are decided before `prepare()`, every upstream chunk
is written as soon as it arrives (never compressed: a compressor holds bytes back), a client
that goes away is normal (the caller's context closes the upstream request), and an upstream
that breaks mid-stream ends the client's stream with an OpenAI-shaped error event.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import aiohttp
import orjson
from aiohttp import web

from .errors import error_body

#: Headers every SSE answer carries. no-cache: never stored by a browser or CDN;
#: X-Accel-Buffering: tells nginx not to buffer even where proxy_buffering is on.
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8",
               "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: An event ends at a blank line; both line endings are allowed by the SSE spec (WHATWG 9.2.5).
EVENT_END = re.compile(rb"\r?\n\r?\n")
#: The end of a chat or completions stream, as "data: [DONE]" (the space is optional).
DONE = b"[DONE]"
#: The responses API ends with this event instead of [DONE].
RESPONSES_DONE = b"response.completed"
#: An incomplete event larger than this is passed on unparsed rather than held.
MAX_HELD = 256 * 1024
INTERRUPTED = b"data: " + error_body(
    "The upstream stream was interrupted.", "server_error", None, "upstream_interrupted"
) + b"\n\n"


@dataclass(slots=True)
class StreamOutcome:
    usage: dict | None = None
    complete: bool = False
    upstream_failed: bool = False
    #: Events the client was sent (a stream cut before its usage is charged one token each).
    events: int = 0
    #: What the client was sent, kept only when recording for the cache.
    recorded: list[bytes] | None = None
    sent_bytes: int = 0


@dataclass(slots=True)
class _Inspector:
    """Finds complete events in the byte flow: usage, the end marker, the extra usage chunk."""

    strip_usage_chunk: bool
    held: bytes = b""
    outcome: StreamOutcome = field(default_factory=StreamOutcome)

    def feed(self, chunk: bytes) -> bytes:
        """Take a chunk, return the bytes to send now (everything, unless stripping)."""
        data = self.held + chunk if self.held else chunk
        ends = list(EVENT_END.finditer(data))
        if not ends:
            if len(data) <= MAX_HELD:
                self.held = data
                return b"" if self.strip_usage_chunk else chunk
            # Too large to be the usage chunk: pass it on unparsed. When stripping, the held
            # bytes were not sent yet, so they go out now with the chunk.
            self.held = b""
            return data if self.strip_usage_chunk else chunk
        cut = ends[-1].end()
        tail = data[cut:]
        overflow = len(tail) > MAX_HELD
        self.held = b"" if overflow else tail
        events, start, keep = data[:cut], 0, []
        for m in ends:
            event = events[start:m.end()]
            start = m.end()
            if self._inspect(event) and self.strip_usage_chunk:
                continue  # the usage-only chunk the gateway asked for, not the client
            keep.append(event)
        if not self.strip_usage_chunk:
            return chunk
        out = b"".join(keep) if len(keep) != len(ends) else events
        return out + tail if overflow else out

    def _inspect(self, event: bytes) -> bool:
        """Record usage and completion; True if this is a usage-only chunk."""
        self.outcome.events += 1
        if (DONE in event or RESPONSES_DONE in event) and _ends_stream(event):
            self.outcome.complete = True
        if b'"usage"' not in event or (b'"usage":null' in event and b'"usage":{' not in event
                                       and b'"usage": {' not in event):
            return False
        for line in event.splitlines():
            if line.startswith(b"data:"):
                try:
                    obj = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    return False
                if not isinstance(obj, dict):
                    return False
                usage = obj.get("usage")
                if not isinstance(usage, dict) and isinstance(obj.get("response"), dict):
                    usage = obj["response"].get("usage")  # responses API
                if isinstance(usage, dict):
                    self.outcome.usage = usage
                    return obj.get("choices") == []
        return False


def _ends_stream(event: bytes) -> bool:
    """True for the end marker itself, not for an answer whose text mentions it."""
    for line in event.splitlines():
        field, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if field == b"data" and value == DONE:
            return True
        if field == b"event" and value == RESPONSES_DONE:
            return True
        if field == b"data" and RESPONSES_DONE in value:  # servers that send no event: line
            try:
                obj = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict) and obj.get("type") == "response.completed":
                return True
    return False


async def relay(request: web.Request, upstream: aiohttp.ClientResponse,
                headers: dict[str, str], outcome: StreamOutcome, *, idle_timeout: float,
                strip_usage_chunk: bool, record: bool) -> web.StreamResponse:
    """Write the upstream's SSE body to the client as it arrives. `outcome` is filled as the
    stream goes, so the caller knows what was delivered even when this is cancelled."""
    inspector = _Inspector(strip_usage_chunk, outcome=outcome)
    if record:
        outcome.recorded = []
    out = web.StreamResponse(status=upstream.status, headers=headers)
    out.headers.update(SSE_HEADERS)
    await out.prepare(request)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(idle_timeout) as idle:
            async for chunk in upstream.content.iter_any():
                idle.reschedule(loop.time() + idle_timeout)
                data = inspector.feed(chunk)
                if not data:
                    continue
                await out.write(data)
                outcome.sent_bytes += len(data)
                if record:
                    outcome.recorded.append(data)
    except ConnectionResetError:
        return out  # normal: the upstream request is closed by our caller
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        outcome.upstream_failed = True
    if inspector.held:
        # A last event without its blank line (e.g. "data: [DONE]\n"). Unless stripping, its
        # bytes were already sent; only its meaning is left to read.
        inspector._inspect(inspector.held)
        if strip_usage_chunk:
            try:
                await out.write(inspector.held)
            except ConnectionResetError:
                return out
            if record:
                outcome.recorded.append(inspector.held)
    if outcome.upstream_failed or not outcome.complete:
        # Tell the client instead of ending as if the answer were whole; SDKs raise on it.
        outcome.upstream_failed = True
        try:
            await out.write(INTERRUPTED)
        except ConnectionResetError:
            return out
    try:
        await out.write_eof()
    except ConnectionResetError:
        pass
    return out


async def replay(request: web.Request, frames: bytes, headers: dict[str, str]
                 ) -> web.StreamResponse:
    """Send a recorded stream again, one event per write, as the upstream once did."""
    out = web.StreamResponse(status=200, headers=headers)
    out.headers.update(SSE_HEADERS)
    await out.prepare(request)
    start = 0
    try:
        for m in EVENT_END.finditer(frames):
            await out.write(frames[start:m.end()])
            start = m.end()
        if start < len(frames):
            await out.write(frames[start:])
        await out.write_eof()
    except ConnectionResetError:
        pass
    return out

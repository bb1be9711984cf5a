"""Sending answers: SSE relayed chunk by chunk, complete answers within a write timeout.

A stream is a sequence of states: headers are decided before `prepare()`, every upstream chunk
is written as soon as it arrives (never compressed: a compressor holds bytes back), a client
that goes away is normal (the caller's context closes the upstream request), and an upstream
that breaks mid-stream ends the client's stream with an OpenAI-shaped error event.

Events of any size pass: the upstream body is read with `iter_any()` (whatever arrived), so no
line limit applies to it (aiohttp's `max_line_size` and `max_field_size` bound the response
head; `read_bufsize` is a flow-control mark, not a cap). An event past MAX_HELD (an image
stream's whole base64 images) is passed on as it arrives; its type and its usage are read from
its first and last bytes.

A client that stops reading is dropped after `write_timeout` seconds without progress: aiohttp
has no write timeout, and an answer nobody reads stays in the connection's buffer (four
sockets held 210 MB of 43 MB embeddings answers) for as long as the client keeps it open.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import aiohttp
import orjson
from aiohttp import web

from ..errors import error_body
from ..policy.usage import OutputCounter, Usage, usage_from_event, usage_near_end

#: Headers every SSE answer carries. no-cache: never stored by a browser or CDN;
#: X-Accel-Buffering: tells nginx not to buffer even where proxy_buffering is on.
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8",
               "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: An event ends at a blank line; both line endings are allowed by the SSE spec (WHATWG 9.2.5).
EVENT_END = re.compile(rb"\r?\n\r?\n")
#: The end of a chat or completions stream, as "data: [DONE]" (the space is optional).
DONE = b"[DONE]"
#: The responses API ends with one of these events instead of [DONE] (incomplete: the output
#: cap was reached, which is a whole answer too).
RESPONSES_DONE = (b"response.completed", b"response.incomplete")
#: Event types after which nothing valid follows: the end of the client's response goes out
#: in the same write. Speech and transcription streams end with their `done` event.
TERMINAL_TYPES = frozenset({"response.completed", "response.incomplete", "speech.audio.done",
                            "transcript.text.done"})
#: Event types that make a stream whole while more of them may follow (an image stream has one
#: `completed` event per image, each with the image and the usage so far): such a stream ends
#: when the upstream ends it.
COMPLETING_TYPES = frozenset({"image_generation.completed", "image_edit.completed"})
_END_TYPES = {t.encode(): t for t in TERMINAL_TYPES | COMPLETING_TYPES}
#: An incomplete event larger than this is not held: it is passed on as it arrives, and only
#: its first HEAD_BYTES (its type) and last TAIL_BYTES (its usage) are kept. An image stream's
#: events are whole base64 images, megabytes each; the last one's usage follows its image.
MAX_HELD = 256 * 1024
HEAD_BYTES = 512
TAIL_BYTES = 64 * 1024
#: `{"type": "..."` at the start of an event's data: OpenAI writes the type first.
_LEADING_TYPE = re.compile(rb'\{\s*"type"\s*:\s*"([A-Za-z0-9_.]{1,100})"')
INTERRUPTED = b"data: " + error_body(
    "The upstream stream was interrupted.", "server_error", None, "upstream_interrupted"
) + b"\n\n"
#: A complete answer is written in pieces of this size, each within the write timeout: a
#: client that reads slowly but steadily keeps its connection.
PIECE = 64 * 1024
#: A write to the client that waits this long means the client held the relay back: meanwhile
#: the upstream kept generating into buffers the gateway did not read, so from then on what was
#: received says nothing of what was generated. A client that keeps up never waits this long.
STALL_SECONDS = 0.02


@dataclass(slots=True)
class StreamOutcome:
    #: From the upstream's own usage report (None: none came; the caller charges the
    #: reservation).
    usage: Usage | None = None
    complete: bool = False
    upstream_failed: bool = False
    #: Events received from the upstream.
    events: int = 0
    #: An upper bound on the output tokens of every event received from the upstream.
    output: OutputCounter = field(default_factory=lambda: OutputCounter(""))
    #: The client left (closed the connection) while the relay kept up with the upstream: no
    #: write to it was waiting, so everything the upstream sent had been received.
    stopped_by_client: bool = False
    #: What the client was sent, kept only when recording for the cache.
    recorded: list[bytes] | None = None
    sent_bytes: int = 0


@dataclass(slots=True)
class _Oversized:
    """An event past MAX_HELD, being passed on: its first and last bytes, and its size."""

    head: bytes
    tail: bytes

    def take(self, chunk: bytes) -> int:
        """Add the next bytes; the index in `chunk` just past the event's end, or -1. The
        blank line that ends it may straddle two chunks: the tail's last bytes are searched
        with the chunk's first (they hold no whole blank line, or it would have been found).
        Nothing is copied but the kept tail: chunks are up to a read's size."""
        carry = self.tail[-3:]
        m = EVENT_END.search(carry + chunk[:3])
        if m is not None and m.end() > len(carry):
            cut = m.end() - len(carry)
        else:
            m = EVENT_END.search(chunk)
            cut = -1 if m is None else m.end()
        piece = memoryview(chunk) if cut < 0 else memoryview(chunk)[:cut]
        if len(piece) >= TAIL_BYTES:
            self.tail = bytes(piece[-TAIL_BYTES:])
        else:
            self.tail = self.tail[max(0, len(self.tail) + len(piece) - TAIL_BYTES):] + piece
        return cut


@dataclass(slots=True)
class _Inspector:
    """Finds complete events in the byte flow: usage, the end marker, the extra usage chunk."""

    strip_usage_chunk: bool
    held: bytes = b""
    outcome: StreamOutcome = field(default_factory=StreamOutcome)
    #: A terminal event was seen: nothing valid follows it.
    terminal: bool = False
    #: The event being passed on because it is too large to hold.
    big: _Oversized | None = None

    def feed(self, chunk: bytes) -> bytes:
        """Take a chunk, return the bytes to send now (everything, unless stripping)."""
        if self.big is not None:
            cut = self.big.take(chunk)
            self.outcome.output.tokens += len(chunk) if cut < 0 else cut  # unread: every byte
            if cut < 0:
                return chunk
            self.finish_oversized()
            rest = self.feed(chunk[cut:]) if cut < len(chunk) else b""
            return chunk[:cut] + rest if self.strip_usage_chunk else chunk
        data = self.held + chunk if self.held else chunk
        ends = list(EVENT_END.finditer(data))
        if not ends:
            if len(data) <= MAX_HELD:
                self.held = data
                return b"" if self.strip_usage_chunk else chunk
            # Too large to be the usage chunk: pass it on as it comes. When stripping, the held
            # bytes were not sent yet, so they go out now with the chunk.
            self._oversized(data)
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
        if overflow:
            self._oversized(tail)
        if not self.strip_usage_chunk:
            return chunk
        out = b"".join(keep) if len(keep) != len(ends) else events
        return out + tail if overflow else out

    def _oversized(self, data: bytes) -> None:
        self.held = b""
        self.outcome.output.tokens += len(data)  # unread, so counted whole
        self.big = _Oversized(data[:HEAD_BYTES], data[-TAIL_BYTES:])

    def finish_oversized(self, *, whole: bool = True) -> None:
        """The oversized event ended (whole: at its blank line; else the stream ended without
        one): its type from its first bytes, and its root usage from its last
        (policy.usage.usage_near_end). An event cut by the end of the stream counts as an end
        marker only when its usage, which OpenAI writes last, was read whole."""
        big, self.big = self.big, None
        if big is None:
            return
        self.outcome.events += 1
        body = big.tail.rstrip(b"\r\n")
        usage = usage_near_end(body) if b'"usage"' in body else None
        if usage is not None:
            self.outcome.usage = usage
        if whole or usage is not None:
            self._end(_head_type(big.head))

    def _end(self, kind: str | None) -> None:
        if kind is None:
            return
        self.outcome.complete = True
        self.terminal = self.terminal or kind not in COMPLETING_TYPES

    def _inspect(self, event: bytes) -> bool:
        """Record usage, output and completion; True if this is a usage-only chunk."""
        self.outcome.events += 1
        self.outcome.output.feed(event)
        if DONE in event or any(t in event for t in _END_TYPES):
            self._end(_end_type(event))
        if b'"usage"' not in event or (b'"usage":null' in event and b'"usage":{' not in event
                                       and b'"usage": {' not in event):
            return False
        for line in event.splitlines():
            if line.startswith(b"data:"):
                try:
                    obj = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    return False
                # Only a chunk's own usage or the final response's: never an echoed field.
                usage = usage_from_event(obj)
                if usage is not None:
                    self.outcome.usage = usage
                    return obj.get("choices") == []
        return False


def _end_type(event: bytes) -> str | None:
    """The end marker an event is ("[DONE]" or one of TERMINAL_TYPES / COMPLETING_TYPES), not
    an answer whose text mentions one: its `event:` field, or its data's own `type`."""
    for line in event.splitlines():
        field, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if field == b"data" and value == DONE:
            return "[DONE]"
        if field == b"event" and value in _END_TYPES:
            return _END_TYPES[value]
        if field == b"data" and any(t in value for t in _END_TYPES):  # no event: line
            try:
                obj = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            kind = obj.get("type") if isinstance(obj, dict) else None
            if isinstance(kind, str) and kind.encode() in _END_TYPES:
                return kind
    return None


def _head_type(head: bytes) -> str | None:
    """The end marker type an oversized event declares in its first bytes, or None."""
    for line in head.split(b"\n"):
        field, _, value = line.rstrip(b"\r").partition(b":")
        value = value.removeprefix(b" ")
        if field == b"event":
            return _END_TYPES.get(value)
        if field == b"data" and (m := _LEADING_TYPE.match(value)) is not None:
            return _END_TYPES.get(m[1])
    return None


async def relay(request: web.Request, upstream: aiohttp.ClientResponse,
                headers: dict[str, str], outcome: StreamOutcome, *, idle_timeout: float,
                strip_usage_chunk: bool, record: bool, write_timeout: float | None = None
                ) -> web.StreamResponse:
    """Write the upstream's SSE body to the client as it arrives. `outcome` is filled as the
    stream goes, so the caller knows what was delivered even when this is cancelled.

    write_timeout: seconds one write may wait for a client that reads nothing (None: no
    bound); past it the client is dropped, like one that closed its connection.
    """
    inspector = _Inspector(strip_usage_chunk, outcome=outcome)
    if record:
        outcome.recorded = []
    out = web.StreamResponse(status=upstream.status, headers=headers)
    out.headers.update(SSE_HEADERS)
    await out.prepare(request)
    try:
        if not await _pump(request, upstream, out, inspector, idle_timeout, write_timeout):
            await _finish(request, out, inspector, write_timeout)
    except (ConnectionResetError, _ClientGone):
        pass  # normal: the upstream request is closed by our caller
    return out


class _ClientGone(Exception):
    """A write to the client failed: it left, or read nothing within the write timeout. Not a
    ConnectionError, so no handler of upstream failures can take it for one (aiohttp's
    ClientConnectionResetError is both an upstream and a client error type)."""


def _left(inspector: _Inspector, waited: float, held_back: bool) -> None:
    """The client left; `waited`: how long the write in progress had been waiting (0: none);
    `held_back`: an earlier write had to wait for it."""
    outcome = inspector.outcome
    outcome.stopped_by_client = waited < STALL_SECONDS and not held_back
    outcome.output.tokens += len(inspector.held)  # received, not yet a whole event


async def _pump(request: web.Request, upstream: aiohttp.ClientResponse,
                out: web.StreamResponse, inspector: _Inspector, idle_timeout: float,
                write_timeout: float | None) -> bool:
    """Every upstream chunk to the client; an upstream that breaks or goes silent is noted.

    True if the client's response was ended with the stream's end marker. The marker and the
    response's end go out in one write: a client that stops reading at [DONE] (as SDKs do)
    finds the connection's response complete and keeps the connection for its next request
    instead of closing it. The upstream is still read to its end, so its connection is
    reused too; nothing valid follows the marker.
    """
    outcome = inspector.outcome
    loop = asyncio.get_running_loop()
    ended = False
    since: float | None = None  # when the write in progress started
    held_back = False  # a write has waited for the client: it has held the relay back
    try:
        async with asyncio.timeout(idle_timeout) as idle:
            async for chunk in upstream.content.iter_any():
                idle.reschedule(loop.time() + idle_timeout)
                data = inspector.feed(chunk)
                if not data or ended:
                    continue
                ended = inspector.terminal and not inspector.held and inspector.big is None
                since = loop.time()
                try:
                    await write_within(request, out, data, write_timeout, last=ended)
                except ConnectionResetError:
                    _left(inspector, loop.time() - since, held_back)
                    raise _ClientGone from None
                held_back = held_back or loop.time() - since >= STALL_SECONDS
                since = None
                outcome.sent_bytes += len(data)
                if outcome.recorded is not None:
                    outcome.recorded.append(data)
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        outcome.upstream_failed = not ended
    except asyncio.CancelledError:  # the client closed its connection
        _left(inspector, 0.0 if since is None else loop.time() - since, held_back)
        raise
    return ended


async def _finish(request: web.Request, out: web.StreamResponse, inspector: _Inspector,
                  write_timeout: float | None) -> None:
    outcome = inspector.outcome
    inspector.finish_oversized(whole=False)  # a last oversized event without its blank line
    if inspector.held:
        # A last event without its blank line (e.g. "data: [DONE]\n"). Unless stripping, its
        # bytes were already sent; only its meaning is left to read.
        inspector._inspect(inspector.held)
        if inspector.strip_usage_chunk:
            await write_within(request, out, inspector.held, write_timeout)
            if outcome.recorded is not None:
                outcome.recorded.append(inspector.held)
    if outcome.upstream_failed or not outcome.complete:
        # Tell the client instead of ending as if the answer were whole; SDKs raise on it.
        outcome.upstream_failed = True
        await write_within(request, out, INTERRUPTED, write_timeout)
    await write_within(request, out, None, write_timeout)


async def write_within(request: web.Request, out: web.StreamResponse,
                       data: bytes | memoryview | None,
                       timeout: float | None, *, last: bool = False) -> None:
    """`out.write(data)` (None: `write_eof()`; last: `write_eof(data)`), waiting at most
    `timeout` seconds for a client that reads nothing; then the connection is dropped and
    ConnectionResetError raised."""
    if data is None:
        write = out.write_eof()
    else:
        write = out.write_eof(bytes(data)) if last else out.write(data)
    if timeout is None:
        await write
        return
    try:
        async with asyncio.timeout(timeout):
            await write
    except TimeoutError:
        drop(request)
        raise ConnectionResetError("the client read nothing within the write timeout") from None


def drop(request: web.Request) -> None:
    """Close the client's connection at once, discarding what it did not read."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def send_answer(request: web.Request, status: int, body: bytes, headers: dict[str, str],
                      content_type: str, *, write_timeout: float,
                      charset: str | None = None) -> web.StreamResponse:
    """A complete (non-stream) answer, sent in pieces; a client that reads none of a piece
    within `write_timeout` seconds is dropped. Returns the prepared response for the handler
    to return (aiohttp's own Response would wait on such a client for as long as it stays)."""
    out = web.StreamResponse(status=status, headers=headers)
    out.content_type = content_type
    if charset is not None:
        out.charset = charset
    out.content_length = len(body)
    await out.prepare(request)
    view = memoryview(body)
    try:
        for start in range(0, len(body), PIECE):
            await write_within(request, out, view[start:start + PIECE], write_timeout)
        await write_within(request, out, None, write_timeout)
    except ConnectionResetError:
        pass  # gone, or dropped: either way nobody is left to answer
    return out


async def replay(request: web.Request, frames: bytes, headers: dict[str, str], *,
                 write_timeout: float | None = None) -> web.StreamResponse:
    """Send a recorded stream again, one event per write, as the upstream once did."""
    out = web.StreamResponse(status=200, headers=headers)
    out.headers.update(SSE_HEADERS)
    await out.prepare(request)
    start = 0
    try:
        for m in EVENT_END.finditer(frames):
            await write_within(request, out, frames[start:m.end()], write_timeout)
            start = m.end()
        if start < len(frames):
            await write_within(request, out, frames[start:], write_timeout)
        await write_within(request, out, None, write_timeout)
    except ConnectionResetError:
        pass
    return out

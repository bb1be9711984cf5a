"""The head guard: closes a connection whose request head never completes (slowloris).

aiohttp bounds idle keep-alive connections but not a client that trickles a request line and
headers forever; enough of those hold every file descriptor. nginx in front has
`client_header_timeout`; this gives the gateway the same bound when it faces clients itself.

Every request head on a connection is timed, from its first byte to its blank line: blank
lines before a request line (which the parser skips, RFC 9112 section 2.2) are part of the
head's time, not its end. To know where the next head starts, the guard follows the framing
of each request (Content-Length, or chunked transfer coding) without parsing anything else;
aiohttp's parser still decides what is valid. Between requests nothing is timed: a response
being generated is not the client's delay, and an idle connection is aiohttp's keep-alive
timeout's to close.
"""
from __future__ import annotations

import asyncio
import re

END_OF_HEAD = b"\r\n\r\n"
CRLF = b"\r\n"
#: Longer heads are refused by aiohttp (431); the guard stops following such a connection's
#: framing and leaves its timer running.
MAX_HEAD = 64 * 1024
#: A chunk-size line (hex size and extensions) or a trailer section longer than this is not
#: followed either (aiohttp refuses it).
MAX_LINE = 8 * 1024
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d+)[ \t]*(?:\r\n|$)", re.I)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding[ \t]*:[^\r\n]*chunked", re.I)

# What the next bytes of the connection are.
HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, TRAILERS, LOST = range(6)


class HeaderGuard(asyncio.Protocol):
    """Wraps aiohttp's protocol; every byte passes through unchanged."""

    __slots__ = ("inner", "timeout", "transport", "timer", "state", "buf", "left")

    def __init__(self, inner: asyncio.Protocol, timeout: float):
        self.inner = inner
        self.timeout = timeout
        self.transport: asyncio.BaseTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.state = HEAD
        #: The head (or chunk-size line, or trailers) received so far.
        self.buf = bytearray()
        #: Body bytes still to come (BODY, CHUNK_DATA).
        self.left = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._arm()  # a connection that sends nothing at all is timed too
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._follow(data)
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def connection_lost(self, exc) -> None:
        self._disarm()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # --- timer -----------------------------------------------------------------------------

    def _arm(self) -> None:
        if self.timer is None and self.transport is not None:
            self.timer = asyncio.get_running_loop().call_later(self.timeout,
                                                               self.transport.close)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # --- framing ---------------------------------------------------------------------------

    def _follow(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end and self.state != LOST:
            if self.state == HEAD:
                pos = self._head(data, pos)
            elif self.state in (BODY, CHUNK_DATA):
                step = min(self.left, end - pos)
                pos += step
                self.left -= step
                if not self.left:
                    self.state = HEAD if self.state == BODY else CHUNK_SIZE
            else:
                pos = self._line(data, pos)

    def _head(self, data: bytes, pos: int) -> int:
        """Consume head bytes; at the head's end, stop the clock and learn the body's framing.

        The clock starts with the head's first byte; a head that arrives whole in one read
        (the usual case) never needs it, so no timer is armed for it.
        """
        start = len(self.buf)
        if not start:
            while pos < len(data) and data[pos] in b"\r\n":
                pos += 1  # leading blank lines: skipped by the parser, timed here
            at = data.find(END_OF_HEAD, pos, pos + MAX_HEAD)
            if at >= 0:
                return self._head_end(data[pos:at], at + len(END_OF_HEAD))
        self._arm()
        if pos == len(data):
            return pos
        self.buf += data[pos:pos + MAX_HEAD]
        at = self.buf.find(END_OF_HEAD, max(start - 3, 0))
        if at < 0:
            if len(self.buf) >= MAX_HEAD:
                self.state = LOST  # refused by aiohttp; the clock keeps running
            return len(data)
        head = bytes(self.buf[:at])
        self.buf.clear()
        return self._head_end(head, pos + at + len(END_OF_HEAD) - start)

    def _head_end(self, head: bytes, after: int) -> int:
        self._disarm()
        self._framing(head)
        return after

    def _framing(self, head: bytes) -> None:
        if _CHUNKED.search(head):
            self.state = CHUNK_SIZE
            return
        length = _CONTENT_LENGTH.search(head)
        self.left = int(length.group(1)) if length else 0
        self.state = BODY if self.left else HEAD

    def _line(self, data: bytes, pos: int) -> int:
        """A chunk-size line, or the trailer section that ends a chunked body."""
        start = len(self.buf)
        self.buf += data[pos:pos + MAX_LINE]
        if self.state == CHUNK_SIZE:
            at = self.buf.find(CRLF, max(start - 1, 0))
            done = at + len(CRLF)
        elif self.buf.startswith(CRLF):  # TRAILERS: none
            at, done = 0, len(CRLF)
        else:
            at = self.buf.find(END_OF_HEAD, max(start - 3, 0))
            done = at + len(END_OF_HEAD)
        if at < 0:
            if len(self.buf) >= MAX_LINE:
                self.state = LOST
            return len(data)
        line = bytes(self.buf[:at])
        self.buf.clear()
        if self.state == TRAILERS:
            self.state = HEAD
        else:
            self._chunk(line)
        return pos + done - start

    def _chunk(self, line: bytes) -> None:
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            self.state = LOST  # refused by aiohttp, which closes the connection
            return
        if size:
            self.state, self.left = CHUNK_DATA, size + len(CRLF)
        else:
            self.state = TRAILERS

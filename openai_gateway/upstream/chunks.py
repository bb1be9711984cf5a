"""Relaying a body that is not SSE chunk by chunk as it arrives: speech audio (`audio/mpeg`,
`audio/wav`, `audio/pcm` ...), which OpenAI sends with `Transfer-Encoding: chunked` while it
speaks, so a player can start before the end.

The answer keeps the upstream's status and Content-Type, is sent chunked (its length is not
known before the end) and never compressed (audio does not compress, and a compressor holds
bytes back). Audio has no place for an error event: an upstream that breaks or goes silent
mid-answer ends the client's connection without the chunked body's last chunk, so the client
sees a truncated transfer (the SDKs raise) rather than audio that merely stops.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from .sse import drop, write_within

#: The first bytes of the answer kept in `ChunksOutcome.head` (a WAV file's header).
HEAD_BYTES = 4096


@dataclass(slots=True)
class ChunksOutcome:
    #: Bytes written to the client (for WAV and PCM, the seconds of speech delivered).
    sent_bytes: int = 0
    #: The answer's first HEAD_BYTES.
    head: bytes = b""
    #: The whole answer, when asked to record it and it was no larger than asked (else None).
    recorded: list[bytes] | None = None
    #: The upstream's body ended whole.
    complete: bool = False
    upstream_failed: bool = False
    #: The client left, or read nothing within the write timeout.
    client_gone: bool = False


async def relay_chunks(request: web.Request, upstream: aiohttp.ClientResponse,
                       headers: dict[str, str], outcome: ChunksOutcome, *,
                       idle_timeout: float, write_timeout: float | None = None,
                       record: int = 0) -> web.StreamResponse:
    """Write the upstream's body to the client as it arrives; `outcome` is filled as it goes.
    idle_timeout: the longest silence of the upstream between two chunks; write_timeout: as in
    sse.relay; record: keep the answer in `outcome.recorded` while it is at most this many
    bytes (0: never)."""
    recorded: list[bytes] | None = [] if record > 0 else None
    outcome.recorded = recorded
    out = web.StreamResponse(status=upstream.status, headers=headers)
    out.content_type = upstream.content_type
    out.enable_chunked_encoding()
    await out.prepare(request)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(idle_timeout) as idle:
            async for chunk in upstream.content.iter_any():
                idle.reschedule(loop.time() + idle_timeout)
                if not await _sent(request, out, chunk, write_timeout, outcome):
                    return out
                if len(outcome.head) < HEAD_BYTES:
                    outcome.head += chunk[:HEAD_BYTES - len(outcome.head)]
                outcome.sent_bytes += len(chunk)
                if recorded is not None:
                    if outcome.sent_bytes > record:
                        recorded = outcome.recorded = None  # too large to keep
                    else:
                        recorded.append(chunk)
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        outcome.upstream_failed = True
        drop(request)  # no last chunk: the client sees the answer cut short
        return out
    outcome.complete = True
    await _sent(request, out, None, write_timeout, outcome)
    return out


async def _sent(request: web.Request, out: web.StreamResponse, data: bytes | None,
                timeout: float | None, outcome: ChunksOutcome) -> bool:
    """Write to the client; False when it is gone (a client's reset, told apart from the
    upstream's: aiohttp's reset error is both a client and a connection error)."""
    try:
        await write_within(request, out, data, timeout)
    except ConnectionResetError:
        outcome.client_gone = True
        return False
    return True

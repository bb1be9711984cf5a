"""Reading a request body: bounded in size and time; compressed bodies refused or bounded.

`server.compressed_bodies` decides what a `Content-Encoding` other than identity gets:
"refuse" (the default) answers 415 before anything is inflated; "inflate" accepts gzip and
deflate and stops at `max_body_bytes` of inflated bytes (413): a 1 KB gzip body inflates to a
megabyte, and nothing about it should be free.

Best with aiohttp's own inflation off (`handler_args={"auto_decompress": False}`): then a
refused body is discarded as the compressed bytes it is, and "inflate" inflates here with a
hard bound. With aiohttp inflating, the running total below still bounds what is kept.
"""
from __future__ import annotations

import asyncio
import zlib

from aiohttp import web

from ..errors import BodyTooLarge, InvalidRequest, RequestTimeout, UnsupportedEncoding

#: Codings "inflate" accepts (zlib is always there; brotli and zstd need extra packages).
INFLATABLE = frozenset({"gzip", "x-gzip", "deflate"})


def body_coding(content_encoding: str | None, mode: str) -> str:
    """The body's content coding ("" for none), or 415 by `server.compressed_bodies`."""
    coding = (content_encoding or "").strip().lower()
    if coding in ("", "identity"):
        return ""
    if mode == "inflate" and coding in INFLATABLE:
        return coding
    accepted = "gzip or deflate, or none" if mode == "inflate" else "none"
    raise UnsupportedEncoding(f"Content-Encoding {coding[:40]!r} is not accepted by this "
                              f"gateway (accepted: {accepted}).")


async def read_body(request: web.Request, *, max_bytes: int, timeout: float,
                    compressed: str) -> bytes:
    """The request body, at most `max_bytes` (after inflation), within `timeout` seconds.

    Raises UnsupportedEncoding (415), BodyTooLarge (413), RequestTimeout (408) or, for a body
    that does not inflate, InvalidRequest (400).
    """
    coding = body_coding(request.headers.get("Content-Encoding"), compressed)
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyTooLarge(f"Request body is {request.content_length} bytes; this gateway "
                           f"accepts at most {max_bytes}.")
    try:
        if request.content.is_eof() and not coding:
            return await request.read()  # usual for small bodies: already here, no timer
        async with asyncio.timeout(timeout):
            if not coding:
                return await request.read()
            if request.content.total_compressed_bytes is not None:  # aiohttp inflates
                return await _read_bounded(request, max_bytes)
            return _inflate(await request.read(), coding, max_bytes)
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"Request body is larger than {max_bytes} bytes.") from None
    except TimeoutError:
        raise RequestTimeout("The request body was not received in time.") from None


async def _read_bounded(request: web.Request, max_bytes: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"Request body inflates to more than {max_bytes} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _inflate(data: bytes, coding: str, max_bytes: int) -> bytes:
    """Inflate at most `max_bytes`; one gzip member or one zlib (or raw deflate) stream."""
    if coding == "deflate":
        wbits = 15 if data[:1] and data[0] & 0x0F == 8 else -15  # zlib header, or raw deflate
    else:
        wbits = 16 + 15
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error:
        raise InvalidRequest(f"The request body could not be inflated as {coding}.") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise BodyTooLarge(f"Request body inflates to more than {max_bytes} bytes.")
    if not inflater.eof or inflater.unused_data:
        raise InvalidRequest(f"The request body could not be inflated as {coding}.")
    return out

"""Multipart uploads: read once into a spool, bounded in size and time, parsed with aiohttp's own
`MultipartReader`, relayed byte for byte.

`receive(request, max_bytes=..., timeout=...)` answers with an `Upload`, or raises:
- 400 `invalid_multipart`: a Content-Type that is not `multipart/form-data`, a missing or bad
  boundary, a body that ends before its closing boundary (a truncated upload), a part without
  a name or nested multipart, too many parts;
- 413 `request_too_large`: as soon as Content-Length says more than `max_bytes`, before
  reading anything; else as soon as the bytes read pass it, and nothing more is read (a 100 MB
  body is never read to refuse it);
- 408 `request_timeout`: the body did not arrive within `timeout` seconds;
- 415 `unsupported_content_encoding`: a compressed upload.
A client that leaves before its body is whole (the connection ends before Content-Length
bytes) has nobody left to answer: aiohttp's ConnectionResetError (or the handler's
cancellation) goes up as it is, and what was spooled is dropped.
The body is spooled (tempfile.SpooledTemporaryFile: in memory up to SPOOL_MEMORY, then in a
temporary file), so a 25 MB upload does not sit in memory; the parse then reads the spool
once more, keeping of each part its name, file name, content type, size, the first bytes of a
file (its format and a WAV's length) and the text of a short text field: `Upload.parts`, what
policy.request's `check_form` takes.

What goes upstream is the spooled bytes exactly as received (the same boundary, every part,
file names, content types, repeated names, preamble and epilogue) with the original
Content-Type: `Upload.payload()` streams them from the spool, and can be sent again for a
retry. The caller closes the upload (`with upload:`) when the exchange is over.

The spool is written and read in the event loop, CHUNK at a time: a temporary file's writes
and reads go to the page cache (some 10 us for 64 KB), where a thread hop per chunk costs
more than it saves.
"""
from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import Iterator
from typing import IO

import aiohttp
from aiohttp import BodyPartReader, MultipartReader, hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import BadHttpMessage

from ..errors import BodyTooLarge, InvalidRequest, RequestTimeout
from ..policy.form import HEAD_BYTES, MAX_TEXT_BYTES, FormPart
from .bodies import body_coding

#: Bytes of an upload held in memory before the spool moves to a temporary file.
SPOOL_MEMORY = 256 * 1024
#: Bytes read or written at a time.
CHUNK = 64 * 1024
#: The longest line the multipart parse reads (a boundary, a part header): aiohttp's own
#: header field limit.
MAX_LINE = 8190
#: Parts one upload may have (an image edit: 16 images, a mask and some 20 fields).
MAX_PARTS = 100
MULTIPART = "multipart/form-data"
CODE = "invalid_multipart"


class Upload:
    """An upload received whole: the raw bytes in `spool`, `size` of them, the original
    `content_type`, and the `parts` as read (policy.form.FormPart)."""

    def __init__(self, spool: IO[bytes], size: int, content_type: str,
                 parts: list[FormPart]):
        self.spool = spool
        self.size = size
        self.content_type = content_type
        self.parts = parts

    @property
    def headers(self) -> dict[str, str]:
        """The headers the body goes upstream with: its own Content-Type (boundary and all)
        and its exact length."""
        return {hdrs.CONTENT_TYPE: self.content_type, hdrs.CONTENT_LENGTH: str(self.size)}

    def payload(self) -> SpooledPayload:
        """The body for `ClientSession.request(data=...)`, read from the spool as it is sent;
        it can be sent more than once (a retry, a fallback upstream)."""
        return SpooledPayload(self)

    def chunks(self) -> Iterator[bytes]:
        """The raw bytes from the start, CHUNK at a time."""
        at = 0
        while at < self.size:
            self.spool.seek(at)
            data = self.spool.read(min(CHUNK, self.size - at))
            if not data:
                return
            at += len(data)
            yield data

    def close(self) -> None:
        self.spool.close()

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SpooledPayload(aiohttp.Payload):
    """An upload's bytes as an aiohttp request body (aiohttp's documented way to send a body
    of one's own: a `Payload` subclass). Nothing to close: the upload owns its spool."""

    def __init__(self, upload: Upload):
        super().__init__(upload, content_type=upload.content_type)
        self.upload = upload

    @property
    def size(self) -> int:
        return self.upload.size

    @property
    def autoclose(self) -> bool:
        return True

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter,
                                content_length: int | None) -> None:
        left = self.upload.size if content_length is None else content_length
        for data in self.upload.chunks():
            if left <= 0:
                return
            await writer.write(data[:left])
            left -= len(data)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self.upload.chunks()).decode(encoding, errors)


async def receive(request: web.Request, *, max_bytes: int, timeout: float,
                  digest: bool = False) -> Upload:
    """Read, bound and parse a multipart upload (see the module docstring); `digest`: each
    part's SHA-256 in its `FormPart.sha256` (for a cache key; off, nothing is hashed)."""
    content_type = request.headers.get(hdrs.CONTENT_TYPE, "")
    if request.content_type != MULTIPART:
        raise InvalidRequest(f"This route takes a {MULTIPART} body (got Content-Type "
                             f"{content_type[:80]!r}).", code=CODE)
    try:
        MultipartReader(request.headers, request.content)  # checks the boundary, reads nothing
    except ValueError as exc:
        raise InvalidRequest(f"The Content-Type's boundary is missing or invalid: {exc}."[:200],
                             code=CODE) from None
    body_coding(request.headers.get(hdrs.CONTENT_ENCODING), "refuse")
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyTooLarge(f"The upload is {request.content_length} bytes; this gateway "
                           f"accepts at most {max_bytes} (validation.max_upload_bytes).")
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
    try:
        size = await _spool(request, spool, max_bytes, timeout)
        spool.seek(0)
        parts = await _parse(request.headers, spool, size, digest)
    except BaseException:
        spool.close()
        raise
    return Upload(spool, size, content_type, parts)


async def _spool(request: web.Request, spool: IO[bytes], max_bytes: int,
                 timeout: float) -> int:
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise BodyTooLarge(f"The upload is larger than {max_bytes} bytes "
                                       "(validation.max_upload_bytes).")
                spool.write(chunk)
    except TimeoutError:
        raise RequestTimeout("The upload was not received in time.") from None
    return size


async def _parse(headers, spool: IO[bytes], size: int, digest: bool) -> list[FormPart]:
    """The parts of the spooled body, read with aiohttp's MultipartReader."""
    reader = MultipartReader(headers, _SpoolStream(spool, size))  # type: ignore[arg-type]
    parts: list[FormPart] = []
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise InvalidRequest("A part of the upload is itself multipart; send each "
                                     "parameter as a part of its own.", code=CODE)
            if len(parts) >= MAX_PARTS:
                raise InvalidRequest(f"The upload has more than {MAX_PARTS} parts.", code=CODE)
            parts.append(await _read_part(part, digest))
    except ValueError as exc:  # what MultipartReader raises for a body it cannot follow
        raise InvalidRequest("The multipart body is truncated or malformed (no closing "
                             f"boundary, or a part that does not end): {exc}"[:300],
                             code=CODE) from None
    except BadHttpMessage:
        raise InvalidRequest("A part's headers are malformed or too long.", code=CODE) from None
    return parts


async def _read_part(part: BodyPartReader, digest: bool) -> FormPart:
    """A part's name, file name, content type and size; a file's first bytes, a text's value;
    with `digest`, the SHA-256 of its bytes."""
    filename = part.filename
    keep = HEAD_BYTES if filename is not None else MAX_TEXT_BYTES + 1
    size, kept = 0, bytearray()
    hashed = hashlib.sha256() if digest else None
    while chunk := await part.read_chunk(CHUNK):
        size += len(chunk)
        if hashed is not None:
            hashed.update(chunk)
        if len(kept) < keep:
            kept += chunk[:keep - len(kept)]
    value = None
    if filename is None and size <= MAX_TEXT_BYTES:
        try:
            value = bytes(kept).decode("utf-8")
        except UnicodeDecodeError:
            value = None
    return FormPart(part.name, filename, part.headers.get(hdrs.CONTENT_TYPE), size, value,
                    bytes(kept) if filename is not None else b"",
                    hashed.hexdigest() if hashed is not None else "")


class _SpoolStream:
    """The spooled body read as aiohttp's StreamReader is read by MultipartReader (`read`,
    `readline`, `readany`, `at_eof`, `unread_data`), holding at most a line or a chunk."""

    def __init__(self, spool: IO[bytes], size: int):
        self._spool = spool
        self._left = size  # bytes not yet read from the spool
        self._buffer = b""  # read from the spool (or given back) and not consumed yet

    def at_eof(self) -> bool:
        return not self._buffer and self._left <= 0

    def unread_data(self, data: bytes) -> None:
        self._buffer = data + self._buffer

    def _fill(self, want: int) -> None:
        if self._left > 0 and len(self._buffer) < want:
            data = self._spool.read(min(max(want - len(self._buffer), CHUNK), self._left))
            self._left = 0 if not data else self._left - len(data)
            self._buffer += data

    async def read(self, n: int = -1) -> bytes:
        n = CHUNK if n < 0 else n
        self._fill(n)
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    async def readany(self) -> bytes:
        return await self.read(CHUNK)

    async def readline(self, *, max_line_length: int | None = None) -> bytes:
        limit = max_line_length or MAX_LINE
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                if end + 1 > limit:
                    break
                line, self._buffer = self._buffer[:end + 1], self._buffer[end + 1:]
                return line
            if len(self._buffer) > limit:
                break
            if self._left <= 0:
                line, self._buffer = self._buffer, b""
                return line
            self._fill(len(self._buffer) + CHUNK)
        raise ValueError(f"a line of the multipart body is longer than {limit} bytes")


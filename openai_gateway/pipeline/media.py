"""The voice and pictures routes' own parts of a request's path, for proxy.py to order.

- The body: transcriptions and translations are multipart uploads, and so is an image edit
  unless it is JSON (`application/json`, images by reference); they are read by
  pipeline.uploads (spooled, bounded by `validation.max_upload_bytes` and
  `server.body_timeout`) and checked by the policy's `check_form`. Everything else, speech
  and generations included, is JSON, read and checked as on the text routes.
- What goes upstream: an upload's bytes exactly as received with its own Content-Type
  (boundary and all), from the spool, as often as a retry needs; JSON as on the text routes.
- How long the upstream may take: `upstream.media_timeout`, before the first byte and between
  two chunks (an image takes minutes).
- The answer: speech audio is relayed chunk by chunk as it arrives (upstream.chunks), and a
  speech answer in WAV or PCM relayed whole is settled by the seconds it plays
  (`Exchange.relayed`); SSE (speech, transcripts, images) by upstream.sse; the rest whole.
- The cache: the key of an upload covers every part's name, file name, content type and
  bytes (by SHA-256); answers that are neither JSON nor SSE are kept with their Content-Type.
"""
from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from aiohttp import web

from ..cache.keys import Entry
from ..config.serving import UpstreamSettings
from ..errors import GatewayError
from ..metering import units as unit_money
from ..policy import ParsedRequest, images, speech, transcription
from ..upstream.chunks import ChunksOutcome, relay_chunks
from . import uploads
from .exchange import JSON, Answer, Exchange
from .validation import Validator

ROUTES = frozenset({speech.ROUTE, transcription.TRANSCRIPTIONS, transcription.TRANSLATIONS,
                    images.GENERATIONS, images.EDITS})
#: Routes whose body is always a multipart upload (image edits: unless JSON).
UPLOADS = frozenset({transcription.TRANSCRIPTIONS, transcription.TRANSLATIONS})
SSE = "text/event-stream"


def takes_upload(ex: Exchange) -> bool:
    return ex.route in UPLOADS or (ex.route == images.EDITS
                                   and ex.request.content_type != JSON)


async def receive(ex: Exchange, validator: Validator, *, timeout: float,
                  digest: bool) -> ParsedRequest:
    """Read the upload into `ex.upload` and check its parts. `digest`: hash every part (the
    route is cached). A refused upload closes the connection: the rest is never read."""
    try:
        ex.upload = await uploads.receive(ex.request, max_bytes=validator.max_upload_bytes,
                                          timeout=timeout, digest=digest)
    except GatewayError as exc:
        exc.close_connection = True
        raise
    return validator.check_form(ex.route, ex.upload.parts, ex.caller.models,
                                upload_bytes=ex.upload.size)


def outbound(ex: Exchange, raw: bytes
             ) -> tuple[bytes | aiohttp.Payload, Mapping[str, str] | None]:
    """(the body to send, its own headers: None for JSON)."""
    if ex.upload is not None:
        return ex.upload.payload(), ex.upload.headers
    return raw, None


def waits(route: str, settings: UpstreamSettings) -> tuple[float, float]:
    """(first-byte timeout, idle timeout) of a route's upstream exchange."""
    if route in ROUTES:
        return settings.media_timeout, settings.media_timeout
    return settings.first_byte_timeout, settings.idle_timeout


def streams(parsed: ParsedRequest) -> bool:
    """The answer is relayed as it arrives: SSE, or speech audio."""
    return parsed.stream or parsed.route == speech.ROUTE


def relayed_as(ex: Exchange, resp: aiohttp.ClientResponse) -> str | None:
    """How a 200 answer to a streamed request is relayed: "sse", "audio", or None (read whole:
    an error, or an upstream that answered JSON, as whisper-1 does to `stream: true`)."""
    if resp.status != 200:
        return None
    if resp.content_type == SSE:
        return "sse" if ex.valid.stream else None
    if ex.route == speech.ROUTE and not ex.valid.stream and resp.content_type != JSON:
        return "audio"
    return None


async def relay_audio(ex: Exchange, resp: aiohttp.ClientResponse, *, idle_timeout: float,
                      write_timeout: float, record: int) -> tuple[web.StreamResponse,
                                                                  ChunksOutcome]:
    """Speech audio to the client as it arrives; `record`: bytes of it to keep for the cache
    (0: none). A token-billed answer relayed whole in WAV or PCM sets `ex.relayed`."""
    outcome = ChunksOutcome()
    out = await relay_chunks(ex.request, resp, ex.headers, outcome, idle_timeout=idle_timeout,
                             write_timeout=write_timeout, record=record)
    units = ex.valid.units
    if outcome.complete and units is not None:
        seconds = speech.played_seconds(ex.valid.body.get("response_format"), outcome.head,
                                        outcome.sent_bytes)
        if seconds is not None:
            ex.relayed = unit_money.spoken(units, seconds)
    return out, outcome


def key_body(ex: Exchange) -> object:
    """What a cache key covers of the request: its JSON body, or every part of its upload
    (name, file name, content type and the SHA-256 of its bytes)."""
    if ex.upload is None:
        return ex.valid.body
    return [[p.name, p.filename, p.content_type, p.sha256] for p in ex.upload.parts]


def cache_entry(ex: Exchange, answer: Answer) -> Entry | None:
    """The cache entry of a complete 200 answer: JSON; on these routes also text (a transcript
    as text or subtitles), kept with its Content-Type."""
    if answer.content_type == JSON:
        return Entry(False, answer.body)
    if ex.route in ROUTES and answer.content_type.startswith("text/") \
            and answer.content_type != SSE:
        charset = f"; charset={answer.charset}" if answer.charset else ""
        return Entry(False, answer.body, answer.content_type + charset)
    return None


def audio_entry(resp: aiohttp.ClientResponse, outcome: ChunksOutcome) -> Entry | None:
    """The cache entry of speech audio relayed whole and recorded, with its Content-Type."""
    if not outcome.complete or outcome.recorded is None:
        return None
    return Entry(False, b"".join(outcome.recorded), resp.content_type)

"""A fake of OpenAI's voice and pictures routes, answering with small real media.

Routes (`add_to(app)` mounts them; `FakeOpenAI` does it by default):
- `POST /v1/audio/speech` (JSON): a tone as long as the fake takes to say the input, as WAV
  (PCM for `response_format: "pcm"`; the fake encodes no MP3, Opus, AAC or FLAC and labels what
  it sends `audio/wav`), written in chunks of `chunk_bytes` with `pace` seconds between them; or,
  with `stream_format: "sse"` (not for tts-1 / tts-1-hd, as OpenAI), `speech.audio.delta`
  events of base64 PCM and a `speech.audio.done` event with the usage;
- `POST /v1/audio/transcriptions` and `/v1/audio/translations` (multipart): a fake transcript
  of the upload's length (a WAV's from its header); json, text, srt, vtt, verbose_json or
  diarized_json; `stream: true` (not whisper-1, which ignores it) answers
  `transcript.text.delta` events and `transcript.text.done` with the usage;
- `POST /v1/images/generations` (JSON) and `/v1/images/edits` (multipart with `image` or
  repeated `image[]` file parts and an optional `mask`, or JSON with `images`): `n` small PNGs
  as `b64_json` (URLs for DALL-E unless asked otherwise); `stream: true` answers
  `partial_images` partial events per image, then the completed event with the usage.
  `image_event_bytes` grows every image to about that many base64 characters.

Usage is reported as OpenAI reports it per model (media_formats). `ledger` records every
request (each multipart part hashed) and what each answer cost (media_ledger). The fake
answers a malformed request (a file field sent as text, a missing field) with a 400 in
OpenAI's shape, which is what a relay that damaged the body would meet.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import time
from dataclasses import dataclass, field

import orjson
from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import BadHttpMessage

from .formats import new_id, sse
from .media_formats import (
    DALL_E,
    IMAGE_TOKENS,
    SPEECH_TYPES,
    TTS_BY_CHARACTER,
    WHISPER,
    b64_png,
    image_usage,
    pcm,
    speech_seconds,
    speech_usage,
    transcription_usage,
    wav,
    wav_seconds,
)
from .media_ledger import MediaLedger, MediaRequest, PartSeen, Produced

SPEECH = "/v1/audio/speech"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"
#: Bytes of a file part kept to read its header (a WAV's length).
HEAD_BYTES = 64 * 1024
#: An upload the fake cannot read the length of plays this many bytes a second (128 kbit/s).
ASSUMED_BYTES_PER_SECOND = 16_000
#: Text parts longer than this are recorded by hash and size only.
MAX_VALUE_BYTES = 1024 * 1024
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


class _Refused(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


@dataclass
class FakeMedia:
    """The fake voice and pictures API; `add_to(app)` mounts its routes on an aiohttp app."""

    #: Seconds between speech chunks and between stream events.
    pace: float = 0.0
    #: Bytes of audio per written chunk (4,800: a tenth of a second of PCM).
    chunk_bytes: int = 4800
    #: Base64 characters per image (0: the PNG's natural size, about 1 KB).
    image_event_bytes: int = 0
    #: Added to every answer.
    headers: dict[str, str] = field(default_factory=dict)
    ledger: MediaLedger = field(default_factory=MediaLedger)

    def add_to(self, app: web.Application) -> None:
        app.router.add_post(SPEECH, self.speech)
        app.router.add_post(TRANSCRIPTIONS, self.transcriptions)
        app.router.add_post(TRANSLATIONS, self.translations)
        app.router.add_post(GENERATIONS, self.generations)
        app.router.add_post(EDITS, self.edits)

    # --- shared pieces -------------------------------------------------------------------

    def error(self, status: int, message: str, param: str | None = None) -> web.Response:
        return web.Response(body=orjson.dumps({"error": {
            "message": message, "type": "invalid_request_error", "param": param,
            "code": None}}), status=status, content_type="application/json",
            headers=self.headers)

    def json(self, doc: dict) -> web.Response:
        return web.Response(body=orjson.dumps(doc), content_type="application/json",
                            headers=self.headers)

    async def _json_body(self, request: web.Request, route: str) -> dict:
        raw = await request.read()
        self.ledger.requests.append(MediaRequest(route, request.content_type,
                                                 dict(request.headers)))
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _Refused("We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise _Refused("The body of your request must be a JSON object.")
        self.ledger.requests[-1].json = body
        return body

    async def _form(self, request: web.Request, route: str
                    ) -> tuple[dict[str, list[str]], dict[str, list[tuple[PartSeen, bytes]]]]:
        """(text values by name, file parts by name with their first HEAD_BYTES), every part
        recorded in the ledger as it arrived."""
        seen = MediaRequest(route, request.headers.get(hdrs.CONTENT_TYPE, ""),
                            dict(request.headers))
        self.ledger.requests.append(seen)
        values: dict[str, list[str]] = {}
        files: dict[str, list[tuple[PartSeen, bytes]]] = {}
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise _Refused("Nested multipart bodies are not supported.")
                digest, size, head = hashlib.sha256(), 0, bytearray()
                while chunk := await part.read_chunk(64 * 1024):
                    digest.update(chunk)
                    size += len(chunk)
                    if len(head) < max(HEAD_BYTES, MAX_VALUE_BYTES):
                        head += chunk[:max(HEAD_BYTES, MAX_VALUE_BYTES) - len(head)]
                text = None
                if part.filename is None and size <= MAX_VALUE_BYTES:
                    text = bytes(head).decode("utf-8", "replace")
                record = PartSeen(part.name, part.filename,
                                  part.headers.get(hdrs.CONTENT_TYPE), size, digest.hexdigest(),
                                  text)
                seen.parts.append(record)
                if part.name is None:
                    continue
                if part.filename is None:
                    values.setdefault(part.name, []).append(text or "")
                else:
                    files.setdefault(part.name, []).append((record, bytes(head[:HEAD_BYTES])))
        except (ValueError, AssertionError, KeyError, BadHttpMessage):
            raise _Refused("Could not parse multipart form.") from None
        return values, files

    async def _stream(self, request: web.Request, events: list[bytes]) -> web.StreamResponse:
        out = web.StreamResponse(headers={**SSE_HEADERS, **self.headers})
        await out.prepare(request)
        return await self._write(out, events)

    async def _write(self, out: web.StreamResponse, pieces: list[bytes]) -> web.StreamResponse:
        """Each piece, `pace` seconds apart; a client that left ends it (as it ends a real
        generation)."""
        try:
            for piece in pieces:
                await out.write(piece)
                if self.pace:
                    await asyncio.sleep(self.pace)
            await out.write_eof()
        except ConnectionResetError:
            pass
        return out

    # --- speech --------------------------------------------------------------------------

    async def speech(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._json_body(request, SPEECH)
            text, model = body.get("input"), body.get("model")
            if not isinstance(text, str) or not isinstance(model, str):
                raise _Refused("'model' and 'input' are required strings.", "input")
            speed = body.get("speed") or 1.0
            sse_format = body.get("stream_format") == "sse"
            if sse_format and model in TTS_BY_CHARACTER:
                raise _Refused(f"stream_format 'sse' is not supported for {model}.",
                               "stream_format")
        except _Refused as refused:
            return self.error(400, refused.message, refused.param)
        seconds = speech_seconds(text, float(speed))
        spoken = text + (body.get("instructions") or "")
        usage = speech_usage(spoken, seconds)
        billed = {"characters": len(text)} if model in TTS_BY_CHARACTER else usage
        self.ledger.produced.append(Produced(SPEECH, model, billed))
        samples = pcm(seconds)
        if sse_format:
            step = self.chunk_bytes
            events = [sse({"type": "speech.audio.delta",
                           "audio": base64.b64encode(samples[i:i + step]).decode()})
                      for i in range(0, len(samples), step)]
            events.append(sse({"type": "speech.audio.done", "usage": usage}))
            return await self._stream(request, events)
        fmt = body.get("response_format") or "mp3"
        audio = samples if fmt == "pcm" else wav(seconds)
        out = web.StreamResponse(headers={
            "Content-Type": SPEECH_TYPES.get(fmt, "audio/wav"), **self.headers})
        out.enable_chunked_encoding()  # as OpenAI: Transfer-Encoding: chunked
        await out.prepare(request)
        step = self.chunk_bytes
        return await self._write(out, [audio[i:i + step] for i in range(0, len(audio), step)])

    # --- transcriptions and translations -----------------------------------------------------

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        return await self._audio(request, TRANSCRIPTIONS)

    async def translations(self, request: web.Request) -> web.StreamResponse:
        return await self._audio(request, TRANSLATIONS)

    async def _audio(self, request: web.Request, route: str) -> web.StreamResponse:
        try:
            values, files = await self._form(request, route)
            model = _one(values, "model")
            upload = files.get("file")
            if "file" in values:
                raise _Refused("'file' must be a file, not a text field.", "file")
            if not upload:
                raise _Refused("Missing required parameter: 'file'.", "file")
            if model is None:
                raise _Refused("Missing required parameter: 'model'.", "model")
        except _Refused as refused:
            return self.error(400, refused.message, refused.param)
        record, head = upload[0]
        seconds = wav_seconds(head) or record.size / ASSUMED_BYTES_PER_SECOND
        task = "translate" if route == TRANSLATIONS else "transcribe"
        text = f"This is a fake {task[:-1]}ion of {seconds:.1f} seconds of audio."
        prompt = _one(values, "prompt") or ""
        usage = transcription_usage(model, seconds, prompt, text)
        fmt = _one(values, "response_format") or "json"
        stream = _one(values, "stream") == "true" and model != WHISPER and route == TRANSCRIPTIONS
        # A translation's answer reports no usage (spec: CreateTranslationResponse*).
        reported = route == TRANSCRIPTIONS and fmt in ("json", "diarized_json")
        self.ledger.produced.append(Produced(route, model, usage))
        if stream:
            deltas = [sse({"type": "transcript.text.delta", "delta": word})
                      for word in _pieces(text)]
            done = sse({"type": "transcript.text.done", "text": text, "usage": usage})
            return await self._stream(request, [*deltas, done])
        if fmt in ("text", "srt", "vtt"):
            return web.Response(text=_subtitles(fmt, text, seconds), content_type="text/plain",
                                headers=self.headers)
        doc: dict = {"text": text}
        if fmt == "verbose_json":
            doc = {"task": task, "language": "english", "duration": seconds, "text": text,
                   "segments": [_segment(text, seconds)]}
            if route == TRANSCRIPTIONS:
                doc["usage"] = {"type": "duration", "seconds": math.ceil(seconds)}
        elif fmt == "diarized_json":
            doc = {"task": "transcribe", "duration": seconds, "text": text,
                   "segments": [{"type": "transcript.text.segment", "id": "seg_001",
                                 "start": 0.0, "end": seconds, "text": text, "speaker": "A"}]}
        if reported and "usage" not in doc:
            doc["usage"] = usage
        return self.json(doc)

    # --- images --------------------------------------------------------------------------

    async def generations(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._json_body(request, GENERATIONS)
        except _Refused as refused:
            return self.error(400, refused.message, refused.param)
        return await self._images(request, GENERATIONS, body, 0)

    async def edits(self, request: web.Request) -> web.StreamResponse:
        try:
            if request.content_type == "application/json":
                body = await self._json_body(request, EDITS)
                images = body.get("images")
                if not isinstance(images, list) or not images:
                    raise _Refused("Missing required parameter: 'images'.", "images")
                count = len(images) + (body.get("mask") is not None)
            else:
                values, files = await self._form(request, EDITS)
                for name in ("image", "image[]", "mask"):
                    if name in values:
                        raise _Refused(f"'{name}' must be a file, not a text field.", name)
                count = len(files.get("image", [])) + len(files.get("image[]", []))
                if not count:
                    raise _Refused("Missing required parameter: 'image'.", "image")
                count += len(files.get("mask", []))
                body = {name: _one(values, name) for name in values}
                for name in ("n", "partial_images"):
                    if body.get(name) is not None:
                        body[name] = int(body[name])
                body["stream"] = body.get("stream") == "true"
        except (_Refused, ValueError) as refused:
            message = getattr(refused, "message", "Invalid integer.")
            return self.error(400, message, getattr(refused, "param", None))
        return await self._images(request, EDITS, body, count)

    async def _images(self, request: web.Request, route: str, body: dict,
                      input_images: int) -> web.StreamResponse:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            return self.error(400, "Missing required parameter: 'prompt'.", "prompt")
        model = body.get("model") or ("dall-e-2" if route == GENERATIONS else "gpt-image-1.5")
        n = body.get("n") or 1
        size = body.get("size") or "auto"
        size = "1024x1024" if size == "auto" else size
        dall_e = model in DALL_E
        quality = body.get("quality") or "auto"
        quality = ("standard" if dall_e else "medium") if quality == "auto" else quality
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
        if dall_e:
            self.ledger.produced.append(Produced(route, model, {
                "images": n, "size": size, "quality": quality}))
            b64 = body.get("response_format") == "b64_json"
            return self.json({"created": int(time.time()), "data": [
                {"b64_json": b64_png(seed=seed + i, b64_bytes=self.image_event_bytes)} if b64
                else {"url": f"https://images.invalid/{new_id('img-')}.png"}
                for i in range(n)]})
        stream = body.get("stream") is True
        partials = (body.get("partial_images") or 0) if stream else 0
        table = IMAGE_TOKENS.get(quality, IMAGE_TOKENS["high"])
        priced = size if size in table else "1024x1024"
        fields = {"background": body.get("background") or "opaque",
                  "output_format": body.get("output_format") or "png", "size": priced,
                  "quality": quality if quality in IMAGE_TOKENS else "high"}
        usage = image_usage(prompt, n, fields["size"], fields["quality"],
                            partials=partials * n, input_images=input_images)
        self.ledger.produced.append(Produced(route, model, usage))
        if not stream:
            return self.json({"created": int(time.time()), "data": [
                {"b64_json": b64_png(seed=seed + i, b64_bytes=self.image_event_bytes)}
                for i in range(n)], **fields, "usage": usage})
        kind = "image_generation" if route == GENERATIONS else "image_edit"
        events = []
        for i in range(n):
            for k in range(partials):
                events.append(sse({"type": f"{kind}.partial_image", "b64_json": b64_png(
                    seed=seed + 1000 * k + i, b64_bytes=self.image_event_bytes),
                    "created_at": int(time.time()), **fields, "partial_image_index": k},
                    f"{kind}.partial_image"))
            # Each completed event carries the usage so far: the last one the whole request's.
            so_far = image_usage(prompt, i + 1, fields["size"], fields["quality"],
                                 partials=partials * (i + 1), input_images=input_images)
            events.append(sse({"type": f"{kind}.completed", "b64_json": b64_png(
                seed=seed + i, b64_bytes=self.image_event_bytes),
                "created_at": int(time.time()), **fields, "usage": so_far},
                f"{kind}.completed"))
        return await self._stream(request, events)


def _one(values: dict[str, list[str]], name: str) -> str | None:
    found = values.get(name)
    return found[0] if found else None


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def _segment(text: str, seconds: float) -> dict:
    return {"id": 0, "seek": 0, "start": 0.0, "end": seconds, "text": text,
            "tokens": [], "temperature": 0.0, "avg_logprob": -0.2,
            "compression_ratio": 1.0, "no_speech_prob": 0.01}


def _subtitles(fmt: str, text: str, seconds: float) -> str:
    if fmt == "text":
        return text + "\n"
    end = time.strftime("%H:%M:%S", time.gmtime(seconds))
    if fmt == "srt":
        return f"1\n00:00:00,000 --> {end},000\n{text}\n\n"
    return f"WEBVTT\n\n00:00:00.000 --> {end}.000\n{text}\n\n"


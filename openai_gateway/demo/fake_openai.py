"""A fake OpenAI API: the demo's upstream, and (configured by the tests) their fake upstream.

It answers the routes the gateway forwards in OpenAI's formats: chat completions, completions,
embeddings, responses, moderations and the model list; speech, transcriptions, translations
and images through `media` (fake_media.FakeMedia, on by default). Chat, completions and
responses stream as server-sent events; `stream_options.include_usage` adds the usage-only
chunk (and `"usage": null` on every other chunk), as OpenAI does. `usage` has OpenAI's shapes,
details included: cached prompt tokens are counted inside the prompt tokens and reasoning tokens
inside the completion tokens. `max_completion_tokens` / `max_tokens` (chat), `max_tokens`
(completions) and `max_output_tokens` (responses) cut the answer: finish_reason "length", or a
response with status "incomplete" whose stream ends with `response.incomplete`.

Tokens are words: an answer costs one token a word; a prompt about one per four characters,
plus its images (chat `image_url`, Responses `input_image`) by OpenAI's rules for the model and
the `detail` (policy.media), at the size a data: URL's header gives, else REALISTIC_IMAGE.
As OpenAI does for chat and Responses, image tokens are counted in the prompt tokens without
a detail of their own.

A subclass decides what is said and how: `text()` is the answer, `pace()` the pause after each
streamed event. `receive()`, `send()` and `pause()` are where a test double records requests and
fails, stalls or drops them (tests/fake_upstream.py).
"""
from __future__ import annotations

import asyncio
import base64
import struct
import time
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from ..policy import media as vision
from ..policy import sniff
from .fake_media import FakeMedia
from .fake_realtime import FakeRealtime
from .formats import (
    DONE,
    Answer,
    chat_usage,
    count_tokens,
    last_user_text,
    moderation_result,
    new_id,
    response_doc,
    responses_events,
    responses_usage,
    sse,
    text_of,
    unit_vector,
    words,
)

#: The fields that cap an answer's tokens, per route, in the order OpenAI reads them
#: (max_tokens is deprecated for chat in favour of max_completion_tokens).
CAPS = {"chat": ("max_completion_tokens", "max_tokens"), "completions": ("max_tokens",),
        "responses": ("max_output_tokens",)}
#: OpenAI's embedding models are 1536-dimensional, except this one.
DIMENSIONS = {"text-embedding-3-large": 3072}
#: The size of an image the fake cannot see (a URL): a typical photo, 4 tiles on GPT-4o.
REALISTIC_IMAGE = (1024, 1024)


@dataclass
class FakeOpenAI:
    """The fake API; `app()` is its aiohttp application. Unknown paths get OpenAI's 404."""

    models: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small",
                               "omni-moderation-latest")
    #: Added to every answer.
    headers: dict[str, str] = field(default_factory=dict)
    owned_by: str = "system"
    #: Reported in the usage details (and counted in the prompt and completion tokens).
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    #: OpenAI opens a chat stream with a role-only chunk and ends it with an empty delta that
    #: carries finish_reason. Off: one chunk per word, the first with the role and the last with
    #: finish_reason (as some compatible servers send it).
    framed_chat_stream: bool = True
    #: The realtime routes (fake_realtime.FakeRealtime), served when given.
    realtime: FakeRealtime | None = None
    #: The voice and pictures routes (fake_media.FakeMedia); None: not served.
    media: FakeMedia | None = field(default_factory=FakeMedia)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/moderations", self.moderations)
        app.router.add_get("/v1/models", self.list_models)
        if self.realtime is not None:
            self.realtime.add_to(app)
        if self.media is not None:
            self.media.headers = self.headers
            self.media.add_to(app)
        app.router.add_route("*", "/{tail:.*}", self.unknown)
        return app

    # --- what a subclass decides -------------------------------------------------------------

    def text(self, request: web.Request, prompt: str, stream: bool) -> str:
        """The answer to `prompt` (the user's last message)."""
        return f"This is a fake answer to: {prompt}"

    def pace(self, request: web.Request) -> float:
        """Seconds to wait after each streamed event."""
        return 0.0

    async def receive(self, request: web.Request) -> dict | web.StreamResponse:
        """The request's JSON body, or the answer to send instead of a normal one."""
        raw = await request.read()
        if not raw:
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.error(400, "We could not parse the JSON body of your request.")
        return body if isinstance(body, dict) else self.error(
            400, "The body of your request must be a JSON object.")

    async def send(self, request: web.Request, out: web.StreamResponse, index: int,
                   event: bytes) -> bool:
        """Write the index-th event of a stream's body; False ends the stream there."""
        await out.write(event)
        return True

    async def pause(self, request: web.Request, index: int) -> None:
        if (seconds := self.pace(request)) > 0:
            await asyncio.sleep(seconds)

    def error(self, status: int, message: str, param: str | None = None,
              code: str | None = None) -> web.Response:
        return self.json({"error": {"message": message, "type": "invalid_request_error",
                                    "param": param, "code": code}}, status)

    def embed(self, inputs: list, body: dict) -> tuple[list, int]:
        """The embeddings of `inputs` (base64 when asked, as the Python SDK does) and the
        prompt tokens they cost. A vector depends only on its text: no meaning, but stable."""
        dims = body.get("dimensions")
        if not (isinstance(dims, int) and 0 < dims <= 3072):
            dims = DIMENSIONS.get(str(body.get("model")), 1536)
        vectors: list = []
        for item in inputs:
            vector = unit_vector(orjson.dumps(item), dims)
            if body.get("encoding_format") == "base64":
                vectors.append(base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode())
            else:
                vectors.append(vector)
        tokens = sum(len(i) if isinstance(i, list) else count_tokens(str(i)) for i in inputs)
        return vectors, tokens

    # --- shared pieces ---------------------------------------------------------------------

    def json(self, doc: dict, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(doc), status=status,
                            content_type="application/json", headers=self.headers)

    def answer(self, request: web.Request, body: dict, route: str, read: str,
               asked: str, seen=None) -> Answer:
        """The pieces to send, cut at the request's token cap; `read` is all the prompt text
        the model reads and `seen` what holds its images (they set the prompt tokens), `asked`
        what the user asked last."""
        pieces = words(self.text(request, asked, bool(body.get("stream"))))
        cap = next((body[f] for f in CAPS[route] if isinstance(body.get(f), int)), None)
        finish = "stop"
        if cap is not None and 0 <= cap < len(pieces):
            pieces, finish = pieces[:cap], "length"
        n = body.get("n")
        n = n if isinstance(n, int) and 1 <= n <= 16 and route != "responses" else 1
        prompt = count_tokens(read) + image_tokens(body.get("model"), seen)
        return Answer(pieces, finish, n, prompt, self.cached_tokens, self.reasoning_tokens)

    async def stream(self, request: web.Request, events: list[bytes],
                     tail: list[bytes]) -> web.StreamResponse:
        """An SSE answer: the body's events one by one with a pause after each, then the
        closing events (finish, usage, end marker) at once."""
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                          "Cache-Control": "no-cache", **self.headers})
        await out.prepare(request)
        for i, event in enumerate(events):
            if not await self.send(request, out, i, event):
                return out
            await self.pause(request, i)
        for event in tail:
            await out.write(event)
        await out.write_eof()
        return out

    # --- the routes ----------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self.receive(request)
        if not isinstance(body, dict):
            return body
        messages = body.get("messages")
        read = "".join(map(text_of, messages)) if isinstance(messages, list) else ""
        a = self.answer(request, body, "chat", read, last_user_text(messages), messages)
        head = {"id": new_id("chatcmpl-"), "object": "chat.completion",
                "created": int(time.time()), "model": body.get("model", self.models[0])}
        tags = {"service_tier": "default", "system_fingerprint": "fp_fake"}
        if not body.get("stream"):
            message: dict = {"role": "assistant", "content": a.text, "refusal": None,
                             "annotations": []}
            return self.json({**head, "choices": [
                {"index": i, "message": message, "logprobs": None, "finish_reason": a.finish}
                for i in range(a.choices)], "usage": chat_usage(a), **tags})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        head = dict(head, object="chat.completion.chunk", **tags)

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            doc = {**head, "choices": [{"index": i, "delta": delta, "logprobs": None,
                                        "finish_reason": finish} for i in range(a.choices)]}
            return sse(dict(doc, usage=None) if include_usage else doc)

        framed = self.framed_chat_stream or not a.pieces
        events = [chunk({"role": "assistant", "content": "", "refusal": None})] if framed else []
        for k, piece in enumerate(a.pieces):
            delta = {"content": piece} if framed or k else {"role": "assistant", "content": piece}
            last = not framed and k == len(a.pieces) - 1
            events.append(chunk(delta, a.finish if last else None))
        tail = [chunk({}, a.finish)] if framed else []
        if include_usage:
            tail.append(sse({**head, "choices": [], "usage": chat_usage(a)}))
        return await self.stream(request, events, tail + [DONE])

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self.receive(request)
        if not isinstance(body, dict):
            return body
        prompt = text_of(body.get("prompt"))
        a = self.answer(request, body, "completions", prompt, prompt)
        usage = chat_usage(a)
        usage = {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        head = {"id": new_id("cmpl-"), "object": "text_completion", "created": int(time.time()),
                "model": body.get("model", self.models[0]), "system_fingerprint": "fp_fake"}

        def choices(text: str, finish: str | None) -> list[dict]:
            return [{"text": text, "index": i, "logprobs": None, "finish_reason": finish}
                    for i in range(a.choices)]

        if not body.get("stream"):
            return self.json({**head, "choices": choices(a.text, a.finish), "usage": usage})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        extra = {"usage": None} if include_usage else {}
        events = [sse({**head, "choices": choices(p, None), **extra}) for p in a.pieces]
        tail = [sse({**head, "choices": choices("", a.finish), **extra})]
        if include_usage:
            tail.append(sse({**head, "choices": [], "usage": usage}))
        return await self.stream(request, events, tail + [DONE])

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await self.receive(request)
        if not isinstance(body, dict):
            return body
        read = text_of(body.get("instructions")) + text_of(body.get("input"))
        a = self.answer(request, body, "responses", read, last_user_text(body.get("input")),
                        body.get("input"))
        done = a.finish == "stop"
        part = {"type": "output_text", "text": a.text, "annotations": [], "logprobs": []}
        item = {"id": new_id("msg_"), "type": "message",
                "status": "completed" if done else "incomplete", "role": "assistant",
                "content": [part]}
        doc = response_doc(body, self.models[0], status="completed" if done else "incomplete",
                           output=[item], usage=responses_usage(a))
        if not body.get("stream"):
            return self.json(doc)
        return await self.stream(request, *responses_events(doc, item, a.pieces))

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self.receive(request)
        if not isinstance(body, dict):
            return body
        inputs = body.get("input")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs
                                       and isinstance(inputs[0], int)):
            inputs = [inputs]  # one text, or one text given as token ids
        if not isinstance(inputs, list) or not inputs:
            return self.error(400, "'input' must be a string or a non-empty array.", "input")
        vectors, tokens = self.embed(inputs, body)
        return self.json({"object": "list", "data": [
            {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": body.get("model", "text-embedding-3-small"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def moderations(self, request: web.Request) -> web.StreamResponse:
        body = await self.receive(request)
        if not isinstance(body, dict):
            return body
        inputs = body.get("input")
        inputs = inputs if isinstance(inputs, list) and not (
            inputs and isinstance(inputs[0], dict) and "type" in inputs[0]) else [inputs]
        return self.json({"id": new_id("modr-"),
                          "model": body.get("model", "omni-moderation-latest"),
                          "results": [moderation_result() for _ in inputs]})

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        if not isinstance(body := await self.receive(request), dict):
            return body
        return self.json({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": self.owned_by}
            for m in self.models]})

    async def unknown(self, request: web.Request) -> web.StreamResponse:
        await self.receive(request)
        return self.error(404, f"Invalid URL ({request.method} {request.path})")


def image_tokens(model, value) -> int:
    """The tokens of every image part in `value` (messages, Responses input, content)."""
    if isinstance(value, list):
        return sum(image_tokens(model, v) for v in value)
    if not isinstance(value, dict):
        return 0
    kind = value.get("type")
    if kind == "image_url" and isinstance(value.get("image_url"), dict):
        url, detail = value["image_url"].get("url"), value["image_url"].get("detail")
    elif kind == "input_image":
        url, detail = value.get("image_url"), value.get("detail")
    else:
        return image_tokens(model, value.get("content"))
    size = sniff.image_size(url) if isinstance(url, str) else None
    return vision.image_tokens(model if isinstance(model, str) else None, detail or "auto",
                              size or REALISTIC_IMAGE)

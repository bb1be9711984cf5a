"""Demo mode (`python gateway.py --demo`): a built-in upstream that needs no key and no network.

`DemoUpstream` is a small aiohttp app answering the forwarded routes in OpenAI's formats (canned
text, chat and completions streamed word by word at a model-like pace, `usage` included,
`stream_options.include_usage` honoured). It listens on an ephemeral loopback port in the
gateway's own event loop, and the gateway is pointed at it, so everything in front of it
(streaming, cache, limits, CORS, the playground) is the real thing.

Every demo answer says so: its text starts with "[demo]" and every gateway response carries
`X-Demo: true`. Demo mode is on only when `--demo` is given; it is one process, and SIGHUP does
not reload it.

What `--demo` changes (`demo_settings`): the upstream URL and key always, the gateway's own
origin is always added to `cors.allow_origins` (the playground's POSTs carry it), and the
`DEMO_DEFAULTS` below replace settings that still have their built-in value (a value the config
file changed wins).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import random
import re
import socket
import struct
import time
from dataclasses import replace

import orjson
from aiohttp import web

from .app import SETTINGS
from .playground import own_origins
from .settings import Settings

log = logging.getLogger("gateway")

DEMO_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "omni-moderation-latest")
#: Sent upstream instead of a real key: the demo upstream ignores it, and it is not a secret.
DEMO_KEY = "demo-upstream-needs-no-key"
#: (section, field) -> the demo's value, applied only while the setting has its default.
DEMO_DEFAULTS = {
    ("playground", "enabled"): True,               # the page at / is what the demo is for
    ("cache", "sampled"): True,                    # the page sends no temperature: repeats HIT
    ("rate_limit", "requests"): ("20/minute",),    # a 429 is a few quick clicks away
    ("validation", "allowed_models"): DEMO_MODELS,  # the model picker offers more than one
}
#: Seconds between two streamed words: about the pace of a fast hosted model.
WORD_DELAY = (0.03, 0.06)
DEMO_HEADERS = {"X-Demo": "true"}
MODERATION_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening",
                         "illicit", "illicit/violent", "self-harm", "self-harm/instructions",
                         "self-harm/intent", "sexual", "sexual/minors", "violence",
                         "violence/graphic")


def demo_settings(s: Settings, base_url: str) -> Settings:
    """The settings `--demo` serves with (see the module docstring)."""
    for (section, name), value in DEMO_DEFAULTS.items():
        current = getattr(s, section)
        if getattr(current, name) == getattr(type(current)(), name):
            s = replace(s, **{section: replace(current, **{name: value})})
    allow = s.cors.allow_origins
    allow += tuple(o for o in own_origins(s.server) if o not in allow)
    return replace(s, cors=replace(s.cors, allow_origins=allow),
                   upstream=replace(s.upstream, base_url=base_url, fallbacks=()),
                   server=replace(s.server, workers=1), api_key=DEMO_KEY, fallback_keys=())


def reply_text(prompt: str) -> str:
    """The canned answer: clearly a demo, and the same for the same prompt (cacheable)."""
    asked = " ".join(prompt.split())
    asked = asked if len(asked) <= 80 else asked[:77] + "..."
    return ("[demo] This answer comes from the gateway's built-in demo upstream, not from a "
            f"real model: you wrote \"{asked or 'nothing'}\". Each word arrived as its own "
            "server-sent event and the gateway relayed it the moment it was written. Send the "
            "same message again to get it from the cache (X-Cache: HIT), or send several "
            "quickly to meet the rate limit (429). Start the gateway without --demo, with "
            "OPENAI_API_KEY set, to talk to a real model.")


def _words(text: str) -> list[str]:
    return re.findall(r"\S+\s*", text)


def _text_of(value) -> str:
    """The text in a prompt, a message content or a list of either (content parts too)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text_of(v) for v in value)
    if isinstance(value, dict):
        return _text_of(value.get("content") if "content" in value else value.get("text", ""))
    return ""


def _last_user_text(messages) -> str:
    if isinstance(messages, str):
        return messages
    users = [m for m in messages or () if isinstance(m, dict) and m.get("role") == "user"]
    return _text_of(users[-1]) if users else _text_of(messages)


def _usage(prompt: str, out: int, api: str = "chat") -> dict:
    tin = max(1, len(prompt) // 4)
    if api == "responses":
        return {"input_tokens": tin, "output_tokens": out, "total_tokens": tin + out}
    return {"prompt_tokens": tin, "completion_tokens": out, "total_tokens": tin + out}


def _answer(body: dict, prompt: str, field: str) -> tuple[list[str], str]:
    """The words to send (cut at the request's token cap) and the finish reason."""
    words = _words(reply_text(prompt))
    cap = body.get(field) if field in body else body.get("max_completion_tokens")
    if isinstance(cap, int) and 0 < cap < len(words):
        return words[:cap], "length"
    return words, "stop"


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": "[demo] " + message,
                                        "type": "invalid_request_error", "param": param,
                                        "code": None}}, status=status, headers=DEMO_HEADERS)


def _json(doc: dict) -> web.Response:
    return web.Response(body=orjson.dumps(doc), content_type="application/json",
                        headers=DEMO_HEADERS)


def _embedding(text: str, dims: int) -> list[float]:
    """A unit vector that depends only on the text (the same input, the same embedding)."""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    v = [rng.gauss(0, 1) for _ in range(dims)]
    norm = sum(x * x for x in v) ** 0.5 or 1.0
    return [round(x / norm, 6) for x in v]


class DemoUpstream:
    """The demo upstream; bound at once (so its URL is known before the gateway is built),
    served by `attach(app)` inside the gateway app's lifetime."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/moderations", self.moderations)
        app.router.add_get("/v1/models", self.models)
        return app

    def attach(self, app: web.Application) -> None:
        """Serve the demo upstream while `app` runs, and mark every answer `X-Demo: true`."""
        app.cleanup_ctx.insert(0, self._serving)  # first in, last out: after streams drained
        app.on_response_prepare.append(_mark_demo)

    async def _serving(self, app: web.Application):
        runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.SockSite(runner, self.sock).start()
        log.info("demo mode: answers come from the built-in demo upstream at %s, not OpenAI "
                 "(no API key, no network; every answer is marked X-Demo: true); playground: "
                 "%s/", self.base_url, own_origins(app[SETTINGS].server)[0])
        try:
            yield
        finally:
            await runner.cleanup()

    # --- the routes -----------------------------------------------------------------------

    @staticmethod
    async def _body(request: web.Request) -> dict | web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "The body is not valid JSON.")
        return body if isinstance(body, dict) else _error(400, "The body must be a JSON object.")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        prompt = _last_user_text(body.get("messages"))
        words, finish = _answer(body, prompt, "max_tokens")
        usage = _usage(prompt, len(words))
        model, cid, created = body.get("model", DEMO_MODELS[0]), _id("chatcmpl-demo"), int(time.time())
        if not body.get("stream"):
            return _json({"id": cid, "object": "chat.completion", "created": created,
                          "model": model, "system_fingerprint": "demo",
                          "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                                       "message": {"role": "assistant", "refusal": None,
                                                   "content": "".join(words)}}],
                          "usage": usage})

        def chunk(delta: dict, finish_reason=None) -> dict:
            return {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": model, "system_fingerprint": "demo",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish_reason}]}

        chunks = [chunk({"role": "assistant", "content": ""})]
        chunks += [chunk({"content": w}) for w in words]
        chunks.append(chunk({}, finish))
        return await _stream_chunks(request, body, chunks, {
            "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "demo", "choices": [], "usage": usage})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        prompt = _text_of(body.get("prompt"))
        words, finish = _answer(body, prompt, "max_tokens")
        usage = _usage(prompt, len(words))
        model, cid, created = body.get("model", DEMO_MODELS[0]), _id("cmpl-demo"), int(time.time())

        def choice(text: str, finish_reason=None) -> dict:
            return {"id": cid, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": text, "logprobs": None,
                                 "finish_reason": finish_reason}]}

        if not body.get("stream"):
            return _json(dict(choice("".join(words), finish), usage=usage))
        chunks = [choice(w) for w in words] + [choice("", finish)]
        return await _stream_chunks(request, body, chunks, {
            "id": cid, "object": "text_completion", "created": created, "model": model,
            "choices": [], "usage": usage})

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        prompt = _last_user_text(body.get("input"))
        words, finish = _answer(body, prompt, "max_output_tokens")
        rid, mid = _id("resp_demo"), _id("msg_demo")
        doc = {"id": rid, "object": "response", "created_at": int(time.time()),
               "status": "completed" if finish == "stop" else "incomplete",
               "incomplete_details": None if finish == "stop" else {"reason": "max_output_tokens"},
               "model": body.get("model", DEMO_MODELS[0]), "error": None,
               "output": [{"type": "message", "id": mid, "status": "completed",
                           "role": "assistant",
                           "content": [{"type": "output_text", "text": "".join(words),
                                        "annotations": []}]}],
               "usage": _usage(prompt, len(words), "responses")}
        if not body.get("stream"):
            return _json(doc)
        out = await _prepare_sse(request)
        seq = iter(range(1 << 30))
        started = dict(doc, status="in_progress", incomplete_details=None, output=[], usage=None)
        await _event(out, "response.created", {"type": "response.created", "response": started,
                                                "sequence_number": next(seq)})
        for w in words:
            await asyncio.sleep(random.uniform(*WORD_DELAY))
            await _event(out, "response.output_text.delta", {
                "type": "response.output_text.delta", "item_id": mid, "output_index": 0,
                "content_index": 0, "delta": w, "sequence_number": next(seq)})
        await _event(out, "response.completed", {"type": "response.completed", "response": doc,
                                                  "sequence_number": next(seq)})
        await out.write_eof()
        return out

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        inputs = body.get("input")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs
                                       and isinstance(inputs[0], int)):
            inputs = [inputs]  # one text, or one pre-tokenized text
        if not isinstance(inputs, list) or not inputs:
            return _error(400, "'input' must be a string or a list.", "input")
        dims = body.get("dimensions")
        dims = dims if isinstance(dims, int) and 0 < dims <= 3072 else 1536
        data = []
        for i, item in enumerate(inputs):
            vector = _embedding(str(item), dims)
            if body.get("encoding_format") == "base64":  # what the Python SDK asks for
                vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = sum(max(1, len(str(x)) // 4) for x in inputs)
        return _json({"object": "list", "model": body.get("model", DEMO_MODELS[2]),
                      "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def moderations(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        inputs = body.get("input")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        result = {"flagged": False,
                  "categories": {c: False for c in MODERATION_CATEGORIES},
                  "category_scores": {c: 0.0001 for c in MODERATION_CATEGORIES}}
        return _json({"id": _id("modr-demo"), "model": body.get("model", DEMO_MODELS[3]),
                      "results": [result for _ in inputs]})

    async def models(self, request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "demo"}
            for m in DEMO_MODELS]})


# --- helpers ------------------------------------------------------------------------------


def _id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(6).hex()}"


async def _mark_demo(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare of the gateway: every answer in demo mode says it is one."""
    response.headers.update(DEMO_HEADERS)


async def _prepare_sse(request: web.Request) -> web.StreamResponse:
    out = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                      "Cache-Control": "no-cache", **DEMO_HEADERS})
    await out.prepare(request)
    return out


async def _event(out: web.StreamResponse, name: str, data: dict) -> None:
    await out.write(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")


async def _stream_chunks(request: web.Request, body: dict, chunks: list[dict],
                         usage_chunk: dict) -> web.StreamResponse:
    """Chat and completions streams: one chunk per word, then usage if asked, then [DONE]."""
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    out = await _prepare_sse(request)
    for i, chunk in enumerate(chunks):
        if include_usage:
            chunk["usage"] = None  # OpenAI's shape: null on every chunk but the last
        if i:
            await asyncio.sleep(random.uniform(*WORD_DELAY))
        await out.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    if include_usage:
        await out.write(b"data: " + orjson.dumps(usage_chunk) + b"\n\n")
    await out.write(b"data: [DONE]\n\n")
    await out.write_eof()
    return out

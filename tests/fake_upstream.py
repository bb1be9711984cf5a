"""A fake OpenAI upstream: records what reaches it and can be slow, fail or drop a stream.

Tests set `fake.script` to a list of behaviours consumed one request at a time
(`{"status": 500}`, `{"delay": 2}`, `{"drop_after": 2}`, ...); with an empty script every
request gets a normal, well-formed answer.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import orjson
from aiohttp import web


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict
    body: bytes

    def json(self):
        return orjson.loads(self.body)


@dataclass
class FakeOpenAI:
    seen: list[Seen] = field(default_factory=list)
    script: list[dict] = field(default_factory=list)
    chunks: int = 5
    chunk_delay: float = 0.0
    models: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
    #: Set when a stream's client (the gateway) went away before the end.
    aborted: list[float] = field(default_factory=list)
    active: int = 0
    #: Stream chunks written so far (backpressure shows as this count stalling).
    written: int = 0
    #: When set to an Event, every stream pauses after its first chunk until it is set.
    hold: asyncio.Event | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/moderations", self.moderations)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_route("*", "/{tail:.*}", self.anything)
        return app

    @property
    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    async def _record(self, request: web.Request) -> tuple[dict, dict | None]:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path, request.query_string,
                              dict(request.headers), body))
        step = self.script.pop(0) if self.script else {}
        if step.get("delay"):
            try:
                await asyncio.sleep(step["delay"])
            except asyncio.CancelledError:
                self.aborted.append(time.monotonic())  # the gateway gave up waiting
                raise
        payload = orjson.loads(body) if body else {}
        return step, payload

    def _error(self, step: dict) -> web.Response | None:
        status = step.get("status")
        if status and status != 200:
            return web.json_response(
                {"error": {"message": f"fake upstream error {status}", "type": "server_error",
                           "param": None, "code": None}},
                status=status, headers=step.get("headers"))
        if step.get("raw") is not None:
            return web.Response(body=step["raw"], content_type=step.get("ctype", "text/plain"))
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        step, body = await self._record(request)
        if (err := self._error(step)) is not None:
            return err
        text_parts = [f"w{i} " for i in range(step.get("chunks", self.chunks))]
        prompt_tokens = sum(len(str(m.get("content", ""))) for m in body["messages"]) // 4 + 1
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(text_parts),
                 "total_tokens": prompt_tokens + len(text_parts)}
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "".join(text_parts)}}],
                "usage": usage}, headers={"x-request-id": "up-123"})
        return await self._stream(request, step, body, text_parts, usage)

    async def _stream(self, request, step, body, parts, usage) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        delay = step.get("chunk_delay", self.chunk_delay)
        pad = b": " + b"p" * step["pad"] + b"\n\n" if step.get("pad") else b""  # SSE comment
        self.active += 1
        try:
            for i, part in enumerate(parts):
                if step.get("drop_after") is not None and i == step["drop_after"]:
                    request.transport.close()  # the upstream dies mid-stream
                    return resp
                chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                         "created": 1, "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": part},
                                      "finish_reason": None}]}
                if include_usage:
                    chunk["usage"] = None
                await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n" + pad)
                self.written += 1
                if delay:
                    await asyncio.sleep(delay)
                if i == 0 and self.hold is not None:
                    await self.hold.wait()  # keep the stream open until the test lets go
            if include_usage:
                await resp.write(b"data: " + orjson.dumps(
                    {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                     "model": body["model"], "choices": [], "usage": usage}) + b"\n\n")
            if not step.get("no_done"):
                await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.aborted.append(time.monotonic())
            raise
        finally:
            self.active -= 1
        return resp

    async def completions(self, request):
        step, body = await self._record(request)
        if (err := self._error(step)) is not None:
            return err
        return web.json_response({"id": "cmpl-fake", "object": "text_completion",
                                  "model": body["model"],
                                  "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                            "total_tokens": 2}})

    async def embeddings(self, request):
        step, body = await self._record(request)
        if (err := self._error(step)) is not None:
            return err
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response({
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                     for i, _ in enumerate(inputs)],
            "usage": {"prompt_tokens": 3, "total_tokens": 3}})

    async def responses(self, request):
        step, body = await self._record(request)
        if (err := self._error(step)) is not None:
            return err
        return web.json_response({"id": "resp-fake", "object": "response", "status": "completed",
                                  "model": body["model"], "output": [],
                                  "usage": {"input_tokens": 2, "output_tokens": 3,
                                            "total_tokens": 5}})

    async def moderations(self, request):
        step, body = await self._record(request)
        if (err := self._error(step)) is not None:
            return err
        return web.json_response({"id": "modr-fake", "model": "omni-moderation-latest",
                                  "results": [{"flagged": False}]})

    async def list_models(self, request):
        step, _ = await self._record(request)
        if (err := self._error(step)) is not None:
            return err
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]})

    async def anything(self, request):
        await self._record(request)
        return web.json_response({"error": {"message": "fake upstream: no such route",
                                            "type": "invalid_request_error"}}, status=404)

"""The tests' fake OpenAI upstream: the package's fake OpenAI API (the one the demo serves),
saying "w0 w1 ...", that records what reaches it and can be slow, fail or drop a stream.

Tests set `fake.script` to a list of behaviours consumed one request at a time; with an empty
script every request gets a normal, well-formed answer. A step's keys:
`status` (an error answer, with `headers`), `raw` + `ctype` (this body instead), `delay`
(seconds before answering), `chunks` / `chunk_delay` (this request's words and pace),
`drop_after` (close the connection before that streamed event), `pad` (an SSE comment of that
many bytes after each event), `no_done` (no `data: [DONE]`). `step` is the behaviour of requests
beyond the script.

`billed` is the fake's own ledger, one [model, prompt tokens, output tokens] per request it
worked on, as an upstream would bill it: an answer is billed whole once started, also when the
gateway gave up waiting for it; a stream the gateway closed is billed the events it wrote and
the one it was writing when it noticed.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from openai_gateway.demo import fake_openai
from openai_gateway.demo.formats import DONE, count_tokens, text_of

STEP = web.RequestKey("step", dict)
BILL = web.RequestKey("bill", list)
WRITTEN = web.RequestKey("written", list)


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
class FakeOpenAI(fake_openai.FakeOpenAI):
    models: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
    headers: dict[str, str] = field(default_factory=lambda: {"x-request-id": "up-123"})
    #: One chunk per word: tests count a stream's events as its words.
    framed_chat_stream: bool = False
    seen: list[Seen] = field(default_factory=list)
    script: list[dict] = field(default_factory=list)
    #: Words in an answer (one streamed event each) and the pause after each.
    chunks: int = 5
    chunk_delay: float = 0.0
    #: Set when a stream's client (the gateway) went away before the end.
    aborted: list[float] = field(default_factory=list)
    active: int = 0
    #: Stream chunks written so far (backpressure shows as this count stalling).
    written: int = 0
    #: When set to an Event, every stream pauses after its first chunk until it is set.
    hold: asyncio.Event | None = None
    #: When set to an Event, every stream stays open after its [DONE] until it is set.
    hold_after_done: asyncio.Event | None = None
    #: The behaviour of requests beyond the script.
    step: dict = field(default_factory=dict)
    #: [model, prompt tokens, output tokens] per request worked on (see the module docstring).
    billed: list[list] = field(default_factory=list)

    @property
    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    def text(self, request, prompt, stream):
        return "".join(f"w{i} " for i in range(request[STEP].get("chunks", self.chunks)))

    def pace(self, request):
        return request[STEP].get("chunk_delay", self.chunk_delay)

    def embed(self, inputs, body):
        # Fixed vectors, floats even when base64 is asked for (as some compatible servers
        # answer; the SDK takes either), so tests can compare them exactly.
        return [[0.1, 0.2, 0.3] for _ in inputs], 3

    async def receive(self, request):
        body = await request.read()
        self.seen.append(Seen(request.method, request.path, request.query_string,
                              dict(request.headers), body))
        step = request[STEP] = self.script.pop(0) if self.script else dict(self.step)
        request[WRITTEN] = [0]
        if step.get("delay"):
            try:
                await asyncio.sleep(step["delay"])
            except asyncio.CancelledError:
                self.aborted.append(time.monotonic())  # the gateway gave up waiting
                self._bill_whole(request, body)  # it was working on the answer all along
                raise
        status = step.get("status")
        if status and status != 200:
            return web.json_response(
                {"error": {"message": f"fake upstream error {status}", "type": "server_error",
                           "param": None, "code": None}},
                status=status, headers=step.get("headers"))
        if step.get("raw") is not None:
            return web.Response(body=step["raw"], content_type=step.get("ctype", "text/plain"))
        return await super().receive(request)

    def answer(self, request, body, route, read, asked, seen=None):
        a = super().answer(request, body, route, read, asked, seen)
        request[BILL] = [body.get("model"), a.prompt_tokens,
                         len(a.pieces) * a.choices + a.reasoning_tokens]
        self.billed.append(request[BILL])
        return a

    def _bill_whole(self, request, raw: bytes) -> None:
        """The bill of a chat answer that was never sent: its prompt and its whole output."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return
        words = request[STEP].get("chunks", self.chunks)
        cap = next((body[f] for f in fake_openai.CAPS["chat"]
                    if isinstance(body.get(f), int)), words)
        self.billed.append([body.get("model"), count_tokens("".join(map(text_of,
                                                                         body["messages"]))),
                            min(words, cap) * (body.get("n") or 1)])

    async def stream(self, request, events, tail):
        if request[STEP].get("no_done"):
            tail = [e for e in tail if e != DONE]
        self.active += 1
        try:
            if self.hold_after_done is not None:
                return await self._stream_then_hold(request, events + tail)
            return await super().stream(request, events, tail)
        except (asyncio.CancelledError, ConnectionResetError):
            self.aborted.append(time.monotonic())
            bill = request.get(BILL)
            if bill is not None:  # generation stopped when the close was noticed
                bill[2] = min(bill[2], request[WRITTEN][0] + 1)
            raise
        finally:
            self.active -= 1

    async def _stream_then_hold(self, request, events):
        """Every event at once, then the response stays open until `hold_after_done`."""
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                          **self.headers})
        await out.prepare(request)
        for event in events:
            await out.write(event)
        assert self.hold_after_done is not None
        await self.hold_after_done.wait()
        await out.write_eof()
        return out

    async def send(self, request, out, index, event):
        step = request[STEP]
        if step.get("drop_after") == index:
            request.transport.close()  # the upstream dies mid-stream
            return False
        pad = b": " + b"p" * step["pad"] + b"\n\n" if step.get("pad") else b""  # SSE comment
        await super().send(request, out, index, event + pad)
        self.written += 1
        request[WRITTEN][0] += 1
        return True

    async def pause(self, request, index):
        await super().pause(request, index)
        if index == 0 and self.hold is not None:
            await self.hold.wait()  # keep the stream open until the test lets go

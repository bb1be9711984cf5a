"""The forwarding handlers: one request's path through the pipeline.

identify -> count the request (admission, 1) -> read the body (size, time) -> validate ->
admit (admission, 2: the model's rules, the budgets reserved, the cache read) -> upstream
(single flight for cacheable answers) -> answer (JSON, or SSE relayed) -> settle, on every way
out (errors and client disconnects included). Each step's rules live in its own module; this
file only orders them, and an `Exchange` carries one request through them.

A non-stream answer is read to its end in a task of its own, even when its client has gone,
and settled from its usage (settlement.py: leaving is never cheaper than reading).
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web

from ..cache.keys import Entry
from ..cache.prompts import PromptCache
from ..config.serving import ServerSettings, UpstreamSettings
from ..errors import GatewayError, UpstreamFailed, upstream_error
from ..identity.callers import Callers
from ..observability.logs import RequestRecord
from ..observability.metrics import Metrics
from ..policy import OutputCounter, ParsedRequest, forward_body, usage_from_answer
from ..upstream.client import RETURNED_HEADERS, Upstream
from ..upstream.sse import StreamOutcome, relay, replay, send_answer
from . import media
from .admission import Admission
from .bodies import read_body
from .exchange import COST_HEADER, JSON, RECORD, Answer, Exchange, route_of
from .settlement import Settlement, stream_usage
from .validation import Validator

log = logging.getLogger("gateway.proxy")
#: How long the upstream's model list is reused: at most one upstream call a minute.
MODELS_TTL = 60.0
#: Answers larger than this are sent with a write timeout (a client that reads nothing of a
#: large answer would otherwise hold it in memory); smaller ones fit the socket's buffers.
LARGE_ANSWER = 256 * 1024
#: The largest model list read from the upstream.
MODELS_MAX_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Policy:
    """What the proxy reads from the settings of the moment (rebuilt by `app.apply`)."""

    callers: Callers
    validator: Validator
    server: ServerSettings
    upstream: UpstreamSettings
    #: validation.allowed_models, for the model list of callers without their own.
    allowed: frozenset[str]


class Proxy:
    def __init__(self, *, upstream: Upstream, admission: Admission, settlement: Settlement,
                 cache: PromptCache, metrics: Metrics):
        self.upstream = upstream
        self.metrics = metrics
        self.admission = admission
        self.settlement = settlement
        self.cache = cache
        self._models: tuple[float, Answer] | None = None
        self._models_lock = asyncio.Lock()
        #: Upstream exchanges that outlive their client (see `_complete`).
        self._tasks: set[asyncio.Task] = set()

    def configure(self, policy: Policy) -> None:
        """The request policy of new requests (requests in flight keep theirs)."""
        self.p = policy
        self._models = None  # the allowlist or the upstream may have changed

    @asynccontextmanager
    async def running(self):
        """At shutdown, answers still being read for clients that left get the shutdown
        timeout to finish and settle; what is left then is cancelled and charged its
        reservation."""
        try:
            yield self
        finally:
            if self._tasks:
                _, pending = await asyncio.wait(set(self._tasks),
                                                timeout=self.p.server.shutdown_timeout)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    # --- POST routes ----------------------------------------------------------------------

    async def forward(self, request: web.Request) -> web.StreamResponse:
        ex = await self._begin(request, route_of(request))
        await self.admission.count_request(ex)
        try:
            ex.parsed = parsed = await self._read(ex)
            ex.record.model, ex.record.stream = parsed.model, parsed.stream
            entry = await self.admission.admit(ex)
            if entry is not None:  # the key covers the body, "stream" included
                return await self._hit(ex, entry)
            try:
                if media.streams(parsed):
                    return await self._stream(ex)
                return await self._complete(ex)
            finally:
                # Shielded: a client that disconnects cancels this handler, and its
                # reservation must still be settled. A complete answer settles in its own task.
                if not ex.settled and not ex.detached:
                    await asyncio.shield(self.settlement.settle(ex))
        finally:
            if not ex.detached:  # else the task sending it lets go of it
                ex.close()

    async def _read(self, ex: Exchange) -> ParsedRequest:
        """The request body, read within its bounds and validated: JSON, or an upload."""
        p, server = self.p, self.p.server
        if media.takes_upload(ex):
            return await media.receive(ex, p.validator, timeout=server.body_timeout,
                                       digest=ex.route in self.cache.routes)
        ex.raw = await read_body(ex.request, max_bytes=server.max_body_bytes,
                                 timeout=server.body_timeout, compressed=server.compressed_bodies)
        return p.validator.check(ex.route, ex.raw, ex.caller.models)

    async def _hit(self, ex: Exchange, entry: Entry) -> web.StreamResponse:
        if entry.stream:
            return await replay(ex.request, entry.body, ex.headers,
                                write_timeout=self.p.server.write_timeout)
        if entry.content_type is not None:  # speech audio, a transcript as subtitles
            ex.headers["Content-Type"] = entry.content_type
            return web.Response(body=entry.body, headers=ex.headers)
        return web.Response(body=entry.body, headers=ex.headers, content_type=JSON)

    async def _begin(self, request: web.Request, route: str) -> Exchange:
        rec: RequestRecord = request[RECORD]
        rec.route = route
        rec.client = self.p.callers.addresses.of(request)  # known even if identifying fails
        caller = await self.p.callers.identify(request)
        if caller.settings is not None or not caller.id.startswith("ip:"):
            rec.client = caller.id
        return Exchange(request, rec, route, caller)

    async def _complete(self, ex: Exchange) -> web.StreamResponse:
        """A non-stream answer: usage is known before our headers go out, so they carry the
        settled budget. The upstream exchange runs in a task of its own: a client that hangs
        up stops waiting for it, not the upstream, which is read to its end and settled from
        its usage (and cached), so hanging up costs what reading would have."""
        ex.detached = True
        task = self._detach(self._answer(ex))
        answer = await asyncio.shield(task)
        if ex.record.cost_usd is not None:
            ex.headers[COST_HEADER] = f"{ex.record.cost_usd:.6f}"
        ex.headers.update(ex.settled_headers)
        ex.headers.update(answer.headers)
        return await self._send(ex, answer)

    def _detach(self, coro) -> asyncio.Task:
        """A task the client cannot cancel, kept until it ends (and drained at shutdown)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its client, if still there, got it already

    async def _answer(self, ex: Exchange) -> Answer:
        """Fetch (once for identical requests in flight) and settle, whatever the client does."""
        try:
            if ex.cache_key is not None:
                answer, asked = await self.cache.single_flight(ex.cache_key, self._fetch, ex)
            else:
                answer, asked = await self._fetch(ex), True
            if not asked:
                # Served by an identical request's upstream call: like a hit, it spent nothing.
                ex.record.cache = ex.headers["X-Cache"] = "HIT"
                ex.billable = False
            return answer
        finally:
            await self.settlement.settle(ex)
            ex.close()

    async def _send(self, ex: Exchange, answer: Answer) -> web.StreamResponse:
        if len(answer.body) <= LARGE_ANSWER:
            # Fits the socket's buffers: written at once, no client can hold it back.
            return web.Response(status=answer.status, body=answer.body, headers=ex.headers,
                                content_type=answer.content_type, charset=answer.charset)
        return await send_answer(ex.request, answer.status, answer.body, ex.headers,
                                 answer.content_type, write_timeout=self.p.server.write_timeout,
                                 charset=answer.charset)

    async def _fetch(self, ex: Exchange) -> Answer:
        resp = await self._open(ex, forward_body(ex.valid, ex.raw, stream_usage=False)[0])
        try:
            answer = await self._read_answer(resp, self.p.upstream.max_response_bytes, ex)
        finally:
            resp.close()
        if ex.cache_key is not None and answer.status == 200:
            entry = media.cache_entry(ex, answer)
            if entry is not None:
                await self.cache.set(ex.cache_key, entry)
        return answer

    async def _open(self, ex: Exchange, raw: bytes) -> aiohttp.ClientResponse:
        """Send upstream (`raw`, or the request's upload); the response once its headers
        arrived (the caller closes it).

        From here the request is billable, unless the upstream certainly never got it (no
        connection was ever made) or answers with an error (OpenAI bills no refused request)."""
        t0 = time.perf_counter()
        ex.billable = True
        body, body_headers = media.outbound(ex, raw)
        try:
            resp = await self.upstream.send(
                "POST", ex.route, body, ex.request.headers, body_headers=body_headers,
                first_byte_timeout=media.waits(ex.route, self.p.upstream)[0])
        except UpstreamFailed as exc:
            ex.billable = exc.reached
            raise
        ttfb = time.perf_counter() - t0
        ex.record.upstream_status = resp.status
        ex.record.ttfb_ms = round(ttfb * 1000, 2)
        self.metrics.ttfb.bucket(ex.route).observe(ttfb)
        return resp

    async def _read_answer(self, resp: aiohttp.ClientResponse, limit: int,
                           ex: Exchange | None = None) -> Answer:
        """The whole upstream answer, its errors mapped to what the client may see; with `ex`,
        its usage (a 200) or its refusal (an error is not billed) is noted for settling."""
        body = await self.upstream.read_body(resp, limit)
        status, ctype, charset = resp.status, resp.content_type or JSON, None
        if ctype != JSON and ctype.startswith("text/"):
            charset = resp.charset
        if status >= 400:
            if status in (401, 403):
                log.error("the upstream refused the gateway's key (status %d): check the key",
                          status)
            self.metrics.upstream_errors.labels(f"status_{status}" if status in (401, 403, 429)
                                           else f"status_{status // 100}xx").inc()
            status, ctype, body = upstream_error(status, ctype, body)
            charset = None
            if ex is not None:
                ex.billable = False
        elif ex is not None and status == 200:
            ex.usage = usage_from_answer(body)  # None: the reservation is charged
        return Answer(status, ctype, body,
                      {h: resp.headers[h] for h in RETURNED_HEADERS if h in resp.headers},
                      charset)

    async def _stream(self, ex: Exchange) -> web.StreamResponse:
        """An answer relayed as it arrives: SSE, or speech audio (media.relayed_as)."""
        # The usage chunk is ours to ask for (and strip): budgets need the upstream's count
        # even when the client did not ask for it.
        holds = ex.reservation is not None and bool(ex.reservation.holds)
        raw, strip = forward_body(ex.valid, ex.raw, stream_usage=holds)
        resp = await self._open(ex, raw)
        try:
            kind = media.relayed_as(ex, resp)
            if kind is None:
                # An error (or an upstream that ignored stream=true): pass it on as an answer.
                answer = await self._read_answer(resp, self.p.upstream.max_response_bytes, ex)
                ex.headers.update(answer.headers)
                return await self._send(ex, answer)
            ex.headers.update({h: resp.headers[h] for h in RETURNED_HEADERS if h in resp.headers})
            self.metrics.active_streams.inc()
            try:
                if kind == "audio":
                    return await self._relay_audio(ex, resp)
                return await self._relay(ex, resp, strip)
            finally:
                self.metrics.active_streams.dec()
        finally:
            resp.close()

    async def _relay(self, ex: Exchange, resp: aiohttp.ClientResponse,
                     strip: bool) -> web.StreamResponse:
        outcome = StreamOutcome(output=OutputCounter(ex.route))
        try:
            out = await relay(ex.request, resp, ex.headers, outcome,
                              idle_timeout=media.waits(ex.route, self.p.upstream)[1],
                              strip_usage_chunk=strip, record=ex.cache_key is not None,
                              write_timeout=self.p.server.write_timeout)
        finally:
            stream_usage(ex, outcome)
        if outcome.upstream_failed:
            self.metrics.upstream_errors.labels("interrupted").inc()
        elif ex.cache_key is not None and outcome.complete and outcome.recorded is not None:
            await self.cache.set(ex.cache_key, Entry(True, b"".join(outcome.recorded)))
        return out

    async def _relay_audio(self, ex: Exchange,
                           resp: aiohttp.ClientResponse) -> web.StreamResponse:
        record = self.cache.s.max_item_bytes if ex.cache_key is not None else 0
        out, outcome = await media.relay_audio(
            ex, resp, idle_timeout=media.waits(ex.route, self.p.upstream)[1],
            write_timeout=self.p.server.write_timeout, record=record)
        if outcome.upstream_failed:
            self.metrics.upstream_errors.labels("interrupted").inc()
        elif ex.cache_key is not None and (entry := media.audio_entry(resp, outcome)):
            await self.cache.set(ex.cache_key, entry)
        return out

    # --- GET /v1/models -------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.StreamResponse:
        """The upstream's model list filtered to what this caller may use. It counts against
        the caller's request limit, and the upstream is asked at most once a minute."""
        ex = await self._begin(request, "/v1/models")
        await self.admission.count_request(ex)
        answer = await self._model_list(request)
        body, allowed = answer.body, ex.caller.models or self.p.allowed
        if answer.status == 200 and allowed:
            try:
                doc = orjson.loads(body)
                doc["data"] = [m for m in doc.get("data", []) if m.get("id") in allowed]
                body = orjson.dumps(doc)
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                raise GatewayError("The upstream's model list could not be read.") from None
        return web.Response(status=answer.status, body=body, headers=ex.headers,
                            content_type=answer.content_type)

    async def _model_list(self, request: web.Request) -> Answer:
        async with self._models_lock:  # concurrent misses wait for one upstream call
            memo = self._models
            if memo is not None and memo[0] > time.monotonic():
                return memo[1]
            async with self.upstream.open("GET", "/v1/models", None, request.headers) as resp:
                request[RECORD].upstream_status = resp.status
                answer = await self._read_answer(resp, MODELS_MAX_BYTES)
            if answer.status == 200:
                self._models = (time.monotonic() + MODELS_TTL, answer)
            return answer

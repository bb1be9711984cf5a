"""The forwarding handlers: one request's path through the policy components.

identify -> read body (size, time) -> validate -> request limit -> cache lookup -> reserve
budgets -> upstream (single-flight for cacheable answers) -> answer (JSON or relayed SSE) ->
settle the reservation, on every way out (errors and client disconnects included).
Each step's rules live in its own module; this file only orders them, and an `Exchange`
carries one request through them.

Money is settled by what the upstream can bill, never by what the client chose to read (see
`Proxy._charge`): once a request may have reached the upstream, leaving early is never cheaper
than reading the answer. A non-stream answer is read to its end in a task of its own even when
its client has gone, and settled from its usage.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import orjson
from aiohttp import web

from ..cache.prompts import Entry, PromptCache, cache_key
from ..config.settings import Settings
from ..errors import (
    BudgetExceeded,
    GatewayError,
    ModelNotPriced,
    RateLimited,
    SpendLimited,
    TokensRateLimited,
    UpstreamFailed,
    upstream_error,
)
from ..identity.addresses import Addresses
from ..identity.bearer import BearerResolver
from ..identity.callers import Caller, Callers
from ..metering.headers import limit_headers
from ..metering.limiter import RateLimiter, Reservation
from ..metering.prices import MICRO, Price, PriceTable, configured, cost, estimate
from ..observability import metrics
from ..observability.logs import RequestRecord
from ..policy import (
    STOP_MARGIN_TOKENS,
    OutputCounter,
    Usage,
    forward_body,
    usage_from_answer,
)
from ..upstream.client import RETURNED_HEADERS, Upstream
from ..upstream.sse import StreamOutcome, relay, replay, send_answer
from .bodies import read_body
from .validation import ParsedRequest, Validator

log = logging.getLogger("gateway.proxy")
RECORD = web.RequestKey("record", RequestRecord)
JSON = "application/json"
#: How long the upstream's model list is reused: at most one upstream call a minute.
MODELS_TTL = 60.0
#: What a non-stream answer cost, in US dollars (a stream's cost is known only at its end).
COST_HEADER = "x-gateway-cost-usd"
#: Answers larger than this are sent with a write timeout (a client that reads nothing of a
#: large answer would otherwise hold it in memory); smaller ones fit the socket's buffers.
LARGE_ANSWER = 256 * 1024
#: The gauges' `period` label for each gateway-wide ceiling.
PERIODS = {"daily": "day", "monthly": "month"}
#: The largest model list read from the upstream.
MODELS_MAX_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class Answer:
    """A complete (non-stream) upstream answer, shareable between coalesced requests."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]


@dataclass(slots=True)
class Exchange:
    """One request on its way through the pipeline: what it is, who sent it, what it holds.

    `usage`, `billable` and `stopped` decide the settlement (`Proxy._charge`): the upstream's
    usage when it reported one; nothing when the upstream never got the request or refused
    it; the prompt, the output relayed and a margin for a stream its client stopped; else the
    whole reservation.
    """

    request: web.Request
    record: RequestRecord
    route: str
    client: Caller
    raw: bytes = b""
    parsed: ParsedRequest | None = None
    cache_key: str | None = None
    #: Headers of our answer (rate limits, X-Cache, the upstream's few returned ones).
    headers: dict[str, str] = field(default_factory=dict)
    reservation: Reservation | None = None
    #: The model's price (None: unpriced); the estimates reserved, in tokens and micro-dollars.
    price: Price | None = None
    reserved_tokens: int = 0
    #: The input part of `reserved_tokens` (everything the model reads, as estimated).
    reserved_input: int = 0
    reserved_micro: int = 0
    usage: Usage | None = None
    #: The upstream may bill this request: it may have received it and did not refuse it.
    billable: bool = False
    #: A stream its client stopped while the gateway kept up with the upstream: what it could
    #: have cost (prompt, output received, margin), settled instead of the reservation.
    stopped: Usage | None = None
    settled: bool = False
    #: Settled in a task of its own that outlives the client (non-stream answers).
    detached: bool = False
    #: The budget headers after settling.
    settled_headers: dict[str, str] = field(default_factory=dict)

    @property
    def valid(self) -> ParsedRequest:
        """The validated request, for the steps that only run once validation passed."""
        if self.parsed is None:
            raise RuntimeError("the request has not been validated yet")
        return self.parsed


def _route(request: web.Request) -> str:
    """The route table's path the request matched (`forward` is registered on each one)."""
    resource = request.match_info.route.resource
    if resource is None:  # system routes (404, 405) have no resource and no handler of ours
        raise RuntimeError("a forwarding handler was reached outside the route table")
    return resource.canonical


class Proxy:
    def __init__(self, settings: Settings, *, upstream: Upstream, limiter: RateLimiter,
                 cache: PromptCache, bearer: BearerResolver | None = None):
        self.upstream = upstream
        self.limiter = limiter
        self.cache = cache
        self.bearer = bearer
        self._models: tuple[float, Answer] | None = None
        self._models_lock = asyncio.Lock()
        #: Periods whose budget.warn_at warning was logged (once per process).
        self._warned: set[str] = set()
        #: Upstream exchanges that outlive their client (see `_complete`).
        self._tasks: set[asyncio.Task] = set()
        self.configure(settings)

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
                                                timeout=self.server.shutdown_timeout)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    def configure(self, settings: Settings) -> None:
        """(Re)build the request policy; called at start and on SIGHUP."""
        self.settings = settings
        addresses = Addresses(trusted_proxies=settings.server.trusted_proxies,
                              ipv6_prefix=settings.server.ipv6_prefix)
        self.callers = Callers(addresses=addresses, bearer=self.bearer,
                               tiers=settings.tiers, clients=settings.clients,
                               anonymous=settings.auth.anonymous,
                               require_client_key=settings.auth.require_client_key)
        self.prices = PriceTable({model: configured(
            model, input=p.input, output=p.output, cached_input=p.cached_input,
            audio_input=p.audio_input, image_input=p.image_input, audio_output=p.audio_output,
            reasoning=p.reasoning) for model, p in settings.prices.items()})
        self.validator = Validator(settings.validation)
        self.server = settings.server
        self.max_response = settings.upstream.max_response_bytes
        self.idle_timeout = settings.upstream.idle_timeout
        self.allowed = frozenset(settings.validation.allowed_models)
        self._models = None  # the allowlist or the upstream may have changed

    # --- the steps ------------------------------------------------------------------------

    async def _begin(self, request: web.Request, route: str) -> Exchange:
        rec: RequestRecord = request[RECORD]
        rec.route = route
        rec.client = self.callers.addresses.of(request)  # known even if identification fails
        client = await self.callers.identify(request)
        if client.settings is not None or not client.id.startswith("ip:"):
            rec.client = client.id
        return Exchange(request, rec, route, client)

    async def _limit_requests(self, ex: Exchange, model: str | None = None) -> None:
        """Count the request: before its body is read (every request to a forwarded route
        counts, valid or not), and again for the rules naming its model once that is known."""
        try:
            state = await self.limiter.check_requests(ex.client, ex.route, model,
                                                      rules_only=model is not None)
        except RateLimited:
            ex.record.rate_limit = "requests"
            metrics.RATE_LIMITED.labels("requests").inc()
            raise
        ex.record.rate_limit = "ok"
        if state is not None:
            ex.headers.update(limit_headers(state, None))

    async def _lookup(self, ex: Exchange, found: tuple[Entry | None] | None = None
                      ) -> web.StreamResponse | None:
        """The cached answer, or None (the exchange then carries its cache key, if any).
        `found`: (the entry a batch already read,) on the shared path; else the cache is
        asked."""
        parsed, rec = ex.valid, ex.record
        if found is None:
            rec.cache = self.cache.policy(ex.route, parsed,
                                          ex.request.headers.get("Cache-Control"))
        if rec.cache is None:
            if found is None:
                ex.cache_key = self._cache_key(ex)
                entry = await self.cache.get(ex.cache_key)
            else:
                entry = found[0]
            rec.cache = "HIT" if entry is not None else "MISS"
            if entry is not None:  # the key covers the body, "stream" included
                metrics.CACHE.labels("HIT").inc()
                ex.headers["X-Cache"] = "HIT"
                if entry.stream:
                    return await replay(ex.request, entry.body, ex.headers,
                                        write_timeout=self.server.write_timeout)
                return web.Response(body=entry.body, headers=ex.headers, content_type=JSON)
        metrics.CACHE.labels(rec.cache).inc()
        ex.headers["X-Cache"] = rec.cache
        return None

    @staticmethod
    def _cache_key(ex: Exchange) -> str:
        settings = ex.client.settings
        scope = ex.client.id if settings is not None and settings.cache_scope == "client" \
            else "shared"
        return cache_key(ex.route, scope, ex.valid.body, ex.request.headers)

    async def _admit(self, ex: Exchange) -> web.StreamResponse | None:
        """The steps that ask the storage: count the request, look the answer up, reserve the
        budgets. Returns the cached answer on a hit (which reserves nothing).

        Memory: each step its own synchronous call. A shared store: the model rules, the
        budgets and the cache read go in one batch (one round trip; the request limits were
        the first), and a hit gives its reservation back."""
        if not self.limiter.batched:
            if ex.valid.model is not None and self.limiter.has_model_rules:
                await self._limit_requests(ex, ex.valid.model)
            cached = await self._lookup(ex)
            if cached is None:
                await self._reserve(ex)
            return cached
        ex.record.cache = self.cache.policy(ex.route, ex.valid,
                                            ex.request.headers.get("Cache-Control"))
        if ex.record.cache is None and self.cache.batched(self.limiter.store):
            ex.cache_key = self._cache_key(ex)
        values = await self._reserve(ex, batch=True)
        if ex.cache_key is None and ex.record.cache is None:  # the cache has its own store
            ex.cache_key = self._cache_key(ex)
            entry = await self.cache.get(ex.cache_key)
        else:
            entry = self.cache.decode(values.get(ex.cache_key)) if ex.cache_key else None
        if entry is not None and ex.reservation is not None:
            # A hit spends nothing: what was reserved along goes back before we answer.
            if ex.valid.stream:  # only a stream was given the reserved headers
                for name in ex.reservation.headers:
                    ex.headers.pop(name, None)
            if ex.reservation.holds:
                await self.limiter.settle(ex.reservation, tokens=0, micro_usd=0)
            ex.reservation = None
        return await self._lookup(ex, (entry,))

    async def _reserve(self, ex: Exchange, batch: bool = False) -> dict[str, bytes]:
        """Reserve the budgets. `batch` (shared stores): with the model rules' request limits
        and a read of the exchange's cache key, in one call; returns the values read."""
        parsed = ex.valid
        ex.reserved_tokens = tokens = parsed.estimate
        ex.reserved_input = prompt = parsed.prompt_tokens  # text, images, audio, files
        ex.price = price = self.prices.price_for(parsed.model) if parsed.model else None
        if price is not None:
            ex.reserved_micro = estimate(price, prompt, tokens - prompt,
                                         image_tokens=parsed.image_tokens,
                                         audio_tokens=parsed.audio_tokens)
        micro = None
        if self.limiter.spend_applies(ex.client, ex.route, parsed.model):
            if price is None:
                raise ModelNotPriced(
                    f"The model '{(parsed.model or '')[:100]}' has no price in this gateway's "
                    "[prices] table, and a dollar budget applies to this request.",
                    param="model")
            micro = ex.reserved_micro
        found: dict[str, bytes] = {}
        try:
            if batch:
                got = await self.limiter.admit(
                    ex.client, ex.route, parsed.model, tokens=tokens, micro_usd=micro,
                    extra_keys=[ex.cache_key] if ex.cache_key else [])
                ex.reservation, found = got.reservation, got.extra
                ex.record.rate_limit = "ok"
                if got.requests is not None:
                    ex.headers.update(limit_headers(got.requests, None))
            else:
                ex.reservation = await self.limiter.reserve(ex.client, ex.route, parsed.model,
                                                            tokens=tokens, micro_usd=micro)
        except RateLimited as exc:
            kind = ("budget" if isinstance(exc, BudgetExceeded) else "spend"
                    if isinstance(exc, SpendLimited) else "tokens"
                    if isinstance(exc, TokensRateLimited) else "requests")
            ex.record.rate_limit = kind
            metrics.RATE_LIMITED.labels(kind).inc()
            raise
        if ex.valid.stream:
            # A stream's headers leave before its usage is known: they show the budgets as
            # reserved. A complete answer settles first and shows the settled values, so
            # formatting the reserved ones would be work thrown away.
            ex.headers.update(ex.reservation.headers)
        return found

    def _charge(self, ex: Exchange) -> tuple[Usage, int, str]:
        """(tokens, micro-dollars, how) a request is charged: what the upstream can bill for
        it, known or bounded from above. Hanging up, timing out or cutting a stream is never
        cheaper than reading the answer."""
        price = ex.price
        if ex.usage is not None:  # the upstream's own count
            return ex.usage, cost(price, ex.usage) if price is not None else 0, "usage"
        if not ex.billable:  # never reached the upstream, or it refused the request
            return Usage(), 0, "none"
        if ex.stopped is not None:
            # Never above the reservation, which bounds any answer of this request.
            used = ex.stopped
            micro = cost(price, used) if price is not None else 0
            if used.total < ex.reserved_tokens and micro <= ex.reserved_micro:
                return used, micro, "stopped"
        # Usage unknown: the answer may have been generated whole. The reservation covers it.
        return (self._read(ex, ex.reserved_tokens - ex.reserved_input),
                ex.reserved_micro if price is not None else 0, "reservation")

    @staticmethod
    def _read(ex: Exchange, output: int) -> Usage:
        """Everything the request's model reads, as reserved, and `output` tokens."""
        parsed = ex.valid
        return Usage(input=ex.reserved_input, image_input=parsed.image_tokens,
                     audio_input=parsed.audio_tokens, output=output)

    async def _settle(self, ex: Exchange) -> dict[str, str]:
        """Bring the reservation to what the upstream can bill (`_charge`); once per exchange,
        on every way out. Returns the budget headers after settling (empty when none)."""
        if ex.settled or ex.parsed is None:
            return {}
        ex.settled = True
        used, micro, how = self._charge(ex)
        self._account(ex, used, micro, how)
        if ex.reservation is None:
            return {}
        headers = await self.limiter.settle(ex.reservation, tokens=used.input + used.output,
                                            micro_usd=micro)
        ex.settled_headers = headers
        if micro and self.limiter.gateway:
            await self._watch_budget()
        return headers

    async def _watch_budget(self) -> None:
        """The gateway-wide ceiling's gauges after a charge, and the warn_at warning (once per
        crossing, in each process)."""
        try:
            report = await self.limiter.gateway_spend()
        except GatewayError:  # the storage is down: already logged and counted
            return
        warn_at = self.settings.budget.warn_at
        for name, row in report.items():
            period = PERIODS.get(name, name)
            metrics.BUDGET_REMAINING.labels(period).value = row["remaining_usd"]
            crossed = row["spent_usd"] >= warn_at * row["limit_usd"]
            metrics.BUDGET_WARN.labels(period).value = 1 if crossed else 0
            if not crossed:  # a new day or month: warn again when it is crossed again
                self._warned.discard(period)
            elif period not in self._warned:
                self._warned.add(period)
                log.warning("the gateway's %s spend has crossed %.0f%% of its ceiling: $%.2f "
                            "of $%.2f spent", name, warn_at * 100, row["spent_usd"],
                            row["limit_usd"])

    def _account(self, ex: Exchange, used: Usage, micro: int, how: str) -> None:
        """The access log's and the metrics' share of a settled request."""
        rec = ex.record
        rec.charged = how
        model = ex.valid.model or "none"
        if ex.usage is not None:  # tokens the upstream reported (not our bounds)
            rec.tokens_in, rec.tokens_out = used.input, used.output
            if used.input:
                metrics.TOKENS.labels(model, "in").inc(used.input)
            if used.output:
                metrics.TOKENS.labels(model, "out").inc(used.output)
        if ex.price is not None and (used.input or used.output):
            rec.cost_usd = micro / MICRO
            metrics.SPEND.labels(self.prices.label_for(model), ex.client.tier or "none").inc(
                micro / MICRO)

    # --- POST routes ----------------------------------------------------------------------

    async def forward(self, request: web.Request) -> web.StreamResponse:
        ex = await self._begin(request, _route(request))
        await self._limit_requests(ex)
        server = self.server
        ex.raw = await read_body(request, max_bytes=server.max_body_bytes,
                                 timeout=server.body_timeout, compressed=server.compressed_bodies)
        models = self._models_for(ex.client)
        ex.parsed = parsed = self.validator.check(ex.route, ex.raw, models)
        ex.record.model, ex.record.stream = parsed.model, parsed.stream
        cached = await self._admit(ex)
        if cached is not None:
            return cached
        try:
            if parsed.stream:
                return await self._stream(ex)
            return await self._complete(ex)
        finally:
            # Shielded: a client that disconnects cancels this handler, and its reservation
            # must still be settled. A complete answer settles in its own task.
            if not ex.settled and not ex.detached:
                await asyncio.shield(self._settle(ex))

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
                if isinstance(answer, Entry):  # another process filled it while we waited
                    answer, asked = Answer(200, JSON, answer.body, {}), False
            else:
                answer, asked = await self._fetch(ex), True
            if not asked:
                # Served by an identical request's upstream call: like a hit, it spent nothing.
                ex.record.cache = ex.headers["X-Cache"] = "HIT"
                ex.billable = False
            return answer
        finally:
            await self._settle(ex)

    async def _send(self, ex: Exchange, answer: Answer) -> web.StreamResponse:
        if len(answer.body) <= LARGE_ANSWER:
            # Fits the socket's buffers: written at once, no client can hold it back.
            return web.Response(status=answer.status, body=answer.body, headers=ex.headers,
                                content_type=answer.content_type)
        return await send_answer(ex.request, answer.status, answer.body, ex.headers,
                                 answer.content_type, write_timeout=self.server.write_timeout)

    async def _fetch(self, ex: Exchange) -> Answer:
        resp = await self._open(ex, forward_body(ex.valid, ex.raw, stream_usage=False)[0])
        try:
            answer = await self._read_answer(resp, self.max_response, ex)
        finally:
            resp.close()
        if ex.cache_key is not None and answer.status == 200 and answer.content_type == JSON:
            await self.cache.set(ex.cache_key, Entry(False, answer.body))
        return answer

    async def _open(self, ex: Exchange, raw: bytes) -> aiohttp.ClientResponse:
        """Send upstream; the response once its headers arrived (the caller closes it).

        From here the request is billable, unless the upstream certainly never got it (no
        connection was ever made) or answers with an error (OpenAI bills no refused request)."""
        t0 = time.perf_counter()
        ex.billable = True
        try:
            resp = await self.upstream.send("POST", ex.route, raw, ex.request.headers)
        except UpstreamFailed as exc:
            ex.billable = exc.reached
            raise
        ttfb = time.perf_counter() - t0
        ex.record.upstream_status = resp.status
        ex.record.ttfb_ms = round(ttfb * 1000, 2)
        metrics.TTFB.labels(ex.route).observe(ttfb)
        return resp

    async def _read_answer(self, resp: aiohttp.ClientResponse, limit: int,
                           ex: Exchange | None = None) -> Answer:
        """The whole upstream answer, its errors mapped to what the client may see; with `ex`,
        its usage (a 200) or its refusal (an error is not billed) is noted for settling."""
        body = await self.upstream.read_body(resp, limit)
        status, ctype = resp.status, resp.content_type or JSON
        if status >= 400:
            if status in (401, 403):
                log.error("the upstream refused the gateway's key (status %d): check the key",
                          status)
            metrics.UPSTREAM_ERRORS.labels(f"status_{status}" if status in (401, 403, 429)
                                           else f"status_{status // 100}xx").inc()
            status, ctype, body = upstream_error(status, ctype, body)
            if ex is not None:
                ex.billable = False
        elif ex is not None and status == 200:
            ex.usage = usage_from_answer(body)  # None: the reservation is charged
        return Answer(status, ctype, body,
                      {h: resp.headers[h] for h in RETURNED_HEADERS if h in resp.headers})

    async def _stream(self, ex: Exchange) -> web.StreamResponse:
        raw, strip = self._stream_body(ex)
        resp = await self._open(ex, raw)
        try:
            if resp.status != 200 or resp.content_type != "text/event-stream":
                # An error (or an upstream that ignored stream=true): pass it on as an answer.
                answer = await self._read_answer(resp, self.max_response, ex)
                ex.headers.update(answer.headers)
                return await self._send(ex, answer)
            ex.headers.update({h: resp.headers[h] for h in RETURNED_HEADERS if h in resp.headers})
            return await self._relay(ex, resp, strip)
        finally:
            resp.close()

    @staticmethod
    def _stream_body(ex: Exchange) -> tuple[bytes, bool]:
        """The bytes to send for a stream, and whether the usage chunk is ours to strip:
        budgets need the upstream's count even when the client did not ask for it."""
        holds = ex.reservation is not None and bool(ex.reservation.holds)
        return forward_body(ex.valid, ex.raw, stream_usage=holds)

    async def _relay(self, ex: Exchange, resp: aiohttp.ClientResponse,
                     strip: bool) -> web.StreamResponse:
        outcome = StreamOutcome(output=OutputCounter(ex.route))
        metrics.ACTIVE_STREAMS.inc()
        try:
            out = await relay(ex.request, resp, ex.headers, outcome,
                              idle_timeout=self.idle_timeout, strip_usage_chunk=strip,
                              record=ex.cache_key is not None,
                              write_timeout=self.server.write_timeout)
        finally:
            metrics.ACTIVE_STREAMS.dec()
            self._stream_usage(ex, outcome)
        if outcome.upstream_failed:
            metrics.UPSTREAM_ERRORS.labels("interrupted").inc()
        elif ex.cache_key is not None and outcome.complete and outcome.recorded is not None:
            await self.cache.set(ex.cache_key, Entry(True, b"".join(outcome.recorded)))
        return out

    def _stream_usage(self, ex: Exchange, outcome: StreamOutcome) -> None:
        """What a stream can cost: the upstream's count; or, for a stream its client stopped
        after an event while the gateway kept up with the upstream, the prompt, the output
        received and a margin for what was in flight -- except for models that reason before
        they write (hidden tokens, billed): those, like every other cut stream, keep the
        reservation."""
        ex.usage = outcome.usage
        if (ex.usage is None and outcome.stopped_by_client and outcome.sent_bytes
                and ex.price is not None and not ex.price.reasoning):
            ex.stopped = self._read(ex, outcome.output.tokens + STOP_MARGIN_TOKENS)

    @staticmethod
    def _models_for(client: Caller) -> frozenset[str] | None:
        """The client's own allowlist (its key's or tier's); None: validation.allowed_models."""
        return client.models

    # --- GET /v1/models -------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.StreamResponse:
        """The upstream's model list filtered to what this client may use. It counts against
        the client's request limit, and the upstream is asked at most once a minute."""
        ex = await self._begin(request, "/v1/models")
        await self._limit_requests(ex, None)
        answer = await self._model_list(request)
        body, allowed = answer.body, self._models_for(ex.client) or self.allowed
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

"""The forwarding handlers: one request's path through the policy components.

identify -> read body (size) -> validate -> request limit -> cache lookup -> token budget ->
upstream (single-flight for cacheable answers) -> answer (JSON or relayed SSE) -> settle tokens.
Each step's rules live in its own module; this file only orders them.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass

import orjson
from aiohttp import web

from . import metrics
from .cache import Entry, PromptCache, cache_key
from .errors import BodyTooLarge, GatewayError, RateLimited, RequestTimeout, upstream_error
from .identity import Client, IdentityResolver
from .logs import RequestRecord
from .ratelimit import RateLimiter
from .ratelimit import headers as limit_headers
from .settings import Settings
from .streaming import relay, replay
from .upstream import RETURNED_HEADERS, Upstream
from .validation import ParsedRequest, Validator

log = logging.getLogger("gateway.proxy")
RECORD = web.RequestKey("record", RequestRecord) if hasattr(web, "RequestKey") else "record"
#: Routes whose streams can report usage when asked with stream_options.include_usage.
USAGE_OPT_IN = frozenset({"/v1/chat/completions", "/v1/completions"})
_USAGE_FIELD = re.compile(rb'"(prompt_tokens|completion_tokens|input_tokens|output_tokens|'
                          rb'total_tokens)"\s*:\s*(\d+)')
JSON = "application/json"


@dataclass(slots=True)
class Answer:
    """A complete (non-stream) upstream answer, shareable between coalesced requests."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]


def usage_from_json(body: bytes) -> dict | None:
    """Token counts from a JSON answer's `usage`, found without parsing the whole body
    (embeddings answers are large; usage sits at their end)."""
    at = body.rfind(b'"usage"')
    if at < 0:
        return None
    fields = {k.decode(): int(v) for k, v in _USAGE_FIELD.findall(body, at, at + 2000)}
    return fields or None


def split_usage(usage: dict | None) -> tuple[int | None, int | None]:
    if not usage:
        return None, None
    tin = usage.get("prompt_tokens", usage.get("input_tokens"))
    tout = usage.get("completion_tokens", usage.get("output_tokens"))
    if tin is None and tout is None and "total_tokens" in usage:
        return usage["total_tokens"], 0
    return (tin if isinstance(tin, int) else None), (tout if isinstance(tout, int) else None)


class Proxy:
    def __init__(self, settings: Settings, *, upstream: Upstream, limiter: RateLimiter,
                 cache: PromptCache):
        self.upstream = upstream
        self.limiter = limiter
        self.cache = cache
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """(Re)build the request policy; called at start and on SIGHUP."""
        self.s = settings
        self.identity = IdentityResolver(trusted_proxies=settings.server.trusted_proxies,
                                         clients=settings.clients,
                                         require_client_key=settings.auth.require_client_key)
        self.validator = Validator(settings.validation)
        self.max_body = settings.server.max_body_bytes
        self.allowed = frozenset(settings.validation.allowed_models)
        self.client_models = {c.name: frozenset(c.models) for c in settings.clients
                              if c.models is not None}

    # --- POST routes ----------------------------------------------------------------------

    async def forward(self, request: web.Request) -> web.StreamResponse:
        rec: RequestRecord = request[RECORD]
        route = rec.route = request.match_info.route.resource.canonical
        client = self.identity.resolve(request)
        rec.client = client.ip if client.key is None else client.id
        if request.content_length is not None and request.content_length > self.max_body:
            raise BodyTooLarge(f"Request body is {request.content_length} bytes; this gateway "
                               f"accepts at most {self.max_body}.")
        try:
            if request.content.is_eof():  # usual for small bodies: already here, no timer
                raw = await request.read()
            else:
                async with asyncio.timeout(self.s.server.body_timeout):
                    raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BodyTooLarge(f"Request body is larger than {self.max_body} bytes.") from None
        except TimeoutError:
            raise RequestTimeout("The request body was not received in time.") from None
        parsed = self.validator.check(route, raw, self._models_for(client))
        rec.model, rec.stream = parsed.model, parsed.stream

        try:
            req_state = await self.limiter.check_requests(client, route, parsed.model)
        except RateLimited:
            rec.rate_limit = "requests"
            metrics.RATE_LIMITED.labels("requests").inc()
            raise
        rec.rate_limit = "ok"
        headers = limit_headers(req_state, None)

        key = None
        rec.cache = self.cache.policy(route, parsed, request.headers.get("Cache-Control"))
        if rec.cache is None:
            scope = client.id if client.key is not None and client.key.cache_scope == "client" \
                else "shared"
            key = cache_key(route, scope, parsed.body, request.headers)
            entry = await self.cache.get(key)
            rec.cache = "HIT" if entry is not None else "MISS"
            if entry is not None:  # the key covers the body, "stream" included
                metrics.CACHE.labels("HIT").inc()
                headers["X-Cache"] = "HIT"
                return await self._from_cache(request, entry, headers)
        metrics.CACHE.labels(rec.cache).inc()
        headers["X-Cache"] = rec.cache

        estimate = (parsed.input_chars + 3) // 4 + (parsed.max_tokens or 0)
        try:
            tok_state = await self.limiter.check_tokens(client, route, parsed.model, estimate)
        except RateLimited:
            rec.rate_limit = "tokens"
            metrics.RATE_LIMITED.labels("tokens").inc()
            raise
        headers.update(limit_headers(None, tok_state))
        reserved = estimate if tok_state is not None else 0
        try:
            return await self._answer(request, rec, client, route, parsed, raw, key, headers,
                                      reserved)
        except GatewayError:
            # Nothing was delivered (502, 504 ...): the reservation goes back to the budget.
            await self._settle(client, route, parsed, None, rec, reserved)
            raise

    async def _answer(self, request, rec: RequestRecord, client: Client, route: str,
                      parsed: ParsedRequest, raw: bytes, key: str | None,
                      headers: dict[str, str], reserved: int) -> web.StreamResponse:
        if parsed.stream:
            return await self._stream(request, rec, client, route, parsed, raw, key, headers,
                                      reserved)

        if key is not None:
            answer, asked = await self.cache.single_flight(key, self._fetch, request, rec,
                                                          route, raw, key)
            if isinstance(answer, Entry):  # another process filled it while we waited
                answer = Answer(200, JSON, answer.body, {})
        else:
            answer, asked = await self._fetch(request, rec, route, raw, key), True
        if not asked:
            # Served by an identical request's upstream call: like a hit, it spent no tokens.
            rec.cache = headers["X-Cache"] = "HIT"
            await self._settle(client, route, parsed, None, rec, reserved)
        else:
            await self._settle(client, route, parsed, usage_from_json(answer.body), rec,
                               reserved)
        headers.update(answer.headers)
        return web.Response(status=answer.status, body=answer.body, headers=headers,
                            content_type=answer.content_type)

    async def _fetch(self, request, rec: RequestRecord, route: str, raw: bytes,
                     key: str | None) -> Answer:
        t0 = time.perf_counter()
        # send + close, not `upstream.open`: the hot path skips the context manager's layer.
        resp = await self.upstream.send("POST", route, raw, request.headers)
        try:
            rec.upstream_status = resp.status
            ttfb = time.perf_counter() - t0
            rec.ttfb_ms = round(ttfb * 1000, 2)
            metrics.TTFB.labels(route).observe(ttfb)
            body = await self.upstream.read_body(resp, self.s.upstream.max_response_bytes)
            status, ctype = resp.status, resp.content_type or JSON
            if status >= 400:
                status, ctype, body = self._upstream_failed(status, ctype, body)
            answer = Answer(status, ctype, body,
                            {h: resp.headers[h] for h in RETURNED_HEADERS if h in resp.headers})
        finally:
            resp.close() if not resp.closed else None
        if key is not None and resp.status == 200 and answer.content_type == JSON:
            await self.cache.set(key, Entry(False, body))
        return answer

    async def _stream(self, request, rec: RequestRecord, client: Client, route: str,
                      parsed: ParsedRequest, raw: bytes, key: str | None,
                      headers: dict[str, str], reserved: int) -> web.StreamResponse:
        body = parsed.body
        strip = False
        if route in USAGE_OPT_IN and self.limiter.any_tokens:
            opts = body.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage")):
                # Token budgets need the upstream's count; the client did not ask for it, so
                # the extra usage chunk is removed from what it sees.
                body = dict(body, stream_options={**(opts if isinstance(opts, dict) else {}),
                                                  "include_usage": True})
                raw = orjson.dumps(body)
                strip = True
        t0 = time.perf_counter()
        async with self.upstream.open("POST", route, raw, request.headers) as resp:
            rec.upstream_status = resp.status
            rec.ttfb_ms = round((time.perf_counter() - t0) * 1000, 2)
            metrics.TTFB.labels(route).observe(time.perf_counter() - t0)
            headers.update({h: resp.headers[h] for h in RETURNED_HEADERS if h in resp.headers})
            if resp.status != 200 or resp.content_type != "text/event-stream":
                # An error (or an upstream that ignored stream=true): pass it on as it is.
                data = await self.upstream.read_body(resp, self.s.upstream.max_response_bytes)
                status, ctype = resp.status, resp.content_type or JSON
                if status >= 400:
                    status, ctype, data = self._upstream_failed(status, ctype, data)
                await self._settle(client, route, parsed,
                                   usage_from_json(data) if status == 200 else None, rec,
                                   reserved)
                return web.Response(status=status, body=data, headers=headers,
                                    content_type=ctype)
            metrics.ACTIVE_STREAMS.inc()
            try:
                out, outcome = await relay(request, resp, headers,
                                      idle_timeout=self.s.upstream.idle_timeout,
                                      strip_usage_chunk=strip, record=key is not None)
            finally:
                metrics.ACTIVE_STREAMS.dec()
        if outcome.upstream_failed:
            metrics.UPSTREAM_ERRORS.labels("interrupted").inc()
        usage = outcome.usage
        if usage is None and not outcome.complete and outcome.sent_bytes:
            # Cut short before usage arrived: charge the prompt estimate, never the whole cap.
            usage = {"prompt_tokens": (parsed.input_chars + 3) // 4, "completion_tokens": 0}
        await self._settle(client, route, parsed, usage, rec, reserved)
        if key is not None and outcome.complete and not outcome.upstream_failed:
            await self.cache.set(key, Entry(True, b"".join(outcome.recorded)))
        return out

    async def _from_cache(self, request, entry: Entry, headers) -> web.StreamResponse:
        if entry.stream:
            return await replay(request, entry.body, headers)
        return web.Response(body=entry.body, headers=headers, content_type=JSON)

    async def _settle(self, client: Client, route: str, parsed: ParsedRequest,
                      usage: dict | None, rec: RequestRecord, reserved: int) -> None:
        """Record the usage and bring the token reservation to it (no usage: refund all)."""
        tin, tout = split_usage(usage)
        rec.tokens_in, rec.tokens_out = tin, tout
        model = parsed.model or "none"
        if tin:
            metrics.TOKENS.labels(model, "in").inc(tin)
        if tout:
            metrics.TOKENS.labels(model, "out").inc(tout)
        await self.limiter.settle_tokens(client, route, parsed.model, reserved,
                                         (tin or 0) + (tout or 0))

    @staticmethod
    def _upstream_failed(status: int, ctype: str, body: bytes) -> tuple[int, str, bytes]:
        if status in (401, 403):
            log.error("the upstream refused the gateway's key (status %d): check the key", status)
        metrics.UPSTREAM_ERRORS.labels(f"status_{status}" if status in (401, 403, 429)
                                       else f"status_{status // 100}xx").inc()
        return upstream_error(status, ctype, body)

    def _models_for(self, client: Client) -> frozenset[str] | None:
        if client.key is not None:
            return self.client_models.get(client.key.name)
        return None

    # --- GET /v1/models -------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.StreamResponse:
        rec: RequestRecord = request[RECORD]
        rec.route = "/v1/models"
        client = self.identity.resolve(request)
        rec.client = client.ip if client.key is None else client.id
        allowed = self._models_for(client) or self.allowed
        async with self.upstream.open("GET", "/v1/models", None, request.headers) as resp:
            rec.upstream_status = resp.status
            body = await self.upstream.read_body(resp, 16 * 1024 * 1024)
            status, ctype = resp.status, resp.content_type or JSON
        if status >= 400:
            status, ctype, body = self._upstream_failed(status, ctype, body)
        elif status == 200 and allowed:
            try:
                doc = orjson.loads(body)
                doc["data"] = [m for m in doc.get("data", []) if m.get("id") in allowed]
                body = orjson.dumps(doc)
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                raise GatewayError("The upstream's model list could not be read.") from None
        return web.Response(status=status, body=body, content_type=ctype)

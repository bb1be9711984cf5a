"""The one pooled upstream `ClientSession`: header rewrite, timeouts, retries, error mapping.

Library errors become `UpstreamUnavailable` (502) or `UpstreamTimeout` (504) here and nowhere
else. Retries happen only before the client has received a byte (the caller has not prepared
its response yet), so a retried request can never duplicate output.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import aiohttp

from ..config.settings import UpstreamSettings
from ..errors import UpstreamTimeout, UpstreamUnavailable
from ..observability.metrics import Metrics

log = logging.getLogger("gateway.upstream")

#: Client headers that may reach the upstream. An allowlist, not a blocklist: the client's
#: Authorization, cookies, OpenAI-Organization/Project (billing belongs to the key's owner),
#: hop-by-hop headers (RFC 9110 7.6.1) and anything else never leave the gateway.
FORWARDED_HEADERS = ("Accept", "OpenAI-Beta", "Idempotency-Key")
#: Upstream statuses worth another attempt: rate limited, and transient server trouble.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Upstream response headers passed back to the client. Not its x-ratelimit-*: those describe
#: the whole organisation's budget, and would overwrite the client's own.
RETURNED_HEADERS = ("openai-processing-ms", "openai-version")


class Upstream:
    """Owns the session; open it with `async with Upstream(...).running()` (a cleanup_ctx)."""

    def __init__(self, settings: UpstreamSettings, api_key: str,
                 fallback_keys: tuple[str, ...] = (), *, metrics: Metrics):
        self.session: aiohttp.ClientSession | None = None
        self.metrics = metrics
        self.configure(settings, api_key, fallback_keys)

    def configure(self, settings: UpstreamSettings, api_key: str,
                  fallback_keys: tuple[str, ...] = ()) -> None:
        """(Re)read URLs, keys and timeouts; pooled connections are kept (SIGHUP reload)."""
        self.s = settings
        #: (base URL, Authorization value) per upstream: the primary first, then fallbacks.
        self.endpoints = [(settings.base_url.rstrip("/"), "Bearer " + api_key)] + [
            (fb.base_url.rstrip("/"), "Bearer " + (k or api_key))
            for fb, k in zip(settings.fallbacks, fallback_keys or ("",) * len(settings.fallbacks),
                             strict=True)]
        #: The fixed part of each endpoint's request headers, built once: {auth: (GET, POST)}.
        self._base_headers = {
            auth: ({"Authorization": auth},
                   {"Authorization": auth, "Content-Type": "application/json"})
            for _, auth in self.endpoints}
        # Every endpoint is tried at least once, whatever `retries` says.
        self.attempts = max(settings.retries + 1, len(self.endpoints))

    @asynccontextmanager
    async def running(self):
        connector = aiohttp.TCPConnector(
            limit=self.s.max_connections, limit_per_host=self.s.max_connections,
            ttl_dns_cache=300, keepalive_timeout=30, enable_cleanup_closed=True)
        # No total timeout: a stream may last minutes. Connect is bounded here, the first byte
        # and the gaps between chunks by the callers (see `open` and `read_body`).
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.s.connect_timeout)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=timeout,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            cookie_jar=aiohttp.DummyCookieJar())
        try:
            yield self
        finally:
            await self.session.close()

    def client_session(self) -> aiohttp.ClientSession:
        """The pooled session; it exists only while `running()` is entered."""
        if self.session is None:
            raise RuntimeError("the upstream session is not open yet (see Upstream.running)")
        return self.session

    def headers(self, auth: str, client_headers, has_body: bool,
                body_headers: Mapping[str, str] | None = None) -> dict[str, str]:
        """The request's headers: the key, the body's (JSON unless `body_headers` says what
        it is: an upload's own multipart Content-Type), and the client's FORWARDED_HEADERS."""
        out = self._base_headers[auth][has_body]
        copied = False
        if body_headers:
            out, copied = {**out, **body_headers}, True
        for name in FORWARDED_HEADERS:
            value = client_headers.get(name)
            if value is not None:
                if not copied:
                    out, copied = dict(out), True
                out[name] = value
        return out  # shared when nothing was added: aiohttp copies it into the request

    @asynccontextmanager
    async def open(self, method: str, route: str, body: bytes | None,
                   client_headers) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send the request (with retries) and yield the response once its headers arrived.

        Leaving the context releases or closes the upstream connection, which is how a client
        that went away stops an upstream generation at once.
        """
        resp = await self.send(method, route, body, client_headers)
        try:
            yield resp
        finally:
            resp.close() if not resp.closed else None

    async def send(self, method, route, body, client_headers, *,
                   body_headers: Mapping[str, str] | None = None,
                   first_byte_timeout: float | None = None) -> aiohttp.ClientResponse:
        """The response once its headers arrived; the caller must `close()` it (see `open`).

        `body`: bytes (JSON), or a payload that can be sent again (an upload) with its own
        `body_headers`; `first_byte_timeout`: this route's, when not `upstream`'s.
        A failure says whether any attempt may have reached the upstream (`reached`): only a
        connection that was never made (refused, connect timeout) certainly sent nothing."""
        session, attempts = self.client_session(), self.attempts
        wait = first_byte_timeout or self.s.first_byte_timeout
        reached = False
        for attempt in range(attempts):
            last = attempt == attempts - 1
            base, auth = self.endpoints[attempt % len(self.endpoints)]
            # Routes are fixed strings from the route table ("/v1/..."); the client's path
            # never reaches the upstream, so no path trick can address another endpoint.
            url = base + route[3:]
            headers = self.headers(auth, client_headers, body is not None, body_headers)
            try:
                async with asyncio.timeout(wait):
                    resp = await session.request(method, url, data=body, headers=headers,
                                                 allow_redirects=False)
            except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
                # Nothing was sent yet: as safe to retry (or fail over) as it is free.
                log.warning("upstream unreachable on %s (attempt %d/%d): %s", route,
                            attempt + 1, attempts, type(exc).__name__)
                if last:
                    timeout = isinstance(exc, aiohttp.ConnectionTimeoutError)
                    kind = "timeout" if timeout else "unavailable"
                    self.metrics.upstream_errors.labels(kind).inc()
                    error = UpstreamTimeout if timeout else UpstreamUnavailable
                    raise error("The upstream could not be reached" + (
                        " in time." if timeout else "."), reached=reached) from None
                await self._pause(attempt, None)
                continue
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                # A slow first byte is not retried: the upstream may still be generating (and
                # billing), so the request counts as received.
                log.warning("upstream timeout on %s: %s", route, type(exc).__name__)
                self.metrics.upstream_errors.labels("timeout").inc()
                raise UpstreamTimeout("The upstream did not answer in time.") from None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
                    aiohttp.ClientResponseError) as exc:  # the last: a malformed answer
                reached = True  # the connection broke after the request may have gone out
                log.warning("upstream unreachable on %s (attempt %d/%d): %s", route,
                            attempt + 1, attempts, type(exc).__name__)
                if last:
                    self.metrics.upstream_errors.labels("unavailable").inc()
                    raise UpstreamUnavailable("The upstream could not be reached.") from None
                await self._pause(attempt, None)
                continue
            if resp.status in RETRY_STATUSES and not last:
                log.warning("upstream answered %d on %s (attempt %d/%d), retrying", resp.status,
                            route, attempt + 1, attempts)
                retry_after = resp.headers.get("Retry-After")
                resp.release()
                await self._pause(attempt, retry_after)
                continue
            return resp
        raise AssertionError("unreachable")  # the loop always returns or raises

    async def _pause(self, attempt: int, retry_after: str | None) -> None:
        """Wait before retrying the same upstream; failing over to the next one is immediate."""
        if (attempt + 1) % len(self.endpoints) == 0:
            await asyncio.sleep(self._backoff(attempt // len(self.endpoints), retry_after))

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        """Exponential backoff with jitter; the upstream's Retry-After wins, capped at 10 s."""
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), 10.0)
            except ValueError:
                pass
        return self.s.retry_backoff * (2 ** attempt) * (0.5 + random.random() / 2)

    async def read_body(self, resp: aiohttp.ClientResponse, limit: int) -> bytes:
        """The whole body, bounded in time (idle timeout) and size (`limit` bytes)."""
        if resp.content.is_eof():
            # Usual for JSON answers: the body came with the headers, so there is nothing to
            # wait for and no timer to arm. The size bound still holds (it is already here,
            # within the connection's read buffer, but it is not passed on).
            body = await resp.read()
            if len(body) > limit:
                raise UpstreamUnavailable("The upstream's answer is too large.")
            return body
        try:
            async with asyncio.timeout(self.s.idle_timeout) as t:
                chunks, size = [], 0
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
                    if size > limit:
                        raise UpstreamUnavailable("The upstream's answer is too large.")
                    chunks.append(chunk)
                    t.reschedule(asyncio.get_running_loop().time() + self.s.idle_timeout)
                return b"".join(chunks)
        except TimeoutError:
            raise UpstreamTimeout("The upstream stopped sending its answer.") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
            raise UpstreamUnavailable("The upstream connection broke during the answer.") from None

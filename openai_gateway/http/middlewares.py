"""What wraps every request: error rendering, its id and record, the Origin policy, and the
headers every answer carries.

The app declares their order (app.py); each one's docstring says what it relies on from the
ones outside it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from aiohttp import web

from ..errors import (
    GatewayError,
    OriginNotAllowed,
    error_response,
    from_http_exception,
    http_error_code,
)
from ..observability.logs import AccessLog, RequestRecord, refusal_detail
from ..observability.metrics import Metrics
from ..pipeline.proxy import COST_HEADER, RECORD

log = logging.getLogger("gateway")

#: Headers a browser script may read from our answers (CORS hides the rest). `Location`: a
#: WebRTC call's id (OpenAI's browser code reads it from the answer to POST /realtime/calls).
EXPOSED_HEADERS = ("X-Request-ID", "X-Cache", "Retry-After", "x-should-retry",
                   "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                   "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
                   "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
                   "x-ratelimit-limit-spend", "x-ratelimit-remaining-spend", COST_HEADER,
                   "Location")

#: The client's address of a request (trusted proxies applied).
AddressOf = Callable[[web.Request], str]


@web.middleware
async def render_errors(request: web.Request, handler):
    """Outermost: every failure leaves as an OpenAI-shaped JSON error, never a traceback."""
    try:
        return await handler(request)
    except GatewayError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return from_http_exception(exc, request)
    except (asyncio.CancelledError, ConnectionResetError):
        raise  # the client is gone: nothing to render, nobody to render it for
    except Exception:
        rec = request.get(RECORD)
        log.exception("unexpected error (request %s)", rec.request_id if rec else "-")
        return error_response(
            500, f"The gateway failed to handle this request (request id "
                 f"{rec.request_id if rec else '-'}).", "server_error", None, "internal_error")


def request_context(access: AccessLog, hash_client: bool, address_of: AddressOf,
                    metrics: Metrics):
    """Gives each request an id and a record, and logs the record once the answer is done.

    The status logged is the one the client gets: a GatewayError's, which `render_errors`
    (outside) turns into the answer. `address_of` names the client of a request refused
    before the proxy identified it."""
    prefix = os.urandom(4).hex()
    counter = iter(range(1, 1 << 62))

    @web.middleware
    async def middleware(request: web.Request, handler):
        # A per-process random prefix plus a counter: unique, cheap, and reveals nothing.
        rec = RequestRecord(f"req_{prefix}{next(counter):010x}", request.method, request.path,
                            time.perf_counter())
        request[RECORD] = rec
        try:
            response = await handler(request)
            rec.status = response.status
            return response
        except web.HTTPException as exc:
            rec.status = exc.status
            if exc.status >= 400:
                rec.error = http_error_code(exc.status)
            raise
        except GatewayError as exc:
            # The access line says why: the code the client got and a short, safe reason.
            rec.status, rec.error = exc.status, exc.code or exc.type
            rec.detail = refusal_detail(exc, request.headers.get("Origin"))
            raise
        except asyncio.CancelledError:
            rec.status = 499  # client closed the connection (nginx's convention)
            raise
        except Exception:
            rec.status, rec.error = 500, "internal_error"
            raise
        finally:
            if rec.client == "-":  # refused before the proxy resolved who it was
                rec.client = address_of(request)
            if rec.route is not None:
                metrics.requests.labels(rec.route, str(rec.status)).inc()
                metrics.latency.bucket(rec.route).observe(time.perf_counter() - rec.started)
            access.log(rec, hash_client)

    return middleware


class OriginPolicy:
    """Refuse a request whose Origin is not allowed before it costs anything.

    CORS only stops a browser from reading the answer; the request would still be executed
    (and billed), and a script outside a browser ignores CORS altogether. aiohttp-cors is set up
    for every origin ("*") so that this policy, reconfigured on reload, is the one place
    deciding which origins are allowed.
    """

    def __init__(self, allow: tuple[str, ...], *, address_of: AddressOf):
        self.address_of = address_of
        self.configure(allow)

    def configure(self, allow: tuple[str, ...]) -> None:
        self.allow_all = "*" in allow
        self.allowed = frozenset(allow)

    def allows(self, origin: str) -> bool:
        return self.allow_all or origin in self.allowed

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        origin = request.headers.get("Origin")
        if origin is not None and not self.allow_all and origin not in self.allowed:
            rec = request.get(RECORD)
            if rec is not None:
                rec.client = self.address_of(request)
            raise OriginNotAllowed(f"Origin {origin[:100]!r} is not allowed to use this gateway.")
        return await handler(request)


ORIGINS = web.AppKey("origins", OriginPolicy)


async def add_common_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: headers every answer carries, streams included. Reads the app's
    OriginPolicy under ORIGINS."""
    rec = request.get(RECORD)
    if rec is not None:
        response.headers["X-Request-ID"] = rec.request_id
    # aiohttp-cors serves every origin (see OriginPolicy); a refused one gets no CORS headers,
    # so a foreign page cannot even read why it was refused.
    origin = request.headers.get("Origin")
    if origin is not None and not request.app[ORIGINS].allows(origin):
        response.headers.popall("Access-Control-Allow-Origin", None)
        response.headers.popall("Access-Control-Expose-Headers", None)
    # The answer differs by Origin (CORS headers); caches must not mix them (aiohttp-cors
    # does not say so itself).
    vary = response.headers.get("Vary")
    if vary is None:
        response.headers["Vary"] = "Origin"
    elif "origin" not in vary.lower():
        response.headers["Vary"] = vary + ", Origin"

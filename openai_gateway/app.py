"""create_app(settings): the route table, the middleware list and the shared resources."""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass

import aiohttp_cors
from aiohttp import web

from .cache.prompts import PromptCache
from .config.settings import ClientSettings, Settings
from .errors import (
    GatewayError,
    OriginNotAllowed,
    error_response,
    from_http_exception,
    http_error_code,
)
from .http import playground
from .identity.addresses import IdentityResolver, address_key
from .identity.auth import Auth
from .identity.callers import Caller, Callers
from .metering.budgets import Budgets
from .metering.headers import limit_headers
from .metering.limiter import RateLimiter, StoragePolicy
from .metering.prices import PriceTable, configured
from .metering.rules import Limits, Rules
from .observability import metrics
from .observability.logs import RequestRecord, log_access, refusal_detail
from .pipeline.admission import Admission
from .pipeline.exchange import COST_HEADER, RECORD
from .pipeline.proxy import Policy, Proxy
from .pipeline.settlement import Settlement
from .pipeline.validation import Validator
from .store import Store, open_store
from .upstream.client import Upstream

log = logging.getLogger("gateway")

#: Headers a browser script may read from our answers (CORS hides the rest).
EXPOSED_HEADERS = ("X-Request-ID", "X-Cache", "Retry-After",
                   "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                   "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
                   "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
                   "x-ratelimit-limit-spend", "x-ratelimit-remaining-spend", COST_HEADER)


# --- middlewares, outermost first --------------------------------------------------------


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


def request_context(hash_client: bool):
    """Gives each request an id and a record, and logs the record once the answer is done."""
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
                rec.client = request.app[PROXY].p.identity.address(request)
            if rec.route is not None:
                metrics.REQUESTS.labels(rec.route, str(rec.status)).inc()
                metrics.LATENCY.labels(rec.route).observe(time.perf_counter() - rec.started)
            log_access(rec, hash_client)

    return middleware


class OriginPolicy:
    """Refuse a request whose Origin is not allowed before it costs anything.

    CORS only stops a browser from reading the answer; the request would still be executed
    (and billed), and a script outside a browser ignores CORS altogether. aiohttp-cors is set up
    for every origin ("*") so that this policy, rebuilt on reload, is the one place deciding
    which origins are allowed.
    """

    def __init__(self, allow: tuple[str, ...]):
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
            proxy = request.app[PROXY]
            rec = request.get(RECORD)
            if rec is not None:
                rec.client = proxy.p.identity.address(request)
            raise OriginNotAllowed(f"Origin {origin[:100]!r} is not allowed to use this gateway.")
        return await handler(request)


@dataclass(slots=True)
class AppState:
    draining: bool = False


SETTINGS = web.AppKey("settings", Settings)
AUTH = web.AppKey("auth", Auth)
PROXY = web.AppKey("proxy", Proxy)
STATE = web.AppKey("state", AppState)
ORIGINS = web.AppKey("origins", OriginPolicy)


def mark_draining(app: web.Application) -> None:
    """From now on /readyz answers 503, so a load balancer stops sending new requests."""
    app[STATE].draining = True


async def add_common_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: headers every answer carries, streams included."""
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


# --- shared resources ---------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    if app[STATE].draining:
        return web.json_response({"status": "draining"}, status=503)
    s = app[SETTINGS]
    checks, down_servers = {}, []
    for name, store in app[STORES]:
        # A server marked down is not asked again (its probe runs in the background); the
        # others answer within storage.timeout or are marked down now.
        down_here = await store.ping()
        checks[name] = "down" if down_here else "ok"
        down_servers += [d for d in down_here if d not in down_servers]
    down = bool(down_servers)
    status = 503 if down and s.storage.on_error == "closed" else 200
    doc: dict = {"status": "degraded" if down else "ok", "storage": checks}
    if down:
        doc["down_servers"] = down_servers
    keyless = app[AUTH].bearer.not_ready()
    if keyless:  # their users get 401 until the key sets load
        doc["status"], doc["auth"] = "degraded", {"issuers_without_keys": keyless}
    return web.json_response(doc, status=status)


def cors_defaults(s: Settings) -> dict:
    """Every origin at the CORS layer: which ones may call is OriginPolicy's decision."""
    return {"*": aiohttp_cors.ResourceOptions(
        allow_credentials=False, expose_headers=EXPOSED_HEADERS, allow_headers="*",
        max_age=s.cors.max_age)}


@dataclass
class Components:
    """What a process keeps for its lifetime (stores, pooled connections, counters); their
    policy comes from `apply`, at start and on every reload."""

    #: ("rate_limit", the limiter's store), ("cache", the cache's): often one store.
    stores: tuple[tuple[str, Store], ...]
    upstream: Upstream
    limiter: RateLimiter
    budgets: Budgets
    cache: PromptCache
    admission: Admission
    settlement: Settlement
    proxy: Proxy
    auth: Auth
    origins: OriginPolicy


COMPONENTS = web.AppKey("components", Components)
STORES = web.AppKey("stores", tuple)


def _server_gauge(server: str, up: bool) -> None:
    metrics.STORAGE_SERVER_UP.labels(server).value = 1 if up else 0


def build(settings: Settings, demo: bool = False) -> Components:
    s = settings
    # One store per process, chosen once: the limiter, the budgets and the cache share it when
    # they name the same URL, so one ring places every key and one table knows its health.
    def opened(url):
        return open_store(url, timeout=s.storage.timeout, password=s.storage_password,
                          cache_bytes=s.cache.max_bytes, on_change=_server_gauge)

    store = opened(s.rate_limit_storage)
    cache_store = store if s.cache_storage == s.rate_limit_storage else opened(s.cache_storage)
    policy = StoragePolicy(s.storage.on_error)
    limiter = RateLimiter(store, policy)
    budgets = Budgets(store, policy, limiter.ident)
    cache = PromptCache(s.cache, cache_store)
    upstream = Upstream(s.upstream, s.api_key, s.fallback_keys)
    auth = Auth(s, upstream.client_session, demo=demo)
    admission, settlement = Admission(limiter, budgets, cache), Settlement(budgets)
    proxy = Proxy(upstream=upstream, admission=admission, settlement=settlement, cache=cache)
    stores = (("rate_limit", store), ("cache", cache_store))
    return Components(stores, upstream, limiter, budgets, cache, admission, settlement, proxy,
                      auth, OriginPolicy(()))


def apply(app: web.Application, settings: Settings) -> None:
    """Map settings onto the running components: the one place that knows which slice each
    component takes. Requests in flight finish under the policy they started with."""
    s, c = settings, app[COMPONENTS]
    rules = Rules(s.rate_limit, s.budget)
    c.limiter.configure(rules, s.rate_limit.strategy)
    c.budgets.configure(rules)
    prices = PriceTable({model: configured(
        model, input=p.input, output=p.output, cached_input=p.cached_input,
        audio_input=p.audio_input, image_input=p.image_input, audio_output=p.audio_output,
        reasoning=p.reasoning) for model, p in s.prices.items()})
    c.admission.configure(prices)
    c.settlement.configure(prices, s.budget.warn_at)
    c.cache.configure(s.cache)
    c.upstream.configure(s.upstream, s.api_key, s.fallback_keys)
    identity = IdentityResolver(trusted_proxies=s.server.trusted_proxies, clients=s.clients,
                                require_client_key=s.auth.require_client_key,
                                ipv6_prefix=s.server.ipv6_prefix)
    callers = Callers(identity=identity, bearer=c.auth.bearer, tiers=s.tiers,
                      clients=s.clients, anonymous=s.auth.anonymous,
                      require_client_key=s.auth.require_client_key)
    c.proxy.configure(Policy(identity, callers, Validator(s.validation), s.server, s.upstream,
                             frozenset(s.validation.allowed_models)))
    c.origins.configure(s.cors.allow_origins)
    app[SETTINGS] = settings


def create_app(settings: Settings, *, demo: bool = False) -> web.Application:
    s = settings
    c = build(s, demo)
    proxy, auth, origins = c.proxy, c.auth, c.origins
    app = web.Application(
        middlewares=[
            render_errors,                                   # outermost: errors in OpenAI's shape
            request_context(s.log.hash_client),              # id, record, access log, metrics
            origins.middleware,                              # 403 before any work is done
        ],
        client_max_size=s.server.max_body_bytes,
        # auto_decompress off: a compressed body is refused or inflated with a bound by
        # bodies.read_body, never inflated by aiohttp while a refused request lingers.
        handler_args={"max_field_size": 16384, "auto_decompress": False},
    )
    app[STATE] = AppState()
    app[COMPONENTS] = c
    app[PROXY] = proxy
    app[ORIGINS] = origins
    app[STORES] = c.stores
    apply(app, s)
    # Each resource is opened before serving and closed after the last request, in order.
    # The issuers fetch their keys with the upstream's session: it opens first.
    # The proxy last: at shutdown it first finishes the answers it still reads for clients
    # that left, while the store, the cache and the upstream session are still open.
    app.cleanup_ctx.append(_running(c.upstream))
    app.cleanup_ctx.append(_stores(c))
    for component in (c.cache, auth, proxy):
        app.cleanup_ctx.append(_running(component))
    app[AUTH] = auth

    cors = aiohttp_cors.setup(app, defaults=cors_defaults(s))
    for route in s.upstream.routes:
        if route == "/v1/models":
            cors.add(app.router.add_get(route, proxy.models, allow_head=False))
        else:
            cors.add(app.router.add_post(route, proxy.forward))
    # Lambdas, not bound methods: a reload replaces the proxy's identity and callers.
    for path, handler in auth.routes(client_key=lambda a: proxy.p.identity.client_key(a),
                                     count_mint=lambda r, key: _mint_rate(c, r, key),
                                     address_of=lambda r: proxy.p.identity.address(r),
                                     check_rate=lambda ip: _session_rate(c, s, ip)):
        cors.add(app.router.add_post(path, handler))
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    if s.metrics.enabled:
        app.router.add_get("/metrics", metrics.metrics_handler(lambda: proxy.p.identity.trusted),
                           allow_head=False)
    if s.playground.enabled:
        playground.register(app, s)                          # GET /: the reference front-end
    app.on_response_prepare.append(add_common_headers)
    return app


#: Settings a reload cannot change in a running process (sockets, storage, routes).
RESTART_ONLY = ("server.host", "server.port", "server.max_body_bytes", "storage",
                "upstream.routes", "upstream.max_connections", "metrics", "rate_limit.storage_url",
                "cache.storage_url", "playground", "cors.max_age", "auth.issuers",
                "auth.tokens", "auth.sessions")


def reconfigure(app: web.Application, new: Settings) -> list[str]:
    """Apply reloaded settings to a running app (SIGHUP); returns keys that need a restart."""
    old = app[SETTINGS]
    apply(app, new)
    return [key for key in RESTART_ONLY if _get(old, key) != _get(new, key)]


async def _mint_rate(c: Components, request: web.Request, key: ClientSettings
                     ) -> dict[str, str]:
    """Minting counts as one of the key's requests (its own limit, else its tier's, else
    [rate_limit]): the same counter as its API calls. The limit headers of the answer."""
    p = c.proxy.p
    caller = p.callers.key_client(key, p.identity.address(request))
    return limit_headers(await c.limiter.check(caller, "/gateway/tokens"))


async def _session_rate(c: Components, settings: Settings, address: str) -> None:
    """Session creation counts per address against auth.sessions.requests; an IPv6 address
    by its server.ipv6_prefix, as the API keys it (anyone holds a /64 of addresses)."""
    limits = Limits(requests=settings.auth.sessions.requests, tokens=(), spend=())
    keyed = address_key(address, c.proxy.p.identity.ipv6_prefix)
    await c.limiter.check(Caller("session:" + keyed, address, limits=limits),
                          "/gateway/session")


def _get(settings: Settings, dotted: str):
    value = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _stores(c: Components):
    """The stores open while the app runs; the strategy of the request limits said once."""
    async def ctx(app: web.Application):
        strategy = c.limiter.strategy
        log.info("request limits: %s (%s on %s); budgets: sliding-window-counter", strategy,
                 strategy.replace("-", " "), c.stores[0][1].kind)
        try:
            yield
        finally:
            for store in {id(s): s for _, s in c.stores}.values():
                await store.close()
    return ctx


def _running(component):
    async def ctx(app: web.Application):
        async with component.running():
            yield
    return ctx

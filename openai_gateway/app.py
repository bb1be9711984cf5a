"""The composition root: settings -> components -> routes and middlewares.

`create_app(settings)` builds the components a process keeps for its lifetime (`build`), maps
the settings onto them (`apply`, again on every SIGHUP through `reconfigure`), and declares
the middlewares and the routes, once and in order. What each piece does lives in its own
module: the request's path in pipeline/ (and identity/, metering/, cache/, upstream/ below
it), the HTTP edges in http/.
"""
from __future__ import annotations

from collections.abc import Callable

import aiohttp_cors
from aiohttp import web

from .cache.prompts import PromptCache
from .config import ClientSettings, Settings
from .http import playground
from .http.health import READINESS, Readiness, healthz, readyz
from .http.metrics import metrics_handler
from .http.middlewares import (
    EXPOSED_HEADERS,
    ORIGINS,
    OriginPolicy,
    add_common_headers,
    render_errors,
    request_context,
)
from .http.tokens import token_routes
from .identity.auth import Auth
from .identity.callers import Caller
from .metering.budgets import Limits
from .metering.headers import limit_headers
from .metering.limiter import RateLimiter
from .pipeline.proxy import Proxy
from .upstream.client import Upstream

SETTINGS = web.AppKey("settings", Settings)
PROXY = web.AppKey("proxy", Proxy)

#: Settings a reload cannot change in a running process (sockets, storage, routes).
RESTART_ONLY = ("server.host", "server.port", "server.max_body_bytes", "storage",
                "upstream.routes", "upstream.max_connections", "metrics", "rate_limit.storage_url",
                "cache.storage_url", "playground", "cors.max_age", "auth.issuers",
                "auth.tokens", "auth.sessions")


def build(settings: Settings, demo: bool = False) -> tuple[Proxy, Auth, OriginPolicy]:
    """The components a process keeps for its lifetime (storage, pooled connections); their
    policy comes from `apply`, here and on every reload."""
    s = settings
    # One shared store per process: the limiter builds (and closes) it; the cache uses it too
    # when both name the same URL, so one ring places every key and one table knows its health.
    limiter = RateLimiter(s.rate_limit, s.rate_limit_storage, budget=s.budget,
                          on_error=s.storage.on_error, timeout=s.storage.timeout,
                          password=s.storage_password)
    shared = limiter.store if s.cache_storage == s.rate_limit_storage else None
    cache = PromptCache(s.cache, s.cache_storage, timeout=s.storage.timeout, store=shared,
                        password=s.storage_password)
    upstream = Upstream(s.upstream, s.api_key, s.fallback_keys)
    auth = Auth(s, upstream.client_session, demo=demo)
    proxy = Proxy(s, upstream=upstream, limiter=limiter, cache=cache, bearer=auth.bearer)
    return proxy, auth, OriginPolicy((), address_of=_address_of(proxy))


def apply(app: web.Application, settings: Settings) -> None:
    """Map settings onto the running components: the one place that knows which slice each
    component takes. Requests in flight finish under the policy they started with."""
    proxy = app[PROXY]
    proxy.configure(settings)
    proxy.limiter.configure(settings.rate_limit, budget=settings.budget)
    proxy.cache.configure(settings.cache)
    proxy.upstream.configure(settings.upstream, settings.api_key, settings.fallback_keys)
    app[ORIGINS].configure(settings.cors.allow_origins)
    app[READINESS].on_error = settings.storage.on_error
    app[SETTINGS] = settings


def create_app(settings: Settings, *, demo: bool = False) -> web.Application:
    s = settings
    proxy, auth, origins = build(s, demo)
    app = web.Application(
        # Outermost first; each relies on the ones outside it:
        middlewares=[
            # Every failure below, a refusal of the two below included, leaves in OpenAI's
            # shape: the one renderer.
            render_errors,
            # The id and record the later steps write to; the access log and the metrics
            # once the answer is done, with the status render_errors gives it.
            request_context(s.log.hash_client, _address_of(proxy)),
            # A refused Origin costs nothing: 403 before identity, the body or the upstream.
            origins.middleware,
        ],
        client_max_size=s.server.max_body_bytes,
        # auto_decompress off: a compressed body is refused or inflated with a bound by
        # bodies.read_body, never inflated by aiohttp while a refused request lingers.
        handler_args={"max_field_size": 16384, "auto_decompress": False},
    )
    app[PROXY] = proxy
    app[ORIGINS] = origins
    app[READINESS] = Readiness(proxy=proxy, bearer=auth.bearer)
    apply(app, s)
    # Each resource is opened before serving and closed after the last request, in order.
    # The issuers fetch their keys with the upstream's session: it opens first.
    # The proxy last: at shutdown it first finishes the answers it still reads for clients
    # that left, while the store, the cache and the upstream session are still open.
    for component in (proxy.upstream, proxy.limiter, proxy.cache, auth, proxy):
        app.cleanup_ctx.append(_running(component))

    # Every origin at the CORS layer: which ones may call is the OriginPolicy's decision.
    cors = aiohttp_cors.setup(app, defaults={"*": aiohttp_cors.ResourceOptions(
        allow_credentials=False, expose_headers=EXPOSED_HEADERS, allow_headers="*",
        max_age=s.cors.max_age)})
    for route in s.upstream.routes:
        if route == "/v1/models":
            cors.add(app.router.add_get(route, proxy.models, allow_head=False))
        else:
            cors.add(app.router.add_post(route, proxy.forward))
    # Lambdas, not bound methods: a reload replaces the proxy's callers.
    for path, handler in token_routes(auth, client_key=lambda a: proxy.callers.keys.find(a),
                                      count_mint=lambda r, key: _mint_rate(proxy, r, key),
                                      address_of=_address_of(proxy),
                                      check_rate=lambda ip: _session_rate(proxy, s, ip)):
        cors.add(app.router.add_post(path, handler))
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    if s.metrics.enabled:
        app.router.add_get("/metrics", metrics_handler(lambda: proxy.callers.addresses),
                           allow_head=False)
    if s.playground.enabled:
        playground.register(app, s)                          # GET /: the reference front-end
    app.on_response_prepare.append(add_common_headers)
    return app


def reconfigure(app: web.Application, new: Settings) -> list[str]:
    """Apply reloaded settings to a running app (SIGHUP); returns keys that need a restart."""
    old = app[SETTINGS]
    apply(app, new)
    return [key for key in RESTART_ONLY if _get(old, key) != _get(new, key)]


def _address_of(proxy: Proxy) -> Callable[[web.Request], str]:
    """The client's address of a request, by the running settings' trusted proxies (a reload
    replaces the proxy's callers)."""
    return lambda request: proxy.callers.addresses.of(request)


async def _mint_rate(proxy: Proxy, request: web.Request, key: ClientSettings
                     ) -> dict[str, str]:
    """Minting counts as one of the key's requests (its own limit, else its tier's, else
    [rate_limit]): the same counter as its API calls. The limit headers of the answer."""
    client = proxy.callers.key_client(key, proxy.callers.addresses.of(request))
    return limit_headers(await proxy.limiter.check_requests(client, "/gateway/tokens", None))


async def _session_rate(proxy: Proxy, settings: Settings, address: str) -> None:
    """Session creation counts per address against auth.sessions.requests; an IPv6 address
    by its server.ipv6_prefix, as the API keys it (anyone holds a /64 of addresses)."""
    limits = Limits(requests=settings.auth.sessions.requests, tokens=(), spend=())
    keyed = proxy.callers.addresses.key(address)
    await proxy.limiter.check_requests(Caller("session:" + keyed, address, limits=limits),
                                       "/gateway/session", None)


def _get(settings: Settings, dotted: str):
    value = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _running(component):
    async def ctx(app: web.Application):
        async with component.running():
            yield
    return ctx

"""The composition root: settings -> components -> routes and middlewares.

`create_app(settings)` builds the components a process keeps for its lifetime (`build`), maps
the settings onto them (`apply`, again on every SIGHUP through `reconfigure`), and declares
the middlewares and the routes, once and in order. What each piece does lives in its own
module: the request's path in pipeline/ (and identity/, metering/, cache/, upstream/ below
it), the HTTP edges in http/.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp_cors
from aiohttp import web

from .cache.prompts import PromptCache
from .config import ClientSettings, Settings
from .config.serving import REALTIME_ROUTES
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
from .http.spend import spend_handler
from .http.tokens import token_routes
from .identity.addresses import Addresses
from .identity.auth import Auth
from .identity.callers import Caller, Callers
from .metering.budgets import Budgets
from .metering.headers import limit_headers
from .metering.limiter import RateLimiter, StoragePolicy
from .metering.prices import table as price_table
from .metering.rules import Limits, Rules
from .metering.sessions import SessionSlots
from .metering.tally import SpendTally, spend_report
from .observability.logs import AccessLog
from .observability.metrics import Metrics
from .pipeline.admission import Admission
from .pipeline.proxy import Policy, Proxy
from .pipeline.realtime import Realtime, RealtimePlan
from .pipeline.settlement import Settlement
from .pipeline.validation import Validator
from .policy.realtime import RealtimePolicy
from .store import Store, open_store
from .upstream.client import Upstream

log = logging.getLogger("gateway")
SETTINGS = web.AppKey("settings", Settings)
#: Seconds a refused body's rest is drained before its connection closes (see create_app).
LINGERING_SECONDS = 2.0
PROXY = web.AppKey("proxy", Proxy)

#: Settings a reload cannot change in a running process (sockets, storage, routes).
RESTART_ONLY = ("server.host", "server.port", "server.max_body_bytes", "storage",
                "upstream.routes", "upstream.max_connections", "metrics", "rate_limit.storage_url",
                "cache.storage_url", "playground", "cors.max_age", "auth.issuers",
                "auth.tokens", "auth.sessions")


@dataclass
class Components:
    """What a process keeps for its lifetime (stores, pooled connections, counters); their
    policy comes from `apply`, at start and on every reload."""

    #: ("rate_limit", the limiter's store), ("cache", the cache's): often one store.
    stores: tuple[tuple[str, Store], ...]
    metrics: Metrics
    upstream: Upstream
    limiter: RateLimiter
    budgets: Budgets
    tally: SpendTally
    cache: PromptCache
    admission: Admission
    settlement: Settlement
    proxy: Proxy
    auth: Auth
    origins: OriginPolicy
    realtime: Realtime


COMPONENTS = web.AppKey("components", Components)


def build(settings: Settings, demo: bool = False) -> Components:
    s = settings
    metrics = Metrics()

    def opened(url):
        return open_store(url, timeout=s.storage.timeout, password=s.storage_password,
                          cache_bytes=s.cache.max_bytes, on_change=metrics.storage_server)

    # One store per process, chosen once: the limiter, the budgets and the cache share it when
    # they name the same URL, so one ring places every key and one table knows its health.
    store = opened(s.rate_limit_storage)
    cache_store = store if s.cache_storage == s.rate_limit_storage else opened(s.cache_storage)
    policy = StoragePolicy(s.storage.on_error, metrics)
    limiter = RateLimiter(store, policy)
    budgets = Budgets(store, policy, limiter.ident)
    tally = SpendTally(store, policy)
    cache = PromptCache(s.cache, cache_store, metrics)
    upstream = Upstream(s.upstream, s.api_key, s.fallback_keys, metrics=metrics)
    auth = Auth(s, upstream.client_session, demo=demo)
    admission = Admission(limiter, budgets, cache, metrics)
    settlement = Settlement(budgets, tally, metrics)
    proxy = Proxy(upstream=upstream, admission=admission, settlement=settlement, cache=cache,
                  metrics=metrics)
    realtime = Realtime(upstream=upstream, admission=admission, limiter=limiter,
                        budgets=budgets, slots=SessionSlots(store, policy, limiter.ident),
                        secrets=auth.realtime, metrics=metrics)
    stores = (("rate_limit", store), ("cache", cache_store))
    return Components(stores, metrics, upstream, limiter, budgets, tally, cache, admission,
                      settlement, proxy, auth, OriginPolicy((), address_of=_address_of(proxy)),
                      realtime)


def apply(app: web.Application, settings: Settings) -> None:
    """Map settings onto the running components: the one place that knows which slice each
    component takes. Requests in flight finish under the policy they started with."""
    s, c = settings, app[COMPONENTS]
    rules = Rules(s.rate_limit, s.budget)
    c.limiter.configure(rules, s.rate_limit.strategy)
    c.budgets.configure(rules)
    c.tally.configure(s.tiers, on=bool(rules.gateway))
    prices = price_table(s.prices)
    c.admission.configure(prices)
    c.settlement.configure(prices, s.budget.warn_at)
    c.cache.configure(s.cache)
    c.upstream.configure(s.upstream, s.api_key, s.fallback_keys)
    addresses = Addresses(trusted_proxies=s.server.trusted_proxies,
                          ipv6_prefix=s.server.ipv6_prefix)
    callers = Callers(addresses=addresses, bearer=c.auth.bearer, tiers=s.tiers,
                      clients=s.clients, anonymous=s.auth.anonymous,
                      require_client_key=s.auth.require_client_key)
    c.proxy.configure(Policy(callers, Validator(s.validation), s.server, s.upstream,
                             frozenset(s.validation.allowed_models)))
    c.realtime.configure(RealtimePlan(callers, RealtimePolicy(s.validation, s.realtime),
                                      s.server, s.upstream, s.api_key, prices), s.realtime)
    c.origins.configure(s.cors.allow_origins)
    app[READINESS].on_error = s.storage.on_error
    app[SETTINGS] = settings


def create_app(settings: Settings, *, demo: bool = False,
               access: AccessLog | None = None) -> web.Application:
    """`access`: the access log `logs.configure` set up (None: lines through `logging`)."""
    s = settings
    c = build(s, demo)
    proxy, auth, origins = c.proxy, c.auth, c.origins
    app = web.Application(
        # Outermost first; each relies on the ones outside it:
        middlewares=[
            # Every failure below, a refusal of the two below included, leaves in OpenAI's
            # shape: the one renderer.
            render_errors,
            # The id and record the later steps write to; the access log and the metrics
            # once the answer is done, with the status render_errors gives it.
            request_context(access or AccessLog(), s.log.hash_client, _address_of(proxy),
                            c.metrics),
            # A refused Origin costs nothing: 403 before identity, the body or the upstream.
            origins.middleware,
        ],
        client_max_size=s.server.max_body_bytes,
        # auto_decompress off: a compressed body is refused or inflated with a bound by
        # bodies.read_body, never inflated by aiohttp while a refused request lingers.
        # lingering_time: what is left of a refused body (a 100 MB upload over its limit) is
        # read and dropped for at most this long, so its client can still read the refusal
        # (closing on unread bytes resets the connection); aiohttp's 10 s would hold the
        # handler, and a shutdown's drain, that long.
        handler_args={"max_field_size": 16384, "auto_decompress": False,
                      "lingering_time": LINGERING_SECONDS},
    )
    app[COMPONENTS] = c
    app[PROXY] = proxy
    app[ORIGINS] = origins
    app[READINESS] = Readiness(stores=c.stores, bearer=auth.bearer)
    apply(app, s)
    # Each resource is opened before serving and closed after the last request, in order.
    # The issuers fetch their keys with the upstream's session: it opens first.
    # The proxy last: at shutdown it first finishes the answers it still reads for clients
    # that left, while the store, the cache and the upstream session are still open.
    app.cleanup_ctx.append(_running(c.upstream))
    app.cleanup_ctx.append(_stores(c))
    for component in (c.cache, auth, proxy, c.realtime):
        app.cleanup_ctx.append(_running(component))
    # Realtime sessions end before the server waits for its handlers: a socket or a call
    # could otherwise hold the shutdown for its whole server.shutdown_timeout.
    app.on_shutdown.append(c.realtime.shutdown)

    # Every origin at the CORS layer: which ones may call is the OriginPolicy's decision.
    cors = aiohttp_cors.setup(app, defaults={"*": aiohttp_cors.ResourceOptions(
        allow_credentials=False, expose_headers=EXPOSED_HEADERS, allow_headers="*",
        max_age=s.cors.max_age)})
    realtime = {"/v1/realtime/client_secrets": c.realtime.client_secrets,
                "/v1/realtime/calls": c.realtime.create_call}
    for route in s.upstream.routes:
        if route == "/v1/models":
            cors.add(app.router.add_get(route, proxy.models, allow_head=False))
        elif route == "/v1/realtime":  # a WebSocket: no CORS (browsers send no preflight)
            app.router.add_get(route, c.realtime.websocket, allow_head=False)
        elif route in REALTIME_ROUTES:
            cors.add(app.router.add_post(route, realtime[route]))
        else:
            cors.add(app.router.add_post(route, proxy.forward))
    # Lambdas, not bound methods: a reload replaces the proxy's callers.
    for path, handler in token_routes(auth, client_key=lambda a: proxy.p.callers.keys.find(a),
                                      count_mint=lambda r, key: _mint_rate(c, r, key),
                                      address_of=_address_of(proxy),
                                      check_rate=lambda ip: _session_rate(c, s, ip)):
        cors.add(app.router.add_post(path, handler))
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    trusted = lambda: proxy.p.callers.addresses  # noqa: E731 - a reload replaces them
    if s.metrics.enabled:
        app.router.add_get("/metrics", metrics_handler(trusted, c.metrics), allow_head=False)
    app.router.add_get("/gateway/spend", spend_handler(
        trusted, lambda: spend_report(c.budgets, c.tally)), allow_head=False)
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
    return lambda request: proxy.p.callers.addresses.of(request)


async def _mint_rate(c: Components, request: web.Request, key: ClientSettings
                     ) -> dict[str, str]:
    """Minting counts as one of the key's requests (its own limit, else its tier's, else
    [rate_limit]): the same counter as its API calls. The limit headers of the answer."""
    callers = c.proxy.p.callers
    caller = callers.key_client(key, callers.addresses.of(request))
    return limit_headers(await c.limiter.check(caller, "/gateway/tokens"))


async def _session_rate(c: Components, settings: Settings, address: str) -> None:
    """Session creation counts per address against auth.sessions.requests; an IPv6 address
    by its server.ipv6_prefix, as the API keys it (anyone holds a /64 of addresses)."""
    limits = Limits(requests=settings.auth.sessions.requests, tokens=(), spend=())
    keyed = c.proxy.p.callers.addresses.key(address)
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

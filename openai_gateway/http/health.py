"""GET /healthz (the process answers) and GET /readyz (it should be sent requests).

/readyz is 503 once the process drains (SIGTERM), so a load balancer stops sending new
requests, and while a storage server is down under `storage.on_error = "closed"`; it reports
storage servers marked down and issuers whose keys have not loaded ("degraded", 200).
"""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..identity.bearer import BearerResolver
from ..pipeline.proxy import Proxy


@dataclass(slots=True)
class Readiness:
    """What /readyz reads: the proxy's stores (asked at each request: the cache may change
    its store on reload), the issuers' key sets, storage.on_error, and whether draining."""

    proxy: Proxy
    bearer: BearerResolver
    on_error: str = "open"
    draining: bool = False


READINESS = web.AppKey("readiness", Readiness)


def mark_draining(app: web.Application) -> None:
    """From now on /readyz answers 503, so a load balancer stops sending new requests."""
    app[READINESS].draining = True


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready = request.app[READINESS]
    if ready.draining:
        return web.json_response({"status": "draining"}, status=503)
    proxy = ready.proxy
    checks, down_servers = {}, []
    for name, store in (("rate_limit", proxy.limiter.store), ("cache", proxy.cache.store)):
        # A server marked down is not asked again (its probe runs in the background); the
        # others answer `version` within storage.timeout or are marked down now.
        down_here = await store.ping() if store is not None else []
        checks[name] = "down" if down_here else "ok"
        down_servers += [d for d in down_here if d not in down_servers]
    down = bool(down_servers)
    status = 503 if down and ready.on_error == "closed" else 200
    doc: dict = {"status": "degraded" if down else "ok", "storage": checks}
    if down:
        doc["down_servers"] = down_servers
    keyless = ready.bearer.not_ready()
    if keyless:  # their users get 401 until the key sets load
        doc["status"], doc["auth"] = "degraded", {"issuers_without_keys": keyless}
    return web.json_response(doc, status=status)

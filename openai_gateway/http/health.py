"""GET /healthz (the process answers) and GET /readyz (it should be sent requests).

/readyz is 503 once the process drains (SIGTERM), so a load balancer stops sending new
requests, and while a storage server is down under `storage.on_error = "closed"`; it reports
storage servers marked down and issuers whose keys have not loaded ("degraded", 200).
"""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..identity.bearer import BearerResolver
from ..store import Store


@dataclass(slots=True)
class Readiness:
    """What /readyz reads: the process's stores by what they serve, the issuers' key sets,
    storage.on_error, and whether draining."""

    stores: tuple[tuple[str, Store], ...]
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
    checks, down_servers = {}, []
    for name, store in ready.stores:
        # A server marked down is not asked again (its probe runs in the background); the
        # others answer within storage.timeout or are marked down now.
        down_here = await store.ping()
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

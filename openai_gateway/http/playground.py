"""GET /: the playground, one static page that uses the gateway the way a real front-end does.

On only with `playground.enabled` (and by default in demo mode). The page is read from the
package with importlib.resources, so it is served from a zipapp too; it loads nothing from
elsewhere (no CDN, no build step) and its script is the reference front-end (docs/frontend.md).

The page is same-origin with the gateway, yet browsers send `Origin` on a POST even then
(Fetch standard, "append a request Origin header"), so the gateway's own origin must be in
`cors.allow_origins` or every chat gets 403. Demo mode adds it; otherwise a warning says so.
"""
from __future__ import annotations

import logging
from importlib import resources

from aiohttp import web

from ..config import ServerSettings, Settings

log = logging.getLogger("gateway")

PAGE = "static/playground.html"
#: The page's own rules, enforced by the browser: nothing loads from elsewhere and its script
#: may only talk to the gateway that served it. The one inline script and style need
#: 'unsafe-inline'; the page renders answers with textContent, never as HTML.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                               "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
#: Listen addresses that mean "every interface": the page is then reached on loopback here.
ANY_HOST = ("0.0.0.0", "::", "")


def own_origins(server: ServerSettings) -> tuple[str, ...]:
    """The origins a browser on this machine sees the gateway at (scheme, host, port)."""
    hosts = ["127.0.0.1", "localhost"]
    if server.host not in ANY_HOST and server.host not in hosts:
        hosts.append(f"[{server.host}]" if ":" in server.host else server.host)
    return tuple(f"http://{h}:{server.port}" for h in hosts)


def register(app: web.Application, settings: Settings) -> None:
    """Add GET / serving the page (read once, here) and warn if its chats would get 403."""
    body = resources.files(__package__).joinpath(PAGE).read_bytes()

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/html", charset="utf-8",
                            headers=HEADERS)

    app.router.add_get("/", page, allow_head=False)
    allow = settings.cors.allow_origins
    if "*" not in allow and not any(o in allow for o in own_origins(settings.server)):
        log.warning("playground enabled, but neither %s is in cors.allow_origins: add the "
                    "origin you open the page at, or its chat requests get 403",
                    " nor ".join(own_origins(settings.server)))

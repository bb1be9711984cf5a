"""Baseline: the thinnest aiohttp pass-through on uvloop, i.e. the ceiling of our stack.

    python bench/passthrough.py --port 8090 --upstream http://127.0.0.1:9000

One pooled ClientSession; the body goes up as received and comes back with the upstream's
status; `text/event-stream` is relayed chunk by chunk. No parsing, no policy, no logging.
"""

import argparse
import resource

import aiohttp
import uvloop
from aiohttp import web

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def session_ctx(app: web.Application):
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=300)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)  # total=300 would cut long streams
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     auto_decompress=False) as s:
        app[SESSION] = s
        yield


async def forward(request: web.Request) -> web.StreamResponse:
    headers = {"Authorization": "Bearer sk-bench",
               "Content-Type": request.headers.get("Content-Type", "application/json")}
    url = request.app[UPSTREAM] + request.path
    async with request.app[SESSION].request(request.method, url, data=await request.read(),
                                            headers=headers) as up:
        ctype = up.headers.get("Content-Type", "application/json")
        if not ctype.startswith("text/event-stream"):
            return web.Response(body=await up.read(), status=up.status,
                                headers={"Content-Type": ctype})
        resp = web.StreamResponse(status=up.status, headers={
            "Content-Type": ctype, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--upstream", default="http://127.0.0.1:9000", help="origin, without /v1")
    args = ap.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    app = web.Application()
    app[UPSTREAM] = args.upstream.rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/v1/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, backlog=4096, print=None,
                shutdown_timeout=1, loop=uvloop.new_event_loop())

"""Mock OpenAI upstream that streams chat.completion.chunk events at a fixed pace.

    python bench/sse_upstream.py --port 9001 --interval-ms 10

`POST /v1/chat/completions` with `"stream": true` answers `text/event-stream`: a role chunk at
once, then `max_tokens` content chunks (default --chunks) one every --interval-ms, a finish
chunk, a `usage` chunk when `stream_options.include_usage` is set (as OpenAI does), and
`data: [DONE]`. Without `stream` it answers one chat.completion. `GET /v1/models` lists models.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource

import uvloop
from aiohttp import web

CREATED = 1700000000


def event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def chunk(delta: dict, finish: str | None = None) -> dict:
    return {"id": "chatcmpl-bench0001", "object": "chat.completion.chunk", "created": CREATED,
            "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


ROLE = event(chunk({"role": "assistant", "content": "", "refusal": None}))
TOKEN = event(chunk({"content": " token"}))
FINISH = event(chunk({}, "stop"))
DONE = b"data: [DONE]\n\n"


def usage_event(completion_tokens: int) -> bytes:
    body = chunk({})
    body["choices"] = []
    body["usage"] = {"prompt_tokens": 24, "completion_tokens": completion_tokens,
                     "total_tokens": 24 + completion_tokens}
    return event(body)


COMPLETION = json.dumps({
    "id": "chatcmpl-bench0001", "object": "chat.completion", "created": CREATED,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 24, "completion_tokens": 2, "total_tokens": 26}}).encode()
MODELS = json.dumps({"object": "list", "data": [
    {"id": m, "object": "model", "created": CREATED, "owned_by": "system"}
    for m in ("gpt-4o-mini", "gpt-4o")]}).encode()

INTERVAL = web.AppKey("interval", float)
CHUNKS = web.AppKey("chunks", int)


async def chat(request: web.Request) -> web.StreamResponse:
    try:
        body = json.loads(await request.read())
    except ValueError:
        return web.json_response({"error": {"message": "bad json", "type": "invalid_request_error",
                                            "param": None, "code": None}}, status=400)
    if not body.get("stream"):
        return web.Response(body=COMPLETION, content_type="application/json")
    n = max(0, min(int(body.get("max_tokens") or request.app[CHUNKS]), 100_000))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    interval = request.app[INTERVAL]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    await resp.write(ROLE)
    for _ in range(n):
        await asyncio.sleep(interval)
        await resp.write(TOKEN)
    await resp.write(FINISH + (usage_event(n) if include_usage else b"") + DONE)
    await resp.write_eof()
    return resp


async def models(request: web.Request) -> web.Response:
    return web.Response(body=MODELS, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9001)
    ap.add_argument("--interval-ms", type=float, default=10.0, help="pause between content chunks")
    ap.add_argument("--chunks", type=int, default=20,
                    help="content chunks when max_tokens is absent")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    app = web.Application()
    app[INTERVAL] = args.interval_ms / 1000
    app[CHUNKS] = args.chunks
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host=args.host, port=args.port, access_log=None, backlog=4096, print=None,
                shutdown_timeout=1, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()

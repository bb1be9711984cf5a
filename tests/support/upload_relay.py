"""A small relay of multipart uploads, as the gateway's pipeline will run one: receive the
upload (pipeline.uploads), check it (policy.request's check_form), send the spooled bytes
upstream with their own Content-Type, pass the answer back.

Run as a program (`python -m tests.support.upload_relay PORT UPSTREAM_URL MAX_BYTES`) it serves on
PORT, so a test can measure its memory as a process of its own.
"""
from __future__ import annotations

import sys

import aiohttp
from aiohttp import web

from openai_gateway.config.settings import ValidationSettings
from openai_gateway.errors import GatewayError, InvalidRequest
from openai_gateway.pipeline import uploads
from openai_gateway.policy import Refusal, RequestPolicy

SESSION = web.AppKey("session", aiohttp.ClientSession)
ROUTES = ("/v1/audio/transcriptions", "/v1/audio/translations", "/v1/images/edits")


def relay_app(upstream_url: str, *, max_bytes: int = 26_214_400, timeout: float = 30.0,
              models: tuple[str, ...] = ()) -> web.Application:
    """`upstream_url` ends with /v1; `models`: the allowlist (() = any)."""
    policy = RequestPolicy(ValidationSettings(allowed_models=models, max_upload_bytes=max_bytes,
                                              max_images=20))

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            upload = await uploads.receive(request, max_bytes=max_bytes, timeout=timeout)
        except GatewayError as error:
            response = error.response()
            response.force_close()  # what is left of a refused upload is not read
            return response
        with upload:
            try:
                policy.check_form(request.path, upload.parts, upload_bytes=upload.size)
            except Refusal as refusal:
                return InvalidRequest(refusal.message, param=refusal.param,
                                      code=refusal.code).response()
            session = request.app[SESSION]
            async with session.post(upstream_url + request.path[3:], data=upload.payload(),
                                    headers=upload.headers) as answer:
                body = await answer.read()
                return web.Response(body=body, status=answer.status,
                                    content_type=answer.content_type)

    async def session_ctx(app: web.Application):
        app[SESSION] = aiohttp.ClientSession()
        yield
        await app[SESSION].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    for route in ROUTES:
        app.router.add_post(route, handler)
    return app


if __name__ == "__main__":
    port, upstream, limit = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    web.run_app(relay_app(upstream, max_bytes=limit), host="127.0.0.1", port=port, print=None)

"""read_body: compressed bodies refused (415) or inflated within max_body_bytes, either way
aiohttp is set up (its own inflation on, or off as the gateway wants it)."""
from __future__ import annotations

import gzip
import zlib

import orjson
import pytest
from aiohttp import web

from openai_gateway.errors import GatewayError, UnsupportedEncoding
from openai_gateway.pipeline.bodies import body_coding, read_body

LIMIT = 10_000
JSON_BODY = orjson.dumps({"model": "gpt-4o-mini", "input": "x" * 2000})
BOMB = gzip.compress(b" " * 990_000)  # about 1 KB that inflates to 990 KB


def app(mode: str, auto_decompress: bool) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        try:
            body = await read_body(request, max_bytes=LIMIT, timeout=5, compressed=mode)
        except GatewayError as exc:
            return exc.response()
        return web.json_response({"size": len(body), "ok": body == JSON_BODY})

    application = web.Application(client_max_size=LIMIT,
                                  handler_args={"auto_decompress": auto_decompress})
    application.router.add_post("/", handler)
    return application


@pytest.fixture(params=[False, True], ids=["aiohttp-inflation-off", "aiohttp-inflation-on"])
def auto_decompress(request) -> bool:
    return request.param


@pytest.mark.parametrize("header, mode, coding", [
    (None, "refuse", ""), ("identity", "refuse", ""), (" Identity ", "inflate", ""),
    ("gzip", "inflate", "gzip"), ("DEFLATE", "inflate", "deflate"),
])
def test_body_coding(header, mode, coding):
    assert body_coding(header, mode) == coding


@pytest.mark.parametrize("header, mode", [
    ("gzip", "refuse"), ("deflate", "refuse"), ("br", "refuse"), ("br", "inflate"),
    ("zstd", "inflate"), ("gzip, gzip", "inflate"), ("compress", "inflate"),
])
def test_body_coding_refusals(header, mode):
    with pytest.raises(UnsupportedEncoding) as info:
        body_coding(header, mode)
    assert info.value.status == 415 and info.value.code == "unsupported_content_encoding"


async def test_refuse_answers_415(aiohttp_client, auto_decompress):
    client = await aiohttp_client(app("refuse", auto_decompress))
    r = await client.post("/", data=BOMB, headers={"Content-Encoding": "gzip"})
    assert r.status == 415
    assert (await r.json())["error"]["code"] == "unsupported_content_encoding"
    r = await client.post("/", data=JSON_BODY)
    assert (r.status, await r.json()) == (200, {"size": len(JSON_BODY), "ok": True})


@pytest.mark.parametrize("encode, coding", [
    (gzip.compress, "gzip"), (zlib.compress, "deflate"),
    (lambda b: zlib.compress(b)[2:-4], "deflate"),  # raw deflate, as some clients send it
])
async def test_inflate_within_the_limit(aiohttp_client, auto_decompress, encode, coding):
    client = await aiohttp_client(app("inflate", auto_decompress))
    r = await client.post("/", data=encode(JSON_BODY), headers={"Content-Encoding": coding})
    assert (r.status, await r.json()) == (200, {"size": len(JSON_BODY), "ok": True})


async def test_inflate_stops_at_the_limit(aiohttp_client, auto_decompress):
    client = await aiohttp_client(app("inflate", auto_decompress))
    r = await client.post("/", data=BOMB, headers={"Content-Encoding": "gzip"})
    assert r.status == 413
    assert (await r.json())["error"]["code"] == "request_too_large"


async def test_a_body_that_does_not_inflate_is_400(aiohttp_client):
    client = await aiohttp_client(app("inflate", False))
    for data in (b"not gzip at all", gzip.compress(JSON_BODY)[:-8],
                 gzip.compress(JSON_BODY) + gzip.compress(b"second member")):
        r = await client.post("/", data=data, headers={"Content-Encoding": "gzip"})
        assert r.status == 400, data[:20]


async def test_declared_length_over_the_limit_is_413_unread(aiohttp_client, auto_decompress):
    client = await aiohttp_client(app("refuse", auto_decompress))
    r = await client.post("/", data=b"x" * (LIMIT + 1))
    assert r.status == 413

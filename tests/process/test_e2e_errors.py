"""End to end, the refusals and failures: each reaches the official SDK as its typed error and
curl as OpenAI's error shape, with an X-Request-ID and no key.
"""
from __future__ import annotations

import json
import time

import openai
import pytest
from aiohttp import web

from ..conftest import ORIGIN, free_port
from ..support.clients import (
    CHAT,
    FOREIGN,
    MESSAGES,
    assert_error_shape,
    curl,
    json_headers,
    scan,
    sdk,
    sdk_error,
    still_serves,
)

pytestmark = pytest.mark.usefixtures("curl_installed")


# --- 4 and 5. typed SDK errors, each in OpenAI's shape -----------------------------------------


async def test_400_model_not_allowed_and_bad_messages(gateway_process, fake):
    gp = await gateway_process()
    async with sdk(gp) as client:
        with pytest.raises(openai.BadRequestError) as e:
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert e.value.param == "model"
        sdk_error(e.value, param="model", code="model_not_found")
        # A browser can read the refusal: CORS headers are on errors too.
        assert e.value.response.headers["access-control-allow-origin"] == ORIGIN

        with pytest.raises(openai.BadRequestError) as e:  # refused before a stream starts
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        sdk_error(e.value, param="model")

        with pytest.raises(openai.BadRequestError) as e:
            await client.chat.completions.create(model="gpt-4o-mini", messages=[])
        sdk_error(e.value, param="messages")

        with pytest.raises(openai.BadRequestError) as e:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "robot", "content": "x"}])
        sdk_error(e.value, param="messages[0].role")

        with pytest.raises(openai.BadRequestError) as e:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                 max_tokens=10**6)
        sdk_error(e.value, param="max_tokens")
    r = await curl(gp.url + CHAT, *json_headers(), data=b"{not json")
    assert r.status == 400
    assert_error_shape(r.status, r.headers, r.text(), param=None)
    assert fake.seen == []


async def test_403_foreign_origin_is_refused_and_not_forwarded(gateway_process, fake):
    gp = await gateway_process()
    async with sdk(gp, origin=FOREIGN) as client:
        with pytest.raises(openai.PermissionDeniedError) as e:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        sdk_error(e.value, code="origin_not_allowed")
        with pytest.raises(openai.PermissionDeniedError):
            await client.models.list()
    assert fake.seen == []


async def test_404_unforwarded_routes_never_reach_upstream(gateway_process, fake):
    gp = await gateway_process()
    async with sdk(gp) as client:
        with pytest.raises(openai.NotFoundError) as e:
            await client.files.list()
        sdk_error(e.value, code="unknown_url")
        with pytest.raises(openai.NotFoundError) as e:
            await client.files.create(file=("a.jsonl", b'{"x": 1}\n'), purpose="batch")
        sdk_error(e.value, code="unknown_url")
        with pytest.raises(openai.NotFoundError) as e:
            await client.batches.list()
        sdk_error(e.value)
    for path in ("/v1/fine_tuning/jobs", "/v1/organization/users", "/v1/chat/completions/../../x",
                 "/v1//chat/completions"):
        r = await curl(gp.url + path, "--path-as-is", *json_headers(), data=b"{}")
        assert r.status == 404, (path, r.status)
        assert_error_shape(r.status, r.headers, r.text())
    assert fake.seen == []


async def test_405_wrong_method(gateway_process, fake):
    gp = await gateway_process()
    r = await curl(gp.url + CHAT, "-X", "GET", *json_headers())
    assert r.status == 405
    assert_error_shape(r.status, r.headers, r.text(), code="method_not_allowed")
    assert fake.seen == []


async def test_413_body_too_large(gateway_process, fake):
    gp = await gateway_process({"server": {"max_body_bytes": 2048}})
    big = [{"role": "user", "content": "x" * 3000}]
    async with sdk(gp) as client:
        with pytest.raises(openai.APIStatusError) as e:
            await client.chat.completions.create(model="gpt-4o-mini", messages=big)
        assert e.value.status_code == 413
        sdk_error(e.value, code="request_too_large")
        # Under the limit still works on the same process.
        r = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert r.choices
    # Without Content-Length (chunked upload) the limit holds too.
    body = json.dumps({"model": "gpt-4o-mini", "messages": big}).encode()
    r = await curl(gp.url + CHAT, *json_headers(), "-H", "Transfer-Encoding: chunked", data=body)
    assert r.status == 413
    assert_error_shape(r.status, r.headers, r.text(), code="request_too_large")
    assert len(fake.posts) == 1


async def test_429_rate_limited_with_headers(gateway_process, fake):
    gp = await gateway_process({"rate_limit": {"requests": ["2/minute"]}})
    async with sdk(gp) as client:
        remaining = []
        for _ in range(2):
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MESSAGES)
            scan(raw.headers)
            assert raw.headers["x-ratelimit-limit-requests"] == "2"
            assert raw.headers["x-ratelimit-reset-requests"]
            remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["1", "0"]
        with pytest.raises(openai.RateLimitError) as e:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    err = sdk_error(e.value, code="rate_limit_exceeded")
    assert err["type"] == "requests"
    h = e.value.response.headers
    assert 1 <= int(h["retry-after"]) <= 60
    assert h["x-ratelimit-limit-requests"] == "2"
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"]
    # A browser may read all of it.
    assert h["access-control-allow-origin"] == ORIGIN
    exposed = {x.strip().lower() for x in h["access-control-expose-headers"].split(",")}
    assert {"retry-after", "x-request-id", "x-ratelimit-remaining-requests"} <= exposed
    assert len(fake.posts) == 2


async def test_500_after_retries_is_internal_server_error(gateway_process, fake):
    gp = await gateway_process({"upstream": {"retries": 2}})
    fake.script = [{"status": 500}, {"status": 500}, {"status": 500}]
    async with sdk(gp) as client:
        with pytest.raises(openai.InternalServerError) as e:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert e.value.status_code == 500
    sdk_error(e.value)
    assert len(fake.posts) == 3  # the first try and two retries
    assert fake.script == []
    await still_serves(gp)


async def test_500_then_success_is_retried_transparently(gateway_process, fake):
    gp = await gateway_process({"upstream": {"retries": 2}})
    fake.script = [{"status": 503}, {"status": 500}]
    async with sdk(gp) as client:
        r = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert r.choices[0].message.content
    assert len(fake.posts) == 3


async def test_non_json_upstream_error_still_reaches_the_sdk_in_openai_shape(
        gateway_process, aiohttp_server):
    # OpenAI-compatible upstreams (vLLM, Ollama, a load balancer in front of them) can answer
    # an error with an HTML page; the browser SDK must still get OpenAI's error shape.
    hits = []

    async def html_error(request):
        hits.append(request.path)
        return web.Response(status=503, text="<html><body>503 Service Unavailable</body></html>",
                            content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", html_error)
    server = await aiohttp_server(app)
    gp = await gateway_process({"upstream": {"base_url": str(server.make_url("/v1"))}})
    async with sdk(gp) as client:
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as e:
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                     stream=stream)
            assert e.value.status_code in (502, 503)
            sdk_error(e.value)
    assert len(hits) == 4  # one retry each


async def test_502_when_upstream_unreachable(gateway_process, fake):
    closed = free_port()
    gp = await gateway_process({"upstream": {"base_url": f"http://127.0.0.1:{closed}/v1"}})
    async with sdk(gp) as client:
        with pytest.raises(openai.InternalServerError) as e:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert e.value.status_code == 502
        sdk_error(e.value, code="upstream_unavailable")
        with pytest.raises(openai.InternalServerError) as e:
            await client.models.list()
        assert e.value.status_code == 502
        sdk_error(e.value, code="upstream_unavailable")
        with pytest.raises(openai.InternalServerError) as e:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                 stream=True)
        assert e.value.status_code == 502
        sdk_error(e.value, code="upstream_unavailable")
    assert "127.0.0.1" not in e.value.response.text  # no library detail leaks out
    r = await curl(gp.url + "/healthz")
    assert r.status == 200


async def test_504_when_first_byte_is_too_slow(gateway_process, fake):
    gp = await gateway_process({"upstream": {"first_byte_timeout": 0.5}})
    fake.script = [{"delay": 2}]
    async with sdk(gp) as client:
        start = time.monotonic()
        with pytest.raises(openai.InternalServerError) as e:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        took = time.monotonic() - start
    assert e.value.status_code == 504
    sdk_error(e.value, code="upstream_timeout")
    assert 0.4 <= took < 1.8, took
    assert len(fake.posts) == 1  # a slow first byte is not retried
    await still_serves(gp)

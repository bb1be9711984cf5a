"""End to end: the real `python gateway.py` process, driven by the official `openai` SDK and curl.

Each test starts its own gateway process (about 0.3 s) against the in-test fake upstream, so the
test event loop must never block: curl runs through `asyncio.create_subprocess_exec`. Every
response a test reads is added to the leak scan (`SEEN_RESPONSES`).
"""
from __future__ import annotations

import asyncio
import json
import shutil
import time
from dataclasses import dataclass

import openai
import pytest
from aiohttp import web

from ..conftest import KEY, ORIGIN, SEEN_RESPONSES, free_port

FOREIGN = "https://evil.example"
DUMMY = "browser-dummy"
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Say hi"}]
ERROR_FIELDS = {"message", "type", "param", "code"}

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


# --- helpers --------------------------------------------------------------------------------


def sdk(gp, *, origin: str | None = ORIGIN, sent: list | None = None,
        **headers: str) -> openai.AsyncOpenAI:
    """The browser-style client: a dummy key, no retries, our Origin.

    `sent` collects the exact requests the SDK put on the wire (method, path, headers, body).
    """
    default_headers = dict(headers)
    if origin is not None:
        default_headers["Origin"] = origin
    kw = {}
    if sent is not None:
        async def on_request(request):
            sent.append(request)
        kw["http_client"] = openai.DefaultAsyncHttpxClient(event_hooks={"request": [on_request]})
    return openai.AsyncOpenAI(base_url=gp.url + "/v1", api_key=DUMMY, max_retries=0,
                              timeout=10, default_headers=default_headers, **kw)


def scan(headers, text: str = "") -> None:
    """Feed one response to the autouse leak scan and check it right here too."""
    SEEN_RESPONSES.append(repr(dict(headers)))
    SEEN_RESPONSES.append(text)
    assert KEY not in repr(dict(headers)) and KEY not in text


def assert_error_shape(status: int, headers, text: str, *, code=..., param=...) -> dict:
    """OpenAI's error shape, exactly; no key; an X-Request-ID. Returns the inner error."""
    scan(headers, text)
    try:
        doc = json.loads(text)
    except ValueError:
        raise AssertionError(f"{status} error body is not JSON "
                             f"({headers.get('content-type')}): {text[:200]!r}") from None
    assert set(doc) == {"error"}, doc
    err = doc["error"]
    assert set(err) == ERROR_FIELDS, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert err["param"] is None or isinstance(err["param"], str)
    assert err["code"] is None or isinstance(err["code"], str)
    if code is not ...:
        assert err["code"] == code, err
    if param is not ...:
        assert err["param"] == param, err
    lower = {k.lower() for k in headers.keys()}
    assert "x-request-id" in lower, f"{status}: no X-Request-ID in {dict(headers)}"
    return err


def sdk_error(exc: openai.APIStatusError, **kw) -> dict:
    resp = exc.response
    return assert_error_shape(resp.status_code, resp.headers, resp.text, **kw)


@dataclass
class CurlResult:
    status: int
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    rc: int

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


async def curl(url: str, *args: str, data: bytes | None = None,
               timeout: float = 15) -> CurlResult:
    """`curl -s -i ...` without blocking the loop (the fake upstream lives on it)."""
    cmd = ["curl", "-s", "-i", "-H", "Expect:", *args]
    if data is not None:
        cmd += ["--data-binary", "@-"]
    cmd.append(url)
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE if data is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(data), timeout)
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    result = CurlResult(status, headers, body, proc.returncode)
    scan(headers, result.text())
    return result


def json_headers(origin: str | None = ORIGIN) -> list[str]:
    args = ["-H", "Content-Type: application/json", "-H", f"Authorization: Bearer {DUMMY}"]
    if origin is not None:
        args += ["-H", f"Origin: {origin}"]
    return args


async def wait_for(predicate, timeout: float) -> float:
    """Poll until predicate() is true; returns the seconds it took (fails after timeout)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def still_serves(gp) -> None:
    async with sdk(gp) as client:
        r = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert r.choices[0].message.content


# --- 1. a plain chat completion ---------------------------------------------------------------


async def test_chat_completion_injects_key_and_forwards_body_unchanged(gateway_process, fake):
    gp = await gateway_process()
    sent: list = []
    async with sdk(gp, sent=sent, Cookie="session=browser-cookie") as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=20)
        completion = raw.parse()
    scan(raw.headers, raw.http_response.text)
    assert completion.choices[0].message.content == "w0 w1 w2 w3 w4 "
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 5
    assert raw.headers.get("x-request-id", "").startswith("req_")
    assert raw.headers["x-cache"] == "BYPASS"  # temperature unset: sampled, not cached

    (up,) = fake.posts
    assert up.path == CHAT
    h = {k.lower(): v for k, v in up.headers.items()}
    assert h["authorization"] == f"Bearer {KEY}"
    assert DUMMY not in repr(up.headers)
    assert "cookie" not in h
    assert not any(k.startswith("x-stainless") for k in h), h
    # What the SDK put on the wire reached the upstream unchanged.
    (req,) = sent
    assert json.loads(up.body) == json.loads(req.content)
    assert up.body == req.content


async def test_chat_completion_with_curl_forwards_exact_bytes(gateway_process, fake):
    gp = await gateway_process()
    # Odd spacing, key order, escapes and non-ASCII: any re-serialisation would change them.
    body = ('{ "messages":[ {"content":"h\\u00e9llo \u2603 \\"q\\"", "role":"user"} ],\n'
            '  "model" : "gpt-4o-mini",  "max_tokens": 7 }').encode()
    r = await curl(gp.url + CHAT, *json_headers(), "-H", "Cookie: a=b", data=body)
    assert r.status == 200, r.text()
    doc = json.loads(r.body)
    assert doc["choices"][0]["message"]["content"] == "w0 w1 w2 w3 w4 "
    assert doc["usage"]["completion_tokens"] == 5
    assert r.headers["x-request-id"].startswith("req_")
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "origin" in r.headers["vary"].lower()
    (up,) = fake.posts
    assert up.body == body
    h = {k.lower(): v for k, v in up.headers.items()}
    assert h["authorization"] == f"Bearer {KEY}"
    assert "cookie" not in h and DUMMY not in repr(up.headers)


# --- 2. streaming, chunk by chunk ---------------------------------------------------------------


async def test_stream_chunks_arrive_as_sent_sdk(gateway_process, fake):
    gp = await gateway_process()
    fake.chunk_delay = 0.2
    fake.chunks = 5
    arrivals, parts = [], []
    async with sdk(gp) as client:
        start = time.monotonic()
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                      stream=True)
        headers = stream.response.headers
        async for chunk in stream:
            arrivals.append(time.monotonic())
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        end = time.monotonic()
    scan(headers)
    assert "".join(parts) == "w0 w1 w2 w3 w4 "
    assert len(arrivals) == 5
    assert arrivals[-1] - arrivals[0] >= 0.6, arrivals  # 4 gaps of 0.2 s, not one burst
    assert end - arrivals[0] >= 0.6  # the first chunk came long before the end
    assert arrivals[0] - start < 0.6
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in headers
    assert headers["x-request-id"].startswith("req_")
    # The client did not ask for usage and no token limit is set: the body went as it came.
    assert "stream_options" not in fake.posts[-1].json()


async def test_stream_chunks_arrive_as_sent_curl(gateway_process, fake):
    gp = await gateway_process()
    fake.chunk_delay = 0.2
    fake.chunks = 5
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}).encode()
    proc = await asyncio.create_subprocess_exec(
        # --compressed: ask for gzip/br (and decode it), as browsers do.
        "curl", "-siN", "--compressed", *json_headers(), "--data-binary", "@-", gp.url + CHAT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    proc.stdin.write(body)
    proc.stdin.close()
    start = time.monotonic()
    head, events = [], []
    try:
        while (line := await asyncio.wait_for(proc.stdout.readline(), 5)) not in (b"\r\n", b""):
            head.append(line.decode("latin-1").strip())
        while line := await asyncio.wait_for(proc.stdout.readline(), 5):
            if line.startswith(b"data: "):
                events.append((time.monotonic(), line[6:].strip()))
    finally:
        rc = await asyncio.wait_for(proc.wait(), 5)
    end = time.monotonic()
    SEEN_RESPONSES.extend(head + [e[1].decode() for e in events])
    assert rc == 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
    assert head[0].split()[1] == "200", head
    assert headers["content-type"].startswith("text/event-stream")
    assert "content-encoding" not in headers, headers  # a compressor holds bytes back
    assert headers["x-accel-buffering"] == "no" and headers["cache-control"] == "no-cache"
    payloads = [e[1] for e in events]
    assert payloads[-1] == b"[DONE]"
    chunks = [(t, json.loads(p)) for t, p in events if p != b"[DONE]"]
    assert "".join(c["choices"][0]["delta"]["content"] for _, c in chunks) == "w0 w1 w2 w3 w4 "
    times = [t for t, _ in chunks]
    assert times[-1] - times[0] >= 0.6, times  # uncompressed, unbuffered despite Accept-Encoding
    assert end - times[0] >= 0.6
    assert times[0] - start < 0.6


async def test_stream_usage_chunk_only_when_the_client_asks(gateway_process, fake):
    # A token budget makes the gateway ask the upstream for usage; the SDK must not see the
    # extra chunk unless it asked for it itself.
    gp = await gateway_process({"rate_limit": {"tokens": ["100000/minute"]}})
    async with sdk(gp) as client:
        plain = [c async for c in await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True)]
        asked = [c async for c in await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True})]
    assert len(plain) == 5 and all(c.choices and c.usage is None for c in plain)
    assert fake.posts[0].json()["stream_options"] == {"include_usage": True}
    assert len(asked) == 6 and asked[-1].choices == [] and asked[-1].usage.completion_tokens == 5


async def test_identical_deterministic_request_is_served_from_cache(gateway_process, fake):
    gp = await gateway_process()
    async with sdk(gp) as client:
        answers = []
        for _ in range(2):
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MESSAGES, temperature=0)
            scan(raw.headers)
            answers.append((raw.headers["x-cache"], raw.parse().choices[0].message.content))
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, temperature=0,
            extra_headers={"Cache-Control": "no-cache"})
        assert raw.headers["x-cache"] == "BYPASS"
    assert answers == [("MISS", "w0 w1 w2 w3 w4 "), ("HIT", "w0 w1 w2 w3 w4 ")]
    assert len(fake.posts) == 2


# --- 3. embeddings and the model list -----------------------------------------------------------


async def test_embeddings(gateway_process, fake):
    gp = await gateway_process()
    async with sdk(gp) as client:
        r = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [d.index for d in r.data] == [0, 1]
    assert r.data[0].embedding == [0.1, 0.2, 0.3]
    assert r.usage.prompt_tokens == 3
    (up,) = fake.posts
    assert up.path == "/v1/embeddings"
    assert up.headers["Authorization"] == f"Bearer {KEY}"


async def test_models_list_is_filtered_to_the_allowlist(gateway_process, fake):
    gp = await gateway_process()
    async with sdk(gp) as client:
        page = await client.models.list()
        ids = sorted(m.id for m in page.data)
    assert ids == ["gpt-4o-mini", "text-embedding-3-small"]  # gpt-4o is offered, not allowed
    (up,) = fake.seen
    assert (up.method, up.path) == ("GET", "/v1/models")
    assert up.headers["Authorization"] == f"Bearer {KEY}"
    assert DUMMY not in repr(up.headers)


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


# --- 6. the client goes away mid-stream ---------------------------------------------------------


async def test_sdk_disconnect_mid_stream_closes_upstream(gateway_process, fake):
    gp = await gateway_process()
    fake.chunk_delay = 0.5
    fake.chunks = 20
    async with sdk(gp) as client:
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                      stream=True)
        got = []
        async for chunk in stream:
            got.append(chunk)
            if len(got) == 2:
                break
        assert fake.active == 1 and fake.aborted == []
        await stream.close()
        closed_at = time.monotonic()
        took = await wait_for(lambda: fake.aborted, 1.5)
    # At once: not at the next chunk (0.5 s later), which is all a write error would catch.
    assert fake.aborted[0] - closed_at < 0.3, took
    assert fake.active == 0
    await still_serves(gp)
    assert "Traceback" not in gp.log()


async def test_curl_killed_mid_stream_closes_upstream(gateway_process, fake):
    gp = await gateway_process()
    fake.chunk_delay = 0.5
    fake.chunks = 20
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}).encode()
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sN", *json_headers(), "--data-binary", "@-", gp.url + CHAT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    proc.stdin.write(body)
    proc.stdin.close()
    seen = 0
    try:
        while seen < 2:
            line = await asyncio.wait_for(proc.stdout.readline(), 5)
            assert line, "the stream ended early"
            seen += line.startswith(b"data: ")
    finally:
        proc.kill()
        await proc.wait()
    killed_at = time.monotonic()
    await wait_for(lambda: fake.aborted, 1.5)
    assert fake.aborted[0] - killed_at < 0.3
    await still_serves(gp)


# --- 7. the upstream drops mid-stream -----------------------------------------------------------


async def test_upstream_drop_mid_stream_ends_client_stream(gateway_process, fake):
    gp = await gateway_process()
    fake.script = [{"drop_after": 2}]
    parts = []

    async def consume():
        async with sdk(gp) as client:
            stream = await client.chat.completions.create(model="gpt-4o-mini",
                                                          messages=MESSAGES, stream=True)
            async for chunk in stream:
                parts.append(chunk.choices[0].delta.content)

    with pytest.raises(openai.APIError) as e:
        await asyncio.wait_for(consume(), 5)
    assert parts == ["w0 ", "w1 "]
    assert isinstance(e.value.body, dict)
    assert set(e.value.body) == ERROR_FIELDS
    assert e.value.body["code"] == "upstream_interrupted"
    assert KEY not in repr(e.value.body)
    await still_serves(gp)


async def test_upstream_drop_mid_stream_curl(gateway_process, fake):
    gp = await gateway_process()
    fake.script = [{"drop_after": 2}]
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}).encode()
    r = await curl(gp.url + CHAT, "-N", *json_headers(), data=body, timeout=5)
    assert r.status == 200 and r.rc == 0  # a cleanly terminated chunked body
    events = [e for e in r.body.split(b"\n\n") if e.strip()]
    assert len(events) == 3, events
    last = json.loads(events[-1].removeprefix(b"data: "))
    assert set(last) == {"error"} and set(last["error"]) == ERROR_FIELDS
    assert b"[DONE]" not in r.body
    await still_serves(gp)


# --- 9. CORS preflight --------------------------------------------------------------------------


async def test_preflight_allowed_and_foreign(gateway_process, fake):
    gp = await gateway_process()
    pre = ["-X", "OPTIONS", "-H", "Access-Control-Request-Method: POST",
           "-H", "Access-Control-Request-Headers: authorization,content-type,x-stainless-os"]
    r = await curl(gp.url + CHAT, *pre, "-H", f"Origin: {ORIGIN}")
    assert r.status == 200, (r.status, r.text())
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "origin" in r.headers.get("vary", "").lower()
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = {x.strip().lower() for x in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-stainless-os"} <= allowed
    assert "access-control-allow-credentials" not in r.headers

    r = await curl(gp.url + CHAT, *pre, "-H", f"Origin: {FOREIGN}")
    assert r.status == 403
    assert "access-control-allow-origin" not in r.headers
    assert_error_shape(r.status, r.headers, r.text(), code="origin_not_allowed")
    assert fake.seen == []

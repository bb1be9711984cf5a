"""The whole app in-process (pytest-aiohttp) against the fake upstream: routes, headers, CORS."""
from __future__ import annotations

import pytest

from .conftest import KEY, ORIGIN

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
ERROR_KEYS = {"message", "type", "param", "code"}


async def assert_openai_error(resp, status: int, code=None, param=None) -> dict:
    assert resp.status == status
    body = await resp.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    assert resp.headers["X-Request-ID"].startswith("req_")
    return body["error"]


# --- routes: only the forwarded set reaches the upstream -----------------------------------

@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/files"), ("POST", "/v1/files"), ("POST", "/v1/fine_tuning/jobs"),
    ("POST", "/v1/batches"), ("POST", "/v1/assistants"), ("GET", "/v1/organization/users"),
    ("POST", "/v1/chat/completions/"),            # trailing slash
    ("POST", "/v1//chat/completions"),            # double slash
    ("POST", "/V1/chat/completions"),             # case
    ("POST", "/v1/Chat/Completions"),
    ("POST", "/v1/chat%2Fcompletions"),           # encoded slash
    ("POST", "/v1/chat/completions/../../files"),  # dot segments
    ("POST", "/v1/%2e%2e/v1/files"),
    ("POST", "/v1/chat/completions%00"),
    ("POST", "/"), ("GET", "/v2/models"), ("POST", "/admin"),
])
async def test_unknown_routes_are_404_and_never_forwarded(gw, fake, method, path):
    resp = await gw.request(method, path, json=CHAT, headers={"Origin": ORIGIN})
    assert resp.status in (404, 405)
    await assert_openai_error(resp, resp.status)
    assert fake.seen == []


async def test_dot_segments_cannot_reach_other_upstream_paths(gw, fake):
    # Whatever a path normalises to, the upstream URL comes from the route table.
    await gw.post("/v1/embeddings/../files", json=CHAT)
    assert all(s.path in ("/v1/embeddings", "/v1/files") for s in fake.seen)
    assert not any(s.path == "/v1/files" for s in fake.seen)


@pytest.mark.parametrize("method,path", [("GET", "/v1/chat/completions"),
                                         ("PUT", "/v1/embeddings"), ("POST", "/v1/models"),
                                         ("DELETE", "/v1/models")])
async def test_wrong_method_is_405(gw, fake, method, path):
    resp = await gw.request(method, path)
    err = await assert_openai_error(resp, 405, code="method_not_allowed")
    assert method in err["message"]
    assert fake.seen == []


async def test_routes_are_configurable(make_gateway, fake):
    gw = await make_gateway({"upstream": {"routes": ["/v1/embeddings"]}})
    assert (await gw.post("/v1/chat/completions", json=CHAT)).status == 404
    r = await gw.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
    assert r.status == 200
    assert [s.path for s in fake.seen] == ["/v1/embeddings"]


async def test_healthz(gw, fake):
    r = await gw.get("/healthz")
    assert r.status == 200 and (await r.json()) == {"status": "ok"}
    assert fake.seen == []


async def test_readyz_memory(gw):
    r = await gw.get("/readyz")
    assert r.status == 200
    assert (await r.json())["status"] == "ok"


# --- the key and what reaches the upstream -------------------------------------------------

async def test_upstream_gets_the_key_and_never_the_clients_credentials(gw, fake):
    # With its own output cap, nothing is added to the body: it goes as it came.
    raw = b'{"messages":[{"role":"user","content":"hi"}],  "model":"gpt-4o-mini", "max_tokens":9}'
    r = await gw.post("/v1/chat/completions", data=raw, headers={
        "Authorization": "Bearer sk-client-supplied", "Cookie": "session=abc",
        "OpenAI-Organization": "org-evil", "OpenAI-Project": "proj-evil",
        "Connection": "keep-alive, X-Secret", "X-Secret": "1", "Proxy-Authorization": "x",
        "X-Forwarded-For": "6.6.6.6", "Content-Type": "application/json",
        "OpenAI-Beta": "assistants=v2"})
    assert r.status == 200
    seen = fake.posts[0]
    headers = {k.lower(): v for k, v in seen.headers.items()}
    assert headers["authorization"] == f"Bearer {KEY}"
    for h in ("cookie", "openai-organization", "openai-project", "x-secret",
              "proxy-authorization", "x-forwarded-for"):
        assert h not in headers, h
    assert headers["openai-beta"] == "assistants=v2"
    assert seen.body == raw  # byte for byte when the gateway did not change it
    assert KEY not in await r.text()


async def test_client_query_string_is_not_forwarded(gw, fake):
    await gw.post("/v1/chat/completions?api-version=evil&x=1", json=CHAT)
    assert fake.posts[0].query == ""


async def test_models_filtered_to_allowlist(gw, fake):
    r = await gw.get("/v1/models")
    assert r.status == 200
    ids = [m["id"] for m in (await r.json())["data"]]
    assert ids == ["gpt-4o-mini", "text-embedding-3-small"]


async def test_models_unfiltered_with_empty_allowlist(make_gateway):
    gw = await make_gateway({"validation": {"allowed_models": []}})
    ids = [m["id"] for m in (await (await gw.get("/v1/models")).json())["data"]]
    assert ids == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]


@pytest.mark.parametrize("route,body", [
    ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "hi"}),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"]}),
    ("/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}),
    ("/v1/moderations", {"input": "hi"}),
])
async def test_each_route_forwards(gw, fake, route, body):
    r = await gw.post(route, json=body)
    assert r.status == 200, await r.text()
    assert fake.posts[-1].path == route


# --- validation happens before forwarding --------------------------------------------------

@pytest.mark.parametrize("body,param", [
    (b"not json", None), (b"[1,2]", None), (b'{"messages": []}', "model"),
    (b'{"model": "gpt-4o", "messages": [{"role":"user","content":"x"}]}', "model"),
    (b'{"model": "gpt-4o-mini", "messages": []}', "messages"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role":"hacker","content":"x"}]}',
     "messages[0].role"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role":"user","content":"x"}], "max_tokens": 99999}',
     "max_tokens"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role":"user","content":"x"}], "n": 50}', "n"),
])
async def test_bad_input_is_400_and_never_forwarded(gw, fake, body, param):
    r = await gw.post("/v1/chat/completions", data=body,
                      headers={"Content-Type": "application/json"})
    err = await assert_openai_error(r, 400, param=param)
    assert err["type"] == "invalid_request_error"
    assert fake.seen == []


async def test_input_size_cap(make_gateway, fake):
    gw = await make_gateway({"validation": {"max_input_chars": 10}})
    r = await gw.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "123456"}]},
        {"role": "user", "content": "123456"}]})
    await assert_openai_error(r, 400, code="context_length_exceeded", param="messages")
    assert fake.seen == []


async def test_oversized_body_is_413(make_gateway, fake):
    gw = await make_gateway({"server": {"max_body_bytes": 1024}})
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 5000}]}
    r = await gw.post("/v1/chat/completions", json=big)
    await assert_openai_error(r, 413, code="request_too_large")

    async def chunked():  # no Content-Length: the limit holds while reading
        for _ in range(10):
            yield b"x" * 500

    r = await gw.post("/v1/chat/completions", data=chunked())
    await assert_openai_error(r, 413)
    assert fake.seen == []


# --- CORS and Origin -----------------------------------------------------------------------

async def test_preflight_allowed_origin(gw, fake):
    r = await gw.options("/v1/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os"})
    assert r.status == 200
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "x-stainless-os" in r.headers["Access-Control-Allow-Headers"].lower()
    assert "Origin" in r.headers["Vary"]
    assert fake.seen == []


async def test_preflight_foreign_origin_refused(gw, fake):
    r = await gw.options("/v1/chat/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert r.status == 403
    assert "Access-Control-Allow-Origin" not in r.headers
    assert fake.seen == []


async def test_simple_request_exposes_headers(gw):
    r = await gw.post("/v1/chat/completions", json=CHAT, headers={"Origin": ORIGIN})
    assert r.status == 200
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-request-id", "x-cache", "retry-after", "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"} <= exposed
    assert r.headers["Vary"] == "Origin"


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost:5174",
                                    "http://localhost:5173.evil.example", "null",
                                    "HTTP://LOCALHOST:5173"])
async def test_foreign_origin_is_403_and_never_forwarded(gw, fake, origin):
    r = await gw.post("/v1/chat/completions", json=CHAT, headers={"Origin": origin})
    await assert_openai_error(r, 403, code="origin_not_allowed")
    assert fake.seen == []


async def test_no_origin_is_allowed(gw):
    # Server-side callers and curl send no Origin; limits and keys govern them.
    assert (await gw.post("/v1/chat/completions", json=CHAT)).status == 200


async def test_wildcard_origin(make_gateway):
    gw = await make_gateway({"cors": {"allow_origins": ["*"]}})
    r = await gw.post("/v1/chat/completions", json=CHAT, headers={"Origin": "https://any.example"})
    assert r.status == 200
    assert r.headers["Access-Control-Allow-Origin"] in ("*", "https://any.example")


# --- errors from the upstream side ---------------------------------------------------------

async def test_upstream_error_passes_through_with_status(gw, fake):
    fake.script = [{"status": 400}]
    r = await gw.post("/v1/chat/completions", json=CHAT)
    assert r.status == 400
    assert (await r.json())["error"]["message"] == "The upstream refused the request as invalid."


async def test_retry_on_5xx_then_success(gw, fake):
    fake.script = [{"status": 503}]
    r = await gw.post("/v1/chat/completions", json=CHAT)
    assert r.status == 200
    assert len(fake.posts) == 2


async def test_upstream_unreachable_is_502(make_gateway, fake):
    from .conftest import free_port
    gw = await make_gateway({"upstream": {"base_url": f"http://127.0.0.1:{free_port()}/v1"}})
    r = await gw.post("/v1/chat/completions", json=CHAT)
    await assert_openai_error(r, 502, code="upstream_unavailable")


async def test_upstream_slow_first_byte_is_504(make_gateway, fake):
    gw = await make_gateway({"upstream": {"first_byte_timeout": 0.3}})
    fake.script = [{"delay": 1.5}]
    r = await gw.post("/v1/chat/completions", json=CHAT)
    await assert_openai_error(r, 504, code="upstream_timeout")


async def test_unexpected_exception_is_500_with_request_id(gw, monkeypatch, leak_scan):
    from openai_gateway.pipeline.validation import Validator

    def boom(self, *a, **k):
        raise RuntimeError(f"internal detail {KEY}")

    monkeypatch.setattr(Validator, "check", boom)
    r = await gw.post("/v1/chat/completions", json=CHAT)
    err = await assert_openai_error(r, 500, code="internal_error")
    assert r.headers["X-Request-ID"] in err["message"]
    assert "internal detail" not in err["message"] and "Traceback" not in err["message"]
    # The traceback is logged server-side; the leak scan proves the key is not in it raw,
    # so drop the record that we planted the key in on purpose before it checks.
    planted = [t for t in leak_scan.texts if KEY in t]
    assert planted, "the exception was not logged"
    leak_scan.texts[:] = [t for t in leak_scan.texts if KEY not in t]


async def test_logged_exception_is_redacted_by_the_formatter(monkeypatch):
    import io
    import logging

    from openai_gateway.observability import logs
    buf = io.StringIO()
    logs.configure("info", "json", (KEY,), stream=buf)
    try:
        logging.getLogger("gateway").error("oops %s", KEY)
        try:
            raise ValueError(KEY)
        except ValueError:
            logging.getLogger("gateway").exception("failed")
    finally:
        logging.getLogger().handlers.clear()
    out = buf.getvalue()
    assert KEY not in out and out.count("[REDACTED]") >= 2


# --- metrics -------------------------------------------------------------------------------

async def test_metrics_for_trusted_peer_only(make_gateway):
    gw = await make_gateway()
    await gw.post("/v1/chat/completions", json=CHAT)
    r = await gw.get("/metrics")
    assert r.status == 200
    text = await r.text()
    assert "gateway_requests_total" in text and KEY not in text
    # Through a trusted proxy on behalf of an outside client: refused.
    r = await gw.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.status == 403
    untrusted = await make_gateway({"server": {"trusted_proxies": []}})
    assert (await untrusted.get("/metrics")).status == 403


async def test_deeply_nested_body_is_400_not_500(gw, fake):
    nested = "[" * 300 + "]" * 300
    raw = ('{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"hi"}],'
           f'"metadata":{nested}}}').encode()
    r = await gw.post("/v1/chat/completions", data=raw,
                      headers={"Content-Type": "application/json"})
    await assert_openai_error(r, 400)
    assert fake.seen == []


async def test_upstream_org_rate_limit_headers_are_not_passed_on(gw, fake):
    fake.script = [{"raw": b'{"id": "x", "choices": []}', "ctype": "application/json"}]
    r = await gw.post("/v1/chat/completions", json=CHAT)
    assert r.status == 200 and r.headers["x-ratelimit-limit-requests"] == "1000"


async def test_metrics_exposition_is_valid_prometheus_with_cumulative_buckets(gw, fake):
    """The request path keeps plain numbers; the scrape must still be what Prometheus parses:
    counters with _total, histograms with cumulative le buckets, +Inf = count."""
    from prometheus_client.parser import text_string_to_metric_families

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "metrics"}]}
    for _ in range(3):
        assert (await gw.post("/v1/chat/completions", json=body)).status == 200
    assert (await gw.post("/v1/chat/completions", json={"model": 1})).status == 400
    text = await (await gw.get("/metrics")).text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {(s.labels["route"], s.labels["status"]): s.value
                for s in families["gateway_requests"].samples if s.name.endswith("_total")}
    assert requests[("/v1/chat/completions", "200")] >= 3
    assert requests[("/v1/chat/completions", "400")] >= 1
    for name in ("gateway_request_duration_seconds", "gateway_time_to_first_byte_seconds"):
        samples = [s for s in families[name].samples
                   if s.labels.get("route") == "/v1/chat/completions"]
        buckets = [s for s in samples if s.name.endswith("_bucket")]
        counts = [s.value for s in buckets]
        assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf"
        count = next(s.value for s in samples if s.name.endswith("_count"))
        assert buckets[-1].value == count >= 3
        assert next(s.value for s in samples if s.name.endswith("_sum")) > 0
    assert families["gateway_active_streams"].samples[0].value == 0
    assert any(s.labels.get("result") == "BYPASS" and s.value >= 3  # sampled: not cached
               for s in families["gateway_cache"].samples)

"""Issue 13's findings, each as the attack, through a real `python gateway.py` process.

Every test is what an anonymous client on the internet tried; it passes when the gateway
bounds what that client can make the operator's account do.
"""
from __future__ import annotations

import asyncio
import gzip
import socket

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

DUMMY = "sk-browser-placeholder"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
RESPONSES = {"model": "gpt-4o-mini", "input": "hi"}
ORG_TEXT = ("Rate limit reached for gpt-4o-mini in organization org-Q1w2E3r4T5y6U7i8 on tokens "
            "per min (TPM): Limit 200000, Used 199100, Requested 1500.")


class Recorder:
    """An upstream that records every body and answers as OpenAI does, with big usages."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.fail_with: int | None = None
        self.embedding_bytes = 0
        #: Seconds a chat answer takes, and the output tokens it reports.
        self.chat_delay = 0.0
        self.chat_output = 1

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        return app

    async def _record(self, request: web.Request) -> dict:
        body = await request.json()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        return body

    async def responses(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        # OpenAI's order: `usage`, then the echoed `user` and `metadata`.
        return web.json_response({
            "id": "resp_1", "object": "response", "status": "completed", "output": [],
            "usage": {"input_tokens": 10, "output_tokens": 16000, "total_tokens": 16010},
            "user": body.get("user"), "metadata": body.get("metadata") or {}})

    async def chat(self, request: web.Request) -> web.Response:
        await self._record(request)
        await asyncio.sleep(self.chat_delay)
        if self.fail_with:
            return web.json_response(
                {"error": {"message": ORG_TEXT, "type": "tokens", "param": None,
                           "code": "rate_limit_exceeded"}}, status=self.fail_with,
                headers={"x-ratelimit-limit-tokens": "200000",
                         "x-ratelimit-remaining-tokens": "900", "retry-after": "1"})
        return web.json_response(
            {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                          "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 1, "completion_tokens": self.chat_output,
                       "total_tokens": 1 + self.chat_output}},
            headers={"x-ratelimit-limit-requests": "10000",
                     "x-ratelimit-remaining-requests": "9999",
                     "x-ratelimit-limit-tokens": "200000"})

    async def embeddings(self, request: web.Request) -> web.Response:
        await self._record(request)
        vector = orjson.dumps([0.0123456789] * 3072)
        rows = b",".join(b'{"object":"embedding","index":%d,"embedding":%s}' % (i, vector)
                         for i in range(self.embedding_bytes // len(vector) + 1))
        return web.Response(body=b'{"object":"list","data":[' + rows + b'],"model":"m",'
                            b'"usage":{"prompt_tokens":1,"total_tokens":1}}',
                            content_type="application/json")


@pytest.fixture
async def recorder(aiohttp_server):
    rec = Recorder()
    rec.server = await aiohttp_server(rec.app())
    rec.url = str(rec.server.make_url("/v1"))
    return rec


@pytest.fixture
def gateway(gateway_process, recorder):
    """gateway(**sections) -> a gateway process in front of the recorder."""

    async def start(**sections):
        sections.setdefault("upstream", {})["base_url"] = recorder.url
        return await gateway_process(sections)

    return start


async def post(gp, path: str, body, headers: dict | None = None, raw: bytes | None = None):
    async with aiohttp.ClientSession() as s:
        async with s.post(gp.url + path, data=raw if raw is not None else orjson.dumps(body),
                          headers={"Content-Type": "application/json", **(headers or {})}) as r:
            return r.status, dict(r.headers), await r.read()


def error(body: bytes) -> dict:
    return orjson.loads(body)["error"]


async def raw_exchange(port: int, data: bytes, *, read_for: float = 3.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got = b""
    try:
        async with asyncio.timeout(read_for):
            while chunk := await reader.read(65536):
                got += chunk
    except TimeoutError:
        pass
    writer.close()
    return got


def port_of(gp) -> int:
    return int(gp.url.rsplit(":", 1)[1])


# --- token budgets: honest usage, an output cap, reservations --------------------------------


async def test_echoed_metadata_does_not_make_responses_free(gateway, recorder):
    gp = await gateway(rate_limit={"requests": ["100/minute"], "tokens": ["20000/minute"]})
    attack = dict(RESPONSES, metadata={"k": "usage"})
    status, _, _ = await post(gp, "/v1/responses", attack)
    assert status == 200
    # The first answer spent 16,010 tokens: the next reservation (input + 4096) cannot fit.
    status, headers, body = await post(gp, "/v1/responses", attack)
    assert status == 429 and error(body)["type"] == "tokens"
    assert len(recorder.bodies) == 1


@pytest.mark.parametrize("path, body, field", [
    ("/v1/chat/completions", CHAT, "max_completion_tokens"),
    ("/v1/responses", RESPONSES, "max_output_tokens"),
    ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "hi"}, "max_tokens"),
])
async def test_the_gateway_sends_an_output_cap(gateway, recorder, path, body, field):
    gp = await gateway(validation={"max_tokens": 512})
    status, _, _ = await post(gp, path, body)
    assert status == 200
    assert recorder.bodies[-1][field] == 512


async def test_parallel_requests_reserve_the_whole_cap(gateway, recorder):
    """25 parallel requests without max_tokens once spent 400,250 tokens of 20,000/minute."""
    recorder.chat_delay, recorder.chat_output = 1.0, 4000  # long answers, all in flight at once
    gp = await gateway(rate_limit={"requests": ["100/minute"], "tokens": ["20000/minute"]})
    results = await asyncio.gather(*(post(gp, "/v1/chat/completions", CHAT) for _ in range(25)))
    statuses = [s for s, _, _ in results]
    assert statuses.count(200) <= 20000 // 4096  # each reserves its input and 4096 tokens
    assert statuses.count(429) == 25 - statuses.count(200)
    assert len(recorder.bodies) == statuses.count(200)


async def test_n_choices_reserve_n_caps(gateway, recorder):
    gp = await gateway(rate_limit={"requests": ["100/minute"], "tokens": ["10000/minute"]})
    status, _, body = await post(gp, "/v1/chat/completions", dict(CHAT, n=4, max_tokens=3000))
    assert status == 429 and error(body)["type"] == "tokens"  # 4 x 3000 > 10000
    assert recorder.bodies == []


# --- everything the model reads counts ---------------------------------------------------------

BIG = "x" * 20_000
SCHEMA = {"type": "object", "properties": {"a": {"type": "string", "description": BIG}}}


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", dict(CHAT, messages=[
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
            "name": "f", "arguments": BIG}}]}])),
    ("/v1/chat/completions", dict(CHAT, tools=[{"type": "function", "function": {
        "name": "f", "description": BIG}}])),
    ("/v1/chat/completions", dict(CHAT, response_format={"type": "json_schema", "json_schema": {
        "name": "s", "schema": SCHEMA}})),
    ("/v1/chat/completions", dict(CHAT, prediction={"type": "content", "content": BIG})),
    ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "hi", "suffix": BIG}),
    ("/v1/responses", dict(RESPONSES, instructions=BIG)),
    ("/v1/responses", dict(RESPONSES, input=[{"type": "function_call_output", "call_id": "c",
                                              "output": BIG}])),
], ids=["tool-call-arguments", "tool-description", "response-format", "prediction", "suffix",
        "instructions", "function-call-output"])
async def test_max_input_chars_counts_every_input(gateway, recorder, path, body):
    gp = await gateway()
    status, _, answer = await post(gp, path, body)
    assert status == 400 and error(answer)["code"] == "context_length_exceeded"
    assert recorder.bodies == []


# --- costly and cross-client knobs ---------------------------------------------------------------


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "hi", "best_of": 20}, "best_of"),
    ("/v1/chat/completions", dict(CHAT, n=20), "n"),
    ("/v1/chat/completions", dict(CHAT, service_tier="priority"), "service_tier"),
    ("/v1/responses", dict(RESPONSES, tools=[{"type": "image_generation"}]), "tools[0].type"),
    ("/v1/responses", dict(RESPONSES, tools=[{"type": "web_search"}]), "tools[0].type"),
    ("/v1/responses", dict(RESPONSES, tools=[{"type": "code_interpreter",
                                              "container": {"type": "auto"}}]), "tools[0].type"),
    ("/v1/responses", dict(RESPONSES, tools=[{"type": "mcp", "server_label": "x",
                                              "server_url": "https://attacker.example/mcp"}]),
     "tools[0].type"),
    ("/v1/responses", dict(RESPONSES, background=True), "background"),
    ("/v1/responses", dict(RESPONSES, previous_response_id="resp_of_another_client"),
     "previous_response_id"),
    ("/v1/responses", dict(RESPONSES, prompt={"id": "pmpt_123"}), "prompt"),
    ("/v1/responses", dict(RESPONSES, conversation="conv_123"), "conversation"),
    ("/v1/responses", dict(RESPONSES, store=True), "store"),
])
async def test_costly_knobs_are_refused_naming_their_param(gateway, recorder, path, body, param):
    gp = await gateway()
    status, _, answer = await post(gp, path, body)
    assert status == 400 and error(answer)["param"] == param
    assert recorder.bodies == []


async def test_responses_go_upstream_with_store_false(gateway, recorder):
    gp = await gateway()
    assert (await post(gp, "/v1/responses", RESPONSES))[0] == 200
    assert recorder.bodies[-1]["store"] is False


# --- duplicate keys ------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, param", [
    (b'{"model":"o3-pro","model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
     "model"),
    (b'{"model":"gpt-4o-mini","max_tokens":10,"messages":[{"role":"user","content":"hi"}],'
     b'"max_tokens":100000}', "max_tokens"),
    (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi","content":"'
     + b"x" * 50_000 + b'"}]}', "content"),
])
async def test_duplicate_keys_are_refused(gateway, recorder, raw, param):
    gp = await gateway()
    status, _, answer = await post(gp, "/v1/chat/completions", None, raw=raw)
    assert status == 400 and error(answer)["param"] == param
    assert recorder.bodies == []


# --- free work before the limit ---------------------------------------------------------------


async def test_every_request_to_a_forwarded_route_counts(gateway, recorder):
    gp = await gateway(rate_limit={"requests": ["3/minute"]})
    for _ in range(3):
        assert (await post(gp, "/v1/chat/completions", None, raw=b"{not json"))[0] == 400
    assert (await post(gp, "/v1/chat/completions", CHAT))[0] == 429


async def test_a_limited_client_gets_429_before_its_body_is_inflated(gateway, recorder):
    gp = await gateway(rate_limit={"requests": ["1/minute"]},
                       server={"compressed_bodies": "inflate"})
    assert (await post(gp, "/v1/chat/completions", CHAT))[0] == 200
    bomb = gzip.compress(b" " * 990_000)
    status, headers, _ = await post(gp, "/v1/chat/completions", None, raw=bomb,
                                    headers={"Content-Encoding": "gzip"})
    assert status == 429 and "Retry-After" in headers


async def test_compressed_bodies_are_refused_by_default(gateway, recorder):
    gp = await gateway()
    status, _, answer = await post(gp, "/v1/chat/completions", None,
                                   raw=gzip.compress(orjson.dumps(CHAT)),
                                   headers={"Content-Encoding": "gzip"})
    assert status == 415 and error(answer)["code"] == "unsupported_content_encoding"
    assert recorder.bodies == []


# --- slowloris -----------------------------------------------------------------------------------


async def trickle(reader, writer, lines, every: float = 0.5) -> bytes:
    """Send one line every `every` seconds (a slowloris head); what the gateway answered."""
    try:
        for line in lines:
            writer.write(line)
            await writer.drain()
            await asyncio.sleep(every)
        return await asyncio.wait_for(reader.read(), 5)
    except (BrokenPipeError, ConnectionResetError):
        return b""  # closed while we were still sending
    finally:
        writer.close()


SLOW_HEAD = (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n",
             b"X-C: 3\r\n", b"\r\n")


async def test_leading_blank_lines_do_not_stop_the_header_timer(gateway):
    gp = await gateway(server={"header_timeout": 1.0})
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gp))
    # Hung up without an answer: the head (blank lines first) took longer than 1 s.
    assert await trickle(reader, writer, (b"\r\n\r\n", *SLOW_HEAD)) == b""


async def test_a_second_request_head_on_a_keep_alive_connection_is_timed(gateway):
    gp = await gateway(server={"header_timeout": 1.0})
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gp))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first = await asyncio.wait_for(reader.readuntil(b'"ok"}'), 5)
    assert first.startswith(b"HTTP/1.1 200")
    assert await trickle(reader, writer, SLOW_HEAD) == b""


async def test_a_chunked_body_then_a_slow_head_is_timed(gateway):
    gp = await gateway(server={"header_timeout": 1.0})
    body = orjson.dumps(CHAT)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gp))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 b"application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert first.startswith(b"HTTP/1.1 200")
    rest = await trickle(reader, writer, SLOW_HEAD)
    assert b"HTTP/1.1" not in rest  # no second answer: the connection was closed


async def test_idle_keep_alive_and_long_answers_are_not_cut(gateway_process, fake):
    """Only heads are timed: not the wait between requests, not an answer being generated."""
    fake.chunk_delay = 0.4  # a 2 s stream, twice the header timeout
    gp = await gateway_process({"server": {"header_timeout": 1.0}})
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.post(gp.url + "/v1/chat/completions",
                              json=dict(CHAT, stream=True)) as r:
                text = await r.text()
                assert r.status == 200 and text.endswith("data: [DONE]\n\n")
            await asyncio.sleep(1.5)  # idle on the same keep-alive connection


# --- identity ------------------------------------------------------------------------------------


def with_lines(*lines: str, body: bytes) -> bytes:
    head = b"".join(b"X-Forwarded-For: " + line.encode() + b"\r\n" for line in lines)
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
            + head + b"\r\n" + body)


async def test_a_second_forwarded_for_line_is_read(gateway, recorder):
    """HAProxy appends its own line; the client's own first line must not pick its identity."""
    gp = await gateway(rate_limit={"requests": ["1/minute"]})
    body = orjson.dumps(CHAT)
    first = await raw_exchange(port_of(gp), with_lines("1.1.1.1", "203.0.113.7", body=body))
    second = await raw_exchange(port_of(gp), with_lines("2.2.2.2", "203.0.113.7", body=body))
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 429")


async def test_metrics_are_not_opened_by_a_forged_first_line(gateway):
    gp = await gateway()
    request = (b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n")
    assert (await raw_exchange(port_of(gp), request)).startswith(b"HTTP/1.1 403")


async def test_ipv6_clients_share_their_network_budget(gateway, recorder):
    gp = await gateway(rate_limit={"requests": ["1/minute"]})
    body = orjson.dumps(CHAT)
    first = await raw_exchange(port_of(gp), with_lines("2001:db8:1:2::1", body=body))
    second = await raw_exchange(port_of(gp), with_lines("2001:db8:1:2:ffff::2", body=body))
    other = await raw_exchange(port_of(gp), with_lines("2001:db8:1:3::1", body=body))
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 429")
    assert other.startswith(b"HTTP/1.1 200")


# --- a client that reads nothing ------------------------------------------------------------------


async def test_a_client_that_reads_nothing_is_dropped(gateway, recorder):
    recorder.embedding_bytes = 20 * 1024 * 1024
    gp = await gateway(server={"write_timeout": 1.0},
                       validation={"allowed_models": ["gpt-4o-mini", "m"]},
                       upstream={"max_response_bytes": 64 * 1024 * 1024})
    body = orjson.dumps({"model": "m", "input": "x"})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port_of(gp)))
    sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await asyncio.sleep(4)  # the answer is ready after ~1 s; then nothing is read for 3 s
    sock.settimeout(5)
    got = 0
    try:
        while chunk := sock.recv(1 << 20):
            got += len(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    assert got < recorder.embedding_bytes  # dropped: the rest was never sent


# --- upstream errors and headers --------------------------------------------------------------


async def test_upstream_errors_do_not_reveal_the_organization(gateway, recorder):
    recorder.fail_with = 429
    gp = await gateway(upstream={"retries": 0})
    status, headers, body = await post(gp, "/v1/chat/completions", CHAT)
    assert status == 429
    assert b"org-" not in body and b"199100" not in body
    err = error(body)
    assert (err["type"], err["code"]) == ("tokens", "rate_limit_exceeded")
    assert headers.get("x-ratelimit-remaining-tokens") != "900"
    assert "org-Q1w2E3r4T5y6U7i8" in gp.log()  # the operator still sees it


async def test_the_upstreams_rate_limit_headers_are_not_passed_on(gateway, recorder):
    gp = await gateway()
    status, headers, _ = await post(gp, "/v1/chat/completions", CHAT)
    assert status == 200
    assert headers.get("x-ratelimit-limit-requests") != "10000"
    assert "x-ratelimit-limit-tokens" not in {k.lower() for k in headers}


# --- the cache and forwarded headers ----------------------------------------------------------


async def test_an_answer_under_one_beta_is_not_served_under_another(gateway, recorder):
    gp = await gateway()
    cached = dict(CHAT, temperature=0)
    await post(gp, "/v1/chat/completions", cached, headers={"OpenAI-Beta": "assistants=v2"})
    _, headers, _ = await post(gp, "/v1/chat/completions", cached)
    assert headers.get("X-Cache") != "HIT"
    assert len(recorder.bodies) == 2


# --- the default policy still serves what the official SDK sends --------------------------------


async def test_sdk_function_calling_and_structured_outputs_pass(gateway, recorder):
    gp = await gateway()
    client = openai.AsyncOpenAI(base_url=gp.url + "/v1", api_key=DUMMY, max_retries=0,
                                timeout=10)
    async with client:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[{"type": "function", "function": {
                "name": "get_weather", "description": "Current weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"], "additionalProperties": False},
                "strict": True}}])
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "An event"}],
            response_format={"type": "json_schema", "json_schema": {
                "name": "event", "strict": True, "schema": {
                    "type": "object", "properties": {"name": {"type": "string"}},
                    "required": ["name"], "additionalProperties": False}}})
        await client.responses.create(
            model="gpt-4o-mini", input="Weather in Paris?",
            tools=[{"type": "function", "name": "get_weather", "strict": True,
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                   "required": ["city"], "additionalProperties": False}}])
    assert len(recorder.bodies) == 3

"""The access line: text for people, JSON for machines, both saying why a request was refused.

Pure functions (text_line, safe, refusal_detail, ClientHasher) are tested without a server; the
lines a real request produces are captured from an in-process gateway in both formats.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import sys

import pytest
from aiohttp.http import HttpProcessingError

from openai_gateway.errors import InvalidRequest, OriginNotAllowed, RateLimited, TokensRateLimited
from openai_gateway.observability import logs
from openai_gateway.observability.logs import (
    ClientHasher,
    MalformedHeads,
    RedactingFormatter,
    refusal_detail,
    safe,
    text_line,
)

from ..conftest import KEY, ORIGIN

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a private prompt"}]}
EVIL = "https://evil.example"


def doc(**kw) -> dict:
    base = {"request_id": "req_0001", "client": "203.0.113.7", "method": "POST",
            "path": "/v1/chat/completions", "route": "/v1/chat/completions",
            "model": "gpt-4o-mini", "status": 200, "cache": "MISS", "rate_limit": "ok",
            "upstream_status": 200, "stream": False, "ttfb_ms": 180.0, "duration_ms": 183.41,
            "tokens_in": 12, "tokens_out": 48, "cost_usd": None, "error": None, "detail": None}
    return {**base, **kw}


# --- the text line, a pure function ---------------------------------------------------------


@pytest.mark.parametrize(("fields", "line"), [
    ({}, "200 POST /v1/chat/completions 183.4 ms gpt-4o-mini MISS in=12 out=48 "
         "client=203.0.113.7 req_0001"),
    ({"stream": True, "cache": "BYPASS"},
     "200 POST /v1/chat/completions 183.4 ms gpt-4o-mini BYPASS stream ttfb=180.0ms "
     "in=12 out=48 client=203.0.113.7 req_0001"),
    ({"cost_usd": 0.0000366}, "200 POST /v1/chat/completions 183.4 ms gpt-4o-mini MISS "
                              "in=12 out=48 cost=$0.000037 client=203.0.113.7 req_0001"),
    ({"status": 403, "model": None, "cache": None, "upstream_status": None, "tokens_in": None,
      "tokens_out": None, "duration_ms": 0.3, "error": "origin_not_allowed",
      "detail": f"origin={EVIL}"},
     f"403 POST /v1/chat/completions 0.3 ms error=origin_not_allowed origin={EVIL} "
     "client=203.0.113.7 req_0001"),
    ({"status": 429, "cache": None, "upstream_status": None, "tokens_in": None,
      "tokens_out": None, "error": "rate_limit_exceeded", "detail": "limit=60/minute"},
     "429 POST /v1/chat/completions 183.4 ms gpt-4o-mini error=rate_limit_exceeded "
     "limit=60/minute client=203.0.113.7 req_0001"),
    ({"status": 400, "upstream_status": 400, "tokens_in": None, "tokens_out": None},
     "400 POST /v1/chat/completions 183.4 ms gpt-4o-mini MISS upstream=400 "
     "client=203.0.113.7 req_0001"),
    ({"tokens_in": 12, "tokens_out": None},
     "200 POST /v1/chat/completions 183.4 ms gpt-4o-mini MISS in=12 out=- "
     "client=203.0.113.7 req_0001"),
])
def test_text_line(fields, line):
    assert text_line(doc(**fields)) == line


@pytest.mark.parametrize(("raw", "shown"), [
    ("/v1/chat/completions", "/v1/chat/completions"),
    ("/v1/x\nFAKE 200 line", "/v1/x\\x0aFAKE\\x20200\\x20line"),  # no forged second line
    ("/v1/\u202egnp.exe", "/v1/\\u202egnp.exe"),                    # no bidi tricks
    ("/" + "a" * 500, "/" + "a" * 199),
])
def test_client_text_is_one_visible_word(raw, shown):
    assert safe(raw) == shown


def test_a_hostile_path_cannot_forge_a_line():
    line = text_line(doc(path="/v1/x\r\n200 POST /v1/fake 1.0 ms", model="m\nx"))
    assert "\n" not in line and "\r" not in line


# --- why a request was refused ---------------------------------------------------------------


def test_refusal_detail():
    assert refusal_detail(OriginNotAllowed("no"), EVIL) == f"origin={EVIL}"
    assert refusal_detail(OriginNotAllowed("no"), "https://x.example/\n1") == \
        "origin=https://x.example/\\x0a1"
    limited = RateLimited("slow down", headers={"Retry-After": "12",
                                                "x-ratelimit-limit-requests": "60"})
    assert refusal_detail(limited, None) == "limit=60 retry_after=12s"
    tokens = TokensRateLimited("slow down", headers={"Retry-After": "3",
                                                     "x-ratelimit-limit-tokens": "20000"})
    assert refusal_detail(tokens, None) == "limit=20000 retry_after=3s"
    # What the raiser knows best wins.
    assert refusal_detail(RateLimited("x", log_detail="limit=60/minute"), None) == \
        "limit=60/minute"
    assert refusal_detail(InvalidRequest("bad"), EVIL) is None


# --- log.hash_client -----------------------------------------------------------------------


def test_client_hash_is_keyed():
    ip = "203.0.113.7"
    a, b = ClientHasher(b"k" * 32), ClientHasher(b"k" * 32)
    assert a(ip) == b(ip) and len(a(ip)) == 16 and a(ip) != a("203.0.113.8")
    # An unkeyed hash of an IPv4 address is reversed by hashing all 2^32 of them.
    assert a(ip) != hashlib.sha256(ip.encode()).hexdigest()[:16]
    assert ClientHasher(b"x" * 32)(ip) != a(ip)
    assert ClientHasher()(ip) != ClientHasher()(ip)  # no key given: a random one per start


def server_record(exc: BaseException, level: int = logging.ERROR) -> logging.LogRecord:
    """A record as aiohttp's server logs a request it could not handle."""
    try:
        raise exc
    except BaseException:
        exc_info = sys.exc_info()
    return logging.LogRecord("aiohttp.server", level, __file__, 1,
                             "Error handling request from %s", ("203.0.113.7",), exc_info)


def test_malformed_heads_are_told_without_the_request_a_few_lines_a_second(caplog):
    now = [1000.5]
    heads = MalformedHeads(per_second=3, clock=lambda: now[0])
    head = HttpProcessingError(code=400, message="Invalid header value char:\n\n  "
                                                 "b'Authorization: Bearer sk-client-abc\\x7f'")
    kept = [r for r in (server_record(head) for _ in range(10)) if heads.filter(r)]
    assert len(kept) == 3
    for record in kept:
        assert record.getMessage() == ("malformed request head from 203.0.113.7 refused "
                                       "(HttpProcessingError)")
        assert record.levelname == "WARNING" and record.exc_info is None
    # aiohttp's debug line for a first request that is not HTTP at all stays at debug.
    now[0] += 1
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        quiet = server_record(head, logging.DEBUG)
        assert heads.filter(quiet) and quiet.levelname == "DEBUG"
    told = [r.getMessage() for r in caplog.records if r.name == "aiohttp.server"]
    assert told == ["7 more malformed request heads were refused and not logged (at most 3 "
                    "lines a second)"]
    # Anything else aiohttp logs passes untouched.
    other = server_record(ValueError("a handler bug"))
    assert heads.filter(other) and other.exc_info and other.levelname == "ERROR"


# --- lines from real requests (in-process gateway) ------------------------------------------


class Written(io.StringIO):
    """A log stream, and the access log that writes to it."""

    access: logs.AccessLog


@pytest.fixture
def text_log():
    """Access lines as the text format writes them (the formatter of `log.format = text`)."""
    stream = Written()
    stream.access = logs.AccessLog()  # no writer: text lines through `logging`
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter((KEY,), json_lines=False))
    logs.ACCESS.addHandler(handler)
    yield stream
    logs.ACCESS.removeHandler(handler)


@pytest.fixture
def json_log():
    """Access lines as the JSON format writes them."""
    stream = Written()
    stream.access = logs.AccessLog(logs.AccessWriter(stream))
    return stream


def lines_of(stream: Written) -> list[str]:
    stream.access.flush()
    return [line for line in stream.getvalue().splitlines() if line]


TEXT_OK = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} 200 POST /v1/chat/completions "
                     r"\d+\.\d ms gpt-4o-mini BYPASS in=\d+ out=5 cost=\$0\.\d{6} "
                     r"client=127\.0\.0\.1 "
                     r"(req_[0-9a-f]{18})$")


async def test_text_lines_of_an_answer_and_of_refusals(make_gateway, text_log):
    gw = await make_gateway({"rate_limit": {"requests": ["1/minute"]}}, access=text_log.access)
    r = await gw.post("/v1/chat/completions", json=CHAT,
                      headers={"Authorization": f"Bearer {KEY}"})
    assert r.status == 200
    r403 = await gw.post("/v1/chat/completions", json=CHAT, headers={"Origin": EVIL})
    r429 = await gw.post("/v1/chat/completions", json=CHAT)
    assert (r403.status, r429.status) == (403, 429)
    ok, refused, limited = lines_of(text_log)
    match = TEXT_OK.match(ok)
    assert match, ok
    assert match[1] == r.headers["X-Request-ID"]
    assert refused.endswith(f" 403 POST /v1/chat/completions {refused.split()[5]} ms "
                            f"error=origin_not_allowed origin={EVIL} client=127.0.0.1 "
                            f"{r403.headers['X-Request-ID']}")
    assert " error=rate_limit_exceeded limit=1/minute retry_after=" in limited
    assert "client=127.0.0.1" in limited and r429.headers["X-Request-ID"] in limited
    text = text_log.getvalue()
    assert "private prompt" not in text and KEY not in text


async def test_json_lines_say_why_too(make_gateway, json_log):
    gw = await make_gateway({"rate_limit": {"requests": ["1/minute"]}}, access=json_log.access)
    assert (await gw.post("/v1/chat/completions", json=CHAT)).status == 200
    assert (await gw.post("/v1/chat/completions", json=CHAT, headers={"Origin": EVIL})).status \
        == 403
    assert (await gw.post("/v1/chat/completions", json=CHAT)).status == 429
    assert (await gw.get("/v1/files")).status == 404
    ok, refused, limited, unknown = (json.loads(line) for line in lines_of(json_log))
    assert ok["status"] == 200 and ok["error"] is None and ok["detail"] is None
    assert ok["model"] == "gpt-4o-mini" and ok["duration_ms"] > 0 and "cost_usd" in ok
    assert (refused["status"], refused["error"], refused["detail"]) == (
        403, "origin_not_allowed", f"origin={EVIL}")
    # Refused before the proxy looked at the caller, and still the client is known.
    assert refused["client"] == "127.0.0.1"
    assert (limited["status"], limited["error"]) == (429, "rate_limit_exceeded")
    assert limited["detail"].startswith("limit=1/minute ")
    assert (unknown["status"], unknown["error"], unknown["client"]) == (
        404, "unknown_url", "127.0.0.1")
    assert "private prompt" not in json_log.getvalue()


async def test_an_allowed_origin_is_not_a_refusal(make_gateway, json_log):
    gw = await make_gateway(access=json_log.access)
    r = await gw.post("/v1/chat/completions", json=CHAT, headers={"Origin": ORIGIN})
    assert r.status == 200
    [line] = (json.loads(x) for x in lines_of(json_log))
    assert line["error"] is None and line["detail"] is None


async def test_hashed_clients_in_the_log(make_gateway, json_log):
    json_log.access = logs.AccessLog(logs.AccessWriter(json_log), hash_key=b"s" * 32)
    gw = await make_gateway({"log": {"hash_client": True}}, access=json_log.access)
    await gw.post("/v1/chat/completions", json=CHAT, headers={"Origin": EVIL})
    [line] = (json.loads(x) for x in lines_of(json_log))
    assert line["client"] == ClientHasher(b"s" * 32)("127.0.0.1")

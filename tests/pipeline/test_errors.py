"""Upstream errors reach the client in the gateway's words: status and type kept, text logged."""
from __future__ import annotations

import logging

import orjson
import pytest

from openai_gateway.errors import LOGGED_CHARS, UPSTREAM_MESSAGES, upstream_error
from openai_gateway.upstream.client import RETURNED_HEADERS

#: OpenAI's own 429 text: it names the account's organization and its usage.
OPENAI_429 = {"error": {
    "message": "Rate limit reached for gpt-4o-mini in organization org-Q1w2E3r4T5y6U7i8 on "
               "tokens per min (TPM): Limit 200000, Used 199100, Requested 1500. Please try "
               "again in 180ms.",
    "type": "tokens", "param": None, "code": "rate_limit_exceeded"}}


def error_of(answer: tuple[int, str, bytes]) -> tuple[int, dict]:
    status, ctype, body = answer
    assert ctype == "application/json"
    return status, orjson.loads(body)["error"]


def test_openai_429_is_rewritten_and_its_text_only_logged(caplog):
    caplog.set_level(logging.WARNING, "gateway.upstream")
    status, error = error_of(upstream_error(429, "application/json", orjson.dumps(OPENAI_429)))
    assert (status, error) == (429, {"message": UPSTREAM_MESSAGES[429], "type": "tokens",
                                     "param": None, "code": "rate_limit_exceeded"})
    assert "org-Q1w2E3r4T5y6U7i8" in caplog.text  # for the operator, not for the client


@pytest.mark.parametrize("status, upstream, expected", [
    (400, {"message": "Invalid 'messages[0].content': string too long.",
           "type": "invalid_request_error", "param": "messages[0].content",
           "code": "string_above_max_length"},
     {"message": UPSTREAM_MESSAGES[400], "type": "invalid_request_error",
      "param": "messages[0].content", "code": "string_above_max_length"}),
    (404, {"message": "The model `o9` does not exist or you do not have access to it.",
           "type": "invalid_request_error", "param": None, "code": "model_not_found"},
     {"message": UPSTREAM_MESSAGES[404], "type": "invalid_request_error", "param": None,
      "code": "model_not_found"}),
    (429, {"message": "You exceeded your current quota.", "type": "insufficient_quota",
           "param": None, "code": "insufficient_quota"},
     {"message": UPSTREAM_MESSAGES[429], "type": "insufficient_quota", "param": None,
      "code": "insufficient_quota"}),
    (500, {"message": "The server had an error while processing your request.",
           "type": "server_error"},
     {"message": "The upstream failed to answer.", "type": "server_error", "param": None,
      "code": None}),
    (418, {"message": "teapot", "type": "weird type with spaces", "code": ["x"],
           "param": "<script>"},
     {"message": "The upstream answered 418.", "type": "invalid_request_error", "param": None,
      "code": None}),
])
def test_type_code_and_param_are_kept_the_message_is_ours(status, upstream, expected):
    answer = upstream_error(status, "application/json", orjson.dumps({"error": upstream}))
    assert error_of(answer) == (status, expected)


@pytest.mark.parametrize("status, ctype, body, type_", [
    (503, "text/html", b"<html><body>503 Service Unavailable</body></html>", "server_error"),
    (502, "application/json", b"not json", "server_error"),
    (400, "application/json", b'{"detail": "vLLM says no"}', "invalid_request_error"),
    (422, "text/plain", b"Unprocessable", "invalid_request_error"),
])
def test_bodies_that_are_not_openai_errors(status, ctype, body, type_, caplog):
    caplog.set_level(logging.WARNING, "gateway.upstream")
    status_out, error = error_of(upstream_error(status, ctype, body))
    assert (status_out, error["type"], error["code"]) == (status, type_, "upstream_error")
    assert body.decode() not in error["message"]
    assert body.decode()[:20] in caplog.text


@pytest.mark.parametrize("status", [401, 403])
def test_the_upstream_refusing_our_key_is_a_502_and_its_text_not_logged(status, caplog):
    caplog.set_level(logging.WARNING, "gateway.upstream")
    body = orjson.dumps({"error": {"message": "Incorrect API key provided: sk-proj-****abcd.",
                                   "type": "invalid_request_error", "code": "invalid_api_key"}})
    assert error_of(upstream_error(status, "application/json", body)) == (502, {
        "message": "The upstream refused the gateway's credentials.", "type": "server_error",
        "param": None, "code": "upstream_auth_error"})
    assert "sk-proj" not in caplog.text


def test_the_logged_text_is_truncated(caplog):
    caplog.set_level(logging.WARNING, "gateway.upstream")
    body = orjson.dumps({"error": {"message": "x" * 10_000, "type": "server_error"}})
    upstream_error(500, "application/json", body)
    assert "x" * LOGGED_CHARS in caplog.text and "x" * (LOGGED_CHARS + 1) not in caplog.text


def test_the_upstreams_rate_limit_headers_are_never_returned():
    assert not [h for h in RETURNED_HEADERS if h.lower().startswith("x-ratelimit")]

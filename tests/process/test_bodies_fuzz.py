"""No body makes a 500: a hypothesis fuzz of JSON types over every JSON route, through a real
`python gateway.py` (and a `--demo` one, the only kind that serves /gateway/demo-token).

Each example takes a valid request of its route and replaces the values at one to three random
paths (the root included) with values of other JSON types: null, booleans, integers (huge ones
too), floats, strings, arrays, objects, and nesting thousands of levels deep; sometimes it adds
an unknown field as well. Every answer must be below 500, OpenAI-shaped when it is an error,
and the process's log must hold no traceback.

The examples are derandomized (the same ones on every run, no example database), so a failure
in CI is a failure on every machine.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import re
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openai_gateway.identity.keys import hash_key

from ..conftest import ORIGIN, GatewayProcess
from ..support.jwks_server import (  # noqa: F401  (fixtures)
    CAPTCHA_SECRET,
    siteverify_fixture,
    siteverify_url_fixture,
)

TOKEN_SECRET = "gw-token-SECRET-fuzz-0b7e3c9a5d1f2e4a6c8d-do-not-leak"
CLIENT_KEY = "gw-client-SECRET-fuzz-backend-91ab3f"
ENV = {"GW_TOKEN_SECRET": TOKEN_SECRET, "GW_CAPTCHA_SECRET": CAPTCHA_SECRET}
#: Examples per case: the whole file runs in about twenty seconds.
EXAMPLES = 250
IMAGE = "https://images.example/cat.png"

#: A valid request of each route, touching as many of the fields the gateway reads as it can.
VALID = {
    "/v1/chat/completions": {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "name": "ana", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "look", "arguments": "{\"q\": \"cat\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"}],
        "tools": [{"type": "function", "function": {
            "name": "look", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": "auto", "response_format": {"type": "text"},
        "prediction": {"type": "content", "content": "A cat."},
        "max_completion_tokens": 16, "n": 1, "service_tier": "auto", "temperature": 0.5,
        "stream": False, "stream_options": {"include_usage": True},
        "metadata": {"app": "fuzz"}, "user": "u-1", "seed": 7, "logit_bias": {"50256": -100},
    },
    "/v1/completions": {
        "model": "gpt-4o-mini", "prompt": ["Say hi", [1, 2, 3]], "suffix": "bye",
        "max_tokens": 16, "n": 1, "best_of": 1, "stream": True,
        "stream_options": {"include_usage": False}, "echo": False, "logprobs": None,
    },
    "/v1/embeddings": {
        "model": "text-embedding-3-small", "input": ["one", "two", [5, 6]], "dimensions": 8,
        "encoding_format": "float", "user": "u-1",
    },
    "/v1/responses": {
        "model": "gpt-4o-mini", "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                         {"type": "input_image", "image_url": IMAGE,
                                          "detail": "auto"}]},
            {"type": "function_call", "call_id": "c1", "name": "look", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "a cat"}],
        "tools": [{"type": "function", "name": "look", "parameters": {"type": "object"}}],
        "text": {"format": {"type": "text"}}, "reasoning": {"effort": "low"},
        "max_output_tokens": 16, "store": False, "stream": False, "metadata": {"app": "fuzz"},
    },
    "/v1/moderations": {
        "model": "omni-moderation-latest",
        "input": [{"type": "text", "text": "hello"},
                  {"type": "image_url", "image_url": {"url": IMAGE}}],
    },
    "/gateway/tokens": {"user": "u-1", "tier": "free", "ttl": 60},
    "/gateway/session": {"captcha": "XXXX.DUMMY.TOKEN.XXXX-widget-response"},
}
#: (route, valid request): each route as above, and the routes that stream streaming too.
CASES = [*VALID.items(),
         *((route, {**VALID[route], "stream": True})
           for route in ("/v1/chat/completions", "/v1/responses")),
         ("/v1/completions", {**VALID["/v1/completions"], "stream": False})]
DEMO_VALID = {"/gateway/demo-token": {"user": "ana", "tier": "free"}}

# --- the values put in ------------------------------------------------------------------------

#: Stands for nesting too deep to build as a Python value; swapped in after serialisation.
_DEEP = re.compile(r'"@@deep:(\d+):([ao])@@"')
deep = st.builds(lambda n, kind: f"@@deep:{n}:{kind}@@",
                 st.sampled_from([64, 254, 255, 1100, 5000]), st.sampled_from("ao"))
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-2**70, 2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, 10**30, -2**63 - 1, 10**400]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12), st.sampled_from(["", "user", "function", "text", "\x00", "\ud7ff"]))
values = st.one_of(
    st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6),
    deep)


def paths(value, here=()) -> list[tuple]:
    """Every path into a JSON value, the root (()) first."""
    out = [here]
    if isinstance(value, dict):
        for key, inner in value.items():
            out += paths(inner, (*here, key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            out += paths(inner, (*here, i))
    return out


def replaced(doc, path: tuple, new):
    """`doc` with the value at `path` replaced (unchanged when the path no longer exists)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(doc, dict) and head in doc:
        return {**doc, head: replaced(doc[head], rest, new)}
    if isinstance(doc, list) and isinstance(head, int) and head < len(doc):
        return [*doc[:head], replaced(doc[head], rest, new), *doc[head + 1:]]
    return doc


#: One value of each JSON type, and the awkward ones: put at every path by the sweep.
EACH_TYPE = [None, True, False, 0, -1, 2**64, 10**30, 1.5, "", "x", "\ud800", [], ["x"], {},
             {"x": 1}, "@@deep:300:a@@", "@@deep:3000:o@@"]


def serialised(doc) -> bytes:
    text = json.dumps(doc)
    return _DEEP.sub(lambda m: ("[" * int(m[1]) + "]" * int(m[1])) if m[2] == "a"
                     else '{"d":' * int(m[1]) + "0" + "}" * int(m[1]), text).encode()


@st.composite
def mutated(draw, valid: dict) -> bytes:
    doc = valid
    where = paths(valid)
    for path in draw(st.lists(st.sampled_from(where), min_size=1, max_size=3)):
        doc = replaced(doc, path, draw(values))
    if draw(st.booleans()) and isinstance(doc, dict):
        doc = {**doc, draw(st.text(min_size=1, max_size=8)): draw(values)}
    return serialised(doc)


# --- one route's fuzz, run in a thread (the fake upstream and siteverify serve on the loop) ---


def post(url: str, route: str, raw: bytes, headers: dict) -> tuple[int, str, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", route, body=raw, headers={
            "Content-Type": "application/json", "Origin": ORIGIN, **headers})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def fuzz(url: str, route: str, valid: dict, headers: dict) -> dict[int, int]:
    """Runs the route's examples; returns how many answers had each status."""
    statuses: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(raw=mutated(valid))
    def example(raw: bytes) -> None:
        status, ctype, body = post(url, route, raw, headers)
        statuses[status] = statuses.get(status, 0) + 1
        check(route, raw, status, ctype, body)

    status, _, body = post(url, route, json.dumps(valid).encode(), headers)
    assert status == 200, (route, status, body[:300])  # the starting point is valid
    example()
    return statuses


def check(route: str, raw: bytes, status: int, ctype: str, body: bytes) -> None:
    """An answer below 500, and an error in OpenAI's shape."""
    assert status < 500, (route, status, body[:300], raw[:300])
    if status >= 400:
        assert ctype.startswith("application/json"), (route, status, ctype, raw[:300])
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}, (route, error, raw[:300])
        assert isinstance(error["message"], str) and error["message"], (route, raw[:300])


def sweep(url: str, route: str, valid: dict, headers: dict) -> None:
    """Every path of the valid request, one at a time, set to each value of EACH_TYPE."""
    for path in paths(valid):
        for value in EACH_TYPE:
            raw = serialised(replaced(valid, path, value))
            check(route, raw, *post(url, route, raw, headers))


def assert_clean(log: str) -> None:
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


@pytest.fixture
async def gateway(gateway_process, siteverify_url):
    return await gateway_process({
        "rate_limit": {"requests": ["100000/minute"]},
        "validation": {"allowed_models": ["gpt-4o-mini", "text-embedding-3-small",
                                          "omni-moderation-latest"]},
        "auth": {"tokens": {"secret_env": "GW_TOKEN_SECRET"},
                 "sessions": {"captcha_verify_url": siteverify_url,
                              "captcha_secret_env": "GW_CAPTCHA_SECRET",
                              "requests": ["100000/minute"]}},
        "clients": [{"name": "backend", "key_sha256": hash_key(CLIENT_KEY)}],
        "tiers": {"free": {"requests": ["100000/minute"]}},
    }, env=ENV)


async def test_no_value_of_any_type_at_any_path_makes_a_500(gateway):
    for route, valid in CASES:
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"} if route == "/gateway/tokens" else {}
        await asyncio.to_thread(sweep, gateway.url, route, valid, headers)
    gateway.stop()
    assert_clean(gateway.log())


async def test_no_body_makes_a_500(gateway):
    for route, valid in CASES:
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"} if route == "/gateway/tokens" else {}
        statuses = await asyncio.to_thread(fuzz, gateway.url, route, valid, headers)
        # Refused and answered both: the fuzz reaches the upstream, not only the validator.
        assert 400 in statuses and (route.startswith("/gateway/") or 200 in statuses), statuses
    gateway.stop()
    assert_clean(gateway.log())


async def test_no_demo_token_body_makes_a_500(tmp_path):
    gp = GatewayProcess({"log": {"format": "json"}}, tmp_path, args=("--demo",))
    gp.env.pop("OPENAI_API_KEY")
    try:
        await gp.start().wait_ready()
        route = "/gateway/demo-token"
        await asyncio.to_thread(sweep, gp.url, route, DEMO_VALID[route], {})
        statuses = await asyncio.to_thread(fuzz, gp.url, route, DEMO_VALID[route], {})
        assert 400 in statuses and 200 in statuses, statuses
    finally:
        gp.stop()
    assert_clean(gp.log())

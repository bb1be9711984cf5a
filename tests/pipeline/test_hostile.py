"""Property-based hostile input (hypothesis): never a 500, a traceback, or a leaked request."""
from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openai_gateway.config.settings import ValidationSettings
from openai_gateway.errors import GatewayError
from openai_gateway.pipeline.validation import REQUIRED_INPUT, Validator
from openai_gateway.policy import forward_body

ROUTES = sorted(REQUIRED_INPUT)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)  # JSON holds neither (orjson: null)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30)
#: Bodies that look like requests (the interesting cases) and anything at all.
plausible = st.fixed_dictionaries(
    {"model": st.one_of(st.just("gpt-4o-mini"), json_values)},
    optional={"messages": st.one_of(
                  st.lists(st.fixed_dictionaries(
                      {"role": st.sampled_from(["user", "system", "x", 1]),
                       "content": json_values}), max_size=4), json_values),
              "input": json_values, "prompt": json_values, "stream": json_values,
              "max_tokens": json_values, "n": json_values, "temperature": json_values,
              "stream_options": json_values, "max_completion_tokens": json_values})
bodies = st.one_of(plausible, json_values)
VALIDATOR = Validator(ValidationSettings(allowed_models=("gpt-4o-mini",)))


@settings(max_examples=400, deadline=None)
@given(route=st.sampled_from(ROUTES), body=bodies)
def test_validator_only_raises_its_own_errors(route, body):
    raw = orjson.dumps(body)
    try:
        parsed = VALIDATOR.check(route, raw)
    except GatewayError as exc:
        assert exc.status in (400,) and exc.message
        return
    # Whatever passed has the shape the proxy relies on.
    assert isinstance(parsed.body, dict) and isinstance(parsed.stream, bool)
    assert parsed.input_chars <= 10_000


@settings(max_examples=300, deadline=None)
@given(route=st.sampled_from(ROUTES), body=plausible, stream_usage=st.booleans())
def test_what_goes_upstream_means_what_was_validated(route, body, stream_usage):
    raw = orjson.dumps(body)
    try:
        parsed = VALIDATOR.check(route, raw)
    except GatewayError:
        return
    sent, _ = forward_body(parsed, raw, stream_usage=stream_usage)
    got = orjson.loads(sent)
    options = got.pop("stream_options", None)
    expected = {**body, **parsed.additions}
    original = expected.pop("stream_options", None)
    assert got == expected  # the client's fields unchanged, plus the gateway's additions
    assert options == original or options["include_usage"] is True
    again = VALIDATOR.check(route, sent)  # the forwarded bytes pass the same policy ...
    assert (again.model, again.stream) == (parsed.model, parsed.stream)
    assert again.max_tokens == parsed.max_tokens  # ... with the cap now explicit
    assert again.additions == {}


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200))
def test_validator_never_crashes_on_bytes(raw):
    try:
        VALIDATOR.check("/v1/chat/completions", raw)
    except GatewayError as exc:
        assert exc.status == 400


path_chars = st.sampled_from(list("abcv1/.%2eEfF-_~?#;=&") + ["%2f", "%2F", "..", "//", "%00",
                                                           "chat", "completions", "%"])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.lists(path_chars, max_size=12).map("".join),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
       body=bodies,
       headers=st.dictionaries(
           st.sampled_from(["X-Forwarded-For", "Origin", "Authorization", "Cache-Control",
                            "Content-Type", "X-Real-IP", "OpenAI-Organization", "Accept"]),
           st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
           max_size=4))
async def test_any_request_gets_a_clean_answer(gw, fake, path, method, body, headers):
    fake.seen.clear()
    # A leading "//" would make the test client read a host name; test_app covers it.
    resp = await gw.request(method, "/" + path.lstrip("/"), data=orjson.dumps(body),
                            headers=headers)
    text = await resp.text()
    assert resp.status != 500 and "Traceback" not in text
    if resp.status >= 400 and resp.status not in (502, 504):
        # Refused requests never reached the upstream...
        assert fake.posts == []
        # ...and are answered in OpenAI's shape (CORS preflight refusals are aiohttp-cors').
        if method != "OPTIONS":
            assert set(orjson.loads(text)["error"]) == {"message", "type", "param", "code"}
    for seen in fake.posts:  # anything forwarded went to a real route and passed validation
        assert seen.path in ROUTES
        VALIDATOR.check(seen.path, seen.body)

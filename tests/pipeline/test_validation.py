"""Validator.check: every rule, its status/param/code, and the OpenAI-shaped body."""
from __future__ import annotations

import orjson
import pytest

from openai_gateway.config.settings import ValidationSettings
from openai_gateway.errors import GatewayError, InvalidRequest, ModelNotAllowed
from openai_gateway.pipeline.validation import ParsedRequest, Validator

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
MODERATIONS = "/v1/moderations"

SETTINGS = ValidationSettings(allowed_models=("gpt-4o-mini", "text-embedding-3-small"),
                              max_input_chars=100, max_tokens=50, max_n=2, max_messages=3)
V = Validator(SETTINGS)
MSG = [{"role": "user", "content": "hi"}]
GOOD = {
    CHAT: {"model": "gpt-4o-mini", "messages": MSG},
    COMPLETIONS: {"model": "gpt-4o-mini", "prompt": "hi"},
    EMBEDDINGS: {"model": "text-embedding-3-small", "input": "hi"},
    RESPONSES: {"model": "gpt-4o-mini", "input": "hi"},
    MODERATIONS: {"input": "hi"},
}
ALL_ROUTES = list(GOOD)


def raw(body) -> bytes:
    return body if isinstance(body, bytes) else orjson.dumps(body)


def refused(route: str, body, validator: Validator = V, **kw) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        validator.check(route, raw(body), **kw)
    return info.value


def rendered(err: GatewayError) -> tuple[int, dict]:
    resp = err.response()
    assert resp.content_type == "application/json"
    return resp.status, orjson.loads(resp.body)


#: A field value meaning "leave this field out".
DROP = object()


def with_(route: str, **fields) -> dict:
    body = dict(GOOD[route], **fields)
    return {k: v for k, v in body.items() if v is not DROP}


# --- the body as a whole --------------------------------------------------------------------


@pytest.mark.parametrize("route", ALL_ROUTES)
@pytest.mark.parametrize("body, message", [
    (b"{not json", "We could not parse the JSON body of your request. Send a JSON object."),
    (b"", "We could not parse the JSON body of your request. Send a JSON object."),
    (b"\xff\xfe", "We could not parse the JSON body of your request. Send a JSON object."),
    (b"[1, 2]", "The request body must be a JSON object."),
    (b'"hello"', "The request body must be a JSON object."),
    (b"null", "The request body must be a JSON object."),
    (b"42", "The request body must be a JSON object."),
])
def test_body_must_be_a_json_object(route, body, message):
    err = refused(route, body)
    assert type(err) is InvalidRequest
    assert rendered(err) == (400, {"error": {"message": message, "type": "invalid_request_error",
                                             "param": None, "code": None}})


#: What each route's good body makes the gateway add upstream and reserve per choice.
ADDED = {
    CHAT: ({"max_completion_tokens": 50}, 50),
    COMPLETIONS: ({"max_tokens": 50}, 50),
    EMBEDDINGS: ({}, 0),
    RESPONSES: ({"max_output_tokens": 50, "store": False}, 50),
    MODERATIONS: ({}, 0),
}


@pytest.mark.parametrize("route", ALL_ROUTES)
def test_good_bodies_pass(route):
    parsed = V.check(route, raw(GOOD[route]))
    additions, cap = ADDED[route]
    assert parsed == ParsedRequest(GOOD[route], GOOD[route].get("model"), False, 2, cap, 1,
                                   additions, route)


# --- model --------------------------------------------------------------------------------


@pytest.mark.parametrize("route", [CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES])
@pytest.mark.parametrize("model, message", [
    (DROP, "Missing required parameter: 'model'."),
    (None, "Missing required parameter: 'model'."),
    (5, "Invalid type for 'model': expected a string."),
    (["gpt-4o-mini"], "Invalid type for 'model': expected a string."),
])
def test_model_required_and_a_string(route, model, message):
    err = refused(route, with_(route, model=model))
    assert rendered(err) == (400, {"error": {"message": message, "type": "invalid_request_error",
                                             "param": "model", "code": None}})


def test_moderations_model_is_optional_but_typed():
    assert V.check(MODERATIONS, raw({"input": "x"})).model is None
    assert refused(MODERATIONS, {"input": "x", "model": 1}).param == "model"


@pytest.mark.parametrize("route", ALL_ROUTES)
def test_model_outside_the_allowlist(route):
    err = refused(route, with_(route, model="gpt-4o"))
    assert type(err) is ModelNotAllowed
    assert rendered(err) == (400, {"error": {
        "message": "The model 'gpt-4o' is not available through this gateway.",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})


def test_long_model_name_is_truncated_in_the_message():
    err = refused(CHAT, with_(CHAT, model="m" * 10_000))
    assert err.message == f"The model '{'m' * 100}' is not available through this gateway."


@pytest.mark.parametrize("model", ["gpt-4o", "anything/at-all", "llama3:8b"])
def test_empty_allowlist_allows_any_model(model):
    v = Validator(ValidationSettings(allowed_models=()))
    assert v.check(CHAT, raw(with_(CHAT, model=model))).model == model


@pytest.mark.parametrize("model, allowed", [("gpt-4o", True), ("gpt-4o-mini", False)])
def test_per_client_models_replace_the_allowlist(model, allowed):
    body = raw(with_(CHAT, model=model))
    models = frozenset({"gpt-4o"})
    if allowed:
        assert V.check(CHAT, body, models).model == model
    else:
        assert refused(CHAT, body, allowed_models=models).code == "model_not_found"


# --- messages -----------------------------------------------------------------------------


ROLES = "expected one of assistant, developer, function, system, tool, user."


@pytest.mark.parametrize("messages, param, message", [
    (DROP, "messages", "Missing required parameter: 'messages'."),
    (None, "messages", "Missing required parameter: 'messages'."),
    ([], "messages", "'messages' must be a non-empty array of message objects."),
    ("hi", "messages", "'messages' must be a non-empty array of message objects."),
    ({"role": "user", "content": "hi"}, "messages",
     "'messages' must be a non-empty array of message objects."),
    (MSG * 4, "messages", "'messages' has 4 entries; this gateway allows at most 3."),
    (["hi"], "messages[0]", "'messages[0]' must be an object."),
    (MSG + [None], "messages[1]", "'messages[1]' must be an object."),
    ([{"role": "robot", "content": "x"}], "messages[0].role",
     f"Invalid value for 'messages[0].role': {ROLES}"),
    (MSG + [{"content": "x"}], "messages[1].role",
     f"Invalid value for 'messages[1].role': {ROLES}"),
    # Unhashable or absent roles are refused like unknown ones (never a lookup that raises).
    ([{"role": ["user"], "content": "x"}], "messages[0].role",
     f"Invalid value for 'messages[0].role': {ROLES}"),
    ([{"role": {}, "content": "x"}], "messages[0].role",
     f"Invalid value for 'messages[0].role': {ROLES}"),
    ([{"role": None, "content": "x"}], "messages[0].role",
     f"Invalid value for 'messages[0].role': {ROLES}"),
    ([{"role": "user", "content": 5}], "messages[0].content",
     "Invalid type for 'messages[0].content': expected a string or an array."),
    ([{"role": "user", "content": {"text": "x"}}], "messages[0].content",
     "Invalid type for 'messages[0].content': expected a string or an array."),
    ([{"role": "user", "content": [1.5]}], "messages[0].content[0]",
     "Invalid type for 'messages[0].content[0]'."),
])
def test_bad_messages(messages, param, message):
    err = refused(CHAT, with_(CHAT, messages=messages))
    assert rendered(err) == (400, {"error": {"message": message, "type": "invalid_request_error",
                                             "param": param, "code": None}})


@pytest.mark.parametrize("role", ["system", "developer", "user", "assistant", "tool", "function"])
def test_every_chat_role_is_accepted(role):
    body = with_(CHAT, messages=[{"role": role, "content": "x"}])
    assert V.check(CHAT, raw(body)).input_chars == 1


@pytest.mark.parametrize("messages, chars", [
    (MSG * 3, 6),  # exactly the message cap
    ([{"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}], 0),
    ([{"role": "user", "content": [{"type": "text", "text": "abc"},
                                    {"type": "image_url", "image_url": {"url": "u" * 500}},
                                    {"type": "text", "text": "de"}]}], 5),
    ([{"role": "system", "content": "ab"}, {"role": "user", "content": ["cd", "e"]}], 5),
    ([{"role": "user", "content": "x" * 100}], 100),  # exactly the input cap
])
def test_chat_input_characters(messages, chars):
    assert V.check(CHAT, raw(with_(CHAT, messages=messages))).input_chars == chars


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "x" * 101}],
    [{"role": "system", "content": "x" * 60}, {"role": "user", "content": "y" * 41}],
    [{"role": "user", "content": [{"type": "text", "text": "x" * 50},
                                  {"type": "image_url", "image_url": {"url": "u"}},
                                  {"type": "text", "text": "y" * 51}]}],
])
def test_text_parts_count_toward_max_input_chars(messages):
    err = refused(CHAT, with_(CHAT, messages=messages))
    assert rendered(err) == (400, {"error": {
        "message": "The input is too long: 101 characters, this gateway allows 100.",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})


# --- the other routes' input ------------------------------------------------------------------


@pytest.mark.parametrize("route, field", [(COMPLETIONS, "prompt"), (EMBEDDINGS, "input"),
                                          (RESPONSES, "input"), (MODERATIONS, "input")])
@pytest.mark.parametrize("value, message", [
    (DROP, "Missing required parameter: '{field}'."),
    (None, "Missing required parameter: '{field}'."),
    (5, "Invalid type for '{field}': expected a string or an array."),
    ({"text": "x"}, "Invalid type for '{field}': expected a string or an array."),
    ("x" * 101, "The input is too long: 101 characters, this gateway allows 100."),
])
def test_bad_input(route, field, value, message):
    err = refused(route, with_(route, **{field: value}))
    assert err.status == 400 and err.param == field
    assert err.message == message.format(field=field)
    assert err.code == ("context_length_exceeded" if "too long" in message else None)


@pytest.mark.parametrize("route, field", [(COMPLETIONS, "prompt"), (EMBEDDINGS, "input"),
                                          (MODERATIONS, "input")])
@pytest.mark.parametrize("value, at", [([True], 0), (["ok", 1.5], 1), (["ok", None], 1)])
def test_bad_input_element(route, field, value, at):
    err = refused(route, with_(route, **{field: value}))
    assert (err.status, err.param, err.message) == (
        400, f"{field}[{at}]", f"Invalid type for '{field}[{at}]'.")


@pytest.mark.parametrize("value, param, message", [
    ([True], "input[0]", "Invalid type for 'input[0]': expected an object."),
    (["ok"], "input[0]", "Invalid type for 'input[0]': expected an object."),
    ([{"role": "user", "content": "ok"}, 1.5], "input[1]",
     "Invalid type for 'input[1]': expected an object."),
])
def test_bad_responses_input_item(value, param, message):
    err = refused(RESPONSES, with_(RESPONSES, input=value))
    assert (err.status, err.param, err.message) == (400, param, message)


def test_bad_input_is_refused_before_its_size_is_counted():
    err = refused(EMBEDDINGS, with_(EMBEDDINGS, input=["x" * 500, 1.5]))
    assert (err.param, err.code) == ("input[1]", None)


@pytest.mark.parametrize("route, value, chars", [
    (EMBEDDINGS, [1, 2, 3], 12),  # token ids: four characters each
    (EMBEDDINGS, [[1, 2], [3]], 12),
    (EMBEDDINGS, ["ab", "c"], 3),
    (EMBEDDINGS, [], 0),
    (COMPLETIONS, [[1, 2, 3, 4, 5]], 20),
    (RESPONSES, [{"role": "user", "content": "abc"},
                 {"role": "user", "content": [{"type": "input_text", "text": "de"},
                                              {"type": "input_image", "image_url": "u"}]}], 5),
    (MODERATIONS, ["abc", "de"], 5),
])
def test_input_characters(route, value, chars):
    field = "prompt" if route == COMPLETIONS else "input"
    assert V.check(route, raw(with_(route, **{field: value}))).input_chars == chars


def test_token_ids_count_toward_the_cap():
    err = refused(EMBEDDINGS, with_(EMBEDDINGS, input=list(range(26))))  # 26 * 4 = 104
    assert (err.param, err.code) == ("input", "context_length_exceeded")


def test_responses_instructions_count():
    body = with_(RESPONSES, input="x" * 60, instructions="y" * 40)
    assert V.check(RESPONSES, raw(body)).input_chars == 100
    err = refused(RESPONSES, dict(body, instructions="y" * 41))
    assert err.message == "The input is too long: 101 characters, this gateway allows 100."


# --- length, n, stream --------------------------------------------------------------------


@pytest.mark.parametrize("route, field", [(CHAT, "max_tokens"), (CHAT, "max_completion_tokens"),
                                          (COMPLETIONS, "max_tokens"),
                                          (RESPONSES, "max_output_tokens")])
@pytest.mark.parametrize("value, message", [
    (51, "'{field}' is 51; this gateway allows at most 50."),
    (10 ** 12, "'{field}' is 1000000000000; this gateway allows at most 50."),
    (0, "Invalid '{field}': expected a positive integer."),
    (-5, "Invalid '{field}': expected a positive integer."),
    (True, "Invalid '{field}': expected a positive integer."),
    (10.0, "Invalid '{field}': expected a positive integer."),
    ("10", "Invalid '{field}': expected a positive integer."),
])
def test_max_tokens_caps_and_types(route, field, value, message):
    err = refused(route, with_(route, **{field: value}))
    assert rendered(err) == (400, {"error": {"message": message.format(field=field),
                                             "type": "invalid_request_error", "param": field,
                                             "code": None}})


@pytest.mark.parametrize("route, field", [(CHAT, "max_tokens"), (CHAT, "max_completion_tokens"),
                                          (COMPLETIONS, "max_tokens"),
                                          (RESPONSES, "max_output_tokens")])
@pytest.mark.parametrize("value", [1, 50])
def test_the_clients_limit_within_the_cap_is_kept(route, field, value):
    parsed = V.check(route, raw(with_(route, **{field: value})))
    assert parsed.max_tokens == value
    assert not set(parsed.additions) & {"max_tokens", "max_completion_tokens",
                                        "max_output_tokens"}  # nothing to add


@pytest.mark.parametrize("route, field", [(CHAT, "max_completion_tokens"),
                                          (COMPLETIONS, "max_tokens"),
                                          (RESPONSES, "max_output_tokens")])
def test_without_a_limit_the_gateway_sends_its_cap(route, field):
    parsed = V.check(route, raw(GOOD[route]))
    assert parsed.max_tokens == 50 and parsed.additions[field] == 50


@pytest.mark.parametrize("route, field", [(RESPONSES, "max_tokens"), (COMPLETIONS,
                                          "max_completion_tokens"), (CHAT, "max_output_tokens")])
def test_another_routes_limit_field_does_not_count(route, field):
    """An upstream that ignores an unknown field would generate without any bound."""
    parsed = V.check(route, raw(with_(route, **{field: 1})))
    assert parsed.max_tokens == 50 and 50 in parsed.additions.values()


def test_both_chat_limits_reserve_the_larger():
    parsed = V.check(CHAT, raw(with_(CHAT, max_tokens=10, max_completion_tokens=30)))
    assert (parsed.max_tokens, parsed.additions) == (30, {})


@pytest.mark.parametrize("value, message", [
    (3, "'n' is 3; this gateway allows at most 2."),
    (0, "Invalid 'n': expected a positive integer."),
    (True, "Invalid 'n': expected a positive integer."),
    (2.0, "Invalid 'n': expected a positive integer."),
])
def test_n_cap_and_type(value, message):
    err = refused(CHAT, with_(CHAT, n=value))
    assert (err.status, err.param, err.code, err.message) == (400, "n", None, message)


@pytest.mark.parametrize("value", [1, 2, None])
def test_n_within_the_cap(value):
    assert V.check(CHAT, raw(with_(CHAT, n=value))).body["n"] == value


@pytest.mark.parametrize("route", ALL_ROUTES)
@pytest.mark.parametrize("value", ["true", 1, 0, [], {}])
def test_stream_must_be_a_boolean(route, value):
    err = refused(route, with_(route, stream=value))
    assert rendered(err) == (400, {"error": {
        "message": "Invalid type for 'stream': expected a boolean.",
        "type": "invalid_request_error", "param": "stream", "code": None}})


@pytest.mark.parametrize("options, param, message", [
    (True, "stream_options", "Invalid type for 'stream_options': expected an object."),
    ([], "stream_options", "Invalid type for 'stream_options': expected an object."),
    ("x", "stream_options", "Invalid type for 'stream_options': expected an object."),
    ({"include_usage": 1}, "stream_options.include_usage",
     "Invalid type for 'stream_options.include_usage': expected a boolean."),
    ({"include_usage": []}, "stream_options.include_usage",
     "Invalid type for 'stream_options.include_usage': expected a boolean."),
])
def test_stream_options_must_be_an_object_of_booleans(options, param, message):
    """The gateway reads and extends `stream_options` (the usage chunk): it is checked."""
    err = refused(CHAT, with_(CHAT, stream=True, stream_options=options))
    assert rendered(err) == (400, {"error": {"message": message, "type": "invalid_request_error",
                                             "param": param, "code": None}})


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), (None, False)])
def test_stream_flag(value, expected):
    assert V.check(CHAT, raw(with_(CHAT, stream=value))).stream is expected


def test_body_is_returned_as_parsed():
    body = with_(CHAT, temperature=0, seed=7, tools=[{"type": "function"}], max_tokens=9)
    parsed = V.check(CHAT, raw(body))
    tools_chars = len(b'[{"type":"function"}]')  # definitions count as serialised
    assert parsed == ParsedRequest(body, "gpt-4o-mini", False, 2 + tools_chars, 9, 1, {}, CHAT)


@pytest.mark.parametrize("depth, ok", [(253, True), (254, False), (400, False)])
def test_nesting_that_cannot_be_serialised_again_is_refused(depth, ok):
    """The body object plus `depth` arrays: orjson writes 254 levels, parses more."""
    body = (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"metadata":'
            + b"[" * depth + b"]" * depth + b"}")
    if ok:
        parsed = V.check(CHAT, body)
        orjson.dumps(parsed.body, option=orjson.OPT_SORT_KEYS)  # the cache key can be made
    else:
        err = refused(CHAT, body)
        assert "nested too deeply" in err.message and err.param == "metadata"


@pytest.mark.parametrize("body, param", [
    # Past 1024 levels orjson stops reading: still "too deep", naming the member.
    (b'{"model":"gpt-4o-mini","messages":' + b"[" * 5000 + b"]" * 5000 + b"}", "messages"),
    (b'{"model":"gpt-4o-mini","a\\"b":' + b'{"x":' * 5000 + b"1" + b"}" * 5000 + b"}",
     'a"b'),
    (b'{"a":"[[[[","b":' + b"[" * 300 + b"]" * 300 + b"}", "b"),  # brackets in strings: text
    (b"[" * 5000 + b"]" * 5000, None),  # the body itself: nothing to name
])
def test_deep_nesting_is_a_400_naming_the_member(body, param):
    err = refused(CHAT, body)
    assert rendered(err)[0] == 400 and err.param == param
    assert "nested too deeply" in err.message and "254 levels" in err.message


def test_brackets_inside_strings_only_cost_the_exact_test():
    body = {"model": "gpt-4o-mini", "messages": MSG, "metadata": {"note": "[{" * 300}}
    assert V.check(CHAT, orjson.dumps(body)).body == body

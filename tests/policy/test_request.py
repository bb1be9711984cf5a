"""The request policy's pure parts: strict JSON, the output cap and what goes upstream, every
input counted, content parts, and the costly knobs, each refusal naming its param."""
from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openai_gateway.config.settings import ValidationSettings
from openai_gateway.policy import ParsedRequest, Refusal, RequestPolicy, forward_body
from openai_gateway.policy.jsonbody import parse_object
from openai_gateway.policy.usage import prompt_estimate

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
MODERATIONS = "/v1/moderations"
BIG = ValidationSettings(allowed_models=(), max_input_chars=1_000_000)
POLICY = RequestPolicy(BIG)
MSG = [{"role": "user", "content": "hi"}]


def check(route: str, body, policy: RequestPolicy = POLICY) -> ParsedRequest:
    return policy.check(route, body if isinstance(body, bytes) else orjson.dumps(body))


def refusal(route: str, body, policy: RequestPolicy = POLICY) -> Refusal:
    with pytest.raises(Refusal) as info:
        check(route, body, policy)
    return info.value


def chat(**fields) -> dict:
    return {"model": "gpt-4o-mini", "messages": MSG, **fields}


def responses(**fields) -> dict:
    return {"model": "gpt-4o-mini", "input": "hi", **fields}


# --- strict JSON: duplicate keys ------------------------------------------------------------


@pytest.mark.parametrize("raw, key", [
    (b'{"model":"o3","model":"gpt-4o-mini","messages":[]}', "model"),
    (b'{"model": "o3", "messages": [], "model": "gpt-4o-mini"}', "model"),
    (b'{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"a"}],'
     b'"max_tokens":4000}', "max_tokens"),
    (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"short",'
     b'"content":"long"}]}', "content"),
    (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"a"}],"tools":[{"type":'
     b'"function","function":{"name":"f","parameters":{"a":1,"a":2}}}]}', "a"),
    (b'{"model":"gpt-4o-mini","\\u006dodel":"o3","messages":[]}', "model"),  # escaped name
    (b'{\n  "model": "x",\n  "model": "y"\n}', "model"),
    (b'{"a":{},"a":{}}', "a"),
])
def test_a_duplicate_key_anywhere_is_refused(raw, key):
    err = refusal(CHAT, raw)
    assert err.param == key
    assert err.message == (f"The key '{key}' appears more than once in an object of the "
                           "request body; send each key once.")


@pytest.mark.parametrize("filler", [
    '"x":"\\u003a"',   # one escaped colon hides one structural colon ...
    '"x":"\\u003A"',
    '"x":"a\\\\u003a"',  # a literal backslash before "u003a" is no colon at all
])
def test_escaped_colons_cannot_hide_a_duplicate(filler):
    raw = ('{"model":"a",' + filler + ',"model":"b","messages":[]}').encode()
    assert refusal(CHAT, raw).param == "model"


@pytest.mark.parametrize("body", [
    {"a": "x:y", "b": "\u003a", "c": ["::", {"d": ":"}]},
    {"text": "Note: 12:30, see https://example.com/a:b", "k": "\\u003a"},
    {"nested": {"a": {"a": {"a": 1}}}, "a": 2},  # equal keys in different objects are fine
])
@pytest.mark.parametrize("dump", [
    orjson.dumps,
    lambda b: json.dumps(b).encode(),  # ", " and ": " separators, ASCII escapes
    lambda b: json.dumps(b, indent=2, ensure_ascii=False).encode(),
    lambda b: json.dumps(b).replace(":", "\\u003a").encode(),  # escapes, some not in strings
])
def test_no_duplicate_no_refusal(body, dump):
    raw = dump(body)
    try:
        assert parse_object(raw) == body
    except json.JSONDecodeError:  # the last dump may break the JSON itself: not our case
        pass
    except Refusal as err:
        assert err.message.startswith("We could not parse")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20)
formats = st.sampled_from([
    lambda v: orjson.dumps(v),
    lambda v: json.dumps(v).encode(),
    lambda v: json.dumps(v, indent=1).encode(),
    lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode(),
])


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(st.text(max_size=4), json_values, max_size=5), fmt=formats)
def test_any_object_without_duplicates_parses_as_itself(body, fmt):
    assert parse_object(fmt(body)) == body


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(st.text(max_size=4), json_values, min_size=1, max_size=5),
       value=json_values, fmt=formats, data=st.data())
def test_any_repeated_key_is_found(body, value, fmt, data):
    key = data.draw(st.sampled_from(sorted(body)))
    raw = fmt(body)
    # Append the key a second time, as the last member of the same (root) object.
    extra = json.dumps(key).encode() + b":" + json.dumps(value).encode()
    raw = raw.rstrip()[:-1].rstrip() + b"," + extra + b"}"
    with pytest.raises(Refusal) as info:
        parse_object(raw)
    assert info.value.param == key[:100]


@pytest.mark.parametrize("depth, ok", [(253, True), (254, False)])
def test_nesting_that_cannot_be_written_again_is_refused(depth, ok):
    raw = b'{"model":"m","messages":[],"m":' + b"[" * depth + b"]" * depth + b"}"
    if ok:
        assert parse_object(raw)["m"] is not None
    else:
        with pytest.raises(Refusal, match="nested too deeply") as info:
            parse_object(raw)
        assert info.value.param == "m"


# --- the output cap, choices and the reservation ---------------------------------------------


@pytest.mark.parametrize("route, body, cap, choices, added", [
    (CHAT, chat(), 4096, 1, {"max_completion_tokens": 4096}),
    (CHAT, chat(max_tokens=100), 100, 1, {}),
    (CHAT, chat(max_completion_tokens=100, n=3), 100, 3, {}),
    (CHAT, chat(n=2), 4096, 2, {"max_completion_tokens": 4096}),
    (COMPLETIONS, {"model": "m", "prompt": "p"}, 4096, 1, {"max_tokens": 4096}),
    (COMPLETIONS, {"model": "m", "prompt": "p", "max_tokens": 7, "best_of": 4, "n": 2}, 7, 4,
     {}),
    (RESPONSES, responses(), 4096, 1, {"max_output_tokens": 4096, "store": False}),
    (RESPONSES, responses(max_output_tokens=9, store=False), 9, 1, {}),
    (EMBEDDINGS, {"model": "m", "input": "x"}, 0, 1, {}),
    (MODERATIONS, {"input": "x"}, 0, 1, {}),
])
def test_output_cap_and_choices(route, body, cap, choices, added):
    parsed = check(route, body)
    assert (parsed.max_tokens, parsed.choices, parsed.additions) == (cap, choices, added)
    assert parsed.estimate == prompt_estimate(parsed.input_chars) + cap * choices


@pytest.mark.parametrize("chars, cap, n, expected", [
    (0, 0, 1, 0), (1, 0, 1, 1), (4, 0, 1, 1), (5, 0, 1, 2), (8, 10, 1, 12), (8, 10, 4, 42),
])
def test_the_estimate_is_the_prompt_and_every_choice_cap(chars, cap, n, expected):
    assert ParsedRequest({}, "m", False, chars, cap, n).estimate == expected


def test_the_estimate_adds_what_is_not_text():
    parsed = ParsedRequest({}, "m", False, 8, 10, 2, image_tokens=1445, audio_tokens=50,
                           file_tokens=7)
    assert parsed.prompt_tokens == 2 + 1445 + 50 + 7
    assert parsed.estimate == parsed.prompt_tokens + 20


@pytest.mark.parametrize("name, value, message", [
    ("n", 5, "'n' is 5; this gateway allows at most 4."),
    ("best_of", 20, "'best_of' is 20; this gateway allows at most 4."),
    ("best_of", 0, "Invalid 'best_of': expected a positive integer."),
    ("best_of", "2", "Invalid 'best_of': expected a positive integer."),
])
def test_n_and_best_of_are_capped(name, value, message):
    err = refusal(COMPLETIONS, {"model": "m", "prompt": "p", name: value})
    assert (err.param, err.message) == (name, message)


# --- what goes upstream ----------------------------------------------------------------------


def test_nothing_added_forwards_the_raw_bytes_themselves():
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}'
    parsed = check(CHAT, raw)
    body, strip = forward_body(parsed, raw, stream_usage=True)
    assert body is raw and strip is False


@pytest.mark.parametrize("route, body, stream_usage, sent, strip", [
    (CHAT, chat(), False, {"max_completion_tokens": 4096}, False),
    (CHAT, chat(stream=True, max_tokens=5), True,
     {"stream_options": {"include_usage": True}}, True),
    (CHAT, chat(stream=True, max_tokens=5, stream_options={"include_usage": False}), True,
     {"stream_options": {"include_usage": True}}, True),
    (COMPLETIONS, {"model": "m", "prompt": "p", "stream": True}, True,
     {"max_tokens": 4096, "stream_options": {"include_usage": True}}, True),
    (RESPONSES, responses(stream=True), True, {"max_output_tokens": 4096, "store": False},
     False),
])
def test_additions_are_written_into_the_body(route, body, stream_usage, sent, strip):
    raw = orjson.dumps(body)
    parsed = check(route, raw)
    out, stripped = forward_body(parsed, raw, stream_usage=stream_usage)
    assert orjson.loads(out) == {**body, **sent} and stripped is strip


def test_a_client_that_asked_for_usage_keeps_its_chunk():
    raw = orjson.dumps(chat(stream=True, max_tokens=5,
                            stream_options={"include_usage": True}))
    out, strip = forward_body(check(CHAT, raw), raw, stream_usage=True)
    assert out == raw and strip is False


# --- everything the model reads counts -------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOL = {"type": "function", "function": {"name": "weather", "description": "d" * 30,
                                         "parameters": SCHEMA}}


def size(value) -> int:
    return len(orjson.dumps(value))


@pytest.mark.parametrize("route, body, chars", [
    (CHAT, chat(messages=[{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "weather", "arguments": "x" * 500}}]}]), 507),
    (CHAT, chat(messages=[{"role": "assistant", "content": "a", "name": "bob",
                           "function_call": {"name": "f", "arguments": "y" * 40}}]), 45),
    (CHAT, chat(messages=[{"role": "tool", "tool_call_id": "call_1", "content": "z" * 70}]),
     70),
    (CHAT, chat(tools=[TOOL]), 2 + size([TOOL])),
    (CHAT, chat(functions=[TOOL["function"]]), 2 + size([TOOL["function"]])),
    (CHAT, chat(response_format={"type": "json_schema", "json_schema": {
        "name": "s", "schema": SCHEMA}}), 2 + size({"type": "json_schema", "json_schema": {
            "name": "s", "schema": SCHEMA}})),
    (CHAT, chat(prediction={"type": "content", "content": "p" * 300}), 302),
    (CHAT, chat(prediction={"type": "content", "content": [{"type": "text", "text": "q" * 9}]}),
     11),
    (COMPLETIONS, {"model": "m", "prompt": "abc", "suffix": "s" * 50}, 53),
    (RESPONSES, responses(instructions="i" * 100), 102),
    (RESPONSES, responses(input=[{"type": "function_call_output", "call_id": "call_1",
                                  "output": "o" * 900}]), 900),
    (RESPONSES, responses(input=[{"type": "function_call", "call_id": "c", "name": "f",
                                  "arguments": "a" * 10}]), 11),
    (RESPONSES, responses(input=[{"type": "reasoning", "id": "rs_1", "summary": [
        {"type": "summary_text", "text": "t" * 12}], "encrypted_content": "e" * 20}]), 32),
    (RESPONSES, responses(input=[{"type": "function_call_output", "call_id": "c", "output": [
        {"type": "input_text", "text": "w" * 5},
        {"type": "input_image", "image_url": "data:image/png;base64," + "A" * 5000}]}]), 5),
    (RESPONSES, responses(tools=[{"type": "function", "name": "f", "parameters": SCHEMA}]),
     2 + size([{"type": "function", "name": "f", "parameters": SCHEMA}])),
    (RESPONSES, responses(text={"format": {"type": "json_schema", "name": "s",
                                           "schema": SCHEMA}}),
     2 + size({"type": "json_schema", "name": "s", "schema": SCHEMA})),
    (MODERATIONS, {"input": [{"type": "text", "text": "abc"},
                             {"type": "image_url", "image_url": {"url": "https://x/i.png"}}]},
     3),
])
def test_every_input_counts(route, body, chars):
    assert check(route, body).input_chars == chars


@pytest.mark.parametrize("route, body, param", [
    (CHAT, chat(messages=[{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "x" * 101}}]}]),
     "messages"),
    (CHAT, chat(tools=[{"type": "function", "function": {"name": "f", "description": "d" * 101}}]),
     "messages"),
    (COMPLETIONS, {"model": "m", "prompt": "", "suffix": "s" * 101}, "prompt"),
    (RESPONSES, responses(input="", instructions="i" * 101), "input"),
    (RESPONSES, responses(input=[{"type": "function_call_output", "call_id": "c",
                                  "output": "o" * 101}]), "input"),
])
def test_max_input_chars_covers_every_input(route, body, param):
    small = RequestPolicy(ValidationSettings(allowed_models=(), max_input_chars=100))
    err = refusal(route, body, small)
    assert (err.param, err.code) == (param, "context_length_exceeded")


# --- content parts ---------------------------------------------------------------------------


@pytest.mark.parametrize("route, body, param, message", [
    (CHAT, chat(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
     "messages[0].content[0].text",
     "Invalid type for 'messages[0].content[0].text': expected a string."),
    (CHAT, chat(messages=[{"role": "user", "content": [{"type": "text"}]}]),
     "messages[0].content[0].text",
     "Invalid type for 'messages[0].content[0].text': expected a string."),
    (CHAT, chat(messages=[{"role": "assistant", "content": [{"type": "refusal",
                                                              "refusal": ["no"]}]}]),
     "messages[0].content[0].refusal",
     "Invalid type for 'messages[0].content[0].refusal': expected a string."),
    (CHAT, chat(messages=[{"role": "user", "content": [{"type": "input_text", "text": "x"}]}]),
     "messages[0].content[0].type",
     "Invalid value for 'messages[0].content[0].type': expected one of file, image_url, "
     "input_audio, refusal, text."),
    (CHAT, chat(messages=[{"role": "user", "content": [{"text": "x"}]}]),
     "messages[0].content[0].type",
     "Invalid value for 'messages[0].content[0].type': expected one of file, image_url, "
     "input_audio, refusal, text."),
    (RESPONSES, responses(input=[{"role": "user", "content": [{"type": "text", "text": "x"}]}]),
     "input[0].content[0].type",
     "Invalid value for 'input[0].content[0].type': expected one of input_audio, input_file, "
     "input_image, input_text, output_text, reasoning_text, refusal, summary_text."),
    (RESPONSES, responses(input=[{"role": "user", "content": [{"type": "input_text",
                                                               "text": {"a": 1}}]}]),
     "input[0].content[0].text",
     "Invalid type for 'input[0].content[0].text': expected a string."),
    (CHAT, chat(prediction={"type": "content", "content": [{"type": "text", "text": 1}]}),
     "prediction.content[0].text",
     "Invalid type for 'prediction.content[0].text': expected a string."),
    (MODERATIONS, {"input": [{"type": "input_text", "text": "x"}]}, "input[0].type",
     "Invalid value for 'input[0].type': expected one of image_url, text."),
])
def test_content_parts_are_checked(route, body, param, message):
    err = refusal(route, body)
    assert (err.param, err.message) == (param, message)


# --- knobs -----------------------------------------------------------------------------------

DEFAULT = RequestPolicy(ValidationSettings(allowed_models=()))
OPEN = RequestPolicy(ValidationSettings(
    allowed_models=(), allowed_tools=("function", "custom", "web_search", "file_search", "mcp",
                                       "image_generation"),
    allowed_service_tiers=("auto", "default", "flex", "priority"), stored_state=True))


@pytest.mark.parametrize("route, body, param, message", [
    (CHAT, chat(service_tier="priority"), "service_tier",
     "'service_tier' 'priority' is not available through this gateway (allowed: auto, "
     "default)."),
    (RESPONSES, responses(service_tier="flex"), "service_tier",
     "'service_tier' 'flex' is not available through this gateway (allowed: auto, default)."),
    (RESPONSES, responses(tools=[{"type": "function", "name": "f"},
                                 {"type": "mcp", "server_url": "https://evil.example"}]),
     "tools[1].type",
     "Tool type 'mcp' is not available through this gateway (allowed: function)."),
    (RESPONSES, responses(tools=[{"type": "image_generation"}]), "tools[0].type",
     "Tool type 'image_generation' is not available through this gateway (allowed: "
     "function)."),
    (CHAT, chat(tools=[{"type": "custom", "custom": {"name": "x"}}]), "tools[0].type",
     "Tool type 'custom' is not available through this gateway (allowed: function)."),
    (CHAT, chat(web_search_options={}), "web_search_options",
     "Web search is not available through this gateway (allowed tool types: function)."),
])
def test_knobs_are_refused_by_default(route, body, param, message):
    err = refusal(route, body, DEFAULT)
    assert (err.param, err.message) == (param, message)
    check(route, body, OPEN)  # allowed once the operator says so


@pytest.mark.parametrize("tier", [["auto"], {"auto": 1}, True, 1])
def test_service_tier_must_be_a_string(tier):
    err = refusal(CHAT, chat(service_tier=tier), OPEN)
    assert (err.param, err.message) == ("service_tier",
                                        "Invalid type for 'service_tier': expected a string.")


@pytest.mark.parametrize("tools, param, message", [
    (["function"], "tools[0].type", "Invalid type for 'tools[0].type': expected a string."),
    ([{"type": None}], "tools[0].type", "Invalid type for 'tools[0].type': expected a string."),
    ({"type": "function"}, "tools", "Invalid type for 'tools': expected an array."),
])
def test_malformed_tools(tools, param, message):
    err = refusal(CHAT, chat(tools=tools), OPEN)
    assert (err.param, err.message) == (param, message)


@pytest.mark.parametrize("tool", ["web_search", "web_search_preview", "file_search",
                                  "code_interpreter", "computer_use_preview", "local_shell",
                                  "image_generation", "mcp"])
def test_every_hosted_tool_is_refused_by_default(tool):
    err = refusal(RESPONSES, responses(tools=[{"type": tool}]), DEFAULT)
    assert err.param == "tools[0].type"


def test_functions_need_the_function_tool_type():
    none = RequestPolicy(ValidationSettings(allowed_models=(), allowed_tools=()))
    assert refusal(CHAT, chat(functions=[{"name": "f"}]), none).param == "functions"
    assert refusal(CHAT, chat(tools=[TOOL]), none).message.endswith("(allowed: none).")
    check(CHAT, chat(functions=[{"name": "f"}]), DEFAULT)


@pytest.mark.parametrize("body, param", [
    (responses(previous_response_id="resp_123"), "previous_response_id"),
    (responses(conversation="conv_123"), "conversation"),
    (responses(conversation={"id": "conv_123"}), "conversation"),
    (responses(prompt={"id": "pmpt_123", "version": "2"}), "prompt"),
    ({"model": "m", "prompt": {"id": "pmpt_123"}}, "prompt"),  # no input: still this refusal
    (responses(background=True), "background"),
    (responses(background=0), "background"),  # 0 == False, but it is not false
    (responses(store=True), "store"),
    (responses(input=[{"type": "item_reference", "id": "msg_123"}]), "input[0]"),
    (responses(input=[{"role": "user", "content": [{"type": "input_file",
                                                    "file_id": "file-123"}]}]),
     "input[0].content[0].file_id"),
    (responses(input=[{"role": "user", "content": [{"type": "input_image",
                                                    "file_id": "file-123"}]}]),
     "input[0].content[0].file_id"),
    (chat(messages=[{"role": "user", "content": [{"type": "file",
                                                  "file": {"file_id": "file-123"}}]}]),
     "messages[0].content[0].file_id"),
])
def test_stored_state_is_refused_by_default(body, param):
    route = CHAT if "messages" in body else RESPONSES
    err = refusal(route, body, DEFAULT)
    assert err.param == param
    assert "validation.stored_state = false" in err.message
    parsed = check(route, body, OPEN)
    assert "store" not in parsed.additions


@pytest.mark.parametrize("store, added", [(None, {"store": False}), (False, {})])
def test_responses_go_upstream_unstored(store, added):
    body = responses(max_output_tokens=5) if store is None else responses(max_output_tokens=5,
                                                                          store=store)
    assert check(RESPONSES, body, DEFAULT).additions == added
    assert check(RESPONSES, body, OPEN).additions == {}


def test_stored_prompt_without_input_passes_when_stored_state_is_on():
    parsed = check(RESPONSES, {"model": "m", "prompt": {"id": "pmpt_1", "variables": {
        "city": "Paris"}}}, OPEN)
    assert parsed.input_chars == len("Paris")

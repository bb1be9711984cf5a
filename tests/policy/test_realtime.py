"""The realtime policy, pure: client events, client-secret and call requests, session drift,
and what server events say a session cost."""
from __future__ import annotations

import orjson
import pytest
from openai.types.realtime import RealtimeErrorEvent

from openai_gateway.config.realtime import RealtimeSettings
from openai_gateway.config.settings import ValidationSettings
from openai_gateway.policy.realtime import (
    CLIENT_EVENTS,
    EventRate,
    EventRefused,
    RealtimePolicy,
    error_event,
)
from openai_gateway.policy.realtime_session import merge
from openai_gateway.policy.realtime_usage import (
    Charge,
    response_charge,
    session_models,
    transcription_charge,
    watched,
)
from openai_gateway.policy.refusal import Refusal
from openai_gateway.policy.usage import Usage

MODELS = ("gpt-realtime", "gpt-realtime-mini", "gpt-4o-mini-transcribe")
VALIDATION = ValidationSettings(allowed_models=MODELS, max_input_chars=200, max_tokens=1000)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def policy(clock) -> RealtimePolicy:
    return RealtimePolicy(VALIDATION, RealtimeSettings(max_ttl=300, max_frame_bytes=4096,
                                                       max_events_per_second=10), clock)


def dumps(event: dict) -> str:
    return orjson.dumps(event).decode()


def refused(policy: RealtimePolicy, event: dict | str, **kw) -> EventRefused:
    checker = policy.events("gpt-realtime", **kw)
    with pytest.raises(EventRefused) as caught:
        checker.check(event if isinstance(event, str) else dumps(event))
    return caught.value


#: One valid event of each GA client type, as the SDK writes them.
EVENTS = [
    {"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}},
    {"type": "input_audio_buffer.append", "audio": "AAAA"},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
    {"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}},
    {"type": "conversation.item.retrieve", "item_id": "item_1"},
    {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0,
     "audio_end_ms": 100},
    {"type": "conversation.item.delete", "item_id": "item_1"},
    {"type": "response.create", "response": {"max_output_tokens": 100,
                                             "output_modalities": ["text"]}},
    {"type": "response.cancel"},
    {"type": "output_audio_buffer.clear", "event_id": "evt_9"},
]


def test_the_ga_list_is_openais():
    assert {e["type"] for e in EVENTS} == CLIENT_EVENTS and len(CLIENT_EVENTS) == 11


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e["type"])
def test_every_ga_event_within_bounds_is_forwarded_as_it_came(policy, event):
    frame = dumps(event)
    checked = policy.events("gpt-realtime").check(frame)
    assert checked.type == event["type"] and checked.text is frame
    assert policy.events("gpt-realtime").check(frame.encode()).text == frame


@pytest.mark.parametrize("event,param,code", [
    ({"type": "no.such.event", "event_id": "evt_1"}, "type", "invalid_event_type"),
    ({"type": "transcription_session.update", "session": {}}, "type", "invalid_event_type"),
    ({"event_id": "evt_1"}, "type", "invalid_event_type"),
    # Hosted tools: mcp makes the account call a server the client names.
    ({"type": "session.update", "session": {"tools": [
        {"type": "function", "name": "f"},
        {"type": "mcp", "server_label": "x", "server_url": "https://evil.example"}]}},
     "session.tools[1].type", "tool_not_allowed"),
    ({"type": "response.create", "response": {"tools": [{"type": "mcp"}]}},
     "response.tools[0].type", "tool_not_allowed"),
    ({"type": "session.update", "session": {"tools": {"type": "function"}}}, "session.tools",
     "invalid_type"),
    ({"type": "session.update", "session": {"model": "gpt-realtime-mini"}}, "session.model",
     "invalid_value"),
    ({"type": "session.update", "session": {"model": "o3"}}, "session.model",
     "model_not_found"),
    ({"type": "session.update", "session": {"audio": {"input": {"transcription": {
        "model": "gpt-4o-transcribe"}}}}},
     "session.audio.input.transcription.model", "model_not_found"),
    ({"type": "session.update", "session": {"type": "transcription"}}, "session.type",
     "invalid_value"),
    # The beta protocol's names are unknown to the GA API: the gateway does not guess.
    ({"type": "session.update", "session": {"max_response_output_tokens": "inf"}},
     "session.max_response_output_tokens", "unknown_parameter"),
    ({"type": "session.update", "session": {"modalities": ["text"]}}, "session.modalities",
     "unknown_parameter"),
    ({"type": "session.update", "session": {"max_output_tokens": 1001}},
     "session.max_output_tokens", "invalid_value"),
    ({"type": "session.update", "session": {"max_output_tokens": 0}},
     "session.max_output_tokens", "invalid_value"),
    ({"type": "session.update", "session": {"max_output_tokens": True}},
     "session.max_output_tokens", "invalid_value"),
    ({"type": "response.create", "response": {"max_output_tokens": 5000}},
     "response.max_output_tokens", "invalid_value"),
    ({"type": "session.update", "session": {"instructions": "x" * 201}},
     "session.instructions", "context_length_exceeded"),
    ({"type": "session.update", "session": {"instructions": 7}}, "session.instructions",
     "invalid_type"),
    ({"type": "response.create", "response": {"instructions": "x" * 100, "input": [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "y" * 100}]}]}},
     "response.instructions", "context_length_exceeded"),
    ({"type": "session.update", "session": {"tracing": "auto"}}, "session.tracing",
     "invalid_value"),
    ({"type": "session.update", "session": {"prompt": {"id": "pmpt_1"}}}, "session.prompt",
     "invalid_value"),
    ({"type": "response.create", "response": {"prompt": {"id": "pmpt_1"}}}, "response.prompt",
     "invalid_value"),
    ({"type": "response.create", "response": {"conversation": "conv_1"}},
     "response.conversation", "invalid_value"),
    ({"type": "response.create", "response": "now"}, "response", "invalid_type"),
    ({"type": "session.update"}, "session", "missing_required_parameter"),
    ({"type": "session.update", "session": ["x"]}, "session", "invalid_type"),
])
def test_a_refused_event_names_what_it_refused(policy, event, param, code):
    refusal = refused(policy, {**event, "event_id": "evt_7"})
    assert (refusal.param, refusal.code, refusal.event_id) == (param, code, "evt_7")
    shown = error_event(refusal)
    RealtimeErrorEvent.model_validate(shown)  # the SDK's own type reads it
    assert shown["type"] == "error" and shown["event_id"].startswith("event_gw_")
    assert shown["error"] == {"type": "invalid_request_error", "code": code,
                              "message": refusal.message, "param": param,
                              "event_id": "evt_7"}


@pytest.mark.parametrize("frame,code", [
    ("{not json", "invalid_json"),
    ("[1, 2]", "invalid_json"),
    ('{"type": "session.update", "session": {"tools": []}, "session": {"tools": '
     '[{"type": "mcp"}]}}', "invalid_json"),  # a duplicate key: one value checked, one used
    ('{"type": "session.update", "session": {"tools": [], "tools": [{"type": "mcp"}]}}',
     "invalid_json"),
    (b"\xff\xfe{}", "invalid_json"),
    ("x" * 4097, "frame_too_large"),
    ("é" * 2049, "frame_too_large"),  # bytes count, not characters
])
def test_frames_that_are_not_one_json_event_are_refused(policy, frame, code):
    checker = policy.events("gpt-realtime")
    with pytest.raises(EventRefused) as caught:
        checker.check(frame)
    assert caught.value.code == code and caught.value.event_id is None
    assert "event" in caught.value.message


def test_an_event_id_too_long_is_not_echoed(policy):
    assert refused(policy, {"type": "x", "event_id": "e" * 65}).event_id is None


def test_inf_is_the_gateways_cap_and_the_event_is_rewritten(policy):
    checker = policy.events("gpt-realtime")
    for event, path in (
            ({"type": "session.update", "event_id": "e1", "session": {
                "type": "realtime", "max_output_tokens": "inf", "instructions": "hi"}},
             "session"),
            ({"type": "response.create", "response": {"max_output_tokens": "inf",
                                                      "metadata": {"k": "v"}}}, "response")):
        checked = checker.check(dumps(event))
        sent = orjson.loads(checked.text)
        assert sent[path] == {**event[path], "max_output_tokens": 1000}
        assert {k: v for k, v in sent.items() if k != path} == {
            k: v for k, v in event.items() if k != path}


def test_the_output_cap_is_at_most_openais_4096(clock):
    policy = RealtimePolicy(ValidationSettings(allowed_models=(), max_tokens=16384),
                            RealtimeSettings(), clock)
    checked = policy.events("gpt-realtime").check(dumps(
        {"type": "response.create", "response": {"max_output_tokens": "inf"}}))
    assert orjson.loads(checked.text)["response"]["max_output_tokens"] == 4096


def test_the_same_model_may_be_repeated_and_a_callers_allowlist_replaces_the_gateways(policy):
    policy.events("gpt-realtime").check(dumps(
        {"type": "session.update", "session": {"type": "realtime", "model": "gpt-realtime"}}))
    mine = frozenset({"gpt-realtime"})
    event = {"type": "session.update", "session": {"audio": {"input": {"transcription": {
        "model": "gpt-4o-mini-transcribe"}}}}}
    policy.events("gpt-realtime").check(dumps(event))
    assert refused(policy, event, models=mine).code == "model_not_found"
    # An empty allowlist allows any model.
    policy.events("gpt-realtime", frozenset()).check(dumps(
        {"type": "session.update", "session": {"audio": {"input": {"transcription": {
            "model": "whisper-1"}}}}}))


def test_stored_state_allows_tracing_and_prompts(clock):
    policy = RealtimePolicy(ValidationSettings(allowed_models=(), stored_state=True),
                            RealtimeSettings(), clock)
    policy.events("gpt-realtime").check(dumps(
        {"type": "session.update", "session": {"tracing": "auto", "prompt": {"id": "p"}}}))


def test_an_operator_may_allow_mcp(clock):
    policy = RealtimePolicy(ValidationSettings(allowed_tools=("function", "mcp")),
                            RealtimeSettings(), clock)
    policy.events("gpt-realtime").check(dumps(
        {"type": "session.update", "session": {"tools": [{"type": "mcp"}]}}))


def test_events_over_the_rate_are_refused_until_the_bucket_refills(policy, clock):
    checker = policy.events("gpt-realtime")
    frame = dumps({"type": "input_audio_buffer.clear"})
    for _ in range(10):
        checker.check(frame)
    with pytest.raises(EventRefused) as caught:
        checker.check(frame)
    assert caught.value.code == "rate_limit_exceeded"
    clock.now += 0.1  # one event's worth
    checker.check(frame)
    with pytest.raises(EventRefused):
        checker.check(frame)
    clock.now += 5  # never more than one second's burst
    for _ in range(10):
        checker.check(frame)
    with pytest.raises(EventRefused):
        checker.check(frame)


def test_rate_buckets_are_per_socket(clock):
    a, b = EventRate(1, clock), EventRate(1, clock)
    assert a.take() and not a.take() and b.take()


# --- POST /v1/realtime/client_secrets -------------------------------------------------------

def secret(policy, body, models=None):
    return policy.client_secret(orjson.dumps(body), models)


def test_a_client_secret_gets_the_bounded_session_and_a_capped_ttl(policy):
    got = secret(policy, {"expires_after": {"anchor": "created_at", "seconds": 7200},
                          "session": {"type": "realtime", "model": "gpt-realtime",
                                      "instructions": "Be brief."}})
    assert got.ttl == 300  # realtime.max_ttl
    assert got.session == {"type": "realtime", "model": "gpt-realtime",
                           "instructions": "Be brief.", "max_output_tokens": 1000}
    assert secret(policy, {"session": {"model": "gpt-realtime"}}).ttl == 300  # 600 capped
    assert secret(policy, {"expires_after": {"seconds": 60},
                           "session": {"model": "gpt-realtime", "max_output_tokens": 20}}
                  ) == type(got)(60, {"type": "realtime", "model": "gpt-realtime",
                                      "max_output_tokens": 20})
    assert secret(policy, {"session": {"model": "gpt-realtime", "max_output_tokens": "inf"}}
                  ).session["max_output_tokens"] == 1000


@pytest.mark.parametrize("body,param", [
    ({"session": {"model": "gpt-realtime"}, "expires_after": {"seconds": 5}},
     "expires_after.seconds"),
    ({"session": {"model": "gpt-realtime"}, "expires_after": {"seconds": 7201}},
     "expires_after.seconds"),
    ({"session": {"model": "gpt-realtime"}, "expires_after": {"seconds": 60.5}},
     "expires_after.seconds"),
    ({"session": {"model": "gpt-realtime"}, "expires_after": {"anchor": "now"}},
     "expires_after.anchor"),
    ({"session": {"model": "gpt-realtime"}, "expires_after": 60}, "expires_after"),
    ({"session": {"model": "gpt-realtime"}, "expires_after": {"minutes": 1}},
     "expires_after.minutes"),
    ({"session": {"model": "gpt-realtime"}, "ttl": 60}, "ttl"),
    ({"expires_after": {"seconds": 60}}, "session"),
    ({"session": {"type": "realtime"}}, "session.model"),
    ({"session": {"model": "o3"}}, "session.model"),
    ({"session": {"type": "transcription", "model": "gpt-realtime"}}, "session.type"),
    ({"session": {"model": "gpt-realtime", "tools": [{"type": "mcp"}]}}, "session.tools[0].type"),
    ({"session": {"model": "gpt-realtime", "instructions": "x" * 201}},
     "session.instructions"),
    ({"session": "gpt-realtime"}, "session"),
])
def test_a_bad_client_secret_request_names_its_param(policy, body, param):
    with pytest.raises(Refusal) as caught:
        secret(policy, body)
    assert caught.value.param == param


def test_a_client_secret_request_is_strict_json(policy):
    with pytest.raises(Refusal):
        policy.client_secret(b'{"session": {"model": "gpt-realtime", "model": "o3"}}')


# --- POST /v1/realtime/calls ----------------------------------------------------------------

OFFER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


def test_a_call_takes_its_session_from_the_part_the_query_or_the_secret(policy):
    assert policy.call(OFFER.encode(), model="gpt-realtime") == (OFFER, {
        "type": "realtime", "model": "gpt-realtime", "max_output_tokens": 1000})
    part = bytearray(b'{"type": "realtime", "model": "gpt-realtime-mini", "instructions": '
                     b'"Hi"}')  # as aiohttp reads a multipart part
    assert policy.call(bytearray(OFFER.encode()), session=part) == (OFFER, {
        "type": "realtime", "model": "gpt-realtime-mini", "instructions": "Hi",
        "max_output_tokens": 1000})
    granted = {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief.",
               "max_output_tokens": 200}
    assert policy.call(OFFER, granted=granted) == (OFFER, granted)
    # A session part over a secret: laid over it like a session.update, and bounded again.
    _, merged = policy.call(OFFER, granted=granted, session=b'{"max_output_tokens": "inf", '
                            b'"audio": {"output": {"voice": "marin"}}}')
    assert merged == {**granted, "max_output_tokens": 1000,
                      "audio": {"output": {"voice": "marin"}}}


@pytest.mark.parametrize("kw,param", [
    ({"sdp": b"hello"}, "sdp"),
    ({"sdp": None}, "sdp"),
    ({"sdp": b"v=0" + b"x" * 70000}, "sdp"),
    ({"sdp": OFFER}, "model"),
    ({"sdp": OFFER, "model": "o3"}, "session.model"),
    ({"sdp": OFFER, "session": b'{"model": "gpt-realtime", "tracing": "auto"}'},
     "session.tracing"),
    ({"sdp": OFFER, "session": b'{"model": "gpt-realtime-mini"}',
      "granted": {"model": "gpt-realtime"}}, "session.model"),
    ({"sdp": OFFER, "session": b"nope", "model": "gpt-realtime"}, None),
])
def test_a_bad_call_names_its_param(policy, kw, param):
    with pytest.raises(Refusal) as caught:
        policy.call(kw.pop("sdp"), **kw)
    assert caught.value.param == param


# --- what a session became: the sideband re-asserts the bounds -------------------------------

def test_a_session_within_bounds_needs_no_fix(policy):
    bounded = policy.rules.new_session({"model": "gpt-realtime", "instructions": "Be brief."})
    shown = {**bounded, "object": "realtime.session", "tools": [{"type": "function"}],
             "tracing": None, "prompt": None, "audio": {"input": {"transcription": None}}}
    assert policy.rules.drift(shown, bounded) == {}


def test_a_session_changed_out_of_bounds_is_put_back(policy):
    bounded = policy.rules.new_session({
        "model": "gpt-realtime", "instructions": "Be brief.",
        "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}}})
    changed = {**bounded, "max_output_tokens": "inf", "instructions": "x" * 500,
               "tools": [{"type": "function", "name": "f"}, {"type": "mcp"}],
               "tracing": "auto", "prompt": {"id": "p"},
               "audio": {"input": {"transcription": {"model": "whisper-1"}}}}
    fix = policy.rules.drift(changed, bounded)
    assert fix == {"max_output_tokens": 1000, "instructions": "Be brief.",
                   "tools": [{"type": "function", "name": "f"}], "tracing": None,
                   "prompt": None, "audio": {"input": {"transcription": {
                       "model": "gpt-4o-mini-transcribe"}}}}
    assert policy.rules.drift(merge(changed, fix), bounded) == {}


def test_merge_is_a_session_update():
    base = {"model": "m", "instructions": "a",
            "audio": {"input": {"format": "pcm", "transcription": None}, "output": {"voice": "x"}}}
    assert merge(base, {"instructions": "b", "audio": {"input": {"transcription": {"model": "t"}}}}
                 ) == {"model": "m", "instructions": "b", "audio": {
                     "input": {"format": "pcm", "transcription": {"model": "t"}},
                     "output": {"voice": "x"}}}


# --- what server events say a session cost ---------------------------------------------------

DONE = {"type": "response.done", "event_id": "event_1", "response": {
    "object": "realtime.response", "id": "resp_1", "status": "cancelled",
    "usage": {"total_tokens": 253, "input_tokens": 132, "output_tokens": 121,
              "input_token_details": {"text_tokens": 119, "audio_tokens": 13,
                                      "image_tokens": 0, "cached_tokens": 64,
                                      "cached_tokens_details": {"text_tokens": 64,
                                                                "audio_tokens": 0}},
              "output_token_details": {"text_tokens": 30, "audio_tokens": 91}}}}


def test_a_response_done_is_a_charge_of_its_usage():
    assert response_charge(DONE, "gpt-realtime") == Charge(
        "response", "gpt-realtime", Usage(input=132, output=121, cached_input=64,
                                          audio_input=13, audio_output=91),
        response_id="resp_1", status="cancelled")
    # No readable usage: a charge without one (the meter charges what it reserved).
    assert response_charge({"type": "response.done"}, "m") == Charge("response", "m", None)


def test_transcriptions_are_charged_in_tokens_or_seconds():
    tokens = {"usage": {"type": "tokens", "total_tokens": 22, "input_tokens": 13,
                        "input_token_details": {"text_tokens": 0, "audio_tokens": 13},
                        "output_tokens": 9}}
    assert transcription_charge(tokens, "gpt-4o-transcribe") == Charge(
        "transcription", "gpt-4o-transcribe", Usage(input=13, output=9, audio_input=13))
    duration = {"usage": {"type": "duration", "seconds": 2.5}}
    assert transcription_charge(duration, "whisper-1") == Charge(
        "transcription", "whisper-1", Usage(), seconds=2.5)
    assert transcription_charge({"usage": {"type": "duration", "seconds": "2"}}, "w").usage \
        is None


def test_only_frames_naming_a_watched_type_are_read():
    assert watched(dumps(DONE))
    assert not watched('{"type": "response.output_audio.delta", "delta": "AAAA"}')
    assert session_models({"session": {"model": "gpt-realtime", "audio": {"input": {
        "transcription": {"model": "whisper-1"}}}}}) == ("gpt-realtime", "whisper-1")
    assert session_models({"session": "x"}) == (None, None)

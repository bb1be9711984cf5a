"""What an answer cost: only the answer's own top-level usage counts, never an echo of it."""
from __future__ import annotations

import json

import orjson
import pytest

from openai_gateway.policy.usage import (
    MAX_CANDIDATES,
    WHOLE_PARSE_BYTES,
    Usage,
    usage_from_answer,
    usage_from_event,
    usage_of,
)

CHAT_USAGE = {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
              "prompt_tokens_details": {"cached_tokens": 8, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 3, "audio_tokens": 0}}
RESPONSES_USAGE = {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 4},
                   "output_tokens": 16010, "output_tokens_details": {"reasoning_tokens": 0},
                   "total_tokens": 16046}


def chat_answer(**extra) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                         "finish_reason": "stop"}], "usage": CHAT_USAGE, **extra}


def responses_answer(usage=RESPONSES_USAGE, **extra) -> dict:
    """OpenAI's field order: `usage` comes before the echoed `user` and `metadata`."""
    return {"id": "resp_1", "object": "response", "status": "completed", "output": [],
            "tools": [], "usage": usage, "user": None, "metadata": {}, **extra}


@pytest.mark.parametrize("usage, expected", [
    (CHAT_USAGE, Usage(input=19, output=10, cached_input=8, reasoning=3)),
    (RESPONSES_USAGE, Usage(input=36, output=16010, cached_input=4, reasoning=0)),
    ({"prompt_tokens": 8, "total_tokens": 8}, Usage(input=8)),  # embeddings
    ({"total_tokens": 12}, Usage(input=12)),
    ({"prompt_tokens": 5, "completion_tokens": True}, Usage(input=5)),
    ({"prompt_tokens": -1}, None),
    ({}, None), (None, None), ([], None), ("usage", None),
])
def test_usage_of(usage, expected):
    assert usage_of(usage) == expected


@pytest.mark.parametrize("raw", [
    {"prompt_tokens": "12", "completion_tokens": 3.0},
    {"prompt_tokens": True, "completion_tokens": False},
    {"prompt_tokens": -5, "completion_tokens": -1},
    {"prompt_tokens_details": {"cached_tokens": 50}},
])
def test_malformed_counts_are_no_usage(raw):
    """The caller then charges the reservation, never nothing."""
    assert usage_of(raw) is None


@pytest.mark.parametrize("raw, expected", [
    ({"prompt_tokens": 10, "completion_tokens": 5}, Usage(input=10, output=5)),  # no details
    ({"prompt_tokens_details": None, "prompt_tokens": 3}, Usage(input=3)),
    # A field of the wrong type falls back to the other generation's name.
    ({"prompt_tokens": "x", "input_tokens": 7, "completion_tokens": None, "output_tokens": 2},
     Usage(input=7, output=2)),
])
def test_usage_of_odd_shapes(raw, expected):
    assert usage_of(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    # chat with audio (gpt-4o-audio-preview): the audio parts inside the totals
    ({"prompt_tokens": 179, "completion_tokens": 424, "total_tokens": 603,
      "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 40, "text_tokens": 139,
                                "image_tokens": 0},
      "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 364,
                                    "text_tokens": 60}},
     Usage(input=179, output=424, audio_input=40, audio_output=364)),
    # realtime response.done: input_token_details / output_token_details (singular "token")
    ({"total_tokens": 821, "input_tokens": 789, "output_tokens": 32,
      "input_token_details": {"text_tokens": 313, "audio_tokens": 476, "cached_tokens": 640,
                              "cached_tokens_details": {"text_tokens": 256,
                                                        "audio_tokens": 384}},
      "output_token_details": {"text_tokens": 9, "audio_tokens": 23}},
     Usage(input=789, output=32, cached_input=640, audio_input=476, audio_output=23,
           cached_audio_input=384)),
    # the Images API (gpt-image-1): image tokens in the input
    ({"total_tokens": 491, "input_tokens": 219, "output_tokens": 272,
      "input_tokens_details": {"text_tokens": 25, "image_tokens": 194}},
     Usage(input=219, output=272, image_input=194)),
])
def test_usage_of_reads_audio_and_image_parts(raw, expected):
    assert usage_of(raw) == expected


def test_usage_totals():
    assert Usage(input=19, output=10, cached_input=8).total == 29


@pytest.mark.parametrize("answer, expected", [
    (chat_answer(), Usage(19, 10, 8, 3)),
    (responses_answer(), Usage(36, 16010, 4, 0)),
    # The attack of the issue: echoed metadata names "usage" after the real usage.
    (responses_answer(metadata={"k": "usage"}), Usage(36, 16010, 4, 0)),
    (responses_answer(metadata={"usage": "{\"input_tokens\": 0}"}), Usage(36, 16010, 4, 0)),
    (responses_answer(metadata={"usage": {"input_tokens": 0, "output_tokens": 0}}),
     Usage(36, 16010, 4, 0)),
    (responses_answer(user="\"usage\": {\"input_tokens\": 0}"), Usage(36, 16010, 4, 0)),
    (responses_answer(tools=[{"type": "function", "name": "f", "parameters": {
        "type": "object", "properties": {"usage": {"type": "object"}}}}]),
     Usage(36, 16010, 4, 0)),
    # A background job's answer: usage null means no usage (the caller charges the reservation).
    (responses_answer(usage=None, status="queued"), None),
    (responses_answer(usage=None, metadata={"usage": {"input_tokens": 0}}), None),
    ({"id": "modr-1", "results": [{"flagged": False}]}, None),  # moderations report none
    ({"object": "list", "data": [{"embedding": [0.1, -0.2]}],
      "usage": {"prompt_tokens": 8, "total_tokens": 8}}, Usage(input=8)),
    ([{"usage": CHAT_USAGE}], None),  # not an object at the root
])
@pytest.mark.parametrize("dump", [
    orjson.dumps,
    lambda v: json.dumps(v, indent=2).encode(),
    lambda v: json.dumps(v, separators=(" , ", " : ")).encode() + b"\n",
])
@pytest.mark.parametrize("padding", [0, WHOLE_PARSE_BYTES], ids=["small", "large"])
def test_usage_from_answer(answer, expected, dump, padding):
    """Small answers are parsed whole, large ones searched from the end: the same verdicts."""
    if padding and isinstance(answer, dict):
        answer = {"padding": "p" * padding, **answer}
    assert usage_from_answer(dump(answer)) == expected


@pytest.mark.parametrize("body", [
    b"", b"not json", b'{"usage": ', b'{"usage": {"prompt_tokens": 1}', b'"usage"',
    b'{"usage": {"prompt_tokens": 1,}}', b'{"a": "\\"usage\\": {}"}',
])
@pytest.mark.parametrize("padding", [b"", b" " * WHOLE_PARSE_BYTES], ids=["small", "large"])
def test_broken_answers_have_no_usage(body, padding):
    assert usage_from_answer(padding + body) is None


def test_many_echoed_usage_keys_fall_back_to_a_whole_parse():
    nested = {f"k{i}": {"usage": {"input_tokens": 0}} for i in range(MAX_CANDIDATES + 5)}
    body = orjson.dumps(responses_answer(metadata=nested, padding="p" * WHOLE_PARSE_BYTES))
    assert usage_from_answer(body) == Usage(36, 16010, 4, 0)


def test_a_large_embeddings_answer_is_read_from_its_end():
    data = [{"object": "embedding", "index": i, "embedding": [0.0123] * 3072}
            for i in range(200)]
    body = orjson.dumps({"object": "list", "data": data, "model": "text-embedding-3-large",
                         "usage": {"prompt_tokens": 5000, "total_tokens": 5000}})
    assert usage_from_answer(body) == Usage(input=5000)


@pytest.mark.parametrize("event, expected", [
    ({"object": "chat.completion.chunk", "choices": [], "usage": CHAT_USAGE},
     Usage(19, 10, 8, 3)),
    ({"object": "chat.completion.chunk", "choices": [{"delta": {"content": "usage"}}],
      "usage": None}, None),
    ({"type": "response.completed", "response": {"usage": RESPONSES_USAGE,
                                                 "metadata": {"usage": "x"}}},
     Usage(36, 16010, 4, 0)),
    ({"type": "response.incomplete", "response": {"usage": RESPONSES_USAGE}},
     Usage(36, 16010, 4, 0)),
    ({"type": "response.created", "response": {"usage": RESPONSES_USAGE}}, None),
    ({"type": "response.output_text.delta", "delta": "usage"}, None),
    ({"type": "response.completed", "response": {"usage": None}}, None),
    (["usage"], None), ("usage", None),
])
def test_usage_from_event(event, expected):
    assert usage_from_event(event) == expected

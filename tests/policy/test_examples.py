"""Requests from OpenAI's API reference (the `examples` of openai/openai-openapi) pass the policy.

With the policy opened up (any model, hosted tools, stored state) every example is accepted but
the file given by URL (its size is unknown until the upstream fetches a URL the client chose);
under the default policy the only refusals are the ones the README's table announces (hosted
tools, files by URL), each naming its param.
"""
from __future__ import annotations

import orjson
import pytest

from openai_gateway.config.settings import ValidationSettings
from openai_gateway.policy import Refusal, RequestPolicy, forward_body

WEATHER = {
    "name": "get_current_weather",
    "description": "Get the current weather in a given location",
    "parameters": {
        "type": "object",
        "properties": {
            "location": {"type": "string",
                         "description": "The city and state, e.g. San Francisco, CA"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location"],
    },
}
IMAGE = ("https://upload.wikimedia.org/wikipedia/commons/thumb/d/dd/Gfp-wisconsin-madison-the"
         "-nature-boardwalk.jpg/2560px-Gfp-wisconsin-madison-the-nature-boardwalk.jpg")
#: (route, title of the example, request body, param refused by the default policy or None).
EXAMPLES = [
    ("/v1/chat/completions", "Default", {
        "model": "gpt-4o", "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello!"}]}, None),
    ("/v1/chat/completions", "Image input", {
        "model": "gpt-4o", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What's in this image?"},
            {"type": "image_url", "image_url": {"url": IMAGE}}]}],
        "max_tokens": 300}, None),
    ("/v1/chat/completions", "Streaming", {
        "model": "gpt-4o", "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello!"}], "stream": True}, None),
    ("/v1/chat/completions", "Functions", {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "What is the weather like in Boston today?"}],
        "tools": [{"type": "function", "function": WEATHER}], "tool_choice": "auto"}, None),
    ("/v1/chat/completions", "Functions (legacy)", {
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": "What is the weather like in Boston?"}],
        "functions": [WEATHER], "function_call": "auto"}, None),
    ("/v1/chat/completions", "Logprobs", {
        "model": "gpt-4o", "messages": [{"role": "user", "content": "Hello!"}],
        "logprobs": True, "top_logprobs": 2}, None),
    ("/v1/chat/completions", "Structured outputs", {
        "model": "gpt-4o-2024-08-06",
        "messages": [{"role": "system", "content": "Extract the event information."},
                     {"role": "user", "content": "Alice and Bob are going to a science fair "
                                                 "on Friday."}],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "calendar_event", "strict": True, "schema": {
                "type": "object", "additionalProperties": False,
                "required": ["name", "date", "participants"],
                "properties": {"name": {"type": "string"}, "date": {"type": "string"},
                               "participants": {"type": "array",
                                                "items": {"type": "string"}}}}}}}, None),
    ("/v1/completions", "No streaming", {
        "model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test", "max_tokens": 7,
        "temperature": 0}, None),
    ("/v1/completions", "Streaming", {
        "model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test", "max_tokens": 7,
        "temperature": 0, "stream": True}, None),
    ("/v1/embeddings", "Default", {
        "input": "The food was delicious and the waiter...", "model": "text-embedding-ada-002",
        "encoding_format": "float"}, None),
    ("/v1/moderations", "Single string", {"input": "I want to kill them."}, None),
    ("/v1/moderations", "Image and text", {
        "model": "omni-moderation-latest", "input": [
            {"type": "text", "text": "...text to classify goes here..."},
            {"type": "image_url", "image_url": {"url": "https://example.com/image.png"}}]},
     None),
    ("/v1/responses", "Text input", {
        "model": "gpt-4.1",
        "input": "Tell me a three sentence bedtime story about a unicorn."}, None),
    ("/v1/responses", "Image input", {
        "model": "gpt-4.1", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "what is in this image?"},
            {"type": "input_image", "image_url": IMAGE}]}]}, None),
    ("/v1/responses", "File input", {
        "model": "gpt-4.1", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "what is in this file?"},
            {"type": "input_file",
             "file_url": "https://www.berkshirehathaway.com/letters/2024ltr.pdf"}]}]},
     "input[0].content[1].file_url"),
    ("/v1/responses", "Web search", {
        "model": "gpt-4.1", "tools": [{"type": "web_search_preview"}],
        "input": "What was a positive news story from today?"}, "tools[0].type"),
    ("/v1/responses", "File search", {
        "model": "gpt-4.1",
        "tools": [{"type": "file_search", "vector_store_ids": ["vs_1234567890"],
                   "max_num_results": 20}],
        "input": "What are the attributes of an ancient brown dragon?"}, "tools[0].type"),
    ("/v1/responses", "Streaming", {
        "model": "gpt-4.1", "instructions": "You are a helpful assistant.", "input": "Hello!",
        "stream": True}, None),
    ("/v1/responses", "Functions", {
        "model": "gpt-4.1", "input": "What is the weather like in Boston today?",
        "tools": [{"type": "function", **WEATHER}], "tool_choice": "auto"}, None),
    ("/v1/responses", "Reasoning", {
        "model": "o3-mini", "input": "How much wood would a woodchuck chuck?",
        "reasoning": {"effort": "high"}}, None),
]
IDS = [f"{route.rsplit('/', 1)[1]}: {title}" for route, title, _, _ in EXAMPLES]
OPEN = RequestPolicy(ValidationSettings(
    allowed_models=(), allowed_tools=("function", "web_search_preview", "file_search"),
    stored_state=True))
DEFAULT = RequestPolicy(ValidationSettings(allowed_models=()))
#: Refused whatever the policy: a file by URL cannot be reserved (its size is unknown).
ALWAYS_REFUSED = frozenset({"input[0].content[1].file_url"})


@pytest.mark.parametrize("route, title, body, refused", EXAMPLES, ids=IDS)
def test_every_example_passes_an_open_policy(route, title, body, refused):
    raw = orjson.dumps(body, option=orjson.OPT_INDENT_2)  # as the reference prints them
    if refused in ALWAYS_REFUSED:
        with pytest.raises(Refusal) as info:
            OPEN.check(route, raw)
        assert info.value.param == refused
        return
    parsed = OPEN.check(route, raw)
    assert parsed.body == body
    sent, _ = forward_body(parsed, raw, stream_usage=True)
    assert {**body, **parsed.additions}.items() <= orjson.loads(sent).items()


@pytest.mark.parametrize("route, title, body, refused", EXAMPLES, ids=IDS)
def test_the_default_policy_refuses_only_hosted_tools_and_files_by_url(route, title, body,
                                                                       refused):
    raw = orjson.dumps(body)
    if refused is None:
        DEFAULT.check(route, raw)
    else:
        with pytest.raises(Refusal) as info:
            DEFAULT.check(route, raw)
        assert info.value.param == refused

"""The fake OpenAI API, the demo's upstream and (configured) the tests': its answers and streams
are the official SDK's types, with OpenAI's usage details, token caps and choices."""
from __future__ import annotations

import base64
import json
import struct

import pytest
from openai.types import Completion, CreateEmbeddingResponse, Model, ModerationCreateResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from openai_gateway.demo.fake_openai import FakeOpenAI

from ..support import fake_upstream

FAKES = {"package": FakeOpenAI, "tests": fake_upstream.FakeOpenAI}
ASK = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "Say hi"}]}
RESPOND = {"model": "gpt-4o-mini", "instructions": "Be brief.", "input": "Say hi"}
COMPLETE = {"model": "gpt-4o-mini", "prompt": "Once upon"}


@pytest.fixture(params=list(FAKES))
async def api(request, aiohttp_client):
    """(fake, client of it): the fake OpenAI API itself, no gateway; the package's and the
    tests' configuration of it."""
    fake = FAKES[request.param]()
    return fake, await aiohttp_client(fake.app())


async def post(client, route: str, body: dict) -> dict:
    r = await client.post(route, json=body)
    assert r.status == 200, await r.text()
    return await r.json()


async def events(client, route: str, body: dict) -> list[tuple[str | None, dict | str]]:
    """A stream's events as (event name, parsed data); "[DONE]" stays a string."""
    r = await client.post(route, json=dict(body, stream=True))
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    out = []
    for block in (await r.text()).split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        data = fields["data"]
        out.append((fields.get("event"), data if data == "[DONE]" else json.loads(data)))
    return out


@pytest.mark.parametrize("route,body,kind", [
    ("/v1/chat/completions", dict(ASK, n=2), ChatCompletion),
    ("/v1/completions", COMPLETE, Completion),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"]},
     CreateEmbeddingResponse),
    ("/v1/responses", RESPOND, Response),
    ("/v1/moderations", {"input": ["x", "y"]}, ModerationCreateResponse),
])
async def test_fake_answers_are_openais_types(api, route, body, kind):
    _, client = api
    kind.model_validate(await post(client, route, body))  # required fields and their types


async def test_fake_model_list_is_openais_type(api):
    fake, client = api
    r = await client.get("/v1/models")
    doc = await r.json()
    assert doc["object"] == "list" and [m["id"] for m in doc["data"]] == list(fake.models)
    for m in doc["data"]:
        Model.model_validate(m)


async def test_fake_usage_has_openais_details(api):
    fake, client = api
    fake.cached_tokens, fake.reasoning_tokens = 2, 3
    chat = await post(client, "/v1/chat/completions", ASK)
    said = len(chat["choices"][0]["message"]["content"].split())
    tin = len("Be brief.Say hi") // 4 + 1  # every message counts, about 4 characters a token
    assert chat["usage"] == {
        "prompt_tokens": tin, "completion_tokens": said + 3, "total_tokens": tin + said + 3,
        "prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 3, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0}}
    assert list(chat["usage"])[:3] == ["prompt_tokens", "completion_tokens", "total_tokens"]
    resp = await post(client, "/v1/responses", RESPOND)
    said = len(resp["output"][0]["content"][0]["text"].split())
    assert resp["usage"] == {"input_tokens": tin,
                             "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0},
                             "output_tokens": said + 3,
                             "output_tokens_details": {"reasoning_tokens": 3},
                             "total_tokens": tin + said + 3}


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("route,body,kind,text", [
    ("/v1/chat/completions", ASK, ChatCompletionChunk,
     lambda c: c["delta"].get("content") or ""),
    ("/v1/completions", COMPLETE, Completion, lambda c: c["text"]),
])
async def test_fake_streams_chat_and_completions_as_openai_does(api, route, body, kind, text,
                                                                include_usage):
    _, client = api
    whole = await post(client, route, body)
    asked = dict(body, stream_options={"include_usage": True}) if include_usage else body
    got = await events(client, route, asked)
    assert got[-1] == (None, "[DONE]")
    chunks = [c for _, c in got[:-1]]
    for c in chunks:
        # The SDK types a completions chunk as a Completion, whose finish_reason is never
        # null; OpenAI sends null on every chunk but the one that finishes.
        kind.model_validate(c if kind is not Completion else dict(c, choices=[
            dict(ch, finish_reason=ch["finish_reason"] or "stop") for ch in c["choices"]]))
    if include_usage:  # "usage": null on every chunk but the last, which has no choices
        *chunks, last = chunks
        assert last["choices"] == [] and last["usage"] == whole["usage"]
        assert all("usage" in c and c["usage"] is None for c in chunks)
    else:
        assert not any("usage" in c for c in chunks)
    choices = [c["choices"][0] for c in chunks]
    assert "".join(map(text, choices)) == text(whole["choices"][0] | {"delta": {
        "content": whole["choices"][0].get("message", {}).get("content")}})
    assert [c["finish_reason"] for c in choices] == [None] * (len(choices) - 1) + ["stop"]


async def test_package_fake_frames_a_chat_stream_as_openai_does(aiohttp_client):
    client = await aiohttp_client(FakeOpenAI().app())
    chunks = [c for _, c in (await events(client, "/v1/chat/completions", ASK))[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "",
                                                "refusal": None}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert all(list(c["choices"][0]["delta"]) == ["content"] for c in chunks[1:-1])


@pytest.mark.parametrize("capped", [False, True])
async def test_fake_streams_a_response_as_openai_does(api, capped):
    _, client = api
    body = dict(RESPOND, max_output_tokens=3) if capped else RESPOND
    got = await events(client, "/v1/responses", body)
    end = "response.incomplete" if capped else "response.completed"
    kinds = [k for k, _ in got]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", end]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [d["sequence_number"] for _, d in got] == list(range(len(got)))
    adapter = TypeAdapter(ResponseStreamEvent)
    for k, data in got:
        assert data["type"] == k
        adapter.validate_python(data)
    final = got[-1][1]["response"]
    said = final["output"][0]["content"][0]["text"]
    assert "".join(d["delta"] for k, d in got if k == "response.output_text.delta") == said
    assert final["status"] == ("incomplete" if capped else "completed")
    assert final["usage"]["output_tokens"] == len(said.split())
    assert len(said.split()) == 3 if capped else len(said.split()) > 3


@pytest.mark.parametrize("route,body,cap", [
    ("/v1/chat/completions", ASK, "max_completion_tokens"),
    ("/v1/chat/completions", ASK, "max_tokens"),
    ("/v1/completions", COMPLETE, "max_tokens"),
    ("/v1/responses", RESPOND, "max_output_tokens"),
])
async def test_fake_cuts_the_answer_at_the_token_cap(api, route, body, cap):
    _, client = api
    doc = await post(client, route, dict(body, **{cap: 3}))
    if route == "/v1/responses":
        assert doc["status"] == "incomplete"
        assert doc["incomplete_details"] == {"reason": "max_output_tokens"}
        said, used = doc["output"][0]["content"][0]["text"], doc["usage"]["output_tokens"]
    else:
        choice = doc["choices"][0]
        assert choice["finish_reason"] == "length"
        said = choice["message"]["content"] if "message" in choice else choice["text"]
        used = doc["usage"]["completion_tokens"]
    assert len(said.split()) == used == 3


async def test_fake_answers_n_choices_and_counts_them(api):
    _, client = api
    doc = await post(client, "/v1/chat/completions", dict(ASK, n=2))
    assert [c["index"] for c in doc["choices"]] == [0, 1]
    said = len(doc["choices"][0]["message"]["content"].split())
    assert doc["usage"]["completion_tokens"] == 2 * said


async def test_package_fake_embeddings_are_stable_unit_vectors(aiohttp_client):
    client = await aiohttp_client(FakeOpenAI().app())
    body = {"model": "text-embedding-3-small", "input": ["a", "b", "a"]}
    a, b, again = (d["embedding"] for d in (await post(client, "/v1/embeddings", body))["data"])
    assert len(a) == 1536 and a == again and a != b
    assert abs(sum(x * x for x in a) - 1) < 1e-3
    doc = await post(client, "/v1/embeddings", dict(body, dimensions=8,
                                                     encoding_format="base64"))
    decoded = struct.unpack("<8f", base64.b64decode(doc["data"][0]["embedding"]))
    assert abs(sum(x * x for x in decoded) - 1) < 1e-3

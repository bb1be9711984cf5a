"""The pipeline's own promises: settlement on every way out, /v1/models counted and cached."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from openai_gateway.policy import STOP_MARGIN_TOKENS

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def _remaining_tokens(gw) -> int:
    r = await gw.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
    assert r.status == 200
    return int(r.headers["x-ratelimit-remaining-tokens"])


async def _charged(gw, before: int = 100000) -> int:
    """Tokens charged so far, less the probe's own (its answer's usage). The budgets are per
    day: a sliding window's count is weighted down once its window has turned, so a budget per
    minute read across the turn of a minute shows less than was charged."""
    r = await gw.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
    assert r.status == 200
    own = (await r.json())["usage"]["total_tokens"]
    return before - int(r.headers["x-ratelimit-remaining-tokens"]) - own


async def _charged_when_settled(gw, expected: int, seconds: float = 3.0) -> int:
    """`_charged`, asked again until it is `expected` or `seconds` have passed (a settlement
    that happens in the background, after the answer was read), each probe's own usage
    counted."""
    probes = 0
    for i in range(int(seconds / 0.05)):  # each probe its own input: a miss, never a hit
        r = await gw.post("/v1/embeddings",
                          json={"model": "text-embedding-3-small", "input": f"x{i}"})
        assert r.status == 200
        probes += (await r.json())["usage"]["total_tokens"]
        charged = 100000 - int(r.headers["x-ratelimit-remaining-tokens"]) - probes
        if charged == expected:
            break
        await asyncio.sleep(0.05)
    return charged


async def _until(condition, seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


async def test_a_stream_stopped_by_its_client_is_charged_prompt_output_and_margin(
        make_gateway, fake):
    """The client leaves after the first chunk of a max_tokens=2000 stream while the relay
    keeps up: charged the prompt, an upper bound of the output received and a margin for what
    was in flight -- more than the upstream produced, far less than the reservation."""
    gw = await make_gateway({"rate_limit": {"tokens": ["100000/day"]}})
    fake.chunks, fake.chunk_delay = 50, 0.05
    r = await gw.post("/v1/chat/completions", json=dict(CHAT, stream=True, max_tokens=2000))
    assert r.status == 200
    await r.content.readany()  # the first chunk arrived
    r.close()  # the client goes away
    await _until(lambda: fake.aborted)  # the upstream request was closed at once
    await asyncio.sleep(0.1)  # the shielded settlement runs after the cancellation
    charged = await _charged(gw)
    produced = 1 + fake.written  # the prompt (1 token) and one token per word written
    assert produced <= charged <= 1 + 3 * 4 + STOP_MARGIN_TOKENS
    assert charged < 2000


async def test_a_reasoning_models_stopped_stream_keeps_its_reservation(make_gateway, fake):
    """o4-mini thinks in hidden, billed tokens before it writes: what was relayed says nothing
    of what was generated, so stopping early is charged the whole reservation."""
    gw = await make_gateway({"rate_limit": {"tokens": ["100000/day"]},
                             "validation": {"allowed_models": ["o4-mini",
                                                               "text-embedding-3-small"]}})
    fake.chunks, fake.chunk_delay = 50, 0.05
    body = {"model": "o4-mini", "messages": [{"role": "user", "content": "hi"}],
            "stream": True, "max_completion_tokens": 2000}
    r = await gw.post("/v1/chat/completions", json=body)
    await r.content.readany()
    r.close()
    await _until(lambda: fake.aborted)
    await asyncio.sleep(0.1)
    assert await _charged(gw) == 1 + 2000  # the prompt estimate and the whole output cap


async def test_a_client_that_held_the_relay_back_keeps_the_reservation(make_gateway, fake):
    """A client that reads nothing while the upstream keeps writing, then hangs up: the
    gateway had stopped reading the upstream (its writes waited), so what it received says
    nothing of what was generated: the reservation is charged."""
    gw = await make_gateway({"rate_limit": {"tokens": ["100000/day"]}})
    fake.script = [{"chunks": 3000, "pad": 8192}]
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    body = orjson.dumps(dict(CHAT, stream=True, max_tokens=4000))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")  # the head, then nothing more is read
    await _until(lambda: fake.written > 5)
    written = -1
    while written != fake.written:  # until the upstream is held back by full buffers
        written = fake.written
        await asyncio.sleep(0.3)
    writer.transport.abort()
    await _until(lambda: fake.aborted)
    await asyncio.sleep(0.1)
    assert await _charged(gw) == 1 + 4000


@pytest.mark.parametrize("step", [{"drop_after": 2}, {"chunk_delay": 1.0}],
                         ids=["upstream-reset", "idle-timeout"])
async def test_a_stream_cut_upstream_is_charged_its_reservation(make_gateway, fake, step):
    gw = await make_gateway({"rate_limit": {"tokens": ["100000/day"]},
                             "upstream": {"idle_timeout": 0.3}})
    fake.script = [{"chunks": 10, **step}]
    r = await gw.post("/v1/chat/completions", json=dict(CHAT, stream=True, max_tokens=2000))
    assert b"upstream_interrupted" in await r.read()
    assert await _charged(gw) == 1 + 2000


async def test_a_client_gone_before_a_json_answer_leaves_it_read_settled_and_cached(
        make_gateway, fake):
    """The client hangs up while the upstream works on a non-stream answer: the upstream is
    not cut off (it would bill the answer anyway); it is read to its end, charged from its
    usage, and cached, so the next identical request is a hit."""
    gw = await make_gateway({"rate_limit": {"tokens": ["100000/day"]}})
    fake.script = [{"delay": 0.5}]
    body = dict(CHAT, temperature=0, max_tokens=2000)
    task = asyncio.ensure_future(gw.post("/v1/chat/completions", json=body))
    await asyncio.sleep(0.2)
    task.cancel()
    # The usage: 1 prompt token, 5 words (read after the client left, 0.3 s later).
    assert await _charged_when_settled(gw, 1 + 5) == 1 + 5
    assert not fake.aborted
    assert [s.path for s in fake.posts].count("/v1/chat/completions") == 1
    r = await gw.post("/v1/chat/completions", json=body)
    assert r.status == 200 and r.headers["X-Cache"] == "HIT"
    assert [s.path for s in fake.posts].count("/v1/chat/completions") == 1


async def test_a_first_byte_timeout_is_charged_its_reservation(make_gateway, fake):
    gw = await make_gateway({"rate_limit": {"tokens": ["100000/day"]},
                             "upstream": {"first_byte_timeout": 0.3, "retries": 0}})
    fake.script = [{"delay": 2}]
    r = await gw.post("/v1/chat/completions", json=dict(CHAT, max_tokens=2000))
    assert r.status == 504
    assert await _charged(gw) == 1 + 2000


async def test_an_unreachable_upstream_is_not_charged(make_gateway):
    from ..conftest import free_port
    gw = await make_gateway({"rate_limit": {"tokens": ["100000/day"]},
                             "upstream": {"base_url": f"http://127.0.0.1:{free_port()}/v1",
                                          "retries": 1}})
    r = await gw.post("/v1/chat/completions", json=dict(CHAT, max_tokens=2000))
    assert r.status == 502
    r = await gw.post("/v1/chat/completions", json=dict(CHAT, max_tokens=10))
    assert r.status == 502
    assert "x-ratelimit-remaining-tokens" not in r.headers


async def test_a_failed_upstream_refunds_the_reservation(make_gateway, fake):
    gw = await make_gateway({"rate_limit": {"tokens": ["100000/day"]},
                             "upstream": {"retries": 0}})
    fake.script = [{"status": 500}]
    r = await gw.post("/v1/chat/completions", json=dict(CHAT, max_tokens=3000))
    assert r.status == 500
    assert 100000 - await _remaining_tokens(gw) < 10


async def test_models_count_against_the_request_limit(make_gateway, fake):
    gw = await make_gateway({"rate_limit": {"requests": ["3/minute"]}})
    statuses = [(await gw.get("/v1/models")).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    r = await gw.post("/v1/chat/completions", json=CHAT)
    assert r.status == 429  # the same budget as every other route


async def test_models_ask_the_upstream_at_most_once_a_minute(make_gateway, fake):
    gw = await make_gateway()
    results = await asyncio.gather(*(gw.get("/v1/models") for _ in range(20)))
    assert {r.status for r in results} == {200}
    ids = {m["id"] for m in (await results[0].json())["data"]}
    assert ids == {"gpt-4o-mini", "text-embedding-3-small"}  # filtered to the allowlist
    assert len([s for s in fake.seen if s.path == "/v1/models"]) == 1


async def test_models_errors_are_not_remembered(make_gateway, fake):
    gw = await make_gateway({"upstream": {"retries": 0}})
    fake.script = [{"status": 503}]
    assert (await gw.get("/v1/models")).status == 503
    assert (await gw.get("/v1/models")).status == 200
    assert len([s for s in fake.seen if s.path == "/v1/models"]) == 2


async def test_a_non_stream_answer_reports_its_settled_token_budget(make_gateway, fake):
    """x-ratelimit-remaining-tokens on a JSON answer already counts that answer's usage (it
    used to lag one request behind, showing the budget before the reservation)."""
    gw = await make_gateway({"rate_limit": {"tokens": ["1000/minute"]},
                             "validation": {"max_tokens": 50}})
    r = await gw.post("/v1/chat/completions", json=CHAT)
    used = (await r.json())["usage"]["total_tokens"]
    assert int(r.headers["x-ratelimit-remaining-tokens"]) == 1000 - used

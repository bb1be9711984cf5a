"""The pipeline's own promises: settlement on every way out, /v1/models counted and cached."""
from __future__ import annotations

import asyncio

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def _remaining_tokens(gw) -> int:
    r = await gw.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
    assert r.status == 200
    return int(r.headers["x-ratelimit-remaining-tokens"])


async def test_a_stream_dropped_mid_way_settles_to_what_was_delivered(make_gateway, fake):
    """The client leaves after the first chunk of a max_tokens=2000 stream: the budget keeps
    what was delivered, not the whole reservation (it used to lose all 2,000)."""
    gw = await make_gateway({"rate_limit": {"tokens": ["100000/minute"]}})
    fake.chunks, fake.chunk_delay = 50, 0.05
    body = dict(CHAT, stream=True, max_tokens=2000)
    r = await gw.post("/v1/chat/completions", json=body)
    assert r.status == 200
    await r.content.readany()  # the first chunk arrived
    r.close()  # the client goes away
    for _ in range(100):
        if fake.aborted:
            break
        await asyncio.sleep(0.02)
    assert fake.aborted, "the upstream request was not closed"
    await asyncio.sleep(0.1)  # the shielded settlement runs after the cancellation
    left = await _remaining_tokens(gw)
    # Charged: the prompt estimate (1) + a few delivered events + this probe's reservation.
    assert 100000 - left < 100, f"the dropped stream kept {100000 - left} tokens"


async def test_a_failed_upstream_refunds_the_reservation(make_gateway, fake):
    gw = await make_gateway({"rate_limit": {"tokens": ["100000/minute"]},
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

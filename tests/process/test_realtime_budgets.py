"""Budgets and session limits that hold while realtime sessions run, through real gateway
processes: a socket closed and a WebRTC call hung up when the budget cannot cover the next
response, what OpenAI billed measured against the stated bound, `realtime.max_sessions` across
two gateways sharing memcached, and a gateway killed mid-session leaving its reservation
counted."""
from __future__ import annotations

import signal
from decimal import Decimal

import aiohttp
import orjson
import pytest

from openai_gateway.demo.fake_openai import FakeOpenAI
from openai_gateway.demo.fake_realtime import FakeRealtime
from openai_gateway.demo.realtime_session import Call
from openai_gateway.metering.prices import PriceTable, cost
from openai_gateway.pipeline.realtime_budget import TURN_INPUT_TOKENS
from openai_gateway.policy.usage import usage_of

from ..conftest import KEY
from ..support.realtime_gateway import (
    ANY_KEY,
    CAP,
    MODELS,
    OFFER,
    BrowserSocket,
    billed_usd,
    browser_ws,
    config,
    eventually,
    said,
    sdk,
)

PRICES = PriceTable()


@pytest.fixture
def rt() -> FakeRealtime:
    return FakeRealtime(api_key=KEY, models=MODELS)


@pytest.fixture
def fake(rt) -> FakeOpenAI:
    return FakeOpenAI(realtime=rt)


async def test_a_socket_whose_budget_runs_out_mid_call_is_closed_within_the_bound(
        rt, gateway_process):
    budget = Decimal("0.05")
    rt.words = 50
    gw = await gateway_process(config(rate_limit={"spend": [f"{budget}/day"]}))
    async with aiohttp.ClientSession() as http, browser_ws(http, gw.url, ANY_KEY) as ws:
        sock = BrowserSocket(ws)
        await sock.until("session.updated")
        text = {"output_modalities": ["text"]}
        await sock.send("conversation.item.create", item=said("Hello"))
        await sock.send("response.create", response=text)
        await sock.until("response.done")
        # A turn far longer than the estimate the next response was reserved with (60,000
        # characters: 15,000 tokens, some $0.06 of input on gpt-realtime): it had its
        # reservation, so it runs, and is charged whole up to the budget's end.
        await sock.send("conversation.item.create", item=said("x" * 60_000))
        await sock.send("response.create", response=text)
        await sock.until("response.done")
        # The budget cannot cover another response: the client is told why and closed.
        assert await sock.closed() == 1008
    error = sock.seen("error")[-1]["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "spend_limit_exceeded")
    assert len(rt.ledger.responses) == 2
    billed = billed_usd(rt)
    last = Decimal(cost(PRICES.price_for("gpt-realtime"),
                        usage_of(rt.ledger.responses[-1].usage))) / 1_000_000
    overshoot = billed - budget
    print(f"\nbudget ${budget}, billed ${billed}: overshoot ${overshoot} against the bound "
          f"of one response (the last cost ${last})")
    assert 0 < overshoot <= last


async def test_a_call_whose_budget_runs_out_is_hung_up(rt, gateway_process):
    """Token budgets in whole numbers: each response is reserved at TURN_INPUT_TOKENS of
    input and the cap; after two responses the third no longer fits."""
    rt.words = 50
    first = TURN_INPUT_TOKENS + CAP
    gw = await gateway_process(config(rate_limit={"tokens": [f"{first + 200}/day"]}))
    secret = await sdk(gw.url).realtime.client_secrets.create(
        session={"type": "realtime", "model": "gpt-realtime", "output_modalities": ["text"]})
    answer = await sdk(gw.url, secret.value).realtime.calls.with_raw_response.create(sdp=OFFER)
    assert answer.http_response.status_code == 201
    call_id = answer.headers["location"].rsplit("/", 1)[1]
    call: Call = rt.ledger.calls[call_id]
    assert call.token == KEY and call.session.config["max_output_tokens"] == CAP
    await eventually(lambda: any(s.via == "sideband" for s in rt.ledger.sockets))
    channel = await DataChannel(call).open()
    await channel.send("response.create")
    await eventually(lambda: len(rt.ledger.responses) == 1)
    await channel.send("response.create")
    await eventually(lambda: rt.ledger.hangups == [call_id])
    assert [b.status for b in rt.ledger.responses] == ["completed", "completed"]
    assert channel.closed
    # Each turn was within its estimate: OpenAI billed less than the budget (no overshoot).
    billed = sum(b.usage["total_tokens"] for b in rt.ledger.responses)
    print(f"\ncall: budget {first + 200} tokens, billed {billed} when it was hung up")
    assert billed <= first + 200
    line = await eventually(lambda: next((x for x in gw.log().splitlines()
                                          if "realtime webrtc" in x), None))
    assert "tokens_limit_exceeded" in line and "2 responses" in line


async def test_max_sessions_holds_across_two_gateways_on_memcached(rt, gateway_process,
                                                                    memcached_url):
    shared = config(storage={"url": memcached_url}, realtime={"max_sessions": 2},
                    rate_limit={"tokens": ["100000/day"]})
    one, two = await gateway_process(shared), await gateway_process(shared)
    async with aiohttp.ClientSession() as http:
        a = await browser_ws(http, one.url, ANY_KEY)
        b = await browser_ws(http, two.url, ANY_KEY)
        for ws in (a, b):
            await BrowserSocket(ws).until("session.updated")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with browser_ws(http, one.url, ANY_KEY):
                pass
        assert refused.value.status == 429
        await eventually(lambda: '"error":"too_many_sessions"' in one.log())
        await b.close()
        await eventually(lambda: "ended (client_closed)" in two.log())
        async with browser_ws(http, one.url, ANY_KEY) as c:  # a slot is free again
            await BrowserSocket(c).until("session.updated")
        await eventually(lambda: "ended (client_closed)" in one.log())
        # A gateway that dies mid-session (a's): its slot and its reservation stay counted.
        one.stop(signal.SIGKILL)
        async with browser_ws(http, two.url, ANY_KEY) as d:
            await BrowserSocket(d).until("session.updated")
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with browser_ws(http, two.url, ANY_KEY):
                    pass
            assert refused.value.status == 429
        async with http.post(two.url + "/v1/embeddings", json={
                "model": "text-embedding-3-small", "input": "x"}) as r:
            used = 100_000 - int(r.headers["x-ratelimit-remaining-tokens"])
    assert used >= TURN_INPUT_TOKENS + CAP  # the killed session's reserved response
    assert len(rt.ledger.sockets) == 4  # a, b, c and d: the refused ones opened nothing


class DataChannel:
    """The browser's "oai-events" data channel, attached to the call's session in the fake
    (tests/support/webrtc_peer.py attaches a real one for Chromium)."""

    def __init__(self, call: Call) -> None:
        self.call, self.events, self.closed = call, [], False

    async def open(self) -> DataChannel:
        async def send(text: str) -> None:
            self.events.append(orjson.loads(text))

        async def close(code: int) -> None:
            self.closed = True

        await self.call.session.attach("datachannel", send, close)
        return self

    async def send(self, kind: str, **fields) -> None:
        await self.call.session.receive(orjson.dumps({"type": kind, **fields}).decode(),
                                        "datachannel")

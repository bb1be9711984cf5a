"""`POST /v1/realtime/calls` through a real gateway process: the SDK's multipart `sdp` +
`session` under the caller's own identity, and the refusals that reach nothing upstream."""
from __future__ import annotations

import aiohttp
import openai
import pytest

from openai_gateway.demo.fake_openai import FakeOpenAI
from openai_gateway.demo.fake_realtime import FakeRealtime

from ..conftest import KEY, ORIGIN
from ..support.realtime_gateway import (
    ANY_KEY,
    CAP,
    MODELS,
    OFFER,
    config,
    eventually,
    sdk,
    stopped,
)


@pytest.fixture
def rt() -> FakeRealtime:
    return FakeRealtime(api_key=KEY, models=MODELS)


@pytest.fixture
def fake(rt) -> FakeOpenAI:
    return FakeOpenAI(realtime=rt)


async def test_the_sdks_multipart_call_is_created_with_the_bounded_session(rt, gateway_process):
    gw = await gateway_process(config())
    answer = await sdk(gw.url).realtime.calls.with_raw_response.create(
        sdp=OFFER, session={"type": "realtime", "model": "gpt-realtime-mini",
                            "instructions": "Be brief.", "max_output_tokens": "inf"})
    assert answer.http_response.status_code == 201
    assert answer.http_response.content.startswith(b"v=0")
    call_id = answer.headers["location"].rsplit("/", 1)[1]
    config_ = rt.ledger.calls[call_id].session.config
    assert (config_["model"], config_["instructions"], config_["max_output_tokens"]) == (
        "gpt-realtime-mini", "Be brief.", CAP)
    await eventually(lambda: any(s.via == "sideband" and s.token == KEY
                                 for s in rt.ledger.sockets))
    await stopped(gw)
    assert rt.ledger.hangups == [call_id]  # a call nothing would meter any more


async def test_calls_refused_before_anything_reaches_the_upstream(rt, gateway_process):
    gw = await gateway_process(config())
    client = sdk(gw.url)
    with pytest.raises(openai.BadRequestError) as refused:  # not in the allowlist
        await client.realtime.calls.create(sdp=OFFER, session={"type": "realtime",
                                                               "model": "gpt-4o"})
    assert refused.value.body["param"] == "session.model"
    with pytest.raises(openai.BadRequestError):  # a hosted tool
        await client.realtime.calls.create(sdp=OFFER, session={
            "type": "realtime", "model": "gpt-realtime",
            "tools": [{"type": "mcp", "server_label": "x", "server_url": "https://x.example"}]})
    async with aiohttp.ClientSession() as http:
        url = gw.url + "/v1/realtime/calls"
        headers = {"Authorization": f"Bearer {ANY_KEY}"}
        # A raw offer names its model in the query; a part OpenAI's request has not.
        async with http.post(url, data=OFFER, headers={
                **headers, "Content-Type": "application/sdp"}) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "model"
        form = aiohttp.FormData()
        form.add_field("sdp", OFFER, content_type="application/sdp")
        form.add_field("extra", "x")
        async with http.post(url, data=form, headers=headers) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "extra"
        async with http.post(url + "?model=gpt-realtime", data="not an offer",
                             headers={**headers, "Content-Type": "application/sdp"}) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "sdp"
        async with http.post(url + "?model=gpt-realtime", data=OFFER, headers={
                **headers, "Content-Type": "application/sdp",
                "Origin": "https://evil.example"}) as r:
            assert r.status == 403
        # A page of an allowed origin may read the call's id.
        async with http.post(url + "?model=gpt-realtime", data=OFFER, headers={
                **headers, "Content-Type": "application/sdp", "Origin": ORIGIN}) as r:
            assert r.status == 201
            assert "Location" in r.headers["Access-Control-Expose-Headers"]
    assert len(rt.ledger.calls) == 1
    await stopped(gw)

"""A realtime session's meter over the budgets: one response reserved while the session is
open, each settled to its usage, transcriptions charged as they come, what is left at the end
settled, and a Stop with the 429's code when the next response does not fit."""
from __future__ import annotations

import pytest
from limits import parse

from openai_gateway.config.limits import parse_spend
from openai_gateway.config.serving import RateLimitSettings
from openai_gateway.errors import ModelNotPriced, SpendLimited, TokensRateLimited
from openai_gateway.identity.callers import Caller
from openai_gateway.metering.prices import PriceTable, cost, estimate
from openai_gateway.metering.rules import Limits
from openai_gateway.observability.metrics import Metrics
from openai_gateway.pipeline.realtime_budget import TURN_INPUT_TOKENS, SessionMeter
from openai_gateway.policy.realtime_usage import Charge
from openai_gateway.policy.usage import Usage
from openai_gateway.upstream.realtime_meter import Outcome

from ..support.meter import Meter

ROUTE, MODEL, CAP = "/v1/realtime", "gpt-realtime", 200
RESERVED = TURN_INPUT_TOKENS + CAP  # the first response: a turn of input and the cap
PRICES = PriceTable()


@pytest.fixture
async def meter():
    m = Meter(RateLimitSettings(requests=(), tokens=("5000/day",), spend=("1/day",)))
    async with m.running():
        yield m


def session(m: Meter, caller: Caller | None = None, model: str = MODEL,
            metrics: Metrics | None = None, chars: int = 0) -> SessionMeter:
    return SessionMeter(limiter=m.limiter, budgets=m.budgets, prices=PRICES,
                        metrics=metrics or Metrics(), caller=caller or Caller("user:a", "-"),
                        route=ROUTE, model=model, output_cap=CAP, prompt_chars=chars)


async def used(m: Meter, caller: Caller | None = None) -> tuple[int, int]:
    """(tokens, micro-dollars) counted against the caller's budgets now."""
    r = await m.reserve(caller or Caller("user:a", "-"), ROUTE, MODEL, tokens=1, micro_usd=1)
    await m.settle(r, tokens=0, micro_usd=0)
    return (5000 - r.tokens.remaining - 1 if r.tokens else 0,
            1_000_000 - r.spend.remaining - 1 if r.spend else 0)


def response(usage: Usage | None) -> Charge:
    return Charge("response", MODEL, usage, response_id="resp_1", status="completed")


async def test_a_session_holds_one_response_and_settles_each_to_its_usage(meter):
    s = session(meter, chars=400)  # instructions: 100 tokens more input
    await s.start()
    first = estimate(PRICES.price_for(MODEL), 100 + TURN_INPUT_TOKENS, CAP,
                     audio_tokens=TURN_INPUT_TOKENS)
    assert await used(meter) == (100 + RESERVED, first)
    assert await s.before_response() is None  # takes the held reservation: nothing new
    assert await used(meter) == (100 + RESERVED, first)
    spoken = Usage(input=300, output=100, audio_input=200, audio_output=80, cached_input=50)
    assert await s.on_usage(response(spoken)) is None
    # Settled to what it cost, and the next response reserved: it reads all this turn read
    # and wrote, and a new turn.
    tokens, micro = await used(meter)
    nxt = 400 + TURN_INPUT_TOKENS
    assert tokens == 400 + nxt + CAP
    assert micro == cost(PRICES.price_for(MODEL), spoken) + estimate(
        PRICES.price_for(MODEL), nxt, CAP, audio_tokens=280 + TURN_INPUT_TOKENS)
    await s.on_end(Outcome(reason="client_closed", responses=1))
    assert await used(meter) == (400, cost(PRICES.price_for(MODEL), spoken))
    assert (s.spent.tokens_in, s.spent.tokens_out, s.spent.responses) == (300, 100, 1)


async def test_the_next_response_that_does_not_fit_stops_the_session(meter):
    caller = Caller("user:b", "-", limits=Limits(requests=(), tokens=None, spend=()))
    s = session(meter, caller)
    await s.start()
    await s.before_response()
    # 3,000 tokens used: the next reservation (their 3,000 as input, a turn, the cap) does not
    # fit the 5,000 a day.
    stop = await s.on_usage(response(Usage(input=2500, output=500)))
    assert stop is not None and (stop.code, stop.type) == ("tokens_limit_exceeded", "tokens")
    await s.on_end(Outcome(reason="stopped", stop=stop, responses=1))
    assert (await used(meter, caller))[0] == 3000


async def test_a_dollar_budget_stops_with_its_own_code(meter):
    caller = Caller("user:c", "-", limits=Limits(requests=(), tokens=(), spend=None))
    s = session(meter, caller)
    await s.start()
    await s.before_response()
    stop = await s.on_usage(response(Usage(input=20_000, output=100, audio_input=20_000)))
    assert stop is not None and (stop.code, stop.type) == ("spend_limit_exceeded",
                                                           "insufficient_quota")


async def test_a_start_that_does_not_fit_is_the_budgets_429(meter):
    tight = Caller("user:d", "-", limits=Limits(requests=(), tokens=(parse(f"{RESERVED - 1}/day"),),
                                                spend=()))
    with pytest.raises(TokensRateLimited):
        await session(meter, tight).start()
    poor = Caller("user:e", "-", limits=Limits(requests=(), tokens=(),
                                                spend=(parse_spend("0.01/day").item,)))
    with pytest.raises(SpendLimited):
        await session(meter, poor).start()
    with pytest.raises(ModelNotPriced):
        await session(meter, model="gpt-realtime-9").start()
    with pytest.raises(ModelNotPriced) as refused:
        await session(meter).start(transcription_model="gpt-unpriced-transcribe")
    assert refused.value.param == "session.audio.input.transcription.model"


async def test_what_is_left_at_the_end_is_settled(meter):
    s = session(meter)
    await s.start()
    await s.before_response()  # started: its usage never comes (the upstream closed)
    await s.before_response()  # asked for alongside, never started
    assert (await used(meter))[0] == 2 * RESERVED
    await s.on_end(Outcome(reason="upstream_closed", in_flight=1))
    assert (await used(meter))[0] == RESERVED  # the started one is charged as reserved


async def test_a_response_whose_usage_cannot_be_read_keeps_its_reservation(meter):
    s = session(meter)
    await s.start()
    await s.before_response()
    assert await s.on_usage(response(None)) is None
    await s.on_end(Outcome(reason="client_closed", responses=1))
    assert (await used(meter))[0] == RESERVED


async def test_transcriptions_are_charged_at_their_models_rates_as_they_come(meter):
    metrics = Metrics()
    s = session(meter, Caller("user:f", "-", tier="pro"), metrics=metrics)
    await s.start()
    asr = Usage(input=130, output=20, audio_input=130)
    assert await s.on_usage(Charge("transcription", "gpt-4o-transcribe", asr)) is None
    assert await s.on_usage(Charge("transcription", "whisper-1", Usage(), seconds=30.2)) is None
    await s.on_end(Outcome(reason="client_closed"))
    tokens, micro = await used(meter, Caller("user:f", "-"))
    whisper = 3100  # 31 s (by the whole second) at $0.006 a minute
    assert (tokens, micro) == (150, cost(PRICES.price_for("gpt-4o-transcribe"), asr) + whisper)
    assert metrics.spend.labels("whisper-1", "pro").value == whisper
    assert metrics.tokens.labels("gpt-4o-transcribe", "in").value == 130


async def test_a_transcription_that_uses_the_budget_up_stops_the_session(meter):
    caller = Caller("user:g", "-",
                    limits=Limits(requests=(), tokens=(parse("1300/day"),), spend=()))
    s = session(meter, caller)
    await s.start()  # 1,200 of 1,300 held for the next response
    stop = await s.on_usage(Charge("transcription", "gpt-4o-transcribe",
                                   Usage(input=150, audio_input=150)))
    assert stop is not None and stop.code == "tokens_limit_exceeded"
    unpriced = session(meter)
    await unpriced.start()
    stop = await unpriced.on_usage(Charge("transcription", "gpt-realtime-whisper", None))
    assert stop is not None and stop.code == "model_not_priced"

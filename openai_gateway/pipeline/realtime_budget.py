"""A realtime session's money: the `RealtimeMeter` the relay and the call supervision ask
(upstream.realtime_meter), over the caller's budgets, as admission and settlement do for one
request (the same store calls: `RateLimiter.count`, `Budgets.holds/take/settle`).

A session holds one reservation for its next response at all times:
- `start()`, before anything is opened upstream: the model must have a price where a dollar
  budget applies (400 `model_not_priced`), the rules naming the model count the session, and
  the first response is reserved; a refusal is the budget's 429, as for any request;
- `before_response()`: the response takes the held reservation. Only a response starting
  while another holds it (out-of-band responses run alongside) reserves its own, or stops;
- `on_usage` of a `response.done`: its reservation is settled to the usage (unreadable: the
  reservation stays charged), then the next response is reserved. When that does not fit,
  the session stops now, after the answer it paid for: the caller cannot afford another;
- `on_usage` of an input transcription: charged as it comes (nothing announces it, so nothing
  reserved it), at the transcription model's rates; when it used a budget up, the session
  stops;
- `on_end`: responses that started and never reported usage keep their reservation (charged
  as reserved); the rest goes back.
A process that dies leaves its reservations counted: the budget is charged the reserved
response of each session it held (never refunded), as for a stream.

The next response's reservation: its input estimated as what the previous response read and
wrote (a turn re-reads the whole conversation; output becomes input) plus TURN_INPUT_TOKENS
for the new turn (the first: the session's instructions and tools, about four characters a
token, plus the turn), priced at full rates (whether the prompt cache will hit is not known;
audio at `audio_input`), and the output cap (policy: `min(validation.max_tokens, 4096)`) at the
dearer of text and audio output.

The bound: every response that starts holds a reservation taken within the budget, and its
output cannot pass the cap it was reserved at; what it costs beyond its reservation (a turn
longer than the estimate) is charged up to the budget's end (settle: "it empties a budget,
never more"), and then the next reservation fails and the session ends. So a caller's spend
passes its budget by at most one response per open session (beyond its estimate: at most its
input, which the model's context bounds), and the input transcription that ends a session.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..errors import ModelNotPriced, RateLimited, TokensRateLimited
from ..identity.callers import Caller
from ..metering.budgets import Budgets, Reservation
from ..metering.limiter import Hits, RateLimiter
from ..metering.prices import Price, PriceTable, cost, estimate
from ..metering.units import settle as unit_cost
from ..observability.metrics import Metrics
from ..policy.realtime_usage import Charge
from ..policy.units import Units
from ..policy.usage import Usage
from ..upstream.realtime_meter import Outcome, Stop

log = logging.getLogger("gateway.realtime")

#: Input tokens one turn may add to the conversation, reserved with each response: some 100 s
#: of speech at OpenAI's ten audio tokens a second, or a page of text.
TURN_INPUT_TOKENS = 1000
#: What an input transcription whose usage cannot be read is charged: a turn's audio tokens,
#: or a minute of audio for a model billed by the minute.
UNREAD_TRANSCRIPTION = Usage(input=TURN_INPUT_TOKENS, audio_input=TURN_INPUT_TOKENS)
UNREAD_SECONDS = 60.0
NO_RULES = Hits([])


@dataclass(slots=True)
class Held:
    """A reservation for one response, and the tokens and micro-dollars it stands for."""

    reservation: Reservation
    tokens: int
    micro: int


@dataclass(slots=True)
class Spent:
    """What a session was charged so far (for its log line and the access record)."""

    tokens_in: int = 0
    tokens_out: int = 0
    micro: int = 0
    responses: int = 0


class SessionMeter:
    """One session's meter (see the module docstring). `closed(outcome, meter)` runs once,
    last, when the session is over (the handler's bookkeeping: slot, metrics, log)."""

    def __init__(self, *, limiter: RateLimiter, budgets: Budgets, prices: PriceTable,
                 metrics: Metrics, caller: Caller, route: str, model: str, output_cap: int,
                 prompt_chars: int,
                 closed: Callable[[Outcome, SessionMeter], Awaitable[None]] | None = None):
        self.limiter, self.budgets, self.prices, self.metrics = limiter, budgets, prices, metrics
        self.caller, self.route, self.model, self.cap = caller, route, model, output_cap
        self.price: Price | None = prices.price_for(model)
        self.dollars = budgets.spend_applies(caller, route, model)
        self.next_input = (prompt_chars + 3) // 4 + TURN_INPUT_TOKENS
        self.next_audio = TURN_INPUT_TOKENS
        #: The reservation the next response takes; responses started, oldest first.
        self.ready: Held | None = None
        self.started: deque[Held] = deque()
        self.spent = Spent()
        self._closed = closed

    # --- before the session opens ---------------------------------------------------------

    def priced(self, model: str | None, param: str) -> None:
        """ModelNotPriced (400) when a dollar budget applies and `model` has no price."""
        if model is not None and self.dollars and self.prices.price_for(model) is None:
            raise ModelNotPriced(
                f"The model '{model[:100]}' has no price in this gateway's [prices] table, and "
                "a dollar budget applies to this session.", param=param)

    async def start(self, transcription_model: str | None = None) -> None:
        """Reserve the first response before the session opens; raises the refusal (429) of a
        budget or a rule naming the model, or 400 `model_not_priced`."""
        self.priced(self.model, "session.model")
        self.priced(transcription_model, "session.audio.input.transcription.model")
        limiter = self.limiter
        rules = limiter.hits(self.caller, self.route, self.model, rules_only=True) \
            if limiter.has_model_rules else NO_RULES
        try:
            self.ready = await self._reserve(rules)
        except RateLimited as exc:
            self._refused(exc)
            raise

    async def _reserve(self, rules: Hits = NO_RULES) -> Held:
        """One response at the cap, with the input estimate; raises the refusal (of a budget,
        or of `rules`: the request windows naming the model, counted at the session's start)."""
        tokens = self.next_input + self.cap
        micro = estimate(self.price, self.next_input, self.cap,
                         audio_tokens=self.next_audio) if self.price is not None else 0
        holds = self.budgets.holds(self.caller, self.route, self.model, tokens,
                                   micro if self.dollars else None)
        if not holds and not rules:
            return Held(Reservation(), tokens, micro)
        counted = await self.limiter.count(rules.windows + self.budgets.hits(holds))
        if counted is None:  # the store failed and on_error is "open": nothing counted
            return Held(Reservation(), tokens, micro)
        self.limiter.verdict(counted, rules)
        return Held(self.budgets.take(counted, holds, time.time()), tokens, micro)

    # --- RealtimeMeter --------------------------------------------------------------------

    async def before_response(self) -> Stop | None:
        held, self.ready = self.ready, None
        if held is None:
            try:
                held = await self._reserve()
            except RateLimited as exc:
                return self._refused(exc)
        self.started.append(held)
        return None

    async def on_usage(self, charge: Charge) -> Stop | None:
        if charge.kind == "response":
            return await self._response(charge)
        return await self._transcription(charge)

    async def _response(self, charge: Charge) -> Stop | None:
        held = self.started.popleft() if self.started else None
        usage = charge.usage
        if usage is None:  # unreadable: it may have cost all it was reserved
            tokens, micro = (held.tokens, held.micro) if held else (0, 0)
            if held is None:
                log.warning("realtime: a response without usage nor reservation")
        else:
            tokens = usage.input + usage.output
            micro = cost(self.price, usage) if self.price is not None else 0
            self._account(self.model, usage, micro)
            # Everything this turn read and wrote is read again by the next one.
            self.next_input = usage.input + usage.output + TURN_INPUT_TOKENS
            self.next_audio = usage.audio_input + usage.audio_output + TURN_INPUT_TOKENS
        if usage is None:
            self._account(self.model, None, micro)
        self.spent.responses += 1
        if held is not None:
            await self.budgets.settle(held.reservation, tokens=tokens, micro_usd=micro)
        else:
            refused = await self.budgets.charge(self.caller, self.route, self.model,
                                                tokens=tokens,
                                                micro_usd=micro if self.dollars else None)
            if refused is not None:
                return self._refused(refused)
        if self.ready is None and not self.started:
            try:
                self.ready = await self._reserve()
            except RateLimited as exc:
                return self._refused(exc)
        return None

    async def _transcription(self, charge: Charge) -> Stop | None:
        price = self.prices.price_for(charge.model) if charge.model else None
        usage = charge.usage if charge.usage is not None else UNREAD_TRANSCRIPTION
        # Tokens or seconds, as the model bills; unreadable: the dearer of a turn's tokens and
        # a minute.
        billed = ((UNREAD_TRANSCRIPTION, Usage(seconds=UNREAD_SECONDS)) if charge.usage is None
                  else (Usage(seconds=charge.seconds),) if charge.seconds else (usage,))
        stop: Stop | None = None
        micro = 0
        if price is not None:
            micro = max(unit_cost(price, Units("transcription"), u) or 0 for u in billed)
        elif self.dollars:
            stop = Stop("model_not_priced", f"The transcription model '{charge.model[:100]}' "
                        "has no price in this gateway's [prices] table, and a dollar budget "
                        "applies to this session.", "invalid_request_error")
        self._account(charge.model or self.model, None if charge.seconds else usage, micro)
        refused = await self.budgets.charge(self.caller, self.route, charge.model or None,
                                            tokens=usage.input + usage.output,
                                            micro_usd=micro if self.dollars else None)
        if refused is not None:
            return self._refused(refused)
        return stop

    async def on_end(self, outcome: Outcome) -> None:
        try:
            for i, held in enumerate(self.started):
                if i < outcome.in_flight:  # started, never reported: charged as reserved
                    self._account(self.model, None, held.micro)
                    await self.budgets.settle(held.reservation, tokens=held.tokens,
                                              micro_usd=held.micro)
                else:  # asked for, never started
                    await self.budgets.settle(held.reservation, tokens=0, micro_usd=0)
            self.started.clear()
            if self.ready is not None:
                await self.budgets.settle(self.ready.reservation, tokens=0, micro_usd=0)
                self.ready = None
        finally:
            if self._closed is not None:
                await self._closed(outcome, self)

    # --- bookkeeping ----------------------------------------------------------------------

    def _refused(self, exc: RateLimited) -> Stop:
        """The Stop of a refusal (counted like a refused request). A token budget's code is
        `tokens_limit_exceeded` in the error event: its HTTP 429 says `rate_limit_exceeded`
        with type `tokens`, and an event's code alone must say which limit ended it."""
        kind = "tokens" if isinstance(exc, TokensRateLimited) else (
            "budget" if exc.code == "budget_exceeded" else
            "spend" if exc.code == "spend_limit_exceeded" else "requests")
        self.metrics.rate_limited.labels(kind).inc()
        if isinstance(exc, TokensRateLimited):
            return Stop("tokens_limit_exceeded", exc.message, exc.type)
        return Stop.of(exc)

    def _account(self, model: str, usage: Usage | None, micro: int) -> None:
        """The metrics' and the session's share of one charge (usage None: a reservation
        charged, no tokens reported)."""
        spent, metrics = self.spent, self.metrics
        if usage is not None:
            spent.tokens_in += usage.input
            spent.tokens_out += usage.output
            if usage.input:
                metrics.tokens.labels(model, "in").inc(usage.input)
            if usage.output:
                metrics.tokens.labels(model, "out").inc(usage.output)
        if micro:
            spent.micro += micro
            metrics.spend.labels(self.prices.label_for(model), self.caller.tier or "none").inc(
                micro)

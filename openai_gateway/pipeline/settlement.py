"""Settlement: bring a request's reservation to what the upstream can bill for it, once, on
every way out (answers, errors, timeouts, clients that left).

Money is settled by what the upstream can bill, never by what the client chose to read
(`charge`): once a request may have reached the upstream, leaving early is never cheaper than
reading the answer. The access log and the metrics get each request's share here.
"""
from __future__ import annotations

import logging
import time

from ..metering import units as unit_money
from ..metering.budgets import Budgets, Reservation
from ..metering.prices import MICRO, Price, PriceTable, cost
from ..metering.tally import SpendTally
from ..observability.metrics import Metrics
from ..policy import STOP_MARGIN_TOKENS, Usage
from ..upstream.sse import StreamOutcome
from .exchange import Exchange

log = logging.getLogger("gateway.proxy")
#: The gauges' `period` label for each gateway-wide ceiling.
PERIODS = {"daily": "day", "monthly": "month"}


def charge(ex: Exchange) -> tuple[Usage, int, str]:
    """(tokens, micro-dollars, how) a request is charged: what the upstream can bill for it,
    known or bounded from above.

    The voice and pictures routes (a request with `units`) follow the same rules, priced by
    metering.units: an answer's usage may be seconds (whisper-1); a model billed by the
    character, the minute or the image costs its request's units whatever the answer said
    ("units"); token-billed speech audio relayed whole is bounded by the seconds it plays
    ("relayed"); else the reservation."""
    price, units = ex.price, ex.valid.units
    if ex.usage is not None:  # the upstream's own count
        return ex.usage, _cost(ex, ex.usage), "usage"
    if not ex.billable:  # never reached the upstream, or it refused the request
        return Usage(), 0, "none"
    # Usage unknown: the answer may have been generated whole. The reservation covers it;
    # what follows is a tighter bound where one is known (never above the reservation, which
    # bounds any answer of this request).
    reserved = ex.reads(ex.reserved_tokens - ex.reserved_input)
    if ex.stopped is not None and price is not None:
        micro = _cost(ex, ex.stopped)
        if ex.stopped.total < ex.reserved_tokens and micro <= ex.reserved_micro:
            return ex.stopped, micro, "stopped"
    if ex.relayed is not None and price is not None:
        micro = _cost(ex, ex.relayed)
        if micro <= ex.reserved_micro:
            return ex.relayed, micro, "relayed"
    if units is not None and price is not None and _bills_units(price):
        billed = unit_money.settle(price, units, None)
        if billed is not None and billed <= ex.reserved_micro:
            return reserved, billed, "units"
    return reserved, ex.reserved_micro if price is not None else 0, "reservation"


def _bills_units(price: Price) -> bool:
    """The model bills minutes, characters or images (its bill follows from the request)."""
    rates = price.units
    return bool(rates.per_minute or rates.per_million_chars or rates.per_image)


def _cost(ex: Exchange, used: Usage) -> int:
    """Micro-dollars of `used` at the request's price (0 unpriced); a voice or pictures
    request by metering.units, which also prices seconds."""
    if ex.price is None:
        return 0
    units = ex.valid.units
    if units is None:
        return cost(ex.price, used)
    micro = unit_money.settle(ex.price, units, used)
    return micro if micro is not None else ex.reserved_micro


def stream_usage(ex: Exchange, outcome: StreamOutcome) -> None:
    """What a stream can cost: the upstream's count; or, for a stream its client stopped after
    an event while the gateway kept up with the upstream, the prompt, the output received and
    a margin for what was in flight -- except for models that reason before they write
    (hidden tokens, billed) and models without a price: those, like every other cut stream,
    keep the reservation."""
    ex.usage = outcome.usage
    # Not for images, speech or transcripts: an image stopped midway is still made whole.
    if (ex.usage is None and outcome.stopped_by_client and outcome.sent_bytes
            and ex.price is not None and not ex.price.reasoning and ex.valid.units is None):
        ex.stopped = ex.reads(outcome.output.tokens + STOP_MARGIN_TOKENS)


class Settlement:
    def __init__(self, budgets: Budgets, tally: SpendTally, metrics: Metrics):
        self.budgets = budgets
        self.tally = tally
        self.metrics = metrics
        #: Periods whose budget.warn_at warning was logged (once per process).
        self._warned: set[str] = set()

    def configure(self, prices: PriceTable, warn_at: float) -> None:
        self.prices = prices
        self.warn_at = warn_at

    async def settle(self, ex: Exchange) -> dict[str, str]:
        """Bring the reservation to what the upstream can bill; once per exchange. Returns the
        budget headers after settling (empty when there are none)."""
        if ex.settled or ex.parsed is None:
            return {}
        ex.settled = True
        used, micro, how = charge(ex)
        self._account(ex, used, micro, how)
        reservation = ex.reservation if ex.reservation is not None else Reservation()
        # The tallies ride along in the budgets' store call (one call, one round trip).
        tally = self.tally.charges(ex.caller.tier, micro, now=time.time())
        headers = await self.budgets.settle(reservation, tokens=used.input + used.output,
                                            micro_usd=micro, also_charge=tally)
        if ex.reservation is None:
            return {}
        ex.settled_headers = headers
        if micro and reservation.ceilings:
            self._watch_budget(reservation.ceilings)
        return headers

    def _account(self, ex: Exchange, used: Usage, micro: int, how: str) -> None:
        """The access log's and the metrics' share of a settled request."""
        rec = ex.record
        rec.charged = how
        model = ex.valid.model or "none"
        metrics = self.metrics
        if ex.usage is not None:  # tokens the upstream reported (not our bounds)
            rec.tokens_in, rec.tokens_out = used.input, used.output
            if used.input:
                metrics.tokens.labels(model, "in").inc(used.input)
            if used.output:
                metrics.tokens.labels(model, "out").inc(used.output)
        if ex.price is not None and (micro or used.input or used.output):
            rec.cost_usd = micro / MICRO
            metrics.spend.labels(self.prices.label_for(model), self.tally.label(ex.caller.tier)
                                 ).inc(micro)

    def _watch_budget(self, ceilings: dict[str, tuple[int, int]]) -> None:
        """The gateway-wide ceilings' gauges after a charge, from what settling left of them,
        and the warn_at warning (once per crossing, in each process)."""
        for name, (limit, left) in ceilings.items():
            period = PERIODS.get(name, name)
            self.metrics.budget_remaining.labels(period).value = left
            spent = limit - left
            crossed = spent >= self.warn_at * limit
            self.metrics.budget_warn.labels(period).value = 1 if crossed else 0
            if not crossed:  # a new day or month: warn again when it is crossed again
                self._warned.discard(period)
            elif period not in self._warned:
                self._warned.add(period)
                log.warning("the gateway's %s spend has crossed %.0f%% of its ceiling: $%.2f "
                            "of $%.2f spent", name, self.warn_at * 100,
                            spent / MICRO, limit / MICRO)

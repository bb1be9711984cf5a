"""Admission: the steps that ask the store, as two questions.

1. Before the body is read: may this caller send a request at all (its request limits and its
   route's rules)? Every request to a forwarded route counts, valid or not.
2. Once the request is validated: may it cost what it may cost, and is its answer cached? The
   rules naming its model, every token and dollar budget (its worst case reserved) and the
   cache entry go in ONE store call (one round trip on a shared store, when the cache lives
   there too). A hit reserves nothing: what was reserved along goes back before the answer.
The pipeline never learns which store answered or whether it batched.
"""
from __future__ import annotations

import time

from ..cache.keys import Entry
from ..cache.prompts import PromptCache
from ..errors import BudgetExceeded, ModelNotPriced, RateLimited, SpendLimited, TokensRateLimited
from ..metering import units as unit_money
from ..metering.budgets import Budgets, Reservation
from ..metering.headers import limit_headers
from ..metering.limiter import NO_HITS, RateLimiter
from ..metering.prices import PriceTable, estimate
from ..observability.metrics import Metrics
from . import media
from .exchange import Exchange


class Admission:
    def __init__(self, limiter: RateLimiter, budgets: Budgets, cache: PromptCache,
                 metrics: Metrics):
        self.limiter = limiter
        self.metrics = metrics
        self.budgets = budgets
        self.cache = cache
        #: Whether the cache's entries can be read in the limiter's batches (same store).
        self.batched_reads = cache.store is limiter.store

    def configure(self, prices: PriceTable) -> None:
        self.prices = prices

    async def count_request(self, ex: Exchange) -> None:
        """Question 1; raises RateLimited."""
        try:
            state = await self.limiter.check(ex.caller, ex.route)
        except RateLimited:
            ex.record.rate_limit = "requests"
            self.metrics.rate_limited.labels("requests").inc()
            raise
        ex.record.rate_limit = "ok"
        if state is not None:
            ex.headers.update(limit_headers(state, None))

    async def admit(self, ex: Exchange) -> Entry | None:
        """Question 2: the cached answer (which reserved nothing), or None with the budgets
        reserved (`ex.reservation`) and the exchange's cache key set when it is cacheable.
        Raises the 429 of a refused rule or budget, or 400 `model_not_priced`."""
        parsed, rec = ex.valid, ex.record
        ex.reserved_tokens = parsed.estimate
        ex.reserved_input = parsed.prompt_tokens  # text, images, audio, files
        # The money is worked out before the budgets when a dollar budget applies (an unpriced
        # model is then refused) or the request is priced by its units (an image's output
        # tokens join its token reservation), else only once it goes upstream (a miss).
        spend = self.budgets.spend_applies(ex.caller, ex.route, parsed.model)
        priced = spend or parsed.units is not None
        micro = self._price(ex, refuse_unpriced=spend) if priced else None
        rec.cache = self.cache.policy(ex.route, parsed, ex.request.headers.get("Cache-Control"))
        if rec.cache is None:
            ex.cache_key = self.cache.key(ex.caller, ex.route, media.key_body(ex),
                                          ex.request.headers)
        limiter = self.limiter
        rules = limiter.hits(ex.caller, ex.route, parsed.model, rules_only=True) \
            if parsed.model is not None and limiter.has_model_rules else NO_HITS
        holds = self.budgets.holds(ex.caller, ex.route, parsed.model, ex.reserved_tokens, micro)
        entry = None
        ex.reservation = Reservation()
        # The cache entry rides along with what is counted; with nothing to count it is read
        # on its own (the same one round trip, without the counting's bookkeeping).
        reads = [ex.cache_key] if (rules or holds) and ex.cache_key is not None \
            and self.batched_reads else []
        if rules or holds:
            counted = await limiter.count(rules.windows + self.budgets.hits(holds), reads)
            if counted is not None:
                try:
                    state = limiter.verdict(counted, rules)
                    ex.reservation = self.budgets.take(counted, holds, time.time())
                except RateLimited as exc:
                    self._refused(ex, exc)
                    raise
                if state is not None:
                    ex.headers.update(limit_headers(state, None))
                if reads:
                    entry = self.cache.decode(counted.extra.get(reads[0]))
        if ex.cache_key is not None and not reads:
            entry = await self.cache.get(ex.cache_key)
        if entry is None and not priced:
            self._price(ex, refuse_unpriced=False)
        if entry is not None and ex.reservation.holds:
            # A hit spends nothing: what was reserved along goes back before we answer.
            await self.budgets.settle(ex.reservation, tokens=0, micro_usd=0)
            ex.reservation = None
        elif parsed.stream:
            # A stream's headers leave before its usage is known: they show the budgets as
            # reserved. A complete answer settles first and shows the settled values.
            ex.headers.update(ex.reservation.headers)
        if rec.cache is None:
            rec.cache = "HIT" if entry is not None else "MISS"
        self.metrics.cache.labels(rec.cache).inc()
        ex.headers["X-Cache"] = rec.cache
        return entry

    def _price(self, ex: Exchange, *, refuse_unpriced: bool) -> int | None:
        """The request's worst case in micro-dollars, when its model is priced (the tokens'
        one is set already). `refuse_unpriced`: a dollar budget applies, so a model without a
        price that bounds the request is a 400."""
        parsed = ex.valid
        tokens, prompt = ex.reserved_tokens, ex.reserved_input
        ex.price = price = self.prices.price_for(parsed.model) if parsed.model else None
        if price is not None and parsed.units is not None:
            # Voice and pictures: what the request asks to be made, priced by its units.
            micro = unit_money.reserve(price, parsed.units)
            if micro is None:  # the model's row cannot bound it: as good as unpriced
                ex.price = price = None
            else:
                ex.reserved_micro = micro
                ex.reserved_tokens += unit_money.image_output_tokens(price, parsed.units)
        elif price is not None:
            ex.reserved_micro = estimate(price, prompt, tokens - prompt,
                                         image_tokens=parsed.image_tokens,
                                         audio_tokens=parsed.audio_tokens)
        if not refuse_unpriced:
            return None
        if price is None:
            raise ModelNotPriced(
                f"The model '{(parsed.model or '')[:100]}' has no price in this gateway's "
                "[prices] table that bounds this request (an image model needs its "
                "image_tokens or per_image), and a dollar budget applies to it.", param="model")
        return ex.reserved_micro

    def _refused(self, ex: Exchange, exc: RateLimited) -> None:
        kind = ("budget" if isinstance(exc, BudgetExceeded) else "spend"
                if isinstance(exc, SpendLimited) else "tokens"
                if isinstance(exc, TokensRateLimited) else "requests")
        ex.record.rate_limit = kind
        self.metrics.rate_limited.labels(kind).inc()

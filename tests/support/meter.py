"""The metering components of one process, driven the way the pipeline's admission drives them,
without an app: for the tests of request limits and budgets on every store."""
from __future__ import annotations

import time
from contextlib import asynccontextmanager
from types import SimpleNamespace

from openai_gateway.config.storage import parse_storage_url
from openai_gateway.metering.budgets import Budgets, Reservation
from openai_gateway.metering.headers import LimitState
from openai_gateway.metering.limiter import RateLimiter, StoragePolicy
from openai_gateway.metering.rules import Rules
from openai_gateway.observability.metrics import Metrics
from openai_gateway.store import open_store


class Meter:
    """`RateLimiter` and `Budgets` on one store opened from `url`."""

    def __init__(self, settings, url: str = "memory://", *, on_error: str = "closed",
                 budget=None, timeout: float = 0.5, password: str = ""):
        self.store = open_store(parse_storage_url(url), timeout=timeout, password=password)
        policy = StoragePolicy(on_error, Metrics())
        self.limiter = RateLimiter(self.store, policy)
        self.budgets = Budgets(self.store, policy, self.limiter.ident)
        self.configure(settings, budget=budget)

    def configure(self, settings, *, budget=None) -> None:
        rules = Rules(settings, budget or SimpleNamespace(daily_usd=0, monthly_usd=0))
        self.limiter.configure(rules, getattr(settings, "strategy", "auto"))
        self.budgets.configure(rules)

    @property
    def strategy(self) -> str:
        return self.limiter.strategy

    @asynccontextmanager
    async def running(self):
        try:
            yield self
        finally:
            await self.store.close()

    async def check_requests(self, caller, route: str, model: str | None = None
                             ) -> LimitState | None:
        """The request windows of a request (the caller's, its route's and its model's
        rules), counted at once; raises RateLimited."""
        hits = self.limiter.hits(caller, route, model)
        if not hits:
            return None
        counted = await self.limiter.count([h for h, _ in hits])
        return None if counted is None else self.limiter.verdict(counted, hits)

    async def reserve(self, caller, route: str, model: str | None, *, tokens: int,
                      micro_usd: int | None) -> Reservation:
        """The budgets' reservation of a request; raises their refusal."""
        holds = self.budgets.holds(caller, route, model, tokens, micro_usd)
        if not holds:
            return Reservation()
        counted = await self.limiter.count(self.budgets.hits(holds))
        if counted is None:
            return Reservation()
        return self.budgets.take(counted, holds, time.time())

    async def settle(self, reservation: Reservation, *, tokens: int, micro_usd: int
                     ) -> dict[str, str]:
        return await self.budgets.settle(reservation, tokens=tokens, micro_usd=micro_usd)

    async def gateway_spend(self) -> dict[str, dict]:
        return await self.budgets.gateway_spend()

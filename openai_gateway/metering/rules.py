"""Which limits apply to a request: the caller's own, the rules, the gateway-wide ceilings.

A caller's own limits are its client key's or its tier's (`Limits`, carried by the caller),
else the `[rate_limit]` defaults; every matching `[[rate_limit.rules]]` entry applies in
addition; for dollars, the gateway-wide ceilings of `[budget]` too. Limits arrive parsed from
the settings (`limits.RateLimitItem`s; dollar budgets as `SpendLimit`s of micro-dollars) and are
prepared here once, so the request path builds no strings but the counters' keys.
"""
from __future__ import annotations

from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerMonth

from ..config.limits import MICRO

TOKENS, SPEND = "tok", "usd"  # the budgets' kinds (part of their keys)
GATEWAY = "gateway"  # the scope of the gateway-wide ceilings, budget.daily_usd / monthly_usd
EVERYONE = "*"  # their identifier: one counter for all callers (no caller id is "*")


@dataclass(frozen=True, slots=True)
class Limit:
    """A RateLimitItem made ready for the per-request path (no string building there)."""

    item: RateLimitItem
    amount: int
    expiry: int  # the window, seconds
    namespace: str
    suffix: str  # limits' key tail: a limit that survives a reload keeps its counters
    per: str  # the window for people: "minute", "2 hours"

    @classmethod
    def of(cls, item: RateLimitItem) -> Limit:
        name, multiples = item.GRANULARITY.name, item.multiples
        return cls(item, item.amount, item.get_expiry(), item.namespace,
                   f"/{item.amount}/{multiples}/{name}",
                   name if multiples == 1 else f"{multiples} {name}s")

    def key(self, kind: str, ident: str, scope: str) -> str:
        """limits' own key, `item.key_for(kind, ident, scope)`."""
        return f"{self.namespace}/{kind}/{ident}/{scope}{self.suffix}"


def prepared(values) -> tuple[Limit, ...] | None:
    """Limits from RateLimitItems (or objects carrying one as `.item`, like the settings'
    SpendLimit), shortest window first: a request refused by the minute never touches the
    day's count. None stays None: "not set, use the defaults"."""
    if values is None:
        return None
    items = (getattr(value, "item", value) for value in values)
    return tuple(sorted((Limit.of(i) for i in items), key=lambda limit: limit.expiry))


@dataclass(frozen=True, slots=True, init=False)
class Limits:
    """The limits a caller chose (its client key's, its tier's). Each kind: None = the
    defaults ([rate_limit]); () = none at all. `spend` items count micro-dollars."""

    requests: tuple[Limit, ...] | None
    tokens: tuple[Limit, ...] | None
    spend: tuple[Limit, ...] | None

    def __init__(self, requests=None, tokens=None, spend=None):
        object.__setattr__(self, "requests", prepared(requests))
        object.__setattr__(self, "tokens", prepared(tokens))
        object.__setattr__(self, "spend", prepared(spend))


@dataclass(frozen=True, slots=True)
class Rule:
    scope: str  # "rule<i>": part of its counters' keys
    route: str
    model: str
    limits: Limits


def ceilings(budget) -> tuple[tuple[str, Limit], ...]:
    """("daily" | "monthly", limit) for budget.daily_usd / budget.monthly_usd above 0."""
    out = []
    for name, usd, per in (("daily", getattr(budget, "daily_usd", 0), RateLimitItemPerDay),
                           ("monthly", getattr(budget, "monthly_usd", 0), RateLimitItemPerMonth)):
        if usd and usd > 0:
            out.append((name, Limit.of(per(round(usd * MICRO)))))
    return tuple(out)


class Rules:
    """The limits of every request, built once per settings (`[rate_limit]`, `[budget]`)."""

    def __init__(self, settings, budget=None):
        self.defaults = Limits(settings.requests, settings.tokens, getattr(settings, "spend", ()))
        self.rules = tuple(Rule(f"rule{i}", r.route, r.model,
                                Limits(r.requests, r.tokens, getattr(r, "spend", ())))
                           for i, r in enumerate(settings.rules))
        self.gateway = ceilings(budget)
        self.model_rules = frozenset(rule.scope for rule in self.rules
                                     if rule.model and rule.limits.requests)
        #: Budgets any caller has whatever its own limits (the defaults, rules, the ceilings).
        self.any_budget = bool(self.gateway or any(
            limits.tokens or limits.spend
            for limits in (self.defaults, *(r.limits for r in self.rules))))

    def scopes(self, own: Limits | None, route: str, model: str | None,
               kind: str) -> list[tuple[str, tuple[Limit, ...]]]:
        """(scope, limits) pairs of one kind ("requests", "tokens", "spend") for a request."""
        mine = getattr(own, kind) if own is not None else None
        base = getattr(self.defaults, kind) if mine is None else mine
        out = [("all", base)] if base else []
        for rule in self.rules:
            limits = getattr(rule.limits, kind)
            if limits and (not rule.route or rule.route == route) and (
                    not rule.model or rule.model == model):
                out.append((rule.scope, limits))
        return out

    def budgeted(self, own: Limits | None) -> bool:
        """Whether any token or dollar budget may apply to this caller."""
        return self.any_budget or bool(own is not None and (own.tokens or own.spend))

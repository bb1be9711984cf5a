"""Budgets of units (tokens, micro-dollars): reserved before a request, settled after it.

A budget is a `limits` sliding-window counter of units: tokens, or micro-dollars (integers,
1 USD = 1_000_000, so memcached's `incr` counts them). Before a request is forwarded its
estimate is reserved against every budget that applies, all or nothing; afterwards `settle`
brings each reservation to the real usage: an overrun is charged (it empties a budget, never
more), the rest goes back to the window it was taken from.

- memory: `MemoryBook`, synchronous, so a reservation is exact (nothing interleaves).
- memcached ring or Redis: `SharedBook` over the store's batches (`store/sliding.py`, the same
  arithmetic as limits' `SlidingWindowCounterRateLimiter`): the reservation is counted first and
  re-checked, so parallel requests cannot pass a budget together either; a refund is a `decr`
  of the window the reservation went into.

Windows are limits' granularities: a day is 86,400 s and a month is 30 days (2,592,000 s),
counted as limits' sliding-window counter counts them (the current fixed window, aligned to the
Unix epoch, plus the previous one weighted by how much of it the sliding window still covers).
"""
from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from limits import RateLimitItem, parse, parse_many

from ..errors import BudgetExceeded, RateLimited, SpendLimited, TokensRateLimited
from ..store import BatchStore, sliding
from ..store import Window as SWindow
from ..store.memory import MemoryStore, Window
from .headers import MICRO, LimitState, format_reset, format_usd, limit_headers, retry_after

TOKENS, SPEND = "tok", "usd"  # the counters' kinds (part of their keys)
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
        """limits' own key, `item.key_for(kind, ident, scope)`, so both paths share counters."""
        return f"{self.namespace}/{kind}/{ident}/{scope}{self.suffix}"


def spend_item(text: str) -> RateLimitItem:
    """A dollar budget, "0.50/day" or "10 per month", as a limit of micro-dollars."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(/|per\b)(.+)", text)
    try:
        micro = Decimal(match.group(1)) * MICRO if match else None
        window = parse(f"1 {match.group(2)}{match.group(3)}") if match else None
    except (InvalidOperation, ValueError):
        window = None
    if window is None or micro is None or micro != int(micro):
        raise ValueError(f'{text!r}: expected dollars per window, e.g. "0.50/day", "10/month"')
    return type(window)(int(micro), window.multiples)


def limits_of(values, spend: bool = False) -> tuple[Limit, ...] | None:
    """Limits from RateLimitItems (for spend: of micro-dollars, or objects carrying one as
    `.item`, like settings' SpendLimit), shortest window first: a request refused by the
    minute never touches the day's count. None stays None: "not set, use the defaults"."""
    if values is None:
        return None
    items = []
    for value in values:
        # MERGE ADAPTER: until settings hands over parsed RateLimitItems, strings are parsed
        # here (spend strings as dollars). Remove with the settings change.
        if isinstance(value, str):
            items.extend([spend_item(value)] if spend else parse_many(value))
        else:
            items.append(getattr(value, "item", value))
    return tuple(sorted((Limit.of(i) for i in items), key=lambda limit: limit.expiry))


@dataclass(frozen=True, slots=True, init=False)
class Limits:
    """The limits a caller chose (its client key's, its tier's). Each kind: None = the
    defaults ([rate_limit]); () = none at all. `spend` items count micro-dollars."""

    requests: tuple[Limit, ...] | None
    tokens: tuple[Limit, ...] | None
    spend: tuple[Limit, ...] | None

    def __init__(self, requests=None, tokens=None, spend=None):
        object.__setattr__(self, "requests", limits_of(requests))
        object.__setattr__(self, "tokens", limits_of(tokens))
        object.__setattr__(self, "spend", limits_of(spend, spend=True))


@dataclass(slots=True, eq=False)
class Hold:
    """One budget's part of a reservation."""

    kind: str  # TOKENS or SPEND
    scope: str  # "all" (the caller's own), "rule<i>", GATEWAY
    ident: str
    limit: Limit
    key: str
    amount: int  # units reserved
    at: float = 0.0  # when: a refund goes back to the window current then


@dataclass(slots=True, eq=False)
class Reservation:
    """What `reserve` took; `settle` it exactly once (a second settle does nothing)."""

    holds: tuple[Hold, ...] = ()
    tokens: LimitState | None = None  # the tightest token budget, after the reservation
    spend: LimitState | None = None  # the tightest of the caller's dollar budgets, after it
    settled: bool = False

    @property
    def headers(self) -> dict[str, str]:
        """x-ratelimit-*-tokens / -spend as reserved: for answers whose headers leave before
        the usage is known (streams). Gateway-wide ceilings are never shown to a caller."""
        return limit_headers(tokens=self.tokens, spend=self.spend)


def tightest(holds, states) -> tuple[LimitState | None, LimitState | None]:
    tokens = spend = None
    for hold, state in zip(holds, states, strict=True):
        if hold.kind == TOKENS:
            if tokens is None or state.remaining < tokens.remaining:
                tokens = state
        elif hold.scope != GATEWAY and (spend is None or state.remaining < spend.remaining):
            spend = state
    return tokens, spend


# --- a sliding-window counter's arithmetic (limits' own test: floor(weighted) + n <= limit) ---


def remaining(limit: Limit, window: Window) -> int:
    previous, previous_ttl, current, _ = window
    return max(limit.amount - math.floor(previous * previous_ttl / limit.expiry + current), 0)


def full_reset(window: Window) -> float:
    """Seconds until nothing counts any more (OpenAI's x-ratelimit-reset-* meaning)."""
    previous, previous_ttl, current, current_ttl = window
    return current_ttl if current else previous_ttl if previous else 0.0


def wait_for(limit: Limit, window: Window, need: int) -> float:
    """Seconds until `need` units fit: the weighted count must fall below limit - need + 1."""
    previous, _, current, current_ttl = window
    expiry, room = limit.expiry, limit.amount - need + 1
    turn = current_ttl - expiry  # until the current window becomes the previous one
    if room <= 0:
        return float(expiry)  # more than the whole budget: it never fits
    if current < room:  # the previous window's weight has to shrink, linearly, to zero
        if previous * turn / expiry + current < room:
            return 0.0
        return max(turn - (room - current) * expiry / previous, 0.0)
    # The current count has to become the previous window's and lose enough weight.
    return turn + expiry * (1 - room / current)


def state(limit: Limit, window: Window) -> LimitState:
    return LimitState(limit.amount, remaining(limit, window), full_reset(window))


def refusal(hold: Hold, window: Window) -> RateLimited:
    """The 429 for a budget that cannot hold `hold.amount` now; Retry-After is when it can.

    A request whose worst case is more than the whole budget never fits, however long it
    waits: its message says so and what to change, instead of "limit reached"."""
    limit, need = hold.limit, hold.amount
    left, wait = remaining(limit, window), wait_for(limit, window, hold.amount)
    again = f"Please try again in {format_reset(wait)}."
    never = need > limit.amount
    if hold.kind == TOKENS:
        text = (f"This request may use up to {need} tokens (its input and its output cap), more "
                f"than the whole token budget of {limit.amount} per {limit.per}: it can never "
                f"fit. {SMALLER}" if never else
                f"Rate limit reached for tokens: {limit.amount} per {limit.per}, {left} left, "
                f"this request needs about {need}. {again}")
        return TokensRateLimited(
            text, headers={"Retry-After": retry_after(wait),
                           **limit_headers(tokens=LimitState(limit.amount, left, wait))},
            log_detail=f"limit={limit.amount}/{limit.per} tokens" + (" never" if never else ""))
    budget = f"{format_usd(limit.amount)} per {limit.per}"
    if never:
        whose = "the gateway's whole budget for all clients" if hold.scope == GATEWAY \
            else "the whole spending limit"
        text = (f"This request may cost up to {format_usd(need)} (its input and its output cap "
                f"at the model's prices), more than {whose} of {budget}: it can never fit. "
                f"{SMALLER}")
    elif hold.scope == GATEWAY:
        text = (f"The gateway's budget is used up: {budget} for all clients, "
                f"{format_usd(left)} left, this request needs about {format_usd(need)}. {again}")
    else:
        text = (f"Spending limit reached: {budget}, {format_usd(left)} left, this request needs "
                f"about {format_usd(need)}. {again}")
    detail = f"limit={budget.replace(' per ', '/')}" + (" gateway" if hold.scope == GATEWAY
                                                          else "") + (" never" if never else "")
    if hold.scope == GATEWAY:  # no x-ratelimit-*-spend: those describe the caller's budget
        return BudgetExceeded(text, headers={"Retry-After": retry_after(wait)},
                              log_detail=detail)
    return SpendLimited(text, headers={"Retry-After": retry_after(wait),
                                       **limit_headers(spend=LimitState(limit.amount, left, wait))},
                        log_detail=detail)


#: What to change when one request's worst case exceeds a whole budget.
SMALLER = ("Ask for fewer output tokens (max_tokens, max_completion_tokens or "
           "max_output_tokens), send a shorter input, or have the operator raise the budget "
           "or lower validation.max_tokens.")


def used(hold: Hold, tokens: int, micro_usd: int) -> int:
    return tokens if hold.kind == TOKENS else micro_usd


class MemoryBook:
    """Budgets on the in-process store: synchronous, hence exact."""

    def __init__(self, store: MemoryStore):
        self.store = store

    def window(self, key: str, limit: Limit) -> Window:
        return self.store.window_now(key, limit.expiry, time.time())

    def take(self, holds) -> list[LimitState]:
        """Reserve every hold or none (raises the first refusal)."""
        store, now, states = self.store, time.time(), []
        for i, hold in enumerate(holds):
            limit = hold.limit
            window = store.window_now(hold.key, limit.expiry, now)
            if hold.amount > remaining(limit, window):
                self.give_back(holds[:i])
                raise refusal(hold, window)
            hold.at = now
            if hold.amount:
                store.add_now(hold.key, limit.expiry, hold.amount, now)
            states.append(state(limit, store.window_now(hold.key, limit.expiry, now)))
        return states

    def give_back(self, holds) -> None:
        for hold in holds:
            if hold.amount:
                self.store.give_back_now(hold.key, hold.limit.expiry, hold.amount, hold.at)

    def settle(self, holds, tokens: int, micro_usd: int) -> list[LimitState]:
        store, now = self.store, time.time()
        for hold in holds:
            limit, extra = hold.limit, used(hold, tokens, micro_usd) - hold.amount
            if extra < 0:
                store.give_back_now(hold.key, limit.expiry, -extra, hold.at)
            elif extra > 0:  # an overrun empties the budget, never more
                room = remaining(limit, store.window_now(hold.key, limit.expiry, now))
                if room:
                    store.add_now(hold.key, limit.expiry, min(extra, room), now)
        return [state(h.limit, store.window_now(h.key, h.limit.expiry, now)) for h in holds]


class SharedBook:
    """Budgets on a shared store (memcached ring, Redis): a reservation is one batch with the
    request's other counters (`sliding.count`: increment, then re-check, so parallel requests
    cannot pass a budget together); a settlement is one more, after the answer."""

    def __init__(self, store: BatchStore):
        self.store = store

    @staticmethod
    def win(hold: Hold) -> SWindow:
        return SWindow(hold.key, hold.limit.amount, hold.limit.expiry)

    async def window(self, key: str, limit: Limit) -> Window:
        w, now = SWindow(key, limit.amount, limit.expiry), time.time()
        keys = sliding.windows.keys(w, now)
        got = await self.store.get_many(keys)
        got.raise_failed()
        prev, cur = (sliding.windows.count(got.values.get(k)) for k in keys)
        return window_of(w, prev, cur, now)

    async def settle(self, holds, tokens: int, micro_usd: int) -> list[LimitState]:
        """One round trip (a second only when an overrun is clamped to the budget); raises
        the first storage failure once every write was sent."""
        now, wk = time.time(), sliding.windows.keys
        refunds, charges, reads = [], [], []
        for hold in holds:
            w, extra = self.win(hold), used(hold, tokens, micro_usd) - hold.amount
            prev_key, cur_key = wk(w, now)
            reads.append(prev_key)
            if extra < 0:
                refunds.append((wk(w, hold.at)[1], -extra))
            elif extra > 0:
                charges.append((cur_key, extra, w.ttl))
            if not (extra > 0 or (extra < 0 and refunds[-1][0] == cur_key)):
                reads.append(cur_key)
        got, given, charged = await asyncio.gather(
            self.store.get_many(reads), self.store.decr_many(refunds),
            self.store.incr_many(charges))
        for batch in (got, given, charged):
            batch.raise_failed()
        counts = {**{k: sliding.windows.count(v) for k, v in got.values.items()},
                  **given.values, **charged.values}
        states, clamp = [], []
        for hold in holds:
            w = self.win(hold)
            prev_key, cur_key = wk(w, now)
            prev, cur = counts.get(prev_key, 0), counts.get(cur_key, 0)
            over = math.floor(sliding.windows.weighted(w, prev, cur, now)) - w.amount
            if cur_key in charged.values and over > 0:  # an overrun empties it, never more
                back = min(over, used(hold, tokens, micro_usd) - hold.amount)
                clamp.append((cur_key, back))
                cur -= back
            states.append(state(hold.limit, window_of(w, prev, cur, now)))
        if clamp:
            (await self.store.decr_many(clamp)).raise_failed()
        return states


def window_of(w: SWindow, prev: int, cur: int, now: float) -> Window:
    """The (previous, previous_ttl, current, current_ttl) tuple the arithmetic above reads."""
    ws = sliding.windows
    return (prev, ws.previous_ttl(w, prev, now), cur, ws.current_ttl(w, now))


def hold_windows(holds) -> list[SWindow]:
    return [SharedBook.win(hold) for hold in holds]

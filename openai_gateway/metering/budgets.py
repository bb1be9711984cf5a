"""Budgets of units (tokens, micro-dollars): reserved before a request, settled after it.

A budget is a sliding-window counter of units: tokens, or micro-dollars (integers, 1 USD =
1_000_000, so memcached's `incr` counts them). Before a request is forwarded its estimate is
reserved against every budget that applies, all or nothing, in the same store call as its
other counters (the pipeline's admission: the store counts first and re-checks, so parallel
requests cannot pass a budget together; in memory nothing interleaves at all). Afterwards
`settle` brings each reservation to what was used: an overrun is charged (it empties a budget,
never more), the rest goes back to the window it was taken from.

Windows are limits' granularities: a day is 86,400 s and a month is 30 days (2,592,000 s),
counted as limits' sliding-window counter counts them (store/windows.py).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import (
    BudgetExceeded,
    RateLimited,
    SpendLimited,
    StorageUnavailable,
    TokensRateLimited,
)
from ..store import Counted, Hit, Store, Window, windows
from .headers import LimitState, format_reset, format_usd, limit_headers, retry_after
from .limiter import StoragePolicy
from .rules import EVERYONE, GATEWAY, SPEND, TOKENS, Limit, Rules


@dataclass(slots=True, eq=False)
class Hold:
    """One budget's part of a reservation."""

    kind: str  # TOKENS or SPEND
    scope: str  # "all" (the caller's own), "rule<i>", GATEWAY
    limit: Limit
    window: Window
    amount: int  # units reserved
    at: float = 0.0  # when: a refund goes back to the window current then


@dataclass(slots=True, eq=False)
class Reservation:
    """What a request reserved; settle it exactly once (a second settle does nothing)."""

    holds: tuple[Hold, ...] = ()
    tokens: LimitState | None = None  # the tightest token budget, after the reservation
    spend: LimitState | None = None  # the tightest of the caller's dollar budgets, after it
    settled: bool = False
    #: The gateway-wide ceilings as settling left them, by name ("daily", "monthly"): (limit,
    #: remaining) in micro-dollars, for the ceiling's gauges without another store read.
    ceilings: dict[str, tuple[int, int]] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """x-ratelimit-*-tokens / -spend as reserved: for answers whose headers leave before
        the usage is known (streams). Gateway-wide ceilings are never shown to a caller."""
        return limit_headers(tokens=self.tokens, spend=self.spend)


def _state(w: Window, prev: int, cur: int, now: float) -> LimitState:
    return LimitState(w.amount, windows.remaining(w, prev, cur, now),
                      windows.full_reset(w, prev, cur, now))


def tightest(holds, states) -> tuple[LimitState | None, LimitState | None]:
    tokens = spend = None
    for hold, state in zip(holds, states, strict=True):
        if hold.kind == TOKENS:
            if tokens is None or state.remaining < tokens.remaining:
                tokens = state
        elif hold.scope != GATEWAY and (spend is None or state.remaining < spend.remaining):
            spend = state
    return tokens, spend


class Budgets:
    """Token and dollar budgets on the process's store; `configure` again on reload."""

    def __init__(self, store: Store, policy: StoragePolicy, ident):
        self.store = store
        self.policy = policy
        self._ident = ident  # the caller's part of its counters' keys (the limiter's)

    def configure(self, rules: Rules) -> None:
        self.rules = rules
        #: The gateway-wide ceilings' names by their limit: a settled hold reports under it.
        self._ceiling_names = {id(limit): name for name, limit in rules.gateway}

    @property
    def gateway(self):
        return self.rules.gateway

    def spend_applies(self, caller, route: str, model: str | None) -> bool:
        """Whether a dollar budget (the caller's, a rule's, the gateway's) covers a request:
        its model must then have a price."""
        return bool(self.rules.gateway or self.rules.scopes(caller.limits, route, model,
                                                            "spend"))

    def holds(self, caller, route: str, model: str | None, tokens: int,
              micro_usd: int | None) -> list[Hold]:
        """What a request reserves: tokens (at least 1, so an empty budget refuses even a
        zero estimate), then dollars (micro_usd None: none)."""
        own = caller.limits
        if not self.rules.budgeted(own):
            return []  # the usual case without budgets: nothing to look at
        kinds = [(TOKENS, "tokens", max(tokens, 1))]
        if micro_usd is not None:
            kinds.append((SPEND, "spend", max(micro_usd, 0)))
        out: list[Hold] = []
        ident = ""
        for kind, attr, amount in kinds:
            for scope, limits in self.rules.scopes(own, route, model, attr):
                ident = ident or self._ident(caller)
                out.extend(_hold(kind, scope, limit, limit.key(kind, ident, scope), amount)
                           for limit in limits)
        if micro_usd is not None:
            out.extend(_hold(SPEND, GATEWAY, limit, limit.key(SPEND, EVERYONE, GATEWAY),
                             max(micro_usd, 0)) for _, limit in self.rules.gateway)
        return out

    @staticmethod
    def hits(holds: list[Hold]) -> list[Hit]:
        return [Hit(h.window, h.amount) for h in holds]

    @staticmethod
    def take(counted: Counted, holds: list[Hold], now: float) -> Reservation:
        """The reservation the store counted, or the refusal of the first budget that did
        not fit (a refused request took nothing: the store gave it all back)."""
        taken, states = [], []
        for hold in holds:
            counts = counted.counts.get(hold.window)
            if counts is None:
                continue  # its server failed: not counted, nothing to give back
            prev, cur = counts
            if counted.refused_by == hold.window:
                raise refusal(hold, prev, cur, now)
            hold.at = now
            taken.append(hold)
            states.append(_state(hold.window, prev, cur, now))
        return Reservation(tuple(taken), *tightest(taken, states))

    async def settle(self, reservation: Reservation, *, tokens: int, micro_usd: int,
                     also_charge: Sequence[tuple[Window, int]] = ()) -> dict[str, str]:
        """Bring the reservation to what was used: charge the overrun (it empties a budget,
        never more), refund the rest; `also_charge` (the spend tallies) in the same store
        call. Returns the x-ratelimit-*-tokens / -spend headers with the settled remaining
        values, and leaves the gateway's ceilings in `reservation.ceilings`. Never raises
        (storage errors are logged and counted); a second settle of the same reservation does
        nothing and returns {}."""
        after, now = await self._settle(reservation, tokens, micro_usd, also_charge)
        if not after:
            return {}
        holds = reservation.holds
        states = [_state(h.window, *after[h.window], now) for h in holds]
        names = self._ceiling_names
        reservation.ceilings = {names[id(h.limit)]: (state.limit, state.remaining)
                                for h, state in zip(holds, states, strict=True)
                                if h.scope == GATEWAY and id(h.limit) in names}
        token_state, spend_state = tightest(holds, states)
        return limit_headers(tokens=token_state, spend=spend_state)

    async def charge(self, caller, route: str, model: str | None, *, tokens: int,
                     micro_usd: int | None) -> RateLimited | None:
        """Charge usage no reservation covered (a realtime session's input transcriptions,
        which arrive unannounced) to every budget that applies, each at most to its amount
        (it empties a budget, never more). Returns the refusal of the first budget now used
        up (what a request needing one more unit would get), None while all have room. Never
        raises (storage errors are logged and counted)."""
        holds = self.holds(caller, route, model, 0, micro_usd)
        if not holds:
            return None
        now = time.time()
        for hold in holds:
            hold.amount, hold.at = 0, now
        after, now = await self._settle(Reservation(tuple(holds)), tokens, micro_usd or 0)
        for hold in holds:
            if hold.window in after and windows.remaining(hold.window, *after[hold.window],
                                                          now) <= 0:
                hold.amount = 1
                return refusal(hold, *after[hold.window], now)
        return None

    async def _settle(self, reservation: Reservation, tokens: int, micro_usd: int,
                      also_charge: Sequence[tuple[Window, int]] = ()
                      ) -> tuple[dict[Window, tuple[int, int]], float]:
        """`settle`'s work: (previous, current) of each hold's window afterwards ({}: nothing
        done, or the store failed), and when."""
        if reservation.settled or not (reservation.holds or also_charge):
            return {}, 0.0
        reservation.settled = True
        holds, now = reservation.holds, time.time()
        refunds, charges = [], list(also_charge)
        for hold in holds:
            extra = (tokens if hold.kind == TOKENS else micro_usd) - hold.amount
            if extra < 0:
                refunds.append((hold.window, -extra, hold.at))
            elif extra > 0:
                charges.append((hold.window, extra))
        try:
            after = await self.store.adjust(refunds, charges, now=now,
                                            also=[h.window for h in holds])
        except Exception as exc:
            self.policy.failed(exc, refuse=False)
            return {}, now
        return after, now

    async def gateway_spend(self) -> dict[str, dict]:
        """The gateway-wide ceilings as counted now, only those configured:
        {"daily": {"limit_micro", "spent_micro", "remaining_micro", "window_seconds",
        "reset_seconds"}, "monthly": {...}}. Raises StorageUnavailable when unreadable."""
        out: dict[str, dict] = {}
        now = time.time()
        ceilings = [(name, limit, Window(limit.key(SPEND, EVERYONE, GATEWAY), limit.amount,
                                         limit.expiry)) for name, limit in self.rules.gateway]
        if not ceilings:
            return out
        try:
            counts = await self.store.counts([w for _, _, w in ceilings], now=now)
        except Exception as exc:
            self.policy.failed(exc, refuse=False)
            raise StorageUnavailable("Rate-limit storage is unavailable.") from None
        for name, limit, w in ceilings:
            prev, cur = counts[w]
            left = windows.remaining(w, prev, cur, now)
            out[name] = {"limit_micro": limit.amount, "spent_micro": limit.amount - left,
                         "remaining_micro": left, "window_seconds": limit.expiry,
                         "reset_seconds": round(windows.full_reset(w, prev, cur, now), 3)}
        return out


def _hold(kind: str, scope: str, limit: Limit, key: str, amount: int) -> Hold:
    return Hold(kind, scope, limit, Window(key, limit.amount, limit.expiry), amount)


def refusal(hold: Hold, prev: int, cur: int, now: float) -> RateLimited:
    """The 429 for a budget that cannot hold `hold.amount` now; Retry-After is when it can.

    A request whose worst case is more than the whole budget never fits, however long it
    waits: its message says so and what to change, instead of "limit reached"."""
    limit, need, w = hold.limit, hold.amount, hold.window
    left = windows.remaining(w, prev, cur, now)
    wait = windows.wait_for(w, prev, cur, now, need)
    again = f"Please try again in {format_reset(wait)}."
    never = need > limit.amount
    if hold.kind == TOKENS:
        text = (f"This request may use up to {need} tokens (its input and its output cap), more "
                f"than the whole token budget of {limit.amount} per {limit.per}: it can never "
                f"fit. {SMALLER}" if never else
                f"Rate limit reached for tokens: {limit.amount} per {limit.per}, {left} left, "
                f"this request needs about {need}. {again}")
        return TokensRateLimited(
            text, headers={**when(never, wait),
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
        return BudgetExceeded(text, headers=when(never, wait), log_detail=detail)
    return SpendLimited(text, headers={**when(never, wait),
                                       **limit_headers(spend=LimitState(limit.amount, left, wait))},
                        log_detail=detail)


def when(never: bool, wait: float) -> dict[str, str]:
    """Retry-After for a refusal that waiting ends; for one it never ends, `x-should-retry:
    false`, which the official SDKs obey instead of retrying a 429 on their own."""
    return {"x-should-retry": "false"} if never else {"Retry-After": retry_after(wait)}


#: What to change when one request's worst case exceeds a whole budget.
SMALLER = ("Ask for fewer output tokens (max_tokens, max_completion_tokens or "
           "max_output_tokens), send a shorter input, or have the operator raise the budget "
           "or lower validation.max_tokens.")

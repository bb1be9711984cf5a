"""Spend tallies: the micro-dollars charged per tier, per UTC day and calendar month.

The gateway-wide ceilings ([budget]) are sliding-window counters: they say what was spent in
about the last 24 hours or 30 days, reservations in flight included, and what is left. An
operator also asks "what did we spend today, and this month, and on which plan": these
counters answer it. Each settled charge is added, in whole micro-dollars, to its caller's
tier's counter for the UTC date and for the calendar month (UTC), so the figures are exact
sums of what the budgets were charged, with no window arithmetic. The tier is a configured
[tiers.NAME], else "none" (no tier, or a tier name no table defines: the keys stay a bounded
set whatever a token claims).

They are counted only while a [budget] ceiling is set: every priced request then writes to the
store when it settles anyway, and the tally rides along in the same store call; without one,
settling writes nothing, and counting would add a store write to every request.
`spend_report` is what `GET /gateway/spend` answers and `spend` prints.
"""
from __future__ import annotations

import time
from collections.abc import Collection
from datetime import UTC, datetime

from ..errors import StorageUnavailable
from ..store import Store, Window
from .budgets import Budgets
from .limiter import StoragePolicy

#: The tier of callers without a configured one.
NO_TIER = "none"
#: A tally counts, it never refuses: its windows' bound is out of reach.
UNBOUNDED = 2**53
#: The windows of a day's and a month's counters. Each counter's key names its date or month,
#: and its window is longer than the day or month: a UTC day always lies inside one two-day
#: window (both are aligned to the epoch), and a month spans at most two forty-day windows, so
#: the previous and current counts of the key are all of it. They live two windows.
DAY_SECONDS = 2 * 86_400
MONTH_SECONDS = 40 * 86_400


def periods(now: float) -> tuple[str, str]:
    """The UTC date and month of a Unix time: ("2026-12-31", "2026-12")."""
    day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
    return day, day[:7]


class SpendTally:
    """Per-tier day and month counters on the process's store; `configure` again on reload."""

    def __init__(self, store: Store, policy: StoragePolicy, *, prefix: str = "spent"):
        self.store = store
        self.policy = policy
        self.prefix = prefix  # the counters' keys: PREFIX/TIER/day/DATE, PREFIX/TIER/month/M
        self.tiers: tuple[str, ...] = ()
        self.on = False
        self._period: tuple[int, str, str] = (-1, "", "")  # (UTC day number, date, month)

    def configure(self, tiers: Collection[str], *, on: bool) -> None:
        """`tiers`: the configured tier names; `on`: count (a [budget] ceiling is set)."""
        self.tiers = tuple(tiers)
        self.on = on

    def label(self, tier: str | None) -> str:
        """The tier a charge counts under: a configured name, else "none"."""
        return tier if tier is not None and tier in self.tiers else NO_TIER

    def _windows(self, tier: str, now: float) -> tuple[Window, Window]:
        number = int(now // 86_400)
        if self._period[0] != number:  # the date is formatted once a day, not per charge
            self._period = (number, *periods(now))
        _, day, month = self._period
        return (Window(f"{self.prefix}/{tier}/day/{day}", UNBOUNDED, DAY_SECONDS),
                Window(f"{self.prefix}/{tier}/month/{month}", UNBOUNDED, MONTH_SECONDS))

    def charges(self, tier: str | None, micro: int, *, now: float) -> list[tuple[Window, int]]:
        """The counters a charge adds to (none while off): counted by the budgets' settlement
        in the same store call as the charge itself (Budgets.settle's `also_charge`)."""
        if not self.on or micro <= 0:
            return []
        return [(w, micro) for w in self._windows(self.label(tier), now)]

    async def read(self, *, now: float | None = None) -> dict[str, dict]:
        """{"day": {"date", "spent_micro", "tiers": {tier: micro}}, "month": {"month", ...}}
        for every configured tier and "none"; raises StorageUnavailable when unreadable."""
        now = time.time() if now is None else now
        names = (*self.tiers, NO_TIER)
        wins = {name: self._windows(name, now) for name in names}
        try:
            counts = await self.store.counts([w for pair in wins.values() for w in pair],
                                             now=now)
        except Exception as exc:
            self.policy.failed(exc, refuse=False)
            raise StorageUnavailable("Rate-limit storage is unavailable.") from None
        out: dict[str, dict] = {}
        for i, (period, label, value) in enumerate(zip(("day", "month"), ("date", "month"),
                                                       periods(now), strict=True)):
            tiers = {name: sum(counts[wins[name][i]]) for name in names}
            out[period] = {label: value, "spent_micro": sum(tiers.values()), "tiers": tiers}
        return out


async def spend_report(budgets: Budgets, tally: SpendTally, *, now: float | None = None
                       ) -> dict:
    """What `GET /gateway/spend` answers: integer micro-dollars, exact.

    Without a [budget] ceiling nothing counts the gateway's spend by period: {"budget": false}.
    Otherwise {"budget": true, "ceilings": Budgets.gateway_spend(), "today": {"date",
    "spent_micro", "tiers"}, "this_month": {"month", "spent_micro", "tiers"}}. Raises
    StorageUnavailable when the store cannot be read."""
    if not budgets.gateway:
        return {"budget": False}
    ceilings = await budgets.gateway_spend()
    tallies = await tally.read(now=now)
    return {"budget": True, "ceilings": ceilings, "today": tallies["day"],
            "this_month": tallies["month"]}

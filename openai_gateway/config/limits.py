"""The text of limits and dollar budgets: "60/minute", "10 per hour", "100/5 minutes", "0.50/day".

Grammar (strict, so a typo is a config error rather than a different limit):
    AMOUNT ("/" | " per ") [MULTIPLE " "] PERIOD
AMOUNT is at least 1 (a dollar amount above 0 with at most 6 decimals for budgets), PERIOD is
second, minute, hour, day, month or year, plural exactly when a MULTIPLE (2 or more) is given.
The limits library's own parser is looser ("60/minutes" is 60 a minute, "0/minute" is a limit
nobody passes, ";" joins several), so it is not used.

Items are built with the public `RateLimitItemPer*` classes of limits. This module imports
nothing from the package.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from limits import (
    RateLimitItem,
    RateLimitItemPerDay,
    RateLimitItemPerHour,
    RateLimitItemPerMinute,
    RateLimitItemPerMonth,
    RateLimitItemPerSecond,
    RateLimitItemPerYear,
)

PERIODS: dict[str, type[RateLimitItem]] = {
    "second": RateLimitItemPerSecond,
    "minute": RateLimitItemPerMinute,
    "hour": RateLimitItemPerHour,
    "day": RateLimitItemPerDay,
    "month": RateLimitItemPerMonth,  # limits' month is 30 days
    "year": RateLimitItemPerYear,
}
_PERIOD = (r"(?:(?P<multiple>[1-9][0-9]*) )?(?P<period>second|minute|hour|day|month|year)"
           r"(?P<plural>s?)")
_LIMIT = re.compile(r"(?P<amount>[1-9][0-9]*)(?:/| per )" + _PERIOD)
_SPEND = re.compile(r"(?P<amount>[0-9]+(?:\.[0-9]+)?)(?:/| per )" + _PERIOD)

LIMIT_EXPECTED = ('a limit like "60/minute", "10 per hour" or "100/5 minutes" (an amount of at '
                  "least 1 per second, minute, hour, day, month or year)")
SPEND_EXPECTED = ('a dollar budget like "0.50/day", "10/month" or "5/7 days" (an amount above 0 '
                  "with at most 6 decimals per second, minute, hour, day, month or year)")
#: Micro-dollars in a US dollar: money is counted in integers (counters in every storage are
#: integers), and this is its one definition.
MICRO = 1_000_000

#: A kind of limit as the config gives it: items, shortest window first.
LimitItems = tuple[RateLimitItem, ...]


def _item(m: re.Match, amount: int) -> RateLimitItem | None:
    multiple = int(m["multiple"] or 1)
    if bool(m["multiple"]) != bool(m["plural"]) or (m["multiple"] and multiple < 2):
        return None  # "60/minutes", "100/5 minute", "100/1 minutes": not the grammar
    return PERIODS[m["period"]](amount, multiple)


def parse_limit(text: str) -> RateLimitItem:
    """One limit; raises ValueError (whose text is LIMIT_EXPECTED) when it is not the grammar."""
    m = _LIMIT.fullmatch(text) if isinstance(text, str) else None
    item = _item(m, int(m["amount"])) if m else None
    if item is None:
        raise ValueError(LIMIT_EXPECTED)
    return item


def limit_text(item: RateLimitItem) -> str:
    """The canonical text of a limit: parse_limit(limit_text(item)) == item."""
    name = item.GRANULARITY.name
    if item.multiples == 1:
        return f"{item.amount}/{name}"
    return f"{item.amount}/{item.multiples} {name}s"


def as_limits(values) -> LimitItems:
    """Limits (items, or text parsed by parse_limit), shortest window first: a request refused
    by the minute never touches the day's count."""
    items = (parse_limit(v) if isinstance(v, str) else v for v in values)
    return tuple(sorted(items, key=RateLimitItem.get_expiry))


@dataclass(frozen=True)
class SpendLimit:
    """A dollar budget: `item.amount` is integer micro-dollars ("0.50/day" -> 500000 a day)."""

    item: RateLimitItem
    #: As written in the config (printed back by --check).
    text: str

    @property
    def usd(self) -> float:
        return self.item.amount / MICRO


def parse_spend(text: str) -> SpendLimit:
    """One dollar budget; raises ValueError (whose text is SPEND_EXPECTED)."""
    m = _SPEND.fullmatch(text) if isinstance(text, str) else None
    micro = Decimal(m["amount"]) * MICRO if m else Decimal(0)
    item = _item(m, int(micro)) if m and micro > 0 and micro == int(micro) else None
    if item is None:
        raise ValueError(SPEND_EXPECTED)
    return SpendLimit(item, text)


Spend = tuple[SpendLimit, ...]


def as_spend(values) -> Spend:
    """Dollar budgets (SpendLimits, or text parsed by parse_spend)."""
    return tuple(parse_spend(v) if isinstance(v, str) else v for v in values)

"""What a client is told about its limits: the x-ratelimit-* headers, built here and only here.

Requests and tokens follow OpenAI's headers (`x-ratelimit-limit-requests`, `-remaining-`,
`-reset-`, and the same for tokens); dollar budgets add `x-ratelimit-limit-spend` and
`x-ratelimit-remaining-spend` in US dollars with six decimals ("0.500000"): exact to the
micro-dollar the budgets count in, and one format a client can parse.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config.limits import MICRO  # budgets count integers (memcached's incr)


@dataclass(slots=True)
class LimitState:
    """One limit as the client sees it; for spend, `limit` and `remaining` are micro-dollars."""

    limit: int
    remaining: int
    reset: float  # seconds until the reported window has room again


def format_reset(seconds: float) -> str:
    """OpenAI's duration format for x-ratelimit-reset-*: "1s", "6m0s", "1h2m3s", "20ms"."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms"
    s = math.ceil(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    return f"{m}m{sec}s" if m else f"{sec}s"


def header_usd(micro: int) -> str:
    """Micro-dollars as the spend headers carry them: "0.500000"."""
    whole, frac = divmod(max(micro, 0), MICRO)
    return f"{whole}.{frac:06d}"


def format_usd(micro: int) -> str:
    """Micro-dollars for people: "$0.50", "$12.00", "$0.00015" (cents, or as many digits as
    a sub-cent amount needs)."""
    text = header_usd(micro).rstrip("0")
    whole, _, frac = text.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


def retry_after(seconds: float) -> str:
    """Retry-After in whole seconds, at least 1 (0 would invite an immediate retry)."""
    return str(max(math.ceil(seconds), 1))


def limit_headers(requests: LimitState | None = None, tokens: LimitState | None = None,
                  spend: LimitState | None = None) -> dict[str, str]:
    out = {}
    if requests is not None:
        out["x-ratelimit-limit-requests"] = str(requests.limit)
        out["x-ratelimit-remaining-requests"] = str(requests.remaining)
        out["x-ratelimit-reset-requests"] = format_reset(requests.reset)
    if tokens is not None:
        out["x-ratelimit-limit-tokens"] = str(tokens.limit)
        out["x-ratelimit-remaining-tokens"] = str(tokens.remaining)
        out["x-ratelimit-reset-tokens"] = format_reset(tokens.reset)
    if spend is not None:
        out["x-ratelimit-limit-spend"] = header_usd(spend.limit)
        out["x-ratelimit-remaining-spend"] = header_usd(spend.remaining)
    return out

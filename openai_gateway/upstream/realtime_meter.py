"""How a realtime session is metered: the interface the relay and the sideband call
(`RealtimeMeter`), why it may end a session (`Stop`), and how the session ended (`Outcome`).

The budgets behind a meter belong to the request pipeline; these types only say what is asked
of it and when (upstream.realtime, upstream.realtime_calls).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..errors import GatewayError
from ..policy.realtime_usage import Charge


@dataclass(frozen=True, slots=True)
class Stop:
    """Why the meter ends a session: an OpenAI error `code` (`spend_limit_exceeded`,
    `budget_exceeded`, `tokens_limit_exceeded` ...), its message and error type."""

    code: str
    message: str
    type: str = "insufficient_quota"

    @classmethod
    def of(cls, error: GatewayError) -> Stop:
        """The stop a refusal of the limiter or the budgets (a 429 `GatewayError`) means."""
        return cls(error.code or "rate_limit_exceeded", error.message, error.type)


class RealtimeMeter(Protocol):
    """How a realtime session is charged (implemented where the budgets are).

    The relay and the sideband call these in order, from one task at a time; each may return a
    `Stop`, which ends the session.
    """

    async def before_response(self) -> Stop | None:
        """A response is about to start: reserve one response at the output cap."""

    async def on_usage(self, charge: Charge) -> Stop | None:
        """Charge usage as it arrives. A `kind == "response"` charge settles one reserved
        response (`usage` None: charge what was reserved); a transcription is charged as it is.
        A Stop: the budget cannot cover another response."""

    async def on_end(self, outcome: Outcome) -> None:
        """The session is over. `outcome.in_flight` responses started and never reported
        usage (charge them at their reservation); release every other reservation."""


@dataclass(slots=True)
class Outcome:
    """How a relayed session ended.

    reason: "client_closed", "upstream_closed", "stopped" (the meter), "expired" or
    "shutdown";
    stop: the meter's or the clock's Stop; responses: `response.done` seen; in_flight:
    responses started and not done at the end; upstream_code: the upstream's close code.
    """

    reason: str = ""
    stop: Stop | None = None
    responses: int = 0
    in_flight: int = 0
    upstream_code: int | None = None

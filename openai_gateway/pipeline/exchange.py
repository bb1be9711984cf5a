"""What carries one request through the pipeline (`Exchange`), and a complete upstream answer."""
from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from ..identity.callers import Caller
from ..metering.budgets import Reservation
from ..metering.prices import Price
from ..observability.logs import RequestRecord
from ..policy import ParsedRequest, Usage
from .uploads import Upload

RECORD = web.RequestKey("record", RequestRecord)
JSON = "application/json"
#: What a non-stream answer cost, in US dollars (a stream's cost is known only at its end).
COST_HEADER = "x-gateway-cost-usd"


@dataclass(slots=True)
class Answer:
    """A complete (non-stream) upstream answer, shareable between coalesced requests."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]
    #: The charset of a text answer that is not JSON (a transcription as text or subtitles).
    charset: str | None = None


@dataclass(slots=True)
class Exchange:
    """One request on its way through the pipeline: what it is, who sent it, what it holds.

    `usage`, `billable`, `stopped` and `relayed` decide the settlement (`settlement.charge`):
    the upstream's usage when it reported one; nothing when the upstream never got the request
    or refused it; the prompt, the output relayed and a margin for a stream its client
    stopped; a bound from the speech audio relayed whole; what a voice or picture request's
    units cost; else the whole reservation.
    """

    request: web.Request
    record: RequestRecord
    route: str
    caller: Caller
    raw: bytes = b""
    #: A multipart body, spooled (pipeline.uploads); closed by `close()` once sent.
    upload: Upload | None = None
    parsed: ParsedRequest | None = None
    cache_key: str | None = None
    #: Headers of our answer (rate limits, X-Cache, the upstream's few returned ones).
    headers: dict[str, str] = field(default_factory=dict)
    reservation: Reservation | None = None
    #: The model's price (None: unpriced); the estimates reserved, in tokens and micro-dollars.
    price: Price | None = None
    reserved_tokens: int = 0
    #: The input part of `reserved_tokens` (everything the model reads, as estimated).
    reserved_input: int = 0
    reserved_micro: int = 0
    usage: Usage | None = None
    #: The upstream may bill this request: it may have received it and did not refuse it.
    billable: bool = False
    #: A stream its client stopped while the gateway kept up with the upstream: what it could
    #: have cost (prompt, output received, margin), settled instead of the reservation.
    stopped: Usage | None = None
    #: Speech audio without usage, relayed whole: an upper bound of its cost from the seconds
    #: it plays (metering.units.spoken), settled instead of the reservation.
    relayed: Usage | None = None
    settled: bool = False
    #: Settled in a task of its own that outlives the client (non-stream answers).
    detached: bool = False
    #: The budget headers after settling.
    settled_headers: dict[str, str] = field(default_factory=dict)

    @property
    def valid(self) -> ParsedRequest:
        """The validated request, for the steps that only run once validation passed."""
        if self.parsed is None:
            raise RuntimeError("the request has not been validated yet")
        return self.parsed

    def close(self) -> None:
        """Let go of what the request held once nothing will send it again (its upload)."""
        if self.upload is not None:
            self.upload.close()

    def reads(self, output: int) -> Usage:
        """Everything the request's model reads, as reserved, and `output` tokens."""
        parsed = self.valid
        return Usage(input=self.reserved_input, image_input=parsed.image_tokens,
                     audio_input=parsed.audio_tokens, output=output)


def route_of(request: web.Request) -> str:
    """The route table's path the request matched (`forward` is registered on each one)."""
    resource = request.match_info.route.resource
    if resource is None:  # system routes (404, 405) have no resource and no handler of ours
        raise RuntimeError("a forwarding handler was reached outside the route table")
    return resource.canonical

"""Logging set-up: JSON or text, one access line per request, secrets redacted.

The access line carries metadata only (never prompts, completions, keys or tokens). In JSON it
is one object per line for machines; in text it is one line a person reads at a glance:

    200 POST /v1/chat/completions 183.4 ms gpt-4o-mini MISS in=12 out=48 client=203.0.113.7 req_…
    403 POST /v1/chat/completions 0.3 ms error=origin_not_allowed origin=https://evil.example …

As a last line of defence every formatted record, tracebacks included, has the upstream key
replaced, so even a library's exception text cannot leak it. That covers only the secrets the
gateway knows: a request head aiohttp's parser refuses is logged without any of its bytes
(`MalformedHeads`), since the line it quotes may hold a client's key or token.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import TextIO

import orjson
from aiohttp.http import HttpProcessingError

from ..errors import GatewayError, OriginNotAllowed, RateLimited, TokensRateLimited

ACCESS = logging.getLogger("gateway.access")
REDACTED = "[REDACTED]"
FORMATS = ("auto", "json", "text")
LEVELS = ("debug", "info", "warning", "error")
#: Malformed request heads logged each second, at most (per process); the rest are counted.
MALFORMED_LINES_PER_SECOND = 5


@dataclass(slots=True)
class RequestRecord:
    """What one request did; filled along the way, logged once at the end."""

    request_id: str
    method: str
    path: str
    started: float
    client: str = "-"
    route: str | None = None
    model: str | None = None
    status: int = 0
    cache: str | None = None
    rate_limit: str | None = None
    upstream_status: int | None = None
    ttfb_ms: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    stream: bool = False
    #: A refusal's error code (the `code` of the OpenAI-shaped body, else its `type`).
    error: str | None = None
    #: Why, short and safe to log: "origin=https://evil.example", "limit=60/minute".
    detail: str | None = None
    #: What the answer cost in US dollars, when the model has a price.
    cost_usd: float | None = None
    #: How it was charged: "usage" (the upstream's count), "reservation" (usage unknown: the
    #: whole reservation), "stopped" (a stream its client stopped), "units" (a model billed by
    #: the character, minute or image: its request's units), "relayed" (speech audio bounded
    #: by the seconds relayed), "none" (not billable).
    charged: str | None = None


class Stamps:
    """ISO-8601 UTC times with milliseconds; strftime once a second, not once a line."""

    __slots__ = ("whole", "text")

    def __init__(self) -> None:
        self.whole, self.text = 0, ""

    def __call__(self, ts: float) -> str:
        whole = int(ts)
        if whole != self.whole:
            self.whole, self.text = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        return f"{self.text}.{int(ts % 1 * 1000):03d}Z"


class RedactingFormatter(logging.Formatter):
    def __init__(self, secrets: tuple[str, ...], json_lines: bool):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.stamp = Stamps()
        # Only real keys: redacting a 1-character test value would garble every line.
        self.secrets = tuple(s for s in secrets if len(s) >= 8)
        self.json_lines = json_lines
        # Access lines in text: the time and the line itself (level and logger add nothing).
        self.access_text = logging.Formatter("%(asctime)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, "access", None)
        if self.json_lines:
            doc = access
            if doc is None:
                doc = {"time": self.stamp(record.created), "level": record.levelname.lower(),
                       "logger": record.name, "message": record.getMessage()}
                if record.exc_info:
                    doc["exc"] = self.formatException(record.exc_info)
            text = orjson.dumps(doc).decode()
        elif access is not None:
            text = self.access_text.format(record)
        else:
            text = super().format(record)
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


class MalformedHeads(logging.Filter):
    """On aiohttp's server logger: a request head its parser refused becomes one line saying
    what kind of error and from which peer, at warning at most, and nothing of the request.

    aiohttp logs such a head at error with the parser's exception, whose text quotes the
    offending header line: a client's `Authorization` (its key or token) lands in the log,
    unauthenticated, about 650 bytes a request. Past `per_second` lines in a second the rest
    are counted, and the count is logged once (when the second is over), so a flood of bad
    heads costs a few lines a second.
    """

    def __init__(self, per_second: int = MALFORMED_LINES_PER_SECOND,
                 clock=time.time) -> None:  # wall seconds: those the lines are stamped with
        super().__init__()
        self.per_second, self.clock = per_second, clock
        self.second, self.logged, self.suppressed = 0, 0, 0
        self.report_due: asyncio.TimerHandle | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = int(self.clock())
        if now != self.second:
            self.report()
            self.second, self.logged = now, 0
        if self.logged >= self.per_second:
            self.suppressed += 1
            self._report_later()
            return False
        self.logged += 1
        # aiohttp's message is "Error handling request from %s" with the peer's address.
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
        record.msg = "malformed request head from %s refused (%s)"
        record.args = (safe(str(peer or "-"), 100), type(exc).__name__)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        if record.levelno > logging.WARNING:  # a client's mistake, not the gateway's error
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True

    def report(self) -> None:
        """Log how many malformed heads were not logged (if any) and start counting again."""
        if self.report_due is not None:
            self.report_due.cancel()
            self.report_due = None
        if self.suppressed:
            count, self.suppressed = self.suppressed, 0
            logging.getLogger("aiohttp.server").warning(
                "%d more malformed request heads were refused and not logged (at most %d "
                "lines a second)", count, self.per_second)

    def _report_later(self) -> None:
        if self.report_due is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (not serving): the next line in a new second reports
            return
        self.report_due = loop.call_later(1.0, self.report)




# --- the access line ------------------------------------------------------------------------

#: Anything but visible ASCII is escaped in a text line: a decoded path or a header could
#: otherwise carry a newline (a forged second line) or bidi controls (a line that reads wrong).
_UNSAFE = re.compile(r"[^\x21-\x7e]")


def safe(text: str, limit: int = 200) -> str:
    """Client-supplied text, fit for one word of a log line: visible ASCII, bounded."""
    text = text[:limit]
    return _UNSAFE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 256
                       else f"\\u{ord(m[0]):04x}", text)


def refusal_detail(exc: GatewayError, origin: str | None) -> str | None:
    """Why a request was refused, for the log: the raiser's own `log_detail`, else what can be
    told from the error and the request (the offending Origin, the limit that was hit)."""
    if exc.log_detail:
        return exc.log_detail
    if isinstance(exc, OriginNotAllowed):
        return f"origin={safe(origin or '', 100)}"
    if isinstance(exc, RateLimited):
        kind = "tokens" if isinstance(exc, TokensRateLimited) else "requests"
        limit = exc.headers.get(f"x-ratelimit-limit-{kind}")
        retry = exc.headers.get("Retry-After")
        return " ".join(part for part in (f"limit={limit}" if limit else "",
                                          f"retry_after={retry}s" if retry else "") if part)
    return None


def text_line(doc: dict) -> str:
    """The access line for people: status, method, path, time first; then what the gateway
    did (model, cache, tokens, cost, the reason of a refusal); who and which request last."""
    words = [str(doc["status"]), doc["method"], safe(doc["path"]), f"{doc['duration_ms']:.1f} ms"]
    if doc.get("model"):
        words.append(safe(doc["model"], 100))
    if doc.get("cache"):
        words.append(doc["cache"])
    if doc.get("stream"):
        ttfb = doc.get("ttfb_ms")
        words.append("stream" if ttfb is None else f"stream ttfb={ttfb:.1f}ms")
    if doc.get("upstream_status") is not None and doc["status"] >= 400:
        words.append(f"upstream={doc['upstream_status']}")  # the refusal came from upstream
    if doc.get("tokens_in") is not None or doc.get("tokens_out") is not None:
        words.append(f"in={_dash(doc.get('tokens_in'))} out={_dash(doc.get('tokens_out'))}")
    if doc.get("cost_usd") is not None:
        words.append(f"cost=${doc['cost_usd']:.6f}")
    if doc.get("charged") in ("reservation", "stopped", "relayed"):  # bounds, not counts
        words.append(f"charged={doc['charged']}")
    if doc.get("error"):
        words.append(f"error={doc['error']}")
    if doc.get("detail"):
        words.append(doc["detail"])
    words.append(f"client={safe(doc['client'], 100)}")
    words.append(doc["request_id"])
    return " ".join(words)


def _dash(value) -> str:
    return "-" if value is None else str(value)


class ClientHasher:
    """`log.hash_client`: a client's address as an HMAC-SHA256 under a secret key.

    A plain hash of an IPv4 address is no pseudonym: all 2^32 of them are hashed in minutes.
    Keyed, the same client still maps to the same value (lines can be correlated), but only
    while the key is the same: with no key configured it is random per start.
    """

    def __init__(self, secret: bytes | None = None):
        self.key = secret or os.urandom(32)

    def __call__(self, client: str) -> str:
        return hmac.new(self.key, client.encode(), hashlib.sha256).hexdigest()[:16]


class AccessWriter:
    """JSON access lines written straight to the log stream, coalesced per loop iteration.

    The logging module costs a LogRecord, a formatter and a flush per line: at thousands of
    requests a second that was the largest share of the gateway's own time. Lines finished in
    the same event-loop iteration go out in one write, right after it.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lines: list[bytes] = []

    def write(self, doc: dict) -> None:
        if not self.lines:
            asyncio.get_running_loop().call_soon(self.flush)
        self.lines.append(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE))

    def flush(self) -> None:
        if not self.lines:
            return
        data = b"".join(self.lines)
        self.lines.clear()
        try:
            buffer = getattr(self.stream, "buffer", None)
            if buffer is not None:
                self.stream.flush()  # keep order with lines written through `logging`
                buffer.write(data)
                buffer.flush()
            else:
                self.stream.write(data.decode())
        except (OSError, ValueError):
            pass  # a closed or full log stream must not break request handling


class AccessLog:
    """The access line of every request: JSON lines straight to the log stream (`writer`,
    coalesced per loop iteration), or text through `logging` (no writer: also what an app built
    without `configure`, in tests, uses). `hash_key` keys `log.hash_client`'s pseudonyms
    (None: random, so they last one run)."""

    def __init__(self, writer: AccessWriter | None = None, hash_key: bytes | None = None):
        self.writer = writer
        self.hasher = ClientHasher(hash_key)
        self.stamp = Stamps()

    def log(self, rec: RequestRecord, hash_client: bool) -> None:
        if not ACCESS.isEnabledFor(logging.INFO):
            return
        client = rec.client
        if hash_client and client != "-":
            client = self.hasher(client)
        doc = access_doc(rec, client, self.stamp(time.time()))
        if self.writer is not None:
            self.writer.write(doc)
        else:
            ACCESS.info(text_line(doc), extra={"access": doc})

    def flush(self) -> None:
        """Write out pending access lines (at shutdown)."""
        if self.writer is not None:
            self.writer.flush()


def configure(level: str, fmt: str, secrets: tuple[str, ...], stream: TextIO | None = None, *,
              hash_secret: bytes | None = None) -> AccessLog:
    """Install one handler on the root logger (idempotent: reload replaces it); the access log
    the app writes to.

    fmt: "json", "text", or "auto" (text on a terminal, JSON otherwise). hash_secret keys
    `log.hash_client`'s HMAC; None picks a random key (pseudonyms then last one run).
    """
    stream = stream or sys.stderr
    json_lines = fmt == "json" or (fmt == "auto" and not stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter(secrets, json_lines))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's own access log is off (run_app(access_log=None)); ours replaces it.
    logging.getLogger("aiohttp.access").disabled = True
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedHeads) for f in server.filters):  # once, reload too
        server.addFilter(MalformedHeads())
    return AccessLog(AccessWriter(stream) if json_lines else None, hash_secret)


def access_doc(rec: RequestRecord, client: str, stamp: str) -> dict:
    """The access line's fields (JSON keys; the text line shows the same facts)."""
    return {
        "time": stamp, "level": "info", "logger": "gateway.access",
        "request_id": rec.request_id, "client": client, "method": rec.method,
        "path": rec.path[:200], "route": rec.route, "model": rec.model, "status": rec.status,
        "cache": rec.cache, "rate_limit": rec.rate_limit, "upstream_status": rec.upstream_status,
        "stream": rec.stream, "ttfb_ms": rec.ttfb_ms,
        "duration_ms": round((time.perf_counter() - rec.started) * 1000, 2),
        "tokens_in": rec.tokens_in, "tokens_out": rec.tokens_out, "cost_usd": rec.cost_usd,
        "charged": rec.charged, "error": rec.error, "detail": rec.detail,
    }

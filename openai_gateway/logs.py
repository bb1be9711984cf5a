"""Logging set-up: JSON (or text on a terminal), one access line per request, secrets redacted.

The access line carries metadata only (never prompts, completions or keys). As a last line of
defence every formatted record, tracebacks included, has the upstream key replaced, so even a
library's exception text cannot leak it.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
import time
from dataclasses import dataclass

import orjson

ACCESS = logging.getLogger("gateway.access")
REDACTED = "[REDACTED]"


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
    cost_usd: float | None = None


class RedactingFormatter(logging.Formatter):
    def __init__(self, secrets: tuple[str, ...], json_lines: bool):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        # Only real keys: redacting a 1-character test value would garble every line.
        self.secrets = tuple(s for s in secrets if len(s) >= 8)
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        if self.json_lines:
            doc = getattr(record, "access", None)
            if doc is None:
                doc = {"time": _iso(record.created), "level": record.levelname.lower(),
                       "logger": record.name, "message": record.getMessage()}
                if record.exc_info:
                    doc["exc"] = self.formatException(record.exc_info)
            text = orjson.dumps(doc).decode()
        else:
            text = super().format(record)
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


_second = (0, "")


def _iso(ts: float) -> str:
    global _second
    whole = int(ts)
    if whole != _second[0]:  # strftime once a second, not once a line
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int(ts % 1 * 1000):03d}Z"


class AccessWriter:
    """JSON access lines written straight to the log stream, coalesced per loop iteration.

    The logging module costs a LogRecord, a formatter and a flush per line: at thousands of
    requests a second that was the largest share of the gateway's own time. Lines finished in
    the same event-loop iteration go out in one write, right after it.
    """

    def __init__(self, stream):
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


_writer: AccessWriter | None = None


def configure(level: str, fmt: str, secrets: tuple[str, ...], stream=None) -> None:
    """Install one handler on the root logger (idempotent: reload replaces it)."""
    stream = stream or sys.stderr
    json_lines = fmt == "json" or (fmt == "auto" and not stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter(secrets, json_lines))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    global _writer
    _writer = AccessWriter(stream) if json_lines else None
    # aiohttp's own access log is off (run_app(access_log=None)); ours replaces it.
    logging.getLogger("aiohttp.access").disabled = True


def log_access(rec: RequestRecord, hash_client: bool) -> None:
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    client = rec.client
    if hash_client and client != "-":
        client = hashlib.sha256(client.encode()).hexdigest()[:16]
    now = time.time()
    doc = {
        "time": _iso(now), "level": "info", "logger": "gateway.access",
        "request_id": rec.request_id, "client": client, "method": rec.method,
        "path": rec.path[:200], "route": rec.route, "model": rec.model, "status": rec.status,
        "cache": rec.cache, "rate_limit": rec.rate_limit, "upstream_status": rec.upstream_status,
        "stream": rec.stream, "ttfb_ms": rec.ttfb_ms,
        "duration_ms": round((time.perf_counter() - rec.started) * 1000, 2),
        "tokens_in": rec.tokens_in, "tokens_out": rec.tokens_out,
    }
    if _writer is not None:
        _writer.write(doc)
    else:
        ACCESS.info("%s %s %s %s", rec.method, doc["path"], rec.status, doc["duration_ms"],
                    extra={"access": doc})


def flush() -> None:
    """Write out pending access lines (at shutdown)."""
    if _writer is not None:
        _writer.flush()

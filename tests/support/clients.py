"""The clients the end-to-end tests drive a real gateway process with: the official SDK set
up as a browser's would be, and curl (run without blocking the loop, where the fake upstream
lives). Every response read through them goes to the leak scan (`SEEN_RESPONSES`);
`assert_error_shape` checks OpenAI's error shape exactly.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import openai

from ..conftest import KEY, ORIGIN, SEEN_RESPONSES

FOREIGN = "https://evil.example"
DUMMY = "browser-dummy"
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Say hi"}]
ERROR_FIELDS = {"message", "type", "param", "code"}


def sdk(gp, *, origin: str | None = ORIGIN, sent: list | None = None,
        **headers: str) -> openai.AsyncOpenAI:
    """The browser-style client: a dummy key, no retries, our Origin.

    `sent` collects the exact requests the SDK put on the wire (method, path, headers, body).
    """
    default_headers = dict(headers)
    if origin is not None:
        default_headers["Origin"] = origin
    kw = {}
    if sent is not None:
        async def on_request(request):
            sent.append(request)
        kw["http_client"] = openai.DefaultAsyncHttpxClient(event_hooks={"request": [on_request]})
    return openai.AsyncOpenAI(base_url=gp.url + "/v1", api_key=DUMMY, max_retries=0,
                              timeout=10, default_headers=default_headers, **kw)


def scan(headers, text: str = "") -> None:
    """Feed one response to the autouse leak scan and check it right here too."""
    SEEN_RESPONSES.append(repr(dict(headers)))
    SEEN_RESPONSES.append(text)
    assert KEY not in repr(dict(headers)) and KEY not in text


def assert_error_shape(status: int, headers, text: str, *, code=..., param=...) -> dict:
    """OpenAI's error shape, exactly; no key; an X-Request-ID. Returns the inner error."""
    scan(headers, text)
    try:
        doc = json.loads(text)
    except ValueError:
        raise AssertionError(f"{status} error body is not JSON "
                             f"({headers.get('content-type')}): {text[:200]!r}") from None
    assert set(doc) == {"error"}, doc
    err = doc["error"]
    assert set(err) == ERROR_FIELDS, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert err["param"] is None or isinstance(err["param"], str)
    assert err["code"] is None or isinstance(err["code"], str)
    if code is not ...:
        assert err["code"] == code, err
    if param is not ...:
        assert err["param"] == param, err
    lower = {k.lower() for k in headers.keys()}
    assert "x-request-id" in lower, f"{status}: no X-Request-ID in {dict(headers)}"
    return err


def sdk_error(exc: openai.APIStatusError, **kw) -> dict:
    resp = exc.response
    return assert_error_shape(resp.status_code, resp.headers, resp.text, **kw)


@dataclass
class CurlResult:
    status: int
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    rc: int

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


async def curl(url: str, *args: str, data: bytes | None = None,
               timeout: float = 15) -> CurlResult:
    """`curl -s -i ...` without blocking the loop (the fake upstream lives on it)."""
    cmd = ["curl", "-s", "-i", "-H", "Expect:", *args]
    if data is not None:
        cmd += ["--data-binary", "@-"]
    cmd.append(url)
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE if data is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(data), timeout)
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    result = CurlResult(status, headers, body, proc.returncode)
    scan(headers, result.text())
    return result


def json_headers(origin: str | None = ORIGIN) -> list[str]:
    args = ["-H", "Content-Type: application/json", "-H", f"Authorization: Bearer {DUMMY}"]
    if origin is not None:
        args += ["-H", f"Origin: {origin}"]
    return args


async def wait_for(predicate, timeout: float) -> float:
    """Poll until predicate() is true; returns the seconds it took (fails after timeout)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def still_serves(gp) -> None:
    async with sdk(gp) as client:
        r = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert r.choices[0].message.content

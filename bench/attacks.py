"""The money and identity attacks of the audit, re-measured the way they were first measured.

    python bench/attacks.py            # about 20 seconds; make bench-attacks
    python bench/attacks.py --only hang-up --only images

Every attack runs against a real `python gateway.py` of its own, started with a config written
to a temporary directory, in front of the tests' fake OpenAI upstream
(tests/support/fake_upstream.py) served in this script's event loop. memcached and redis-server
are started on free loopback ports for the hang-up attack on those stores. The clients are what
an attacker would use: the official `openai` SDK, aiohttp, a raw socket.

Money is what the upstream can bill: the fake's own ledger (`FakeOpenAI.billed`: the prompt
and output tokens of every answer it worked on, also those the gateway gave up on) priced at
the shipped list prices. Each row prints what the audit measured, what is measured now, the
bound the README states and whether it holds; the table also goes to
bench/results/attacks.md. The exit status is 1 when a bound does not hold.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import openai
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from openai_gateway.metering.prices import DEFAULT_PRICES, cost  # noqa: E402
from openai_gateway.policy import Usage  # noqa: E402
from tests.support.fake_upstream import FakeOpenAI  # noqa: E402
from tests.support.jwks_server import CAPTCHA_SECRET, KeyProvider, Signer, Siteverify  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "attacks.md"
ORIGIN = "http://localhost:5173"
MODEL = "gpt-4o-mini"
#: A model whose worst case (n=4 x 4,096 tokens at $10 per 1M) no small budget holds: a
#: request for it is refused as "can never fit", spends nothing and shows what is left.
PROBE = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
         "max_tokens": 4096, "n": 4}
UPSTREAM_KEY = "sk-bench-upstream-key-never-logged"
TOKEN_SECRET = "bench-token-secret-0123456789abcdef0123456789"
ENV = {"OPENAI_API_KEY": UPSTREAM_KEY, "GW_TOKEN_SECRET": TOKEN_SECRET,
       "GW_CAPTCHA_SECRET": CAPTCHA_SECRET}
#: The audit's budgets: $0.01 a day per caller, $0.02 a day for the whole gateway.
BUDGET, CEILING = 0.01, 0.02
#: The hang-up prompt: 2,460 characters (616 tokens to the fake, 615 to the estimate) and no
#: max_tokens, so the gateway sends its 4,096 cap; the fake writes 4,096 words. One answer is
#: $0.00255 at gpt-4o-mini's list price: 30 of them are the audit's $0.0765.
PROMPT_CHARS, OUTPUT_CAP = 2460, 4096
#: The largest figure of an image of unknown size on gpt-4o-mini (README: Rate limits).
IMAGE_TOKENS_UNKNOWN = 48_169


@dataclass
class Row:
    attack: str
    before: str
    now: str
    bound: str
    ok: bool


# --- processes and servers --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml(doc: dict) -> str:
    """Enough TOML for these configs: scalars and lists (JSON spells them alike), tables,
    arrays of tables."""
    lines: list[str] = []

    def table(name: str, body: dict, header: str) -> None:
        lines.append(header)
        subs = []
        for k, v in body.items():
            if isinstance(v, dict):
                subs.append((f"{name}.{k}", v, f"[{name}.{k}]"))
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                subs += [(f"{name}.{k}", x, f"[[{name}.{k}]]") for x in v]
            else:
                lines.append(f"{k} = {json.dumps(v)}")
        for sub in subs:
            table(*sub)

    for k, v in doc.items():
        if isinstance(v, list):
            for x in v:
                table(k, x, f"[[{k}]]")
        else:
            table(k, v, f"[{k}]")
    return "\n".join(lines) + "\n"


async def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port}")


def stop(proc: subprocess.Popen) -> None:
    """Stop one process this script started, by its pid."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def store(kind: str):
    """The storage URL of a fresh server of `kind` (memory, memcached, redis)."""
    if kind == "memory":
        yield "memory://"
        return
    port = free_port()
    cmd = (["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64"]
           + (["-u", "root"] if os.geteuid() == 0 else []) if kind == "memcached" else
           ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no"])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_port(port, proc, kind)
        yield f"{kind}://127.0.0.1:{port}" + ("/0" if kind == "redis" else "")
    finally:
        stop(proc)


@contextlib.asynccontextmanager
async def serve(app: web.Application):
    """`app` on a free loopback port, in this loop; yields its base URL. A client (the gateway)
    that goes away cancels its handler, as it stops a real upstream's generation."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class Upstream:
    """The fake OpenAI upstream with its ledger, and how many requests it worked on at once."""

    def __init__(self, **fake) -> None:
        self.fake = FakeOpenAI(**fake)
        self.busy = self.peak = 0

    @web.middleware
    async def _count(self, request: web.Request, handler):
        self.busy += 1
        self.peak = max(self.peak, self.busy)
        try:
            return await handler(request)
        finally:
            self.busy -= 1

    def app(self) -> web.Application:
        app = self.fake.app()
        app.middlewares.append(self._count)
        return app

    def billed(self) -> int:
        """Micro-dollars the upstream can bill for everything it produced."""
        return sum(cost(DEFAULT_PRICES[m], Usage(input=p, output=o))
                   for m, p, o in self.fake.billed)

    async def idle(self) -> None:
        """Until no request is in the upstream's hands, then time for the gateway to settle."""
        for _ in range(200):
            if not self.busy:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)


class Gateway:
    """A real `python gateway.py --config FILE` on a free port, its output in a log file."""

    def __init__(self, tmp: Path, doc: dict) -> None:
        self.port = free_port()
        doc = {**doc, "server": {**doc.get("server", {}), "port": self.port,
                                 "shutdown_timeout": 2}}
        doc["log"] = {"format": "json", **doc.get("log", {})}
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp / f"gateway-{self.port}.toml"
        self.config.write_text(toml(doc))
        self.log_path = tmp / f"gateway-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    async def __aenter__(self) -> Gateway:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "gateway.py"), "--config", str(self.config)],
                cwd=ROOT, env={**os.environ, **ENV}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        async with aiohttp.ClientSession() as s:
            for _ in range(300):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the gateway exited: {self.log()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(self.url + "/healthz") as r:
                        if r.status == 200:
                            return self
                await asyncio.sleep(0.05)
        raise RuntimeError(f"the gateway did not answer: {self.log()[-2000:]}")

    async def __aexit__(self, *exc) -> None:
        assert self.proc is not None
        stop(self.proc)
        if UPSTREAM_KEY in self.log():
            raise RuntimeError("the upstream key is in the gateway's log")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def sdk(self, api_key: str = "sk-attacker", **kw) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0,
                                  default_headers={"Origin": ORIGIN}, **kw)

    async def post(self, path: str, body: dict | bytes, headers: dict | None = None
                   ) -> tuple[int, dict, dict]:
        headers = {"Origin": ORIGIN, "Content-Type": "application/json", **(headers or {})}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with aiohttp.ClientSession() as s, s.post(self.url + path, data=data,
                                                        headers=headers) as r:
            text = await r.text()
            try:
                doc = json.loads(text)
            except ValueError:
                doc = {"text": text[:200]}
            return r.status, doc, dict(r.headers)

    async def remaining_spend(self, authorization: str | None = None) -> float:
        """What the gateway tells the caller is left of its dollar budget (read from a request
        it refuses as never fitting: that spends nothing)."""
        headers = {"Authorization": authorization} if authorization else None
        status, doc, h = await self.post("/v1/chat/completions", PROBE, headers)
        if status != 429 or "x-ratelimit-remaining-spend" not in h:
            raise RuntimeError(f"the probe was not refused with the spend headers: {doc}")
        return float(h["x-ratelimit-remaining-spend"])


def money(store_url: str = "memory://", **over) -> dict:
    """The audit's config: a $0.01/day caller budget and a $0.02/day gateway ceiling."""
    doc: dict[str, dict] = {
        "storage": {"url": store_url},
        "rate_limit": {"requests": ["1000/minute"], "spend": [f"{BUDGET}/day"]},
        "budget": {"daily_usd": CEILING},
        "validation": {"allowed_models": [MODEL, "gpt-4o"]}}
    for k, v in over.items():
        doc[k] = {**doc.get(k, {}), **v}
    return doc


def usd(micro: float) -> str:
    return f"${micro / 1e6:.5f}"


def reservation(prompt_tokens: int, output: int) -> int:
    """What the gateway reserves for a gpt-4o-mini request (README: the estimate)."""
    return cost(DEFAULT_PRICES[MODEL], Usage(input=prompt_tokens, output=output))


def prompt(i: int) -> str:
    head = f"Request {i}: "
    return head + "x" * (PROMPT_CHARS - len(head))


# --- money --------------------------------------------------------------------------------


BEFORE_HANG_UP = {
    "memory": "$0.0765 billed: 7.6x the $0.01 client budget, 3.8x the $0.02 ceiling; "
              "remaining-spend afterwards 0.009999",
    "redis": "the same as on memory",
    "memcached": "(not measured)",
}


async def hang_up(tmp: Path, kind: str) -> Row:
    """30 requests in a row, each hung up after 0.5 s; the answer takes 1 s."""
    up = Upstream(chunks=OUTPUT_CAP, step={"delay": 1.0})
    outcomes = {"hung up": 0, "refused": 0, "answered": 0}
    async with serve(up.app()) as url, store(kind) as store_url:
        async with Gateway(tmp, money(store_url, upstream={"base_url": url + "/v1"})) as gw:
            async with gw.sdk(timeout=0.5) as client:
                for i in range(30):
                    try:
                        await client.chat.completions.create(
                            model=MODEL, messages=[{"role": "user", "content": prompt(i)}])
                        outcomes["answered"] += 1
                    except openai.APITimeoutError:
                        outcomes["hung up"] += 1
                    except openai.RateLimitError:
                        outcomes["refused"] += 1
            await up.idle()
            left = await gw.remaining_spend()
    billed, one, bound, truly_left, ok = against_budget(up, left)
    return Row(
        f"30 hang-ups after 0.5 s ({kind})",
        BEFORE_HANG_UP[kind],
        f"{usd(billed)} billed: {billed / (BUDGET * 1e6):.2f}x the client budget, "
        f"{billed / (CEILING * 1e6):.2f}x the ceiling ({outcomes['hung up']} hung up, "
        f"{outcomes['refused']} refused, {outcomes['answered']} answered); "
        f"remaining-spend afterwards {left:.6f}",
        f"billed <= $0.01 + {up.peak} in flight x {usd(one)} = {usd(bound)}; "
        f"remaining-spend <= {usd(truly_left)}", ok)


def against_budget(up: Upstream, left: float) -> tuple[int, int, float, float, bool]:
    """What the upstream billed, one request's reservation, the bound (the budget plus one
    reservation per request in flight at the peak), what is truly left of the budget, and
    whether the bill and the caller's remaining spend (`left`, dollars) both hold."""
    billed = up.billed()
    one = reservation(math.ceil(PROMPT_CHARS / 4), OUTPUT_CAP)
    bound = BUDGET * 1e6 + up.peak * one
    truly_left = max(BUDGET * 1e6 - billed, 0)
    return billed, one, bound, truly_left, billed <= bound and left * 1e6 <= truly_left + 1


async def first_byte_timeout(tmp: Path) -> Row:
    """30 requests in a row whose answer comes after the gateway's first_byte_timeout."""
    up = Upstream(chunks=OUTPUT_CAP, step={"delay": 1.0})
    statuses: dict[int, int] = {}
    async with serve(up.app()) as url:
        doc = money(upstream={"base_url": url + "/v1", "first_byte_timeout": 0.5})
        async with Gateway(tmp, doc) as gw:
            async with gw.sdk(timeout=10) as client:
                for i in range(30):
                    try:
                        await client.chat.completions.create(
                            model=MODEL, messages=[{"role": "user", "content": prompt(i)}])
                        status = 200
                    except openai.APIStatusError as exc:
                        status = exc.status_code
                    statuses[status] = statuses.get(status, 0) + 1
            await up.idle()
            left = await gw.remaining_spend()
    billed, one, bound, truly_left, ok = against_budget(up, left)
    return Row(
        "30 requests ending in a 504 after first_byte_timeout (0.5 s)",
        "refunded like the hang-ups: the upstream bills every answer, the caller was charged "
        "nothing",
        f"{usd(billed)} billed: {billed / (BUDGET * 1e6):.2f}x the client budget "
        f"({', '.join(f'{n}x {s}' for s, n in sorted(statuses.items()))}); "
        f"remaining-spend afterwards {left:.6f}",
        f"billed <= $0.01 + {up.peak} in flight x {usd(one)} = {usd(bound)}; "
        f"remaining-spend <= {usd(truly_left)}", ok)


def image_chat(i: int) -> dict:
    parts: list[dict] = [{"type": "text", "text": f"Describe these ({i})."}]
    parts += [{"type": "image_url", "image_url": {"url": f"https://example.com/{i}/{j}.jpg"}}
              for j in range(20)]
    return {"model": MODEL, "messages": [{"role": "user", "content": parts}], "max_tokens": 1}


async def images(tmp: Path, budget: float) -> Row:
    """60 parallel chat requests with 20 image_url parts each and max_tokens 1."""
    up = Upstream(step={"delay": 0.5})  # all 60 in flight together
    async with serve(up.app()) as url:
        doc = money(upstream={"base_url": url + "/v1"}, validation={"max_images": 20},
                    rate_limit={"spend": [f"{budget}/day"]},
                    budget={"daily_usd": max(budget, CEILING)})
        async with Gateway(tmp, doc) as gw:
            results = await asyncio.gather(*(gw.post("/v1/chat/completions", image_chat(i))
                                             for i in range(60)))
            await up.idle()
    admitted = sum(1 for status, _, _ in results if status == 200)
    codes = sorted({doc["error"]["code"] for status, doc, _ in results if status != 200})
    billed = up.billed()
    one = reservation(math.ceil(len("Describe these (10).") / 4) + 20 * IMAGE_TOKENS_UNKNOWN, 1)
    bound = budget * 1e6 + up.peak * one
    return Row(
        f"60 parallel chats, 20 image_url parts, max_tokens 1, ${budget} budget",
        "all 60 admitted: the upstream reported 30,000 prompt tokens each, $0.27 = 27x the "
        "budget" if budget == BUDGET else "(not measured; the README's example)",
        f"{admitted} of 60 admitted ({', '.join(codes)} for the rest), {usd(billed)} billed = "
        f"{billed / (budget * 1e6):.2f}x the budget",
        f"billed <= ${budget} + {up.peak} in flight x {usd(one)} = {usd(bound)}",
        billed <= bound and admitted == len(up.fake.posts))


async def small_budget_message(tmp: Path) -> Row:
    """A $0.002/day budget, and a request whose worst case ($0.0025) is more than that."""
    up = Upstream()
    async with serve(up.app()) as url:
        doc = money(upstream={"base_url": url + "/v1"}, rate_limit={"spend": ["0.002/day"]})
        async with Gateway(tmp, doc) as gw, gw.sdk(timeout=10) as client:
            try:
                await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}])
                message, headers = "answered", {}
            except openai.RateLimitError as exc:
                message = exc.body["message"] if isinstance(exc.body, dict) else str(exc)
                headers = exc.response.headers
    retry = headers.get("Retry-After")
    should = headers.get("x-should-retry")
    ok = "never fit" in message and "limit reached" not in message.lower() \
        and not up.fake.posts and retry is None and should == "false"
    return Row(
        "a budget smaller than one request's worst case ($0.002/day)",
        '"Spending limit reached ... $0.002 left" with nothing spent (Retry-After a day)',
        f'"{message}" (x-should-retry: {should}, Retry-After: {retry or "none"})',
        'says the request "can never fit" and what to change, and not to retry; nothing sent '
        'upstream', ok)


# --- identity -----------------------------------------------------------------------------


def client_key(name: str) -> str:
    return f"gw-bench-client-key-{name}-0123456789"


def client(name: str, **over) -> dict:
    return {"name": name, "key_sha256": hashlib.sha256(client_key(name).encode()).hexdigest(),
            **over}


TIERS = {"free": {"requests": ["2/minute"]}, "pro": {"requests": ["100/minute"]}}


async def minting(tmp: Path) -> Row:
    """A key of tier free: its 2/minute spent, then 20 pro tokens; a second such key asks for
    20 pro tokens with its limit untouched."""
    up = Upstream()
    async with serve(up.app()) as url:
        doc = {"upstream": {"base_url": url + "/v1"},
               "auth": {"tokens": {"secret_env": "GW_TOKEN_SECRET"}}, "tiers": TIERS,
               "clients": [client("spent", tier="free"), client("fresh", tier="free")]}
        async with Gateway(tmp, doc) as gw:
            async with gw.sdk(client_key("spent"), timeout=10) as c:
                for _ in range(2):
                    await c.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5)
            minted: dict[str, list] = {"spent": [], "fresh": []}
            for key in minted:
                for i in range(20):
                    status, body, _ = await gw.post(
                        "/gateway/tokens", {"user": f"u{i}", "tier": "pro"},
                        {"Authorization": f"Bearer {client_key(key)}"})
                    minted[key].append(body.get("tier") if status == 200 else status)
    pro = {k: v.count("pro") for k, v in minted.items()}
    shape = {k: ", ".join(f"{v.count(s)}x {s}" for s in sorted(set(v), key=str))
             for k, v in minted.items()}
    return Row(
        "a tier-free key mints pro tokens",
        "20 of 20 pro tokens after its own 2/minute limit was spent",
        f"after its limit: {pro['spent']} of 20 pro ({shape['spent']}); "
        f"limit untouched: {pro['fresh']} of 20 pro ({shape['fresh']})",
        "0 pro tokens; at most 2 mints a minute", pro == {"spent": 0, "fresh": 0})


async def user_42(tmp: Path) -> Row:
    """User "42" minted by two keys: one's spending moves the other's remaining?"""
    up = Upstream()
    async with serve(up.app()) as url:
        doc = money(upstream={"base_url": url + "/v1"}, rate_limit={"spend": []})
        doc.update({"auth": {"tokens": {"secret_env": "GW_TOKEN_SECRET"}},
                    "tiers": {"free": {"requests": ["100/minute"], "spend": [f"{BUDGET}/day"]}},
                    "clients": [client("a"), client("b")]})
        async with Gateway(tmp, doc) as gw:
            tokens = {}
            for key in ("a", "b"):
                status, body, _ = await gw.post("/gateway/tokens", {"user": "42", "tier": "free"},
                                                {"Authorization": f"Bearer {client_key(key)}"})
                if status != 200:
                    raise RuntimeError(f"minting failed: {body}")
                tokens[key] = f"Bearer {body['token']}"
            b_before = await gw.remaining_spend(tokens["b"])
            a_before = await gw.remaining_spend(tokens["a"])
            async with gw.sdk(tokens["a"].split()[1], timeout=10) as c:
                for _ in range(3):
                    await c.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": "hi"}],
                        max_tokens=1000)
            a_after = await gw.remaining_spend(tokens["a"])
            b_after = await gw.remaining_spend(tokens["b"])
    return Row(
        'user "42" minted by two keys',
        "one identity: key a's user spending moved key b's user's remaining",
        f"a's remaining {a_before:.6f} -> {a_after:.6f}; "
        f"b's remaining {b_before:.6f} -> {b_after:.6f}",
        "b's remaining unchanged", b_after == b_before and a_after < a_before)


def sessions(verify_url: str, **over) -> dict:
    return {"auth": {"tokens": {"secret_env": "GW_TOKEN_SECRET"},
                     "sessions": {"captcha_verify_url": verify_url,
                                  "captcha_secret_env": "GW_CAPTCHA_SECRET", "tier": "free",
                                  "requests": ["3/hour"], **over}},
            "tiers": TIERS}


async def session_prefix(tmp: Path) -> Row:
    """Eight addresses of one IPv6 /64 each ask /gateway/session (limit: 3/hour)."""
    verify = Siteverify()
    async with serve(verify.app()) as vurl, serve(Upstream().app()) as url:
        doc = {"upstream": {"base_url": url + "/v1"}, **sessions(vurl + "/siteverify")}
        async with Gateway(tmp, doc) as gw:
            statuses = [(await gw.post("/gateway/session", {"captcha": "widget-answer"},
                                       {"X-Forwarded-For": f"2001:db8:1:2::{n}"}))[0]
                        for n in range(1, 9)]
    got = statuses.count(200)
    return Row(
        "/gateway/session from 8 addresses of one IPv6 /64 (limit 3/hour)",
        "8 of 8 sessions (limited per full address)",
        f"{got} of 8 sessions ({statuses.count(429)}x 429)", "<= 3", got <= 3)


async def captcha_hostname(tmp: Path) -> Row:
    """A captcha solved on another site than `auth.sessions.hostnames`."""
    verify = Siteverify(hostname="evil.example.net")
    async with serve(verify.app()) as vurl, serve(Upstream().app()) as url:
        doc = {"upstream": {"base_url": url + "/v1"},
               **sessions(vurl + "/siteverify", hostnames=["app.example.com"])}
        async with Gateway(tmp, doc) as gw:
            status, body, _ = await gw.post("/gateway/session", {"captcha": "widget-answer"})
    code = body.get("error", {}).get("code")
    return Row(
        "captcha solved on evil.example.net, hostnames = [app.example.com]",
        "no setting reached the hostname check: a session",
        f"{status} {code}", "403, no token", status == 403 and "token" not in body)


async def check_sessions_without_secret(tmp: Path) -> Row:
    """`--check` of [auth.sessions] without auth.tokens.secret_env."""
    path = tmp / "sessions-without-secret.toml"
    path.write_text(toml({"auth": {"sessions": {
        "captcha_verify_url": "https://challenges.cloudflare.com/turnstile/v0/siteverify",
        "captcha_secret_env": "GW_CAPTCHA_SECRET"}}}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "gateway.py"), "--check", "--config", str(path), cwd=ROOT,
        env={**os.environ, **ENV}, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    said = next((line for line in err.decode().splitlines() if "auth.sessions" in line), "")
    ok = proc.returncode == 2 and "auth.tokens.secret_env" in said
    return Row(
        "--check with [auth.sessions] and no auth.tokens.secret_env",
        "passed --check; then /gateway/session was a 404",
        f"exit {proc.returncode}: {said}", "refused, naming both keys", ok)


async def jwks_rotation(tmp: Path) -> Row:
    """A token verified once, then its signing key leaves the JWKS."""
    provider = KeyProvider()
    async with serve(provider.app()) as purl, serve(Upstream().app()) as url:
        provider.issuer = purl + "/login/"
        doc = {"upstream": {"base_url": url + "/v1"},
               "auth": {"issuers": [{"issuer": provider.issuer, "audience": provider.audience,
                                     "jwks_url": purl + "/jwks.json",
                                     "algorithms": ["RS256", "ES256"], "jwks_cooldown": 0.1}]}}
        async with Gateway(tmp, doc) as gw:
            old = provider.sign(provider.signers[0], exp=int(time.time()) + 3600)

            async def chat(token: str) -> int:
                async with gw.sdk(token, timeout=10) as c:
                    try:
                        await c.chat.completions.create(
                            model=MODEL, messages=[{"role": "user", "content": "hi"}],
                            max_tokens=5)
                        return 200
                    except openai.APIStatusError as exc:
                        return exc.status_code

            first = await chat(old)
            provider.signers = [Signer.rsa("rsa-2", n=2), provider.signers[1]]  # rsa-1 retired
            await asyncio.sleep(0.2)  # past the refetch cooldown
            new = await chat(provider.sign(provider.signers[0]))  # unknown kid: refetch
            after = await chat(old)
    return Row(
        "a token verified once, its key then gone from the JWKS",
        "kept working until its own exp",
        f"before {first}; a new key's token {new} (refetch); the old token then {after}",
        "401 at once", first == 200 and new == 200 and after == 401)


#: 5,000 arrays deep in 10 KB: within the /gateway/* body limit, past any nesting bound.
DEEP = b"[" * 5000 + b"]" * 5000


async def bodies(tmp: Path) -> Row:
    """Mistyped roles and bodies nested 5,000 deep on the API and /gateway/*."""
    verify = Siteverify()
    async with serve(verify.app()) as vurl, serve(Upstream().app()) as url:
        doc = {"upstream": {"base_url": url + "/v1"}, **sessions(vurl + "/siteverify"),
               "clients": [client("a")]}
        async with Gateway(tmp, doc) as gw:
            key = {"Authorization": f"Bearer {client_key('a')}"}
            sent: list[tuple[str, dict | bytes, dict | None]] = [
                ("/v1/chat/completions",
                 {"model": MODEL, "messages": [{"role": ["user"], "content": "hi"}]}, None),
                ("/v1/chat/completions",
                 {"model": MODEL, "messages": [{"role": {}, "content": "hi"}]}, None),
                ("/gateway/session", b'{"captcha": ' + DEEP + b"}", None),
                ("/gateway/tokens", b'{"user": ' + DEEP + b"}", key),
            ]
            answers = [await gw.post(path, body, headers) for path, body, headers in sent]
            await asyncio.sleep(0.2)
            tracebacks = gw.log().count("Traceback")
    statuses = [status for status, _, _ in answers]
    shaped = all(set(d.get("error", {})) >= {"message", "type", "param", "code"}
                 for _, d, _ in answers)
    return Row(
        "role [\"user\"] / {} in chat; bodies 5,000 deep on /gateway/session and /tokens",
        "500 with a traceback in the log (4 of 4)",
        f"statuses {statuses}, OpenAI-shaped errors: {shaped}, tracebacks in the log: "
        f"{tracebacks}", "no 500, no traceback",
        500 not in statuses and shaped and tracebacks == 0)


CLIENT_SECRET = "sk-client-secret-7d41c0ffee9b2a6e5f38-do-not-log"
DEL_HEAD = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
            b"Authorization: Bearer " + CLIENT_SECRET.encode() + b"\x7f\r\n"
            b"Content-Length: 2\r\n\r\n{}")


async def malformed_heads(tmp: Path, burst: int = 200) -> Row:
    """`burst` request heads with a DEL byte in the Authorization line, one per connection."""
    async with serve(Upstream().app()) as url:
        async with Gateway(tmp, {"upstream": {"base_url": url + "/v1"}}) as gw:
            before = len(gw.log().encode())
            answered = 0
            started = time.monotonic()
            for _ in range(burst):
                reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
                writer.write(DEL_HEAD)
                answered += b" 400 " in (await reader.read()).split(b"\r\n", 1)[0]
                writer.close()
                await writer.wait_closed()
            took = time.monotonic() - started
            await asyncio.sleep(1.5)  # the count of what was not logged follows within 1 s
            added = gw.log().encode()[before:].decode(errors="replace")
    lines = [line for line in added.splitlines() if "malformed request head" in line]
    per_second: dict[str, int] = {}
    for line in lines:
        with contextlib.suppress(ValueError, KeyError):
            second = json.loads(line)["time"][:19]
            per_second[second] = per_second.get(second, 0) + 1
    leaks = added.count(CLIENT_SECRET[:20])
    busiest = max(per_second.values(), default=0)
    return Row(
        f"{burst} request heads with a DEL byte in the Authorization line",
        "the Authorization value in the log, one error line of ~650 bytes per head",
        f"{answered} answered 400 in {took:.1f} s; {len(lines)} log lines, "
        f"{len(added.encode()):,} log bytes in all ({len(added.encode()) / burst:.0f} per "
        f"head), at most {busiest} lines a second; the secret {leaks} times",
        "secret 0 times; <= 5 lines a second (+ a count)",
        leaks == 0 and busiest <= 6)


# --- the run ------------------------------------------------------------------------------

SCENARIOS = {
    "hang-up": lambda tmp: [hang_up(tmp, kind) for kind in ("memory", "redis", "memcached")],
    "first-byte-timeout": lambda tmp: [first_byte_timeout(tmp)],
    "images": lambda tmp: [images(tmp, BUDGET), images(tmp, 0.5)],
    "minting": lambda tmp: [minting(tmp), user_42(tmp)],
    "sessions": lambda tmp: [session_prefix(tmp), captcha_hostname(tmp),
                             check_sessions_without_secret(tmp)],
    "bodies": lambda tmp: [bodies(tmp)],
    "heads": lambda tmp: [malformed_heads(tmp)],
    "jwks": lambda tmp: [jwks_rotation(tmp)],
    "message": lambda tmp: [small_budget_message(tmp)],
}


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(rows: list[Row]) -> str:
    out = ["| attack | the audit measured | measured now | bound | |",
           "|---|---|---|---|---|"]
    out += [f"| {cell(r.attack)} | {cell(r.before)} | {cell(r.now)} | {cell(r.bound)} | "
            f"{'pass' if r.ok else '**FAIL**'} |" for r in rows]
    return "\n".join(out)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


async def run(only: list[str]) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gateway-attacks-") as tmp:
        for name, make in SCENARIOS.items():
            if only and name not in only:
                continue
            for attack in make(Path(tmp)):
                started = time.monotonic()
                row = await attack
                print(f"{'pass' if row.ok else 'FAIL'} {row.attack} "
                      f"({time.monotonic() - started:.1f} s): {row.now}", flush=True)
                rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], choices=sorted(SCENARIOS),
                        help="run only these attacks (repeatable)")
    parser.add_argument("--no-write", action="store_true", help="print, do not write results")
    args = parser.parse_args()
    started = time.monotonic()
    rows = asyncio.run(run(args.only))
    text = table(rows)
    print("\n" + text)
    took = time.monotonic() - started
    print(f"\n{sum(r.ok for r in rows)} of {len(rows)} within their bound ({took:.0f} s)")
    if not args.no_write and not args.only:
        RESULTS.write_text(
            "# Attacks re-measured\n\n"
            f"`python bench/attacks.py` at commit {commit()}, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}, Python {platform.python_version()}, "
            f"aiohttp {aiohttp.__version__}, openai {openai.__version__}, "
            f"{os.cpu_count()} cores; {took:.0f} s. Money is the fake upstream's ledger at "
            f"the shipped list prices (gpt-4o-mini: $0.15 / $0.60 per 1M tokens).\n\n"
            + text + "\n")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Shared fixtures: the fake upstream, gateway apps and processes (the demo too), memcached,
a browser, the leak scan."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from openai_gateway.app import create_app
from openai_gateway.config.settings import parse

from .support.browser import Browser, start_chromium
from .support.fake_upstream import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
#: A recognisable upstream key: it must never show up in a response or a log line.
KEY = "sk-test-SECRET-4f9c2e7a1b-do-not-leak"
ORIGIN = "http://localhost:5173"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


#: Ports free_port hands out: below the kernel's ephemeral range, so that no outgoing
#: connection and no port-0 bind (a demo upstream, a test server) takes one between the moment
#: it is chosen and the moment a process binds it; each at most once per session.
_PORTS = range(10000, _ephemeral_low())
_handed: set[int] = set()


def free_port() -> int:
    for _ in range(200):
        port = random.choice(_PORTS)
        if port in _handed:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def toml_dumps(doc: dict) -> str:
    """Enough TOML for test configs: scalars, lists of scalars, tables, arrays of tables."""

    def scalar(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise TypeError(v)

    lines: list[str] = []

    def table(name: str, body: dict, array: bool = False):
        lines.append(f"[[{name}]]" if array else f"[{name}]")
        subs = []
        for k, v in body.items():
            if isinstance(v, dict):
                subs.append((f"{name}.{k}", v, False))
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                subs.extend((f"{name}.{k}", x, True) for x in v)
            else:
                lines.append(f"{k} = {scalar(v)}")
        for sub in subs:
            table(*sub)

    for k, v in doc.items():
        if isinstance(v, dict):
            table(k, v)
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for x in v:
                table(k, x, True)
        else:
            lines.insert(0, f"{k} = {scalar(v)}")
    return "\n".join(lines) + "\n"


def merge(base: dict, extra: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def base_config(upstream_url: str) -> dict:
    return {
        "upstream": {"base_url": upstream_url, "retries": 1, "retry_backoff": 0.01,
                     "first_byte_timeout": 5.0, "idle_timeout": 5.0, "connect_timeout": 2.0},
        "rate_limit": {"requests": ["1000/minute"]},
        "validation": {"allowed_models": ["gpt-4o-mini", "text-embedding-3-small"]},
        "log": {"format": "json", "level": "info"},
    }


# --- the leak scan: every log record and every response a test sees -----------------------


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        # The gateway's records and its server's: a test's client libraries (an SDK client
        # collected late) may log their own tracebacks into the same root logger.
        self.gateway: list[str] = []

    def emit(self, record):
        # Raw record text (message, args, traceback): checked before any redaction.
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        text += repr(getattr(record, "access", ""))
        self.texts.append(text)
        if record.name.startswith(("gateway", "openai_gateway", "aiohttp")):
            self.gateway.append(text)


SEEN_RESPONSES: list[str] = []


@pytest.fixture(autouse=True)
def leak_scan():
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    SEEN_RESPONSES.clear()
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)
    leaks = [t for t in handler.texts + SEEN_RESPONSES if KEY in t]
    assert not leaks, f"the upstream key leaked: {leaks[:3]}"


def trace_config() -> aiohttp.TraceConfig:
    """Every response a test client receives goes into the leak scan (headers and body)."""
    tc = aiohttp.TraceConfig()

    async def on_end(session, ctx, params):
        resp = params.response
        SEEN_RESPONSES.append(repr(dict(resp.headers)))
        if not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            try:
                SEEN_RESPONSES.append((await resp.read()).decode("utf-8", "replace"))
            except Exception:
                pass

    tc.on_request_end.append(on_end)
    return tc


# --- the fake upstream and in-process gateways ---------------------------------------------


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
async def upstream(fake, aiohttp_server):
    server = await aiohttp_server(fake.app())
    return server


@pytest.fixture
def upstream_url(upstream) -> str:
    return str(upstream.make_url("/v1"))


@pytest.fixture
def make_gateway(aiohttp_client, upstream_url):
    """make_gateway(config, access=None, **client options) -> a test client of
    create_app(settings) against the fake (`access`: the app's access log)."""

    async def make(config: dict | None = None, access=None, **kw):
        settings = parse(merge(base_config(upstream_url), config or {}),
                         environ={"OPENAI_API_KEY": KEY})
        app = create_app(settings, access=access)
        return await aiohttp_client(app, trace_configs=[trace_config()], **kw)

    return make


@pytest.fixture
async def gw(make_gateway):
    return await make_gateway()


# --- real processes -------------------------------------------------------------------------


def need(binary: str) -> str:
    """The path of a program the tests talk to for real; a test never skips for want of one:
    it fails, naming the command that installs it."""
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}")
                                    else None)
    if path is None:
        pytest.fail(f"{binary} is not installed; run the README's test command "
                    f"(make test), which installs it", pytrace=False)
    return path


@pytest.fixture(scope="session")
def curl_installed() -> str:
    return need("curl")


@pytest.fixture(scope="session")
def memcached_factory():
    """start() -> (url, process); every server started is stopped at the end."""
    procs = []

    def start(port: int | None = None):
        port = port or free_port()
        proc = subprocess.Popen([need("memcached"), "-l", "127.0.0.1", "-p", str(port),
                                 "-U", "0", "-m", "64", "-u", "root"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return f"memcached://127.0.0.1:{port}", proc
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("memcached did not start")

    yield start
    for p in procs:
        p.terminate()
        p.wait(5)


@pytest.fixture(scope="session")
def memcached_url(memcached_factory) -> str:
    return memcached_factory()[0]


async def wait_healthy(url: str, proc: subprocess.Popen, log, timeout: float) -> None:
    """Until `url`/healthz answers 200; fails with the process's output (`log()`) if it exits
    or does not answer within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"exited {proc.returncode}: {log()}")
            try:
                async with s.get(url + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"did not answer on {url}: {log()}")


class GatewayProcess:
    """A real `python gateway.py --config FILE` with its stderr kept for inspection."""

    def __init__(self, config: dict, tmp: Path, env: dict | None = None, args=()):
        self.port = config.setdefault("server", {}).setdefault("port", free_port())
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = tmp / f"gateway-{self.port}.toml"
        self.config_path.write_text(toml_dumps(config))
        self.log_path = tmp / f"gateway-{self.port}.log"
        self.env = {**os.environ, "OPENAI_API_KEY": KEY, **(env or {})}
        self.args = list(args)
        self.proc: subprocess.Popen | None = None

    def start(self) -> GatewayProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "gateway.py"), "--config", str(self.config_path),
             *self.args], cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    async def wait_ready(self, timeout: float = 15) -> None:
        await wait_healthy(self.url, self.proc, self.log, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()
        return self.proc.returncode if self.proc else None


@pytest.fixture
async def gateway_process(tmp_path, upstream_url):
    """gateway_process(config) -> a started, ready GatewayProcess against the fake upstream."""
    started: list[GatewayProcess] = []

    async def start(config: dict | None = None, env=None, args=(), base=True):
        cfg = merge(base_config(upstream_url), config or {}) if base else (config or {})
        gp = GatewayProcess(cfg, tmp_path, env, args).start()
        started.append(gp)
        await gp.wait_ready()
        return gp

    yield start
    for gp in started:
        # Stopped from a thread: the fake upstream is served by this loop, and a gateway that
        # closes its upstream sockets as it stops waits for the fake's answers.
        await asyncio.to_thread(gp.stop)
        assert KEY not in gp.log(), "the upstream key leaked into the gateway's log"


@pytest.fixture
def demo_process(tmp_path):
    """start(config, args) -> a ready `gateway.py --demo` process whose env has no key."""
    started: list[GatewayProcess] = []

    async def start(config: dict | None = None, args=("--demo",)) -> GatewayProcess:
        cfg = {"log": {"format": "json"}, **(config or {})}
        gp = GatewayProcess(cfg, tmp_path, args=args)
        gp.env.pop("OPENAI_API_KEY")
        started.append(gp.start())
        await gp.wait_ready()
        return gp

    yield start
    for gp in started:
        gp.stop()


async def wait_for_log(gp: GatewayProcess, text: str, timeout: float = 5) -> None:
    """Until `text` is in the process's log; fails with the log's tail after `timeout`."""
    deadline = time.monotonic() + timeout
    while text not in gp.log():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in log: {gp.log()[-2000:]}")
        await asyncio.sleep(0.05)


def access_lines(gp: GatewayProcess) -> list[dict]:
    """The access log records (json format) the process has written so far."""
    lines = []
    for line in gp.log().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("logger") == "gateway.access":
            lines.append(doc)
    return lines


async def gateway_cli(*args: str, env: dict | None = None) -> tuple[int, str, str]:
    """`python gateway.py ARGS` without blocking the loop (the fake upstream lives on it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "gateway.py"), *args, cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def browser(tmp_path) -> Iterator[Browser]:
    """A headless Chromium (tests/support/browser.py), quit at the end."""
    chromium = start_chromium(tmp_path / "chromium-profile")
    yield chromium
    chromium.driver.quit()

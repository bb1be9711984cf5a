"""A real `python gateway.py` process: SIGTERM drain, SIGHUP reload, sd_notify, workers."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest

from openai_gateway.config.settings import Settings
from openai_gateway.server.workers import EXIT_CANNOT_LISTEN, Supervisor

from ..conftest import KEY, ORIGIN, ROOT, base_config, merge, toml_dumps, wait_for_log

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
STREAM = dict(CHAT, stream=True)


async def test_sigterm_drains_a_live_stream(gateway_process, fake):
    gp = await gateway_process({"server": {"shutdown_timeout": 10.0}})
    fake.chunks, fake.chunk_delay = 8, 0.25
    async with aiohttp.ClientSession() as s:
        async with s.post(gp.url + "/v1/chat/completions", json=STREAM) as r:
            first = await r.content.readany()
            gp.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            # No new connections once draining started.
            with pytest.raises(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as s2:
                    await s2.get(gp.url + "/healthz")
            rest = await r.read()
    text = (first + rest).decode()
    assert text.count("chat.completion.chunk") == 8 and text.endswith("data: [DONE]\n\n")
    assert await asyncio.to_thread(gp.proc.wait, 10) == 0
    assert "draining" in gp.log() and "stopped" in gp.log()


async def test_sigterm_cuts_streams_after_shutdown_timeout(gateway_process, fake):
    gp = await gateway_process({"server": {"shutdown_timeout": 0.5}})
    fake.chunks, fake.chunk_delay = 100, 0.2
    async with aiohttp.ClientSession() as s:
        async with s.post(gp.url + "/v1/chat/completions", json=STREAM) as r:
            await r.content.readany()
            t0 = time.monotonic()
            gp.proc.send_signal(signal.SIGTERM)
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
    assert await asyncio.to_thread(gp.proc.wait, 10) == 0
    assert time.monotonic() - t0 < 5


async def test_sighup_reloads_policy_without_dropping_connections(gateway_process, fake):
    gp = await gateway_process({"rate_limit": {"requests": ["100/minute"]}})
    cfg = merge(base_config(fake_url(gp)), {"server": {"port": gp.port},
                                            "rate_limit": {"requests": ["2/minute"]},
                                            "cors": {"allow_origins": ["https://new.example"]}})
    fake.chunks, fake.chunk_delay = 6, 0.2
    async with aiohttp.ClientSession() as s:
        async with s.post(gp.url + "/v1/chat/completions", json=STREAM) as stream:
            await stream.content.readany()
            gp.config_path.write_text(toml_dumps(cfg))
            gp.proc.send_signal(signal.SIGHUP)
            await wait_for_log(gp, "configuration reloaded")
            # The new origin list and limit apply to new requests at once...
            r = await s.post(gp.url + "/v1/chat/completions", json=CHAT,
                             headers={"Origin": ORIGIN})
            assert r.status == 403
            r = await s.post(gp.url + "/v1/chat/completions", json=CHAT,
                             headers={"Origin": "https://new.example"})
            assert r.status == 200 and r.headers["x-ratelimit-limit-requests"] == "2"
            # ...and the stream that was open finishes untouched.
            assert (await stream.read()).endswith(b"data: [DONE]\n\n")
        # A broken file is rejected with its reason; the running config stays.
        gp.config_path.write_text('[rate_limit]\nrequests = ["lots"]\n')
        gp.proc.send_signal(signal.SIGHUP)
        await wait_for_log(gp, "reload rejected")
        r = await s.post(gp.url + "/v1/chat/completions", json=CHAT,
                         headers={"Origin": "https://new.example"})
        assert r.status in (200, 429) and r.headers["x-ratelimit-limit-requests"] == "2"
    assert "rate_limit.requests[0]" in gp.log()
    assert gp.proc.poll() is None


def fake_url(gp) -> str:
    import tomllib
    return tomllib.loads(gp.config_path.read_text())["upstream"]["base_url"]


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)

    async def expect(self, prefix: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.sock.recv(4096).decode()
                if msg.startswith(prefix):
                    return msg
            except BlockingIOError:
                await asyncio.sleep(0.02)
        raise AssertionError(f"no {prefix!r} notification")


async def test_sd_notify_ready_watchdog_reload_stopping(gateway_process, tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    gp = await gateway_process(env={"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "200000"})
    assert "READY=1" in await ns.expect("READY=1")
    await ns.expect("WATCHDOG=1")
    await ns.expect("WATCHDOG=1", timeout=1)
    gp.proc.send_signal(signal.SIGHUP)
    assert "MONOTONIC_USEC=" in await ns.expect("RELOADING=1")
    await ns.expect("READY=1")
    gp.proc.send_signal(signal.SIGTERM)
    await ns.expect("STOPPING=1")


async def test_workers_share_a_port_and_restart(gateway_process, memcached_url, tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    gp = await gateway_process({"server": {"workers": 2}, "storage": {"url": memcached_url},
                                "rate_limit": {"requests": ["1000/minute"]}},
                               env={"NOTIFY_SOCKET": ns.path})
    assert "2 workers" in await ns.expect("READY=1")
    prefixes = set()
    for _ in range(40):  # new connections spread over both workers
        async with aiohttp.ClientSession() as s:
            async with s.get(gp.url + "/healthz") as r:
                prefixes.add(r.headers["X-Request-ID"][:12])
        if len(prefixes) == 2:
            break
    assert len(prefixes) == 2
    children = subprocess.run(["pgrep", "-P", str(gp.proc.pid)], capture_output=True,
                              text=True).stdout.split()
    assert len(children) == 2
    os.kill(int(children[0]), signal.SIGKILL)
    await wait_for_log(gp, "restarting")
    await asyncio.sleep(1.5)
    async with aiohttp.ClientSession() as s:
        for _ in range(10):
            async with s.get(gp.url + "/healthz") as r:
                assert r.status == 200
    gp.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(gp.proc.wait, 15) == 0


def test_workers_with_memory_storage_is_a_config_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[server]\nworkers = 2\n")
    p = subprocess.run([sys.executable, "gateway.py", "--config", str(path), "--check"],
                       cwd=ROOT, env={**os.environ, "OPENAI_API_KEY": KEY},
                       capture_output=True, text=True)
    assert p.returncode == 2 and "server.workers" in p.stderr and "memory://" in p.stderr


async def test_access_log_is_json_without_prompts_or_keys(gateway_process, fake):
    gp = await gateway_process({"log": {"hash_client": True}})
    secret_prompt = "my-private-prompt-text"
    async with aiohttp.ClientSession() as s:
        async with s.post(gp.url + "/v1/chat/completions",
                          json={**CHAT, "messages": [{"role": "user", "content": secret_prompt}]},
                          headers={"Authorization": "Bearer client-secret-xyz"}) as r:
            rid = r.headers["X-Request-ID"]
            await r.read()
    await wait_for_log(gp, rid)
    line = next(json.loads(x) for x in gp.log().splitlines() if rid in x)
    assert line["logger"] == "gateway.access" and line["status"] == 200
    assert line["route"] == "/v1/chat/completions" and line["model"] == "gpt-4o-mini"
    assert line["cache"] == "BYPASS" and line["rate_limit"] == "ok"
    assert line["upstream_status"] == 200 and line["tokens_out"] == 5
    assert line["ttfb_ms"] >= 0 and line["duration_ms"] >= line["ttfb_ms"]
    assert line["client"] != "127.0.0.1" and len(line["client"]) == 16
    log = gp.log()
    assert secret_prompt not in log and "client-secret-xyz" not in log and KEY not in log


def test_a_dead_worker_is_restarted_later_without_blocking_the_supervisor(monkeypatch):
    """_reap only schedules the restart: a sleep there would hold back WATCHDOG=1."""
    sup = Supervisor(Settings(), 2, worker=lambda settings, ready: 0)
    spawned: list[int] = []
    monkeypatch.setattr(sup, "_spawn", spawned.append)
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail("the supervisor slept"))
    pid = os.fork()
    if pid == 0:
        os._exit(1)  # a worker that died
    sup.children[pid] = 1
    before = time.monotonic()
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped
    sup._reap()
    assert sup.children == {} and spawned == []
    due = sup.restarts[1]
    assert due >= before + sup.RESTART_DELAY
    # The main loop waits no longer than until the restart is due, and then starts it.
    assert sup._timeout(due - 0.2, None) == pytest.approx(0.2)
    sup._restart_due(due - 0.001)
    assert spawned == []
    sup._restart_due(due)
    assert spawned == [1] and sup.restarts == {}


def test_a_worker_that_cannot_listen_stops_the_supervisor(monkeypatch):
    sup = Supervisor(Settings(), 2, worker=lambda settings, ready: 0)
    monkeypatch.setattr(sup, "_spawn", lambda index: pytest.fail("restarted"))
    monkeypatch.setattr(sup, "_signal_all", lambda sig: None)
    pid = os.fork()
    if pid == 0:
        os._exit(EXIT_CANNOT_LISTEN)
    sup.children[pid] = 0
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    sup._reap()
    assert sup.failed and sup.stopping and sup.restarts == {}


async def test_wildcard_origin_is_warned_about_at_start(gateway_process):
    gp = await gateway_process({"cors": {"allow_origins": ["*"]}})
    await wait_for_log(gp, 'cors.allow_origins contains \\"*\\"')
    assert '"level":"warning"' in gp.log()

"""sd_notify against real AF_UNIX datagram sockets, as systemd would receive them."""

import asyncio
import os
import re
import socket
import time
import uuid

import pytest

from openai_gateway.server import sdnotify


@pytest.fixture(params=["path", "abstract"])
def listener(request, tmp_path):
    """A bound receiving socket and the $NOTIFY_SOCKET value that reaches it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        name = str(tmp_path / "notify")  # short: sun_path holds 108 bytes
        sock.bind(name)
    else:
        tag = f"gateway-test-{uuid.uuid4().hex}"
        sock.bind("\0" + tag)
        name = "@" + tag
    sock.settimeout(2)
    yield sock, {"NOTIFY_SOCKET": name}
    sock.close()


def received(sock) -> list[bytes]:
    """Every datagram already queued, without waiting."""
    sock.setblocking(False)
    out = []
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(2)


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        (lambda env: sdnotify.ready(env=env), b"READY=1\nSTATUS=serving"),
        (lambda env: sdnotify.ready("up on :8080", env=env), b"READY=1\nSTATUS=up on :8080"),
        # A newline would smuggle in another assignment, so it is flattened.
        (lambda env: sdnotify.ready("a\nMAINPID=1", env=env), b"READY=1\nSTATUS=a MAINPID=1"),
        (lambda env: sdnotify.stopping(env=env), b"STOPPING=1"),
        (lambda env: sdnotify.notify("WATCHDOG=1", env=env), b"WATCHDOG=1"),
    ],
)
def test_exact_datagram(listener, send, expected):
    sock, env = listener
    assert send(env) is True
    assert sock.recv(4096) == expected


def test_reloading_carries_monotonic_usec(listener):
    sock, env = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading(env=env) is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", sock.recv(4096))
    assert match and before <= int(match[1]) <= after


def test_reads_process_environment_by_default(listener, monkeypatch):
    sock, env = listener
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert sdnotify.stopping() is True
    assert sock.recv(4096) == b"STOPPING=1"


@pytest.mark.parametrize(
    "env",
    [
        {},  # not started by systemd
        {"NOTIFY_SOCKET": ""},
        {"NOTIFY_SOCKET": "vsock:2:1234"},  # a kind we do not speak
        {"NOTIFY_SOCKET": "/nonexistent/notify"},  # systemd gone: no exception
    ],
)
def test_no_op_without_a_reachable_socket(env, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1", env=env) is False
    assert sdnotify.ready(env=env) is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),  # WatchdogSec=30 -> every 15 s
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another pid
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env, expected):
    assert sdnotify.watchdog_interval(env=env) == expected


async def test_watchdog_loop_returns_at_once_when_unset():
    await asyncio.wait_for(sdnotify.watchdog_loop(env={}), timeout=1)


async def test_watchdog_loop_sends_keepalives_until_cancelled(listener):
    sock, env = listener
    env = {**env, "WATCHDOG_USEC": "20000"}  # every 10 ms
    task = asyncio.create_task(sdnotify.watchdog_loop(env=env))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    sent = received(sock)
    assert len(sent) >= 3 and set(sent) == {b"WATCHDOG=1"}
    await asyncio.sleep(0.05)
    assert received(sock) == []  # cancelled: no more keep-alives


async def test_blocked_loop_stops_keepalives(listener):
    """The reason to send from the event loop: a stuck loop lets systemd restart us."""
    sock, env = listener
    task = asyncio.create_task(sdnotify.watchdog_loop(env={**env, "WATCHDOG_USEC": "20000"}))
    await asyncio.sleep(0.05)
    received(sock)
    time.sleep(0.2)  # a callback hogging the loop for 20 intervals
    assert received(sock) == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

"""Tell systemd how the gateway is doing, without libsystemd (protocol: sd_notify(3)).

Why: under ``Type=notify`` systemd treats the service as started only when it sends
``READY=1``, so ``systemctl start`` (and units ordered after us) wait until the port is
bound; ``WatchdogSec=`` restarts a process that stops sending ``WATCHDOG=1``. The protocol
is one datagram of newline-separated ``KEY=VALUE`` lines sent to the ``AF_UNIX`` socket
named in ``$NOTIFY_SOCKET`` (``@name`` is an abstract socket). Outside systemd the
variable is unset and every function here is a no-op that returns False.

The keep-alive is sent from the event loop itself, so a loop blocked by a stuck callback
stops the keep-alives and systemd restarts the process: that is the point of a watchdog.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping


def _address(raw: str) -> str | None:
    """The sendto() address for $NOTIFY_SOCKET; None for kinds we do not speak."""
    if raw.startswith("@"):  # abstract namespace: leading NUL instead of "@"
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None  # e.g. "vsock:" (systemd 253+, VMs only): not used on our hosts


def notify(state: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (``KEY=VALUE`` lines) as one datagram; True when it was sent."""
    address = _address((os.environ if env is None else env).get("NOTIFY_SOCKET", ""))
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError:  # systemd gone or socket unreachable: never fatal for the gateway
        return False
    return True


def ready(status: str = "serving", **kw) -> bool:
    """Startup (or a reload) is complete: the listening socket is bound."""
    return notify(f"READY=1\nSTATUS={_one_line(status)}", **kw)


def reloading(**kw) -> bool:
    """A SIGHUP reload has begun; call ready() when it is done.

    MONOTONIC_USEC lets systemd tell this reload apart from an older one (it is
    required by Type=notify-reload and harmless with Type=notify).
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}", **kw)


def stopping(**kw) -> bool:
    """Graceful shutdown has begun (streams are draining)."""
    return notify("STOPPING=1", **kw)


def watchdog_interval(*, env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between keep-alives (half of WatchdogSec=), or None when not asked for.

    $WATCHDOG_PID, when set, names the process the watchdog is meant for; a child
    that inherited the variables must not answer for its parent.
    """
    env = os.environ if env is None else env
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None


async def watchdog_loop(*, env: Mapping[str, str] | None = None) -> None:
    """Send WATCHDOG=1 every watchdog_interval() until cancelled; returns at once if unset.

    Run it as a task for the life of the app (e.g. from a cleanup_ctx) and cancel it on
    shutdown.
    """
    interval = watchdog_interval(env=env)
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1", env=env)
        await asyncio.sleep(interval)


def _one_line(text: str) -> str:
    # Each line of the datagram is one assignment, so a newline would start a new key.
    return " ".join(text.splitlines())

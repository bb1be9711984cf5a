"""Process plumbing for the benchmark: free ports, pinned launches, readiness, RSS and fd probes.

Every server is started by `spawn()` with its CPU affinity set (the equivalent of `taskset -c N`)
and its RLIMIT_NOFILE soft limit raised to the hard limit (the equivalent of `prlimit`), so
thousands of held streams do not run out of file descriptors. Output goes to a log file, never to
an undrained pipe (a full pipe would stall the server under test).
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

HAVE_TWO_CORES = (os.cpu_count() or 1) >= 2
PROXY_CORE = 0  # the process under test
LOAD_CORE = 1  # wrk, stream clients, mock upstreams, this runner
ANY_CORE = -1  # every core (undoes an affinity inherited from the pinned runner)


def raise_nofile() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def pin_self(core: int | None) -> None:
    """Pin this process to `core`; ANY_CORE allows every core; None leaves it as it is."""
    if core == ANY_CORE:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    elif core is not None and HAVE_TWO_CORES:
        os.sched_setaffinity(0, {core})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(cmd: list[str], *, core: int | None, log: Path, env: dict | None = None,
          cwd: str | Path | None = None) -> subprocess.Popen:
    """Start `cmd` pinned to `core` (None = unpinned) with a raised fd limit; output to `log`."""

    def setup() -> None:  # runs in the child between fork and exec
        pin_self(core)
        raise_nofile()

    out = open(log, "ab")
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, preexec_fn=setup)
    finally:
        out.close()


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop one process we started, by its pid: `sig`, then SIGKILL after `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers={"Origin": "http://localhost:5173"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def http_post(url: str, body: bytes, headers: dict,
              timeout: float = 5.0) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 15.0) -> bool:
    """Poll `url` until it answers 200; False if `proc` exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if http_get(url, timeout=1.0)[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (nginx's master and workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pids: list[int]) -> int:
    """Current resident set (VmRSS) summed over `pids`, in KiB."""
    return sum(_status_kb(p, "VmRSS") for p in pids)


def hwm_kb(pids: list[int]) -> int:
    """Peak resident set (VmHWM) summed over `pids`, in KiB (the kernel keeps the peak)."""
    return sum(_status_kb(p, "VmHWM") for p in pids)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time consumed so far by `pids` (each process's own, from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def machine_seconds() -> dict[str, float]:
    """CPU seconds all cores have spent since boot: `tasks` (user + nice + system, what
    processes are charged), `irq` (hard and soft interrupts: loopback networking partly lands
    here), `steal` (the hypervisor) and `idle` (idle + iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]] + [0] * 8
    tick = os.sysconf("SC_CLK_TCK")
    return {"tasks": (v[0] + v[1] + v[2]) / tick, "irq": (v[5] + v[6]) / tick,
            "steal": v[7] / tick, "idle": (v[3] + v[4]) / tick}


def wait_tcp(host: str, port: int, proc: subprocess.Popen | None, hello: bytes, expect: bytes,
             timeout: float = 10.0) -> bool:
    """Poll a TCP server until it answers `hello` with a line starting with `expect`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                s.sendall(hello)
                if s.recv(256).startswith(expect):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def fd_count(pids: list[int]) -> int:
    n = 0
    for p in pids:
        try:
            n += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return n


class CpuAccount:
    """CPU used on the machine by others while we ran: all cores' user+system time (from
    /proc/stat) minus ours and our waited-for children's (getrusage), and hypervisor steal.
    Read `others()` only after every child has been waited for."""

    def __init__(self) -> None:
        self.t0, self.stat0, self.own0 = time.monotonic(), self._stat(), self._own()

    @staticmethod
    def _stat() -> tuple[float, float]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        # user + nice + system, and steal
        return (v[0] + v[1] + v[2]) / tick, (v[7] if len(v) > 7 else 0) / tick

    @staticmethod
    def _own() -> float:
        s = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def others(self) -> dict:
        wall = time.monotonic() - self.t0
        busy, steal = self._stat()
        other = max(0.0, (busy - self.stat0[0]) - (self._own() - self.own0))
        return {"other_processes_cores": round(other / wall, 3),
                "steal_cores": round((steal - self.stat0[1]) / wall, 3)}


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all cores busy over `seconds` (from /proc/stat): other load on the machine."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(1, total1 - total0)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""

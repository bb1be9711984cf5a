"""Fixtures for the store tests: real memcached clusters, a real redis-server, counting relays.

Imported by the tests of the store and of what runs on it (metering, clusters of gateways).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from ..conftest import free_port, need
from .relay import Relay


class Server:
    """One server process on a fixed loopback port, restartable on that port."""

    def __init__(self, start, port: int) -> None:
        self._start = start
        self.port = port
        self.proc: subprocess.Popen[bytes] = start(port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)

    def restart(self) -> None:
        self.proc = self._start(self.port)

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections and bytes, nothing answers.

        The signal is delivered asynchronously: until the process is seen stopped, one of
        memcached's threads may still answer a request sent right after `kill` returns."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        _wait_stopped(self.proc.pid)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


def _wait_stopped(pid: int) -> None:
    """Until every thread of `pid` is in the stopped state ("T" in /proc/PID/task/*/stat)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/stat") as fh:
                    states.append(fh.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:
                continue
        if states and all(s in ("T", "t") for s in states):
            return
        time.sleep(0.005)
    raise RuntimeError(f"process {pid} did not stop")


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


@pytest.fixture
def memcached_servers(memcached_factory) -> Iterator[list[Server]]:
    """servers(n) -> n fresh memcached processes, each killable and restartable."""
    made: list[Server] = []

    def start(port: int) -> subprocess.Popen[bytes]:
        return memcached_factory(port)[1]

    def servers(n: int) -> list[Server]:
        new = [Server(start, free_port()) for _ in range(n)]
        made.extend(new)
        return new

    yield servers  # type: ignore[misc]
    for s in made:
        if s.proc.poll() is None:
            s.resume()
            s.proc.terminate()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> dict[str, str]:
    """A throw-away CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run([need("openssl"), *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"))
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.crt"),
        "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
        "-extfile", str(d / "san.ext"), "-out", str(d / "server.crt"))
    return {"ca": str(d / "ca.crt"), "cert": str(d / "server.crt"), "key": str(d / "server.key")}


@pytest.fixture(scope="session")
def redis_factory() -> Iterator:
    """start(port=None, password=None, tls=None) -> Server running redis-server on loopback,
    no persistence (tls: tls_files, then the port speaks TLS only); every process started is
    stopped at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def launch(port: int, password: str | None,
               tls: dict[str, str] | None) -> subprocess.Popen[bytes]:
        listen = ["--port", str(port)]
        if tls:
            listen = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", tls["cert"],
                      "--tls-key-file", tls["key"], "--tls-ca-cert-file", tls["ca"],
                      "--tls-auth-clients", "no"]
        args = [need("redis-server"), *listen, "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no"]
        if password:
            args += ["--requirepass", password]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        _wait_listening(port, proc)
        return proc

    def start(port: int | None = None, password: str | None = None,
              tls: dict[str, str] | None = None) -> Server:
        return Server(lambda p: launch(p, password, tls), port or free_port())

    yield start
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
            p.terminate()
            p.wait(5)


@pytest.fixture
async def relays() -> Iterator:
    """relay(address) -> a started counting Relay in front of `address` (host:port)."""
    made: list[Relay] = []

    async def relay(address: str) -> Relay:
        host, port = address.rsplit(":", 1)
        r = await Relay(host, int(port)).start()
        made.append(r)
        return r

    yield relay
    for r in made:
        await r.close()

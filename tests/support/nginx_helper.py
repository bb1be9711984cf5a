"""Run the real nginx binary in front of a test backend, with deploy/nginx/gateway.conf.

The site file is used as shipped except for the parts its "# BEGIN/END" markers delimit:
the port-80 redirect server is dropped and the TLS lines become one plain
``listen 127.0.0.1:<port>;``, so every proxy setting under test is the production one.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

SITE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "gateway.conf"


def nginx_binary() -> str:
    """The nginx executable; a clear failure (not a skip) when it is missing."""
    path = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise RuntimeError("nginx is not installed: apt-get install -y nginx")
    return path


def _region(name: str) -> re.Pattern[str]:
    return re.compile(rf"^[ \t]*# BEGIN {name}\n.*?^[ \t]*# END {name}\n", re.M | re.S)


def plain_http_site(site: str, *, port: int, backend: str) -> str:
    """The site over plain HTTP on 127.0.0.1:port, its upstream pointed at backend."""
    site, redirects = _region("redirect").subn("", site)
    site, tls = _region("tls").subn(f"    listen 127.0.0.1:{port};\n", site)
    site, upstreams = re.subn(
        r"(upstream gateway \{\s*server )\S+;", rf"\g<1>{backend};", site
    )
    if (redirects, tls, upstreams) != (1, 1, 1):
        raise ValueError("site config lost its BEGIN/END markers or its upstream block")
    return site


def stock_site(*, port: int, backend: str) -> str:
    """What most people write first: default buffering, HTTP/1.0 to the backend."""
    return (
        f"server {{\n    listen 127.0.0.1:{port};\n"
        f"    location / {{ proxy_pass http://{backend}; }}\n}}\n"
    )


def full_conf(site: str, prefix: Path, http_extra: str = "") -> str:
    """A self-contained nginx.conf: everything it writes stays under prefix.

    http_extra: more http-level directives, e.g. a server-wide "gzip on;".
    """
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, workers would switch to "nobody" and lose access to a 0700 tmp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} info;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n    access_log {prefix / 'access.log'};\n{temp}\n    {http_extra}\n{site}\n}}\n"
    )


class Nginx:
    """nginx serving ``site`` on 127.0.0.1:port; use as a context manager."""

    def __init__(self, site: str, port: int, prefix: Path, *, http_extra: str = "") -> None:
        self.port, self.prefix = port, prefix
        self.conf = prefix / "nginx.conf"
        prefix.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(full_conf(site, prefix, http_extra))
        self.args = [nginx_binary(), "-p", str(prefix), "-c", str(self.conf),
                     "-e", str(prefix / "error.log")]
        self.process: subprocess.Popen | None = None

    def test(self) -> subprocess.CompletedProcess:
        """``nginx -t``: parse and check the configuration without serving."""
        return subprocess.run([*self.args, "-t"], capture_output=True, text=True, timeout=30)

    def __enter__(self) -> Nginx:
        self.process = subprocess.Popen(self.args, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.process.stderr.read()}{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"nginx did not listen on {self.port}: {self.error_log()}")

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: fast shutdown, connections closed
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process and self.process.stderr:
            self.process.stderr.close()

    def error_log(self) -> str:
        log = self.prefix / "error.log"
        return log.read_text() if log.exists() else ""

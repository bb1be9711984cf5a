"""The documents a newcomer follows: their shell blocks run as written, their links lead
somewhere, and the README stays a landing page.

A fenced block whose info string is `sh test` is run with bash (-e, -o pipefail) and must exit
0; `sh test-serve NAME` starts a server and waits for its first "listening" line, and a later
block serving the same NAME stops it first, as Ctrl-C would. The blocks of one document run in
order in one empty directory, with `openai-gateway` on PATH (this checkout's gateway.py) and no
OPENAI_API_KEY in the environment; the ports they name (8080, 9999 ...) are swapped for free
ones. Every server must stop cleanly, with no traceback in its output.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openai_gateway.identity.jwks import parse_jwks

from .conftest import ROOT, free_port

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```sh (test|test-serve [a-z-]+)\n(.*?)^```$", re.M | re.S)
#: Ports the documents use; each is replaced by a free one per document.
PORTS = re.compile(r"\b(8080|8081|9000|9999)\b")
#: What a server prints once it accepts connections.
READY = ("gateway listening on ", "fake OpenAI API at ")


def blocks(path: Path) -> list[tuple[str, str]]:
    return [(kind, text) for kind, text in BLOCK.findall(path.read_text())]


TESTED = [d for d in DOCS if blocks(d)]


def test_the_guides_a_newcomer_follows_have_tested_blocks():
    names = {d.name for d in TESTED}
    assert {"getting-started.md", "identity.md", "frontend.md", "command-line.md"} <= names
    assert sum(len(blocks(d)) for d in TESTED) >= 15


class Server:
    def __init__(self, script: str, cwd: Path, env: dict, log: Path):
        self.log_path = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=cwd,
                                         env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(line in self.log() for line in READY):
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.log()}"
            assert time.monotonic() < deadline, f"not ready after {timeout}s:\n{self.log()}"
            time.sleep(0.05)

    def stop(self) -> str:
        os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C: to the whole foreground group
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        log = self.log()
        assert code == 0 and "Traceback" not in log, f"exited {code}:\n{log}"
        return log


@pytest.mark.parametrize("doc", TESTED, ids=lambda d: d.name)
def test_the_documents_shell_blocks_run(doc, tmp_path):
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    work.mkdir()
    # openai-gateway: this checkout's; python3: the gateway's venv (PyJWT and all).
    for name, argv in (("openai-gateway", f'"{sys.executable}" "{ROOT / "gateway.py"}"'),
                       ("python3", f'"{sys.executable}"')):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {argv} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "CREDENTIALS_DIRECTORY", "PYTHONPATH")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    ports: dict[str, str] = {}
    servers: dict[str, Server] = {}

    def remap(text: str) -> str:
        return PORTS.sub(lambda m: ports.setdefault(m[1], str(free_port())), text)

    try:
        for i, (kind, text) in enumerate(blocks(doc)):
            script = remap(text)
            if kind == "test":
                p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work,
                                   env=env, capture_output=True, text=True, timeout=120)
                servers_logs = "\n".join(f"--- {n}:\n{s.log()[-3000:]}"
                                         for n, s in servers.items())
                assert p.returncode == 0, (f"block {i} of {doc.name} failed ({p.returncode}):"
                                           f"\n{text}\n--- stdout:\n{p.stdout}\n--- stderr:\n"
                                           f"{p.stderr}\n{servers_logs}")
                continue
            name = kind.split()[1]
            if name in servers:
                servers.pop(name).stop()
            servers[name] = Server(script.strip(), work, env, tmp_path / f"{name}-{i}.log")
            servers[name].wait_ready()
    finally:
        for server in servers.values():
            server.stop()


# --- links and size -----------------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)|^\[[^\]]+\]: (\S+)$", re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_link_leads_somewhere(doc):
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
    broken = []
    for m in LINK.finditer(text):
        target = m[1] or m[2]
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert not broken, f"{doc.name}: {broken}"


def test_the_readme_is_a_landing_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 400
    # The two set-up commands stay the first thing, exactly two of them.
    assert lines[:5] == [
        "# openai-gateway", "", "```sh",
        "apt-get install -y make python3-venv && OPENAI_API_KEY=sk-your-key make run   "
        "# run the gateway on :8080",
        "make test                                                                     "
        "# run the whole test suite"]
    assert lines[5] == "```"


def test_the_jwks_file_example_is_a_key_set_the_gateway_reads():
    text = (ROOT / "docs" / "identity.md").read_text()
    [example] = re.findall(r'^```json\n(\{"keys".*?)^```$', text, re.M | re.S)
    keys = parse_jwks(example.encode())
    assert [k.data["kty"] for k in keys] == ["RSA", "EC"]

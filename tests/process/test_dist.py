"""Shipping: `make dist` (one file for a bare python3) and `pip install .` (the command).

Both build from a copy of the checkout, so builds leave nothing behind in it and two test runs
never share a build directory. The single file is built once per session (about half a
minute: pip fetches the pinned wheels) and run with Debian's own /usr/bin/python3 in isolated
mode, which has no aiohttp: everything it runs must come from inside the file.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import aiohttp
import pytest

import openai_gateway

from ..conftest import KEY, ROOT, base_config, free_port, merge, toml_dumps, wait_healthy

SYSTEM_PYTHON = "/usr/bin/python3"
#: What a build needs from the checkout (tests, bench and docs stay out of the copy).
SOURCES = ("Makefile", "pyproject.toml", "requirements.txt", "requirements-dev.txt",
           "README.md", "gateway.py", "openai_gateway")
STREAM = {"model": "gpt-4o-mini", "stream": True,
          "messages": [{"role": "user", "content": "Say hi"}]}


@pytest.fixture(scope="session")
def source_copy(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("checkout")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    return src


@pytest.fixture(scope="session")
def pyz(source_copy, tmp_path_factory) -> Path:
    """`make dist`, with the venv running these tests (it has shiv: requirements-dev.txt)."""
    out = tmp_path_factory.mktemp("dist")
    venv = Path(sys.prefix)
    p = subprocess.run(["make", "dist", f"VENV={venv}", f"DIST={out}",
                        "-o", f"{venv}/bin/.installed-dev"],
                       cwd=source_copy, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "built " in p.stdout and f"Python {sys.version_info[0]}.{sys.version_info[1]}" \
        in p.stdout
    assert not (source_copy / "build").exists()  # the build cleans up after itself
    return out / "gateway.pyz"


@pytest.fixture(scope="session")
def bare_python() -> str:
    """Debian's python3: same minor version as the build, and no aiohttp importable."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(f"{SYSTEM_PYTHON} not found: the single file is tested on the system "
                    "python3 (apt-get install python3)", pytrace=False)
    version = subprocess.run([SYSTEM_PYTHON, "-I", "-c",
                              "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.split()
    assert version == [str(v) for v in sys.version_info[:2]], \
        f"{SYSTEM_PYTHON} is {version}, the build is {sys.version_info[:2]}"
    assert subprocess.run([SYSTEM_PYTHON, "-I", "-c", "import aiohttp"],
                          capture_output=True).returncode != 0
    return SYSTEM_PYTHON


class Process:
    """A started program serving on a port, with its output kept for inspection."""

    def __init__(self, argv: list[str], port: int, env: dict, cwd: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = cwd / f"out-{port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    async def wait_ready(self, timeout: float = 60) -> None:
        # The first start of a shiv file unpacks it (SHIV_ROOT): allow for that.
        await wait_healthy(self.url, self.proc, self.log, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(20)
        finally:
            self._log.close()


def clean_env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "CREDENTIALS_DIRECTORY", "VIRTUAL_ENV", "PYTHONPATH")}
    # Where shiv unpacks the file's packages on first start (default ~/.shiv).
    return {**env, "SHIV_ROOT": str(tmp_path / "shiv"), **extra}


async def chat_stream(url: str) -> str:
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", json=STREAM) as r:
            assert r.status == 200, await r.text()
            assert r.headers["Content-Type"].startswith("text/event-stream")
            body = (await r.read()).decode()
    assert body.endswith("data: [DONE]\n\n")
    chunks = [json.loads(e[6:]) for e in body.split("\n\n") if e.startswith("data: {")]
    assert len(chunks) > 3  # streamed, chunk by chunk
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


# --- the single file -------------------------------------------------------------------------


async def test_the_single_file_runs_the_demo_on_a_bare_python(pyz, bare_python, tmp_path):
    """From a directory with no config.toml: the built-in defaults, and a line saying so."""
    port = free_port()
    app = Process([bare_python, "-I", str(pyz), "--demo", "--port", str(port)], port,
                  clean_env(tmp_path), tmp_path)
    try:
        await app.wait_ready()
        async with aiohttp.ClientSession() as s:
            async with s.get(app.url + "/") as r:
                assert r.status == 200 and "Gateway playground" in await r.text()
        assert (await chat_stream(app.url)).startswith("[demo]")
    finally:
        assert app.stop() == 0, app.log()
    assert "running on the built-in defaults" in app.log() and "gateway.pyz init" in app.log()


def test_the_single_file_writes_the_commented_defaults(pyz, bare_python, tmp_path):
    """init renders the file from the settings model inside the zipapp: the shipped one."""
    p = subprocess.run([bare_python, "-I", str(pyz), "init", "-"], cwd=tmp_path,
                       env=clean_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == (ROOT / "config.toml").read_text()


async def test_the_single_file_serves_a_config_file(pyz, bare_python, tmp_path, upstream_url,
                                                    fake):
    port = free_port()
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(toml_dumps(merge(base_config(upstream_url), {"server": {"port": port}})))
    # Executed directly: the shebang finds python3 on PATH; only /usr/bin comes first here.
    env = clean_env(tmp_path, OPENAI_API_KEY=KEY, PATH=f"/usr/bin:{os.environ['PATH']}")
    app = Process([str(pyz), "--config", str(cfg)], port, env, tmp_path)
    try:
        await app.wait_ready()
        assert await chat_stream(app.url) == "".join(f"w{i} " for i in range(5))
        assert fake.posts[0].headers["Authorization"] == f"Bearer {KEY}"
    finally:
        assert app.stop() == 0
    assert KEY not in app.log()


# --- the package ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def installed(source_copy, tmp_path_factory) -> Path:
    """`pip install` of the checkout into a fresh venv; returns the venv's bin directory.

    The venv sees the test venv's packages through a .pth file instead of downloading the
    runtime dependencies again; the package itself (code, playground page, command) comes
    from this install alone.
    """
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([venv / "bin" / "python", "-c",
                                "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    p = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                        "install", "--no-deps", "--disable-pip-version-check", "--quiet",
                        str(source_copy)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return venv / "bin"


def test_pip_install_gives_the_command(installed, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nport = 9100\n")
    p = subprocess.run([installed / "openai-gateway", "--config", str(cfg), "--check"],
                       cwd=tmp_path, env=clean_env(tmp_path, OPENAI_API_KEY=KEY),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["server"]["port"] == 9100 and KEY not in p.stdout
    where = subprocess.run([installed / "python", "-c",
                            "import openai_gateway; print(openai_gateway.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True).stdout
    assert where.startswith(str(installed.parent))  # the installed copy, not the checkout
    help_text = subprocess.run([installed / "openai-gateway", "--help"], cwd=tmp_path,
                               capture_output=True, text=True).stdout
    assert help_text.startswith("usage: openai-gateway ")
    version = subprocess.run([installed / "openai-gateway", "--version"], cwd=tmp_path,
                             capture_output=True, text=True).stdout
    assert version == f"openai-gateway {openai_gateway.__version__}\n"


async def test_the_installed_command_runs_the_demo(installed, tmp_path):
    """From a directory with no config.toml, as after `pipx install .` anywhere."""
    port = free_port()
    app = Process([str(installed / "openai-gateway"), "--demo", "--port", str(port)], port,
                  clean_env(tmp_path), tmp_path)
    try:
        await app.wait_ready()
        async with aiohttp.ClientSession() as s:
            async with s.get(app.url + "/") as r:  # package data: the playground page
                assert r.status == 200 and "Gateway playground" in await r.text()
        assert (await chat_stream(app.url)).startswith("[demo]")
    finally:
        assert app.stop() == 0, app.log()
    assert "running on the built-in defaults" in app.log() and "openai-gateway init" in app.log()
    p = subprocess.run([installed / "openai-gateway", "init", "gw.toml"], cwd=tmp_path,
                       env=clean_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "gw.toml").read_text() == (ROOT / "config.toml").read_text()


# --- the make targets ------------------------------------------------------------------------


def make_dry_run(source_copy: Path, target: str, venv: Path) -> str:
    p = subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=source_copy,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_make_run_installs_the_runtime_packages_only(source_copy, tmp_path):
    run = make_dry_run(source_copy, "run", tmp_path / "venv")
    assert "-r requirements.txt" in run and "requirements-dev.txt" not in run
    test = make_dry_run(source_copy, "test", tmp_path / "venv")
    assert "-r requirements-dev.txt" in test and "pytest tests" in test

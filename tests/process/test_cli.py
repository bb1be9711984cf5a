"""The command line: flags that override the file, start-up failures that say what to do.

--check runs in-process (main() returns the exit status); serving runs as real
`python gateway.py` processes, since binding, logging and signals are the point.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import aiohttp
import pytest

from openai_gateway import cli
from openai_gateway.config import parse

from ..conftest import (
    KEY,
    ROOT,
    GatewayProcess,
    base_config,
    free_port,
    merge,
    toml_dumps,
    wait_for_log,
    wait_healthy,
)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def no_key_env() -> dict:
    return {k: v for k, v in os.environ.items()
            if k not in ("OPENAI_API_KEY", "CREDENTIALS_DIRECTORY")}


def gateway(*args: str, env: dict | None = None, timeout: float = 30):
    return subprocess.run([sys.executable, str(ROOT / "gateway.py"), *args], cwd=ROOT,
                          env=env if env is not None else no_key_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 8123\nhost = \"127.0.0.1\"\n[log]\nformat = \"json\"\n")
    return path


# --- flags (in-process --check) ------------------------------------------------------------


def test_flags_override_the_file(config_file, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert cli.main(["--config", str(config_file), "--check", "--host", "0.0.0.0",
                     "--port", "9001", "--log-format", "text", "--log-level", "debug"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["server"]["host"], doc["server"]["port"]) == ("0.0.0.0", 9001)
    assert (doc["log"]["format"], doc["log"]["level"]) == ("text", "debug")


def test_without_flags_the_file_wins(config_file, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert cli.main(["--config", str(config_file), "--check"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["server"]["port"], doc["log"]["format"]) == (8123, "json")


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "0"], "argument --port: got '0', expected a port number 1-65535"),
    (["--port", "65536"], "argument --port: got '65536', expected a port number"),
    (["--port", "http"], "argument --port: got 'http'"),
    (["--host", ""], "argument --host: got '', expected an address or host name"),
    (["--log-format", "xml"], "argument --log-format: invalid choice: 'xml'"),
    (["--log-level", "verbose"], "argument --log-level: invalid choice: 'verbose'"),
])
def test_bad_flag_values(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--check", *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_subcommands_are_a_table(monkeypatch, capsys):
    """Another subcommand is one entry of cli.COMMANDS; --help lists them all."""
    seen = []

    def options(p):
        p.add_argument("--client")

    monkeypatch.setitem(cli.COMMANDS, "spend", cli.Command(
        "show spend", options, lambda args: seen.append((args.client, args.config)) or 0))
    assert cli.main(["spend", "--client", "web"]) == 0
    assert cli.main(["--config", "gw.toml", "spend", "--client", "api"]) == 0
    assert seen == [("web", None), ("api", "gw.toml")]
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in ("new-client-key", "mint-token", "init", "fake-upstream"):
        assert name in out
    assert "show spend" in out


def test_serving_options_are_not_a_commands(capsys):
    assert cli.main(["--check", "new-client-key", "web"]) == 2
    assert "--check" in capsys.readouterr().err


# --- no file, a missing file, init ------------------------------------------------------------


def test_without_a_config_file_the_defaults_serve(tmp_path, monkeypatch, capsys):
    """No --config and no ./config.toml: the built-in defaults, and a line that says so."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert cli.main(["--check"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == json.loads(json.dumps(parse({}, {"OPENAI_API_KEY": KEY})
                                                    .redacted()))
    [note] = [line for line in err.splitlines() if "no configuration file" in line]
    assert "--config PATH" in note and " init" in note


def test_a_named_file_that_is_missing_names_init(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    path = tmp_path / "gw.toml"
    assert cli.main(["--config", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert f"config error: {path}: file not found" in err
    assert f" init {path}" in err


def test_init_writes_the_commented_defaults(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shipped = (ROOT / "config.toml").read_text()
    assert cli.main(["init"]) == 0
    assert (tmp_path / "config.toml").read_text() == shipped
    assert "config.toml" in capsys.readouterr().err
    # An existing file is kept, unless --force.
    (tmp_path / "config.toml").write_text("[server]\nport = 1\n")
    assert cli.main(["init"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "config.toml").read_text() == "[server]\nport = 1\n"
    assert cli.main(["init", "--force", "config.toml"]) == 0
    assert (tmp_path / "config.toml").read_text() == shipped
    # "-": to stdout; a directory that does not exist is an error, not a traceback.
    assert cli.main(["init", "-"]) == 0
    assert capsys.readouterr().out == shipped
    assert cli.main(["init", str(tmp_path / "no" / "gw.toml")]) == 1
    assert "cannot write" in capsys.readouterr().err


async def test_serving_from_an_empty_directory_says_it_runs_on_the_defaults(tmp_path):
    port = free_port()
    log_path = tmp_path / "out.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "gateway.py"), "--demo", "--port",
                                 str(port), "--log-format", "text"], cwd=tmp_path,
                                env=no_key_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        await wait_healthy(f"http://127.0.0.1:{port}", proc, log_path.read_text, 15)
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
    [line] = [x for x in log_path.read_text().splitlines() if "built-in defaults" in x]
    assert "--config PATH" in line and "gateway.py init" in line


# --- start-up failures that say what to do ----------------------------------------------------


def test_a_missing_key_suggests_demo(config_file):
    p = gateway("--config", str(config_file))
    assert p.returncode == 2
    problem, hint = p.stderr.splitlines()
    assert problem.startswith("config error: upstream.api_key_env: environment variable "
                              "OPENAI_API_KEY is not set")
    assert hint.startswith("hint: ") and "--demo" in hint
    # --check keeps its contract: one line per problem, nothing else.
    assert "hint" not in gateway("--config", str(config_file), "--check").stderr


@pytest.mark.parametrize("demo", [False, True], ids=["upstream", "demo"])
def test_port_in_use_names_the_port_and_announces_nothing(config_file, demo):
    env = no_key_env() if demo else {**no_key_env(), "OPENAI_API_KEY": KEY}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = gateway("--config", str(config_file), "--port", str(port),
                    *(["--demo"] if demo else []), env=env)
    assert p.returncode == 1
    [line] = [json.loads(x)["message"] for x in p.stderr.splitlines()
              if '"level":"error"' in x]
    assert line.startswith(f"cannot listen on 127.0.0.1:{port}: address already in use")
    assert f"port {port}" in line and "--port" in line
    # Nothing claimed a URL it does not serve: no "listening", no playground, no demo upstream.
    assert "listening" not in p.stderr and "playground" not in p.stderr
    assert "demo mode" not in p.stderr and "Traceback" not in p.stderr


# --- a real process with flags -----------------------------------------------------------------


async def test_flags_apply_and_survive_a_reload(tmp_path, upstream_url):
    file_port, port = free_port(), free_port()
    gp = GatewayProcess(merge(base_config(upstream_url), {"server": {"port": file_port}}),
                        tmp_path, args=["--port", str(port), "--log-format", "text"])
    gp.url = f"http://127.0.0.1:{port}"
    gp.start()
    try:
        await gp.wait_ready()
        await wait_for_log(gp, f"listening on http://127.0.0.1:{port},")
        async with aiohttp.ClientSession() as s:
            async with s.post(gp.url + "/v1/chat/completions", json=CHAT) as r:
                assert r.status == 200
                rid = r.headers["X-Request-ID"]
            await wait_for_log(gp, rid)
            [line] = [x for x in gp.log().splitlines() if rid in x]
            # The text format: one line a person reads (status, route, time, model, client, id).
            assert " 200 POST /v1/chat/completions " in line and " ms gpt-4o-mini " in line
            assert line.endswith(f" client=127.0.0.1 {rid}") and not line.startswith("{")
            # The file still says file_port; a reload must not move or warn about the port.
            gp.config_path.write_text(toml_dumps(merge(base_config(upstream_url),
                                                       {"server": {"port": file_port}})))
            gp.proc.send_signal(signal.SIGHUP)
            await wait_for_log(gp, "configuration reloaded")
            assert "server.port changed" not in gp.log()
            async with s.get(gp.url + "/healthz") as r:
                assert r.status == 200
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", file_port), timeout=1).close()
    finally:
        assert gp.stop() == 0
    assert KEY not in gp.log()


async def test_the_url_is_printed_once_the_port_is_bound(tmp_path):
    """--demo: the playground's URL comes after the listening line, both with the real port."""
    port = free_port()
    gp = GatewayProcess({"log": {"format": "json"}}, tmp_path, args=["--demo", "--port", str(port)])
    gp.env.pop("OPENAI_API_KEY")
    gp.url = f"http://127.0.0.1:{port}"
    gp.start()
    try:
        await gp.wait_ready()
        await wait_for_log(gp, "playground: ")
        messages = [json.loads(x).get("message", "") for x in gp.log().splitlines()
                    if x.startswith("{")]
        listening = next(i for i, m in enumerate(messages) if m.startswith("gateway listening"))
        assert f"http://127.0.0.1:{port}" in messages[listening]
        assert f"playground: http://127.0.0.1:{port}/" in messages[listening + 1:]
    finally:
        gp.stop()

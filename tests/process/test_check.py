"""`gateway.py --check` and `gateway.py new-client-key` as real processes: the exit status,
and every bad value of the file one line naming its key."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib

import pytest

from openai_gateway.config.settings import load, parse

from ..conftest import KEY, ROOT, free_port, toml_dumps
from ..support.settings import ENV, MEMCACHED, MISSING_KEY, ORIGIN_HINT


def gateway(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("OPENAI_API_KEY", "CREDENTIALS_DIRECTORY")}
    return subprocess.run([sys.executable, "gateway.py", *args], cwd=ROOT, check=False,
                          env={**base, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_check_shipped_config():
    r = gateway("--check", env=ENV)
    assert r.returncode == 0, r.stderr
    assert KEY not in r.stdout + r.stderr
    expected = load(ROOT / "config.toml", environ=ENV).redacted()
    assert json.loads(r.stdout) == json.loads(json.dumps(expected))
    assert r.stderr.strip() == "config.toml: OK"


def test_check_broken_file_names_every_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nport = "80"\nprot = 1\n[cors]\nallow_origins = "x"\n'
                    '[cache]\nenabled = 1\n')
    r = gateway("--config", str(path), "--check", env=ENV)
    assert r.returncode == 2 and r.stdout == ""
    assert [line.split(": ")[:2] for line in r.stderr.splitlines()] == [
        ["config error", "server.port"], ["config error", "server.prot"],
        ["config error", "cors.allow_origins"], ["config error", "cache.enabled"]]


def test_check_bad_values_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(toml_dumps({"cors": {"allow_origins": ["localhost:5173"]},
                                "storage": {"url": "memcached://host"}}))
    r = gateway("--config", str(path), "--check", env=ENV)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"config error: cors.allow_origins[0]: got 'localhost:5173', {ORIGIN_HINT}",
        f"config error: storage.url: got 'memcached://host', expected {MEMCACHED}"]


def test_check_without_the_key_variable():
    r = gateway("--check")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [f"config error: {MISSING_KEY}"]


@pytest.mark.parametrize(("content", "why"), [
    (b"not json", "the key set is not JSON"),
    (b'{"keys": 5}', 'the key set has no "keys" list'),
    (b'{"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]}',
     "the key set holds no usable signing key"),
])
@pytest.mark.parametrize("check", [True, False])
def test_a_jwks_file_that_is_no_key_set_is_a_config_error(tmp_path, content, why, check):
    """Read at start as the issuer will read it: --check refuses it, and serving refuses to
    start with the same line (it used to start with a traceback, after --check said OK)."""
    keys = tmp_path / "jwks.json"
    keys.write_bytes(content)
    path = tmp_path / "gw.toml"
    path.write_text(toml_dumps({"auth": {"issuers": [{
        "issuer": "https://login.example.com/", "jwks_file": str(keys),
        "algorithms": ["RS256"]}]}}))
    serve = ["--port", str(free_port())]  # refused before it binds, or it would listen
    r = gateway("--config", str(path), *(["--check"] if check else serve), env=ENV)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"config error: auth.issuers[0].jwks_file: got {str(keys)!r}, expected a JWKS file "
        f"with a usable signing key ({why})"]


def test_check_missing_file(tmp_path):
    r = gateway("--config", str(tmp_path / "nope.toml"), "--check", env=ENV)
    assert r.returncode == 2
    path = tmp_path / "nope.toml"
    assert r.stderr.splitlines() == [f"config error: {path}: file not found (`gateway.py init "
                                     f"{path}` writes one with every key at its default)"]


def test_new_client_key_block_parses_and_validates():
    r = gateway("new-client-key", "backend")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    key = lines[1]
    assert key.startswith("gw-") and len(key) > 40
    block = "\n".join(lines[lines.index("[[clients]]"):])
    doc = tomllib.loads(block)
    assert doc == {"clients": [{"name": "backend",
                                "key_sha256": hashlib.sha256(key.encode()).hexdigest()}]}
    s = parse(doc, environ=ENV)
    assert s.clients[0].name == "backend"
    # Each run makes a new key.
    assert gateway("new-client-key", "backend").stdout.splitlines()[1] != key


@pytest.mark.parametrize("args", [["new-client-key"], ["new-client-key", " "],
                                  ["new-client-key", "a", "b"]])
def test_new_client_key_usage(args):
    r = gateway(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().startswith("usage: gateway.py new-client-key ")
    assert r.stderr.strip().splitlines()[-1].startswith("gateway.py new-client-key: error: ")

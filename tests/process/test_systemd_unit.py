"""systemd/gateway.service: the directives production relies on, and systemd's own checks."""

import re
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

from ..conftest import need

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "gateway.service"
# server.shutdown_timeout and upstream.api_key_env defaults, unless config.toml says otherwise.
CONFIG = (tomllib.loads((ROOT / "config.toml").read_text())
          if (ROOT / "config.toml").exists() else {})
SHUTDOWN_TIMEOUT = CONFIG.get("server", {}).get("shutdown_timeout", 30)
API_KEY_ENV = CONFIG.get("upstream", {}).get("api_key_env", "OPENAI_API_KEY")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value in order (keys such as After= may repeat)."""
    units: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
        else:
            key, _, value = line.partition("=")
            units[section][key.strip()].append(value.strip())
    return units


SERVICE = parse_unit(UNIT.read_text())["Service"]

REQUIRED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "2",  # gateway.py's exit status for a config error
    "ExecStart": "/opt/gateway/venv/bin/python /opt/gateway/app/gateway.py"
    " --config /etc/gateway/config.toml",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "WorkingDirectory": "/opt/gateway/app",
    "LoadCredential": f"{API_KEY_ENV}:/etc/gateway/{API_KEY_ENV}",
    "KillSignal": "SIGTERM",
    "LimitNOFILE": "65536",
    "DynamicUser": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateMounts": "yes",
    "PrivateUsers": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallErrorNumber": "EPERM",
    "SystemCallArchitectures": "native",
    "MemoryDenyWriteExecute": "yes",
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "UMask": "0077",
    "RemoveIPC": "yes",
}


@pytest.mark.parametrize(("key", "value"), REQUIRED.items(), ids=list(REQUIRED))
def test_directive(key, value):
    assert SERVICE[key] == [value]


def test_system_call_filter_starts_from_the_service_allow_list():
    assert SERVICE["SystemCallFilter"][0] == "@system-service"


def test_stop_timeout_outlasts_graceful_shutdown():
    assert int(SERVICE["RestartSec"][0]) > 0
    assert int(SERVICE["TimeoutStopSec"][0]) > SHUTDOWN_TIMEOUT


def test_the_key_is_never_in_the_unit_or_the_example():
    # An EnvironmentFile= is offered only commented out, as the alternative.
    assert "EnvironmentFile" not in SERVICE
    assert "#EnvironmentFile=/etc/gateway/gateway.env" in UNIT.read_text()
    assert not re.search(r"sk-(?!replace-me)\w", UNIT.read_text())
    example = (ROOT / "systemd" / "gateway.env.example").read_text()
    assert [line for line in example.splitlines() if line and not line.startswith("#")] == [
        f"{API_KEY_ENV}=sk-replace-me"
    ]


def test_the_single_file_way_is_one_line_away():
    """`make dist`'s file runs under the same unit: swap ExecStart, the rest holds."""
    assert ("#ExecStart=/usr/bin/python3 /opt/gateway/app/gateway.pyz "
            "--config /etc/gateway/config.toml") in UNIT.read_text().splitlines()
    # shiv unpacks into SHIV_ROOT: the one writable place ProtectSystem=strict leaves.
    assert SERVICE["CacheDirectory"] == ["gateway"]
    assert "SHIV_ROOT=%C/gateway" in SERVICE["Environment"]


def runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at binaries that exist here (verify checks them)."""
    text = re.sub(
        r"(?m)^ExecStart=.*$",
        f"ExecStart={sys.executable} {ROOT / 'gateway.py'} --config /etc/gateway/config.toml",
        UNIT.read_text(),
    )
    copy = tmp_path / UNIT.name  # the unit name must stay gateway.service
    copy.write_text(text)
    return copy


def test_systemd_analyze_verify(tmp_path):
    result = subprocess.run(
        [need("systemd-analyze"), "verify", "--man=no", str(runnable_copy(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )
    # Unknown keys and bad values are only warnings (exit 0): any output is a failure.
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


def test_systemd_analyze_security(tmp_path):
    result = subprocess.run(
        [need("systemd-analyze"), "security", "--offline=yes", str(runnable_copy(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )
    if "--offline" in result.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd 250+")
    print(result.stdout)
    score = re.search(r"Overall exposure level for gateway\.service: ([\d.]+)", result.stdout)
    assert score, result.stdout + result.stderr
    # 0 is fully locked down, 10 is unprotected; the README quotes the current value.
    assert float(score[1]) <= 1.5

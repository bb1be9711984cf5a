"""Run wrk with bench/post.lua and read its result.

The Lua `done()` hook prints one `BENCH_JSON {...}` line (latency percentiles in microseconds,
requests/s, error counts), which is what we parse; wrk's own text (`--latency`) is kept as a
cross-check for `Requests/sec` and for the record.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import procs

LUA = Path(__file__).with_name("post.lua")
_next_token: dict[Path, int] = {}  # token file -> where the next run starts


def binary() -> str | None:
    return shutil.which("wrk")


def run(url: str, *, connections: int, seconds: int, mode: str, nonce: str,
        tick: Callable[[], None] | None = None, timeout_s: str = "5s", clients: int = 0,
        core: int | None = procs.LOAD_CORE, tokens: Path | None = None,
        token_start: int | None = None) -> dict:
    """One wrk run; `tick` is called about every 100 ms while it runs (RSS sampling).

    `clients` > 0: every request carries `X-Forwarded-For` with one of that many client
    addresses in turn (the gateway trusts loopback peers), so a per-client rate limit sees many
    clients. `core`: where wrk runs (procs.ANY_CORE: anywhere). `tokens`: a file of bearer
    tokens (one a line) sent in turn instead of the dummy key, from the `token_start`-th on
    (None: where the previous run with the same file stopped, so that consecutive runs go
    through the file as one cycle)."""
    if tokens is not None and token_start is None:
        token_start = _next_token.get(tokens, 0)
    cmd = [binary() or "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout_s}",
           "--latency", "-s", str(LUA), url, "--", mode, nonce, str(clients)] + (
        [str(tokens), str(token_start)] if tokens else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: procs.pin_self(core))
    # wrk prints only at the end, so the pipe cannot fill while we poll.
    while proc.poll() is None:
        if tick:
            tick()
        time.sleep(0.1)
    text = proc.stdout.read().decode(errors="replace")
    result = parse(text)
    if tokens is not None:  # skip the requests still in flight at the end too: never a repeat
        _next_token[tokens] = (token_start or 0) + result["requests"] + connections + 1
    shown = ["wrk", *cmd[1:7], "bench/post.lua", url, "--", mode, "NONCE"] + (
        [str(clients)] if clients or tokens else []) + (["TOKENS"] if tokens else [])  # no paths
    return result | {"command": " ".join(shown),
                     "connections": connections, "seconds": seconds, "mode": mode}


def parse(text: str) -> dict:
    m = re.search(r"^BENCH_JSON (\{.*\})$", text, re.M)
    if not m:
        raise RuntimeError("wrk printed no BENCH_JSON line:\n" + text[-2000:])
    out = json.loads(m.group(1))
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    out["rps_wrk_text"] = float(rps.group(1)) if rps else None
    e = out["errors"]  # "status" counts answers that were not 2xx/3xx
    out["error_total"] = e["connect"] + e["read"] + e["write"] + e["timeout"] + e["status"]
    return out

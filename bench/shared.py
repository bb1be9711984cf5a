"""The shared setup under load: 2 gateway processes x 3 memcached servers, wrk on each gateway,
one memcached server killed a third of the way in and restarted on its port at two thirds.

    python bench/shared.py                 # 45 s run; bench/results/shared.{json,md,png}
    python bench/shared.py --seconds 30

Every request is a cache miss from one of CLIENTS addresses (the shipped per-client limits,
which nobody trips), so each one reads and counts on the ring. Per second of wall time the run
records answers 2xx, 429 and anything else (5xx), plus wrk's socket errors at the end.
Everything listens on loopback; nothing is pinned (the machine's cores are shared).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import nginx_conf  # noqa: E402
import procs  # noqa: E402
from phases import CHAT, CLIENT_LIMITS, CLIENTS, gateway_toml  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).with_name("results")
LUA = Path(__file__).with_name("shared.lua")


def memcached(port: int, log: Path) -> subprocess.Popen:
    binary = shutil.which("memcached") or "/usr/bin/memcached"
    proc = procs.spawn([binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-t", "1",
                        "-m", "64", "-c", "4096"] + (["-u", "root"] if os.geteuid() == 0 else []),
                       core=procs.ANY_CORE, log=log)
    if not procs.wait_tcp("127.0.0.1", port, proc, b"version\r\n", b"VERSION"):
        raise RuntimeError("memcached did not start: " + procs.tail(log))
    return proc


def wrk(url: str, seconds: int, nonce: str) -> subprocess.Popen:
    cmd = [shutil.which("wrk") or "wrk", "-t1", "-c32", f"-d{seconds}s", "--timeout=5s",
           "-s", str(LUA), url, "--", nonce, str(CLIENTS)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(seconds: int, tmp: Path) -> dict:
    mc_ports = [procs.free_port() for _ in range(3)]
    mcs = [memcached(p, tmp / f"mc{p}.log") for p in mc_ports]
    nginx = nginx_conf.nginx_binary()
    if not nginx:
        raise RuntimeError("nginx not found (the mock upstream)")
    mock_port, prefix = procs.free_port(), tmp / "nginx-mock"
    conf = nginx_conf.write(prefix, nginx_conf.mock_upstream(prefix, mock_port))
    mock = procs.spawn(nginx_conf.command(nginx, prefix, conf), core=procs.ANY_CORE,
                       log=tmp / "mock.log")
    storage = "memcached://" + ",".join(f"127.0.0.1:{p}" for p in mc_ports)
    gws, urls = [], []
    for i in range(2):
        port = procs.free_port()
        path = tmp / f"gw{i}.toml"
        path.write_text(gateway_toml(port, f"http://127.0.0.1:{mock_port}", True,
                                     storage=storage, requests=CLIENT_LIMITS,
                                     cache_max_bytes=2 * 1024 * 1024))
        gws.append(procs.spawn([sys.executable, str(ROOT / "gateway.py"), "--config", str(path)],
                               core=procs.ANY_CORE, log=tmp / f"gw{i}.log",
                               env={**os.environ, "OPENAI_API_KEY": "sk-bench"}))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url, gw in zip(urls, gws, strict=True):
            if not procs.wait_ready(url + "/healthz", gw, timeout=30):
                raise RuntimeError("gateway did not start: " + procs.tail(tmp / "gw0.log"))
        nonce = uuid.uuid4().hex[:8]
        start = time.time()
        loads = [wrk(url + CHAT, seconds, f"{nonce}{i}") for i, url in enumerate(urls)]
        events = []
        time.sleep(seconds / 3)
        mcs[0].kill()
        mcs[0].wait()
        events.append(("killed", time.time() - start))
        time.sleep(seconds / 3)
        mcs[0] = memcached(mc_ports[0], tmp / "mc-restarted.log")
        events.append(("restarted", time.time() - start))
        outputs = [p.communicate(timeout=seconds + 30)[0] for p in loads]
        ready = json.loads(procs.http_get(urls[0] + "/readyz")[2])
    finally:
        for proc in (*gws, mock, *mcs):
            procs.stop(proc)
    return {"seconds": seconds, "start": start, "events": events, "ready_after": ready,
            "per_second": per_second(outputs, start), "storage": "3 memcached (1 thread each)",
            "gateways": 2, "clients": CLIENTS, "limits": CLIENT_LIMITS,
            "socket_errors": [socket_errors(o) for o in outputs]}


def per_second(outputs: list[str], start: float) -> list[dict]:
    sums: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    for text in outputs:
        for line in text.splitlines():
            if line.startswith("BENCH_SEC "):
                sec, ok, limited, failed = map(int, line.split()[1:])
                for i, n in enumerate((ok, limited, failed)):
                    sums[sec][i] += n
    return [{"t": sec - int(start), "ok": v[0], "limited": v[1], "errors": v[2]}
            for sec, v in sorted(sums.items())]


def socket_errors(text: str) -> str:
    for line in text.splitlines():
        if "Socket errors" in line or "Non-2xx" in line:
            return line.strip()
    return "none"


def report(doc: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "shared.json").write_text(json.dumps(doc, indent=2))
    rows = doc["per_second"]
    killed, restarted = (t for _, t in doc["events"])
    phase = {"before": [], "down": [], "after": []}
    for r in rows[1:-1]:  # the first and last seconds are partial
        phase["before" if r["t"] < killed else "down" if r["t"] < restarted else "after"].append(r)
    lines = ["# Shared store under load: 2 gateways x 3 memcached, one server killed and restarted",
             "", f"wrk -t1 -c32 on each gateway for {doc['seconds']} s; every request a cache "
             f"miss from one of {doc['clients']:,} clients (limits {', '.join(doc['limits'])}). "
             f"Server 1 of 3 killed at {killed:.1f} s, restarted on its port at {restarted:.1f} s.",
             "", "| phase | seconds | req/s (both gateways) | 429/s | errors (5xx) |",
             "|---|---:|---:|---:|---:|"]
    for name, rs in phase.items():
        if rs:
            lines.append(f"| {name} | {len(rs)} | {sum(r['ok'] for r in rs) / len(rs):,.0f} | "
                         f"{sum(r['limited'] for r in rs) / len(rs):,.0f} | "
                         f"{sum(r['errors'] for r in rs)} |")
    lines += ["", f"wrk socket errors: {'; '.join(doc['socket_errors'])}.",
              f"/readyz at the end: `{json.dumps(doc['ready_after'])}`.", "",
              "| t (s) | 2xx | 429 | errors |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['t']} | {r['ok']} | {r['limited']} | {r['errors']} |" for r in rows]
    (RESULTS / "shared.md").write_text("\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4))
    ts = [r["t"] for r in rows]
    ax.plot(ts, [r["ok"] for r in rows], label="2xx per second")
    ax.plot(ts, [r["errors"] for r in rows], label="errors (5xx) per second", color="red")
    for name, t in doc["events"]:
        ax.axvline(t, color="grey", linestyle="--")
        ax.text(t, ax.get_ylim()[1] * 0.95, f" {name}", color="grey")
    ax.set_xlabel("seconds")
    ax.set_ylabel("answers per second")
    ax.set_title("2 gateways x 3 memcached: one server killed, then restarted")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(RESULTS / "shared.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=45)
    args = ap.parse_args()
    procs.raise_nofile()
    with tempfile.TemporaryDirectory(prefix="gw-shared-") as tmp:
        doc = run(args.seconds, Path(tmp))
    report(doc)
    print((RESULTS / "shared.md").read_text())


if __name__ == "__main__":
    main()

"""The gateway against a Python peer, measured in the same run: openai-forward.

    make bench-peers                   # installs the peer into bench/.peers, then runs this
    python bench/peers.py --rounds 5   # (the bench's venv) more rounds

The issue's "5 x the Python peers" was stated against numbers from another machine; this runs
openai-forward (pinned in bench/requirements-peers.txt, its own defaults: one uvicorn worker,
its access log on stdout) beside the bare aiohttp pass-through and the gateway with every feature
on, with the pinning and the wrk load of bench/run.py (nginx mock and wrk on core 1, the proxy
under test on core 0), alternating the three for --rounds rounds so that drift hits them alike.

Writes bench/results/peers.json and peers.md; prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import procs
import wrk_driver
from phases import BENCH, CHAT, CLIENTS, ROOT, Bench, log

PEER_BIN = BENCH / ".peers" / "bin" / "openai-forward"


def start_all(bench: Bench) -> dict[str, tuple[str, list[int]]]:
    """name -> (base URL, pids), each pinned to the proxy core; the pass-through and the
    gateway exactly as the json phase starts them."""
    out = {}
    for name in ("passthrough", "gateway-on"):
        base, proc, err = bench.start_proxy(name, bench.mock_json, "peers")
        if err:
            raise SystemExit(err)
        out[name] = (base, [proc.pid])
    port = procs.free_port()
    mock = f"http://127.0.0.1:{bench.mock_json}"
    routes = [{"base_url": mock, "route": "/", "type": "openai"}]
    env = dict(os.environ, FORWARD_CONFIG=json.dumps(routes))
    proc = bench.spawn("openai-forward", [str(PEER_BIN), "run", "--port", str(port)],
                       procs.PROXY_CORE, env=env, cwd=bench.tmp)
    # openai-forward has no health route: any HTTP answer means it is up
    if not procs.wait_tcp("127.0.0.1", port, proc, b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.1",
                          timeout=30):
        raise SystemExit("openai-forward did not start:\n"
                         + procs.tail(bench.tmp / "openai-forward.log"))
    out["openai-forward"] = (f"http://127.0.0.1:{port}", procs.tree(proc.pid))
    return out


def measure(url: str, connections: int, seconds: int, pids: list[int], peak: dict,
            name: str) -> dict:
    def tick() -> None:
        peak[name] = max(peak.get(name, 0), procs.rss_kb(pids))

    return wrk_driver.run(url, connections=connections, seconds=seconds, mode="miss",
                          nonce=uuid.uuid4().hex[:8], clients=CLIENTS, tick=tick)


def markdown(doc: dict) -> str:
    m, rows = doc["meta"], doc["results"]
    lines = [f"# The gateway and a Python peer, {m['date']}", "",
             f"- command: `{m['command']}` ({m['elapsed_s']:.0f} s)",
             f"- machine: {m['nproc']} cores, {m['cpu']}; Python {m['python']}; openai-forward "
             f"{m['openai_forward']}; repository {m['git']}",
             f"- {m['rounds']} rounds, each proxy in turn: wrk {m['seconds']} s at 64 connections, "
             f"then {m['seconds_c1']} s at 1 connection; every request a cache miss from one of "
             f"{CLIENTS:,} client addresses; proxy on core 0, nginx mock and wrk on core 1", "",
             "| proxy | req/s c=64 (median) | all rounds | p50 c=1 ms (median) | peak RSS MB "
             "| vs openai-forward |",
             "|---|---:|---|---:|---:|---:|"]
    base = rows["openai-forward"]["rps"]
    for name, r in rows.items():
        every = ", ".join(f"{x:,.0f}" for x in r["rps_all"])
        lines.append(f"| {name} | {r['rps']:,.0f} | {every} | {r['p50_c1_ms']:.3f} | "
                     f"{r['peak_rss_kb'] / 1024:.1f} | {r['rps'] / base:.2f} x |")
    g, p = rows["gateway-on"]["rps"], rows["passthrough"]["rps"]
    lines += ["", f"Gateway (every feature on) / openai-forward: **{g / base:.2f} x** "
                  f"(target >= 5 x); gateway / pass-through: {g / p:.2f} x; "
                  f"openai-forward / pass-through: {base / p:.2f} x.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8,
                    help="wrk seconds at 64 connections per round")
    ap.add_argument("--out", default=str(BENCH / "results"))
    args = ap.parse_args()
    if not PEER_BIN.exists():
        raise SystemExit(f"openai-forward is not installed in {PEER_BIN.parent.parent.name}: "
                         "run make bench-peers")
    procs.pin_self(procs.LOAD_CORE if procs.HAVE_TWO_CORES else None)
    procs.raise_nofile()
    t0 = time.monotonic()
    rps: dict[str, list] = {}
    p50: dict[str, list] = {}
    peak: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="gateway-peers-") as tmpdir:
        bench = Bench(argparse.Namespace(no_pin=not procs.HAVE_TWO_CORES), None, Path(tmpdir))
        try:
            bench.start_mocks({"json"})
            targets = start_all(bench)
            for name, (base, pids) in targets.items():  # warm-up: pools, lazy imports
                measure(base + CHAT, 64, 3, pids, peak, name)
            for rnd in range(args.rounds):
                for name, (base, pids) in targets.items():
                    r = measure(base + CHAT, 64, args.seconds, pids, peak, name)
                    r1 = measure(base + CHAT, 1, 5, pids, peak, name)
                    if r["error_total"] or r1["error_total"]:
                        raise SystemExit(f"{name}: errors {r['errors']} {r1['errors']}")
                    rps.setdefault(name, []).append(r["rps"])
                    p50.setdefault(name, []).append(r1["p50_us"] / 1000)
                    log(f"round {rnd + 1}: {name} {r['rps']:,.0f} req/s, "
                        f"p50 c=1 {r1['p50_us'] / 1000:.3f} ms")
        finally:
            bench.stop_all()
    version = subprocess.run([str(PEER_BIN.parent / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('openai-forward'))"],
                             capture_output=True, text=True, check=False).stdout.strip()
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()
    doc = {"meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "command": " ".join(["python", "bench/peers.py", *sys.argv[1:]]),
                    "elapsed_s": time.monotonic() - t0, "nproc": os.cpu_count(),
                    "cpu": procs.cpu_model(),
                    "python": sys.version.split()[0], "openai_forward": version, "git": git,
                    "rounds": args.rounds, "seconds": args.seconds, "seconds_c1": 5},
           "results": {name: {"rps": statistics.median(v), "rps_all": v,
                              "p50_c1_ms": statistics.median(p50[name]),
                              "peak_rss_kb": peak.get(name, 0)}
                       for name, v in rps.items()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = markdown(doc)
    (out / "peers.md").write_text(text)
    print(text)


if __name__ == "__main__":
    shutil.which("wrk") or sys.exit("wrk not found (apt-get install wrk)")
    main()

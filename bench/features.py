"""What each feature costs, in interleaved rounds: gateway-on against gateway-on plus one feature.

    python bench/features.py                # 5 rounds, about 5 minutes
    python bench/features.py --old bb10c09  # also the gateway of an older commit, same rounds

A target of "at most 5 % slower" is below the noise of two runs made a minute apart on a shared
machine, which is what run.py's phases are. Here every process starts at once (each on the proxy
core, idle while another is measured) and takes turns for --rounds rounds of wrk -c64, so drift
hits them alike; the report gives each one's median and, per round, its requests/s over
gateway-on-miss's of the same round (median and range). It also reads the CPU time each proxy
process used during its turn (/proc/PID/stat): CPU microseconds per request. On a machine that
other work keeps busy, throughput measures the scheduler as much as the proxy; the CPU a request
costs is what the proxy itself spends, and 1 / (CPU per request) is the throughput it would
reach with a core of its own.

Scenarios: passthrough; gateway-on miss and hit; gateway-on-jwt with repeating and with fresh
tokens; gateway-on-spend (see phases.CONFIGS). --old COMMIT adds that commit's gateway (from
`git archive`, into the temporary directory) with gateway-on's config, miss and hit.

Writes bench/results/features.json and features.md; prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from io import BytesIO
from pathlib import Path

import procs
import wrk_driver
from phases import (
    API_KEY,
    BENCH,
    CACHE_MAX_BYTES,
    CHAT,
    CLIENTS,
    ROOT,
    Bench,
    gateway_toml,
    jwt_tokens_count,
    log,
)

# scenario -> (configuration, wrk mode, token set)
SCENARIOS = {
    "passthrough": ("passthrough", "vary", None),
    "gateway-on-miss": ("gateway-on", "vary", None),
    "gateway-on-hit": ("gateway-on", "same", None),
    "gateway-on-jwt-miss": ("gateway-on-jwt", "vary", "repeat"),
    "gateway-on-jwt-fresh": ("gateway-on-jwt", "vary", "fresh"),
    "gateway-on-spend-miss": ("gateway-on-spend", "vary", None),
}


def process_of(scenario: str) -> str:
    """The gateway process a scenario runs against: its configuration's, or its own."""
    return scenario + "+own" if SCENARIOS[scenario][2] == "fresh" else SCENARIOS[scenario][0]


def start_old(bench: Bench, commit: str) -> str:
    """The gateway of `commit`, exported with git archive, with gateway-on's config."""
    src = bench.tmp / f"old-{commit}"
    log(f"{commit}: exporting and starting its gateway")
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True,
                         check=True)
    with tarfile.open(fileobj=BytesIO(tar.stdout)) as t:
        t.extractall(src, filter="data")
    port = procs.free_port()
    cfg = bench.tmp / f"old-{commit}.toml"
    cfg.write_text(gateway_toml(port, f"http://127.0.0.1:{bench.mock_json}", True,
                                cache_max_bytes=CACHE_MAX_BYTES).replace("spend = []\n", ""))
    proc = procs.spawn([sys.executable, "gateway.py", "--config", str(cfg)], core=procs.PROXY_CORE,
                       log=bench.tmp / f"old-{commit}.log",
                       env=dict(os.environ, OPENAI_API_KEY=API_KEY), cwd=src)
    bench.started.append(proc)
    base = f"http://127.0.0.1:{port}"
    if not procs.wait_ready(base + "/healthz", proc, timeout=30):
        raise SystemExit(f"the gateway of {commit} did not start:\n"
                         + procs.tail(bench.tmp / f"old-{commit}.log"))
    return base


def markdown(doc: dict) -> str:
    m, res = doc["meta"], doc["results"]
    lines = [f"# What each feature costs, {m['date']}", "",
             f"- command: `{m['command']}` ({m['elapsed_s']:.0f} s); repository {m['git']}",
             f"- machine: {m['nproc']} cores, {m['cpu']}; "
             f"load average at the end {m['loadavg_end']}",
             f"- {m['rounds']} rounds, each scenario in turn: wrk {m['seconds']} s at 64 "
             f"connections (after one {m['warm_s']} s warm-up each); {CLIENTS:,} client "
             "addresses; proxy on core 0, nginx mock and wrk on core 1", "",
             "| scenario | req/s (median) | all rounds | / passthrough (median of rounds) "
             "| / gateway-on-miss (median, min-max of rounds) | CPU µs per request (median) "
             "| gateway-on-miss CPU / this CPU (median, min-max) | idle RSS MB |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for name, r in res.items():
        every = ", ".join(f"{x:,.0f}" for x in r["rps_all"])
        lines.append(f"| {name} | {r['rps']:,.0f} | {every} | "
                     f"{r['over_passthrough']:.3f} | {r['over_miss']:.3f} "
                     f"({r['over_miss_min']:.3f}-{r['over_miss_max']:.3f}) | "
                     f"{r['cpu_us_per_request']:.0f} | {r['cpu_over_miss']:.3f} "
                     f"({r['cpu_over_miss_min']:.3f}-{r['cpu_over_miss_max']:.3f}) | "
                     f"{r['idle_rss_mb']:.1f} |")
    lines += ["", "Read the CPU columns when the machine was busy: requests/s then depend on how "
              "much of core 0 the other work left to each turn.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=6, help="wrk seconds at 64 connections per turn")
    ap.add_argument("--old", metavar="COMMIT", action="append", default=[],
                    help="also measure the gateway of this commit (repeatable)")
    ap.add_argument("--only", default="", help="comma-separated scenarios (default: all)")
    ap.add_argument("--out", default=str(BENCH / "results"))
    args = ap.parse_args()
    procs.pin_self(procs.LOAD_CORE if procs.HAVE_TWO_CORES else None)
    procs.raise_nofile()
    t0 = time.monotonic()
    wanted = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    rps: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}  # CPU microseconds per request
    with tempfile.TemporaryDirectory(prefix="gateway-features-") as tmpdir:
        bench = Bench(argparse.Namespace(no_pin=not procs.HAVE_TWO_CORES), None, Path(tmpdir))
        try:
            bench.start_mocks({"json"})
            # One process per configuration, and one more for fresh tokens: they would push the
            # repeating users' tokens out of the verified-token cache between turns.
            bases, pids = {}, {}
            for key in sorted({process_of(s) for s in wanted}):
                config = SCENARIOS[key.split("+")[0]][0] if "+" in key else key
                base, proc, err = bench.start_proxy(config, bench.mock_json,
                                                    "features-" + key.replace("+", "-"))
                if err:
                    raise SystemExit(err)
                bases[key], pids[key] = base, [proc.pid]
            turns = [(s, bases[process_of(s)] + CHAT, SCENARIOS[s][1],
                      bench.jwt_users().tokens(SCENARIOS[s][2]) if SCENARIOS[s][2] else None,
                      pids[process_of(s)]) for s in wanted]
            for commit in args.old:
                old = start_old(bench, commit)
                old_pids = [bench.started[-1].pid]
                turns += [(f"{commit} miss", old + CHAT, "vary", None, old_pids),
                          (f"{commit} hit", old + CHAT, "same", None, old_pids)]
            time.sleep(1)
            idle = {s: procs.rss_kb(p) / 1024 for s, _, _, _, p in turns}
            same = uuid.uuid4().hex[:8]  # hit scenarios repeat one body across rounds
            for _name, url, mode, tokens, _ in turns:
                warmed = 0
                enough = (1.1 * jwt_tokens_count(tokens) if tokens and "repeat" in tokens.name
                          else 1)
                while warmed < enough:
                    warmed += wrk_driver.run(url, connections=64, seconds=3, mode=mode,
                                             tokens=tokens, clients=CLIENTS,
                                             nonce=same if mode == "same"
                                             else uuid.uuid4().hex[:8])["requests"]
            for rnd in range(args.rounds):
                for s, url, mode, tokens, ps in turns:
                    c0 = procs.cpu_seconds(ps)
                    r = wrk_driver.run(url, connections=64, seconds=args.seconds, mode=mode,
                                       tokens=tokens, clients=CLIENTS,
                                       nonce=same if mode == "same" else uuid.uuid4().hex[:8])
                    if r["error_total"]:
                        raise SystemExit(f"{s}: errors {r['errors']}")
                    rps.setdefault(s, []).append(r["rps"])
                    cpu.setdefault(s, []).append((procs.cpu_seconds(ps) - c0) * 1e6 / r["requests"])
                    log(f"round {rnd + 1}: {s} {r['rps']:,.0f} req/s, "
                        f"{cpu[s][-1]:.0f} us CPU/request")
        finally:
            bench.stop_all()
    miss, pt = rps.get("gateway-on-miss"), rps.get("passthrough")

    def per_round(v: list[float], ref: list[float] | None) -> list[float]:
        return [a / b for a, b in zip(v, ref, strict=True)] if ref else [float("nan")] * len(v)

    miss_cpu = cpu.get("gateway-on-miss")
    results = {}
    for s, v in rps.items():
        om = per_round(v, miss)
        cpu_ratio = per_round(miss_cpu, cpu[s]) if miss_cpu else [float("nan")] * len(v)
        results[s] = {"rps": statistics.median(v), "rps_all": v,
                      "over_passthrough": statistics.median(per_round(v, pt)),
                      "over_miss": statistics.median(om), "over_miss_min": min(om),
                      "over_miss_max": max(om),
                      "idle_rss_mb": idle[s], "cpu_us_per_request": statistics.median(cpu[s]),
                      "cpu_us_all": [round(x, 1) for x in cpu[s]],
                      # gateway-on-miss's CPU per request over this one's: the throughput ratio
                      # each would reach on a core of its own
                      "cpu_over_miss": statistics.median(cpu_ratio),
                      "cpu_over_miss_min": min(cpu_ratio), "cpu_over_miss_max": max(cpu_ratio)}
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()
    doc = {"meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "command": " ".join(["python", "bench/features.py", *sys.argv[1:]]),
                    "elapsed_s": time.monotonic() - t0, "nproc": os.cpu_count(),
                    "cpu": procs.cpu_model(),
                    "git": git, "rounds": args.rounds, "seconds": args.seconds, "warm_s": 3,
                    "loadavg_end": " ".join(open("/proc/loadavg").read().split()[:3])},
           "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "features.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = markdown(doc)
    (out / "features.md").write_text(text)
    print(text)


if __name__ == "__main__":
    wrk_driver.binary() or sys.exit("wrk not found (apt-get install wrk)")
    main()

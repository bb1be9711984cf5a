"""Benchmark the gateway against a direct call, nginx and a bare aiohttp pass-through.

    python bench/run.py                 # full run, about 5 minutes
    python bench/run.py --quick         # smoke run, about 1 minute
    python bench/run.py --only passthrough --only gateway-on --phases json

Writes bench/results/latest.json, latest.md and latest.png. See bench/README.md for the method.

Configurations (--only NAME; "gateway" selects both gateway ones):
  direct       the load generator talks to the mock upstream itself (the floor)
  nginx        nginx as a reverse proxy in front of the mock (the C reference)
  passthrough  bench/passthrough.py, the thinnest aiohttp proxy (the ceiling of our stack)
  gateway-on   gateway.py, every feature on: origin check, validation, rate limit, cache;
               measured on the cache-miss path and on the cache-hit path
  gateway-off  gateway.py with cache, rate limits and model allowlist off
  gateway-on-jwt    gateway-on plus users with RS256 tokens (a JWKS file): miss path with each
                    user's token repeating, and with a fresh token every request (json only)
  gateway-on-spend  gateway-on plus dollar budgets: rate_limit.spend and budget.daily_usd
                    (json only)

Phases (--phases): json (wrk requests/s and latency), stream (time to first chunk, chunk gaps),
hold (thousands of open streams: memory per stream), workers (the gateway with memcached storage
and server.workers = 1 then 2, unpinned: how throughput scales with processes).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import procs
import report
import wrk_driver
from phases import BENCH, CONFIGS, FULL, JSON_ONLY, PHASES, QUICK, ROOT, Bench, log


def gateway_present() -> str | None:
    """None when gateway.py exists, else why the gateway configurations are skipped."""
    if not (ROOT / "gateway.py").is_file():
        return "gateway.py not found in the repository root: gateway configurations skipped"
    return None


def versions(nginx: str | None) -> dict:
    def cmd(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unavailable"

    import aiohttp
    import uvloop

    git = cmd(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    return {"python": platform.python_version(), "aiohttp": aiohttp.__version__,
            "uvloop": uvloop.__version__, "nginx": cmd([nginx, "-v"]) if nginx else "absent",
            "wrk": cmd(["wrk", "--version"]), "kernel": platform.release(),
            "git": git if "fatal" not in git else "no commit"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run, about 1 minute")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run only these configurations (repeat or comma-separate)")
    ap.add_argument("--phases", default=",".join(PHASES),
                    help="comma-separated subset of " + ",".join(PHASES))
    ap.add_argument("--out", default=str(BENCH / "results"),
                    help="directory for latest.{json,md,png}")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    args = ap.parse_args()

    only = [n for item in args.only for n in item.split(",") if n]
    # "gateway" selects every gateway-*; a full name ("gateway-on") only itself
    names = [n for n in CONFIGS if not only or any(
        n == o or (n.startswith(o + "-") and o not in CONFIGS) for o in only)]
    unknown = [o for o in only if not any(n == o or n.startswith(o + "-") for n in CONFIGS)]
    phases = {p for p in args.phases.split(",") if p}
    if unknown or not names or not phases <= set(PHASES):
        ap.error(f"unknown configuration or phase: {unknown or sorted(phases - set(PHASES))}; "
                 f"configurations: {', '.join(CONFIGS)}; phases: {', '.join(PHASES)}")
    if not wrk_driver.binary() and phases & {"json", "workers"}:
        raise SystemExit("wrk not found (apt-get install wrk)")
    if not procs.HAVE_TWO_CORES and not args.no_pin:
        log("fewer than 2 cores: running unpinned")
    procs.pin_self(None if args.no_pin else procs.LOAD_CORE)
    procs.raise_nofile()

    profile = QUICK if args.quick else FULL
    t_start = time.monotonic()
    busy_start = procs.cpu_busy(2.0)  # before we start anything: someone else's load
    account = procs.CpuAccount()
    results: dict = {"json": {}, "stream": {}, "hold": {}, "workers": {}}
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmpdir:
        bench = Bench(args, profile, Path(tmpdir))
        missing = gateway_present()
        if missing:
            bench.notes.append(missing)
            log(missing)
            names = [n for n in names if CONFIGS[n][0] != "gateway"]
        try:
            bench.start_mocks(phases)
            for name in names:
                if "json" in phases:
                    bench.json_phase(name, results["json"])
                if "stream" in phases and name not in JSON_ONLY:
                    bench.stream_phase(name, results["stream"])
                if "hold" in phases and CONFIGS[name][0] != "direct" and name not in JSON_ONLY:
                    bench.hold_phase(name, results["hold"])
            if "workers" in phases and "gateway-on" in names:
                bench.workers_phase(results["workers"])
        finally:
            bench.stop_all()
        notes = bench.notes
    foreign = account.others()  # every child has been waited for by now
    if busy_start > 0.10:
        notes.append(f"the machine was {busy_start:.0%} busy before the run started")
    if foreign["other_processes_cores"] > 0.05 or foreign["steal_cores"] > 0.05:
        notes.append(f"during the run other processes used {foreign['other_processes_cores']:.2f} "
                     f"of a core on average and the hypervisor stole {foreign['steal_cores']:.2f}: "
                     "they competed with the measured processes, so tails (p99) are unreliable; "
                     "run again on a quiet machine")

    argv = " ".join(["python", "bench/run.py", *sys.argv[1:]])
    doc = {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": argv, "profile": "quick" if args.quick else "full",
            "durations": dataclasses.asdict(profile),
            "elapsed_s": round(time.monotonic() - t_start, 1),
            "nproc": os.cpu_count(), "cpu": procs.cpu_model(),
            "pinning": ("proxy under test on core 0; wrk, stream clients, mock upstreams and the "
                        "runner share core 1 (workers phase: nothing pinned)") if not args.no_pin
                       else "unpinned",
            "cpu_busy_before": round(busy_start, 3),
            "foreign_cpu_during_run": foreign,
            "loadavg_end": open("/proc/loadavg").read().split()[:3],
            **versions(bench.nginx),
        },
        "results": results,
        "notes": notes,
    }
    doc["ratios"] = report.ratios(results)
    doc["targets"] = report.targets(results, doc["ratios"])
    out = Path(args.out)
    paths = report.write(doc, out)
    log(f"done in {doc['meta']['elapsed_s']} s: " + ", ".join(str(p) for p in paths))
    print((out / "latest.md").read_text())


if __name__ == "__main__":
    main()

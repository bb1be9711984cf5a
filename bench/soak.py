"""Soak: N minutes of mixed traffic against one gateway, its memory and descriptors sampled.

    python bench/soak.py                 # 10 minutes (the issue's soak), about 11 minutes in all
    python bench/soak.py --minutes 2     # a shorter look
    python bench/soak.py --rate 2        # twice the request rate of every lane

Starts the JSON mock upstream (nginx) and the SSE mock (10 ms between chunks) as run.py does
(nginx is the gateway's one upstream: it answers non-stream requests itself and relays requests
with `Accept: text/event-stream` to the SSE mock, unbuffered), and `gateway.py` with every
feature on (origin check, validation, model allowlist, in-memory
moving-window rate limit, in-memory cache), then drives a bounded mix of traffic through it
(requests per second, default rates; each lane has its own client addresses, sent as
X-Forwarded-For from the trusted loopback peer):

  plain     non-stream requests, every body new (cache misses), every request a new client:
            the limiter's and the cache's per-key state must be expired and evicted, not kept
  hit       non-stream requests drawn from 20 bodies (cache hits), 1,000 returning clients
  stream    streams read to the end (20 chunks), a new client each
  abort     streams of 300 chunks the client drops after the first chunk (the gateway must
            close the upstream request at once: see the descriptor count)
  greedy    4 clients far over the request limit: 429s with Retry-After
  rejected  a model outside the allowlist (400) and a foreign Origin (403), alternately

Every 5 s it samples the gateway's VmRSS, open descriptors and CPU. At the end it stops the
load, waits for the gateway's idle keep-alive connections to close (up to 60 s), and checks:

  - RSS at the end within 10 % of RSS after the first minute (warm-up: pools, caches and the
    limiter's window fill during it);
  - open descriptors back to the count before any load;
  - no 5xx answers and no client-side errors (this mix has no source of expected 5xx) and the
    gateway still healthy.

Writes bench/results/soak.json (every sample), soak.md (minute-by-minute table, counts by lane
and status, the checks) and soak.png (RSS, descriptors and request rate over time). Exit status
0 when every check passes, 1 otherwise. Nothing is pinned; the load is small (about 200 req/s)
so the machine stays responsive.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import nginx_conf
import procs
import report
import uvloop
from phases import BENCH, CACHE_MAX_BYTES, CHAT, ROOT, Bench, gateway_toml, log

LIMIT = "120/minute"  # per client: the greedy lane sends 300/minute, every other client far less
SAMPLE_S = 5.0
ORIGIN = "http://localhost:5173"
# lane -> requests per second at --rate 1
RATES = {"plain": 100.0, "hit": 60.0, "stream": 10.0, "abort": 10.0, "greedy": 20.0,
         "rejected": 4.0}
HIT_BODIES = 20
HIT_CLIENTS = 1000
GREEDY_CLIENTS = 4


def ip(lane: int, n: int) -> str:
    """Client address n of a lane (10.lane.x.y; `plain`, `stream`, `abort` wrap after 65,536,
    i.e. after at least 10 minutes at their default rates)."""
    n %= 65536
    return f"10.{lane}.{n // 256}.{n % 256}"


def chat(user: str, *, stream: bool = False, max_tokens: int = 64, model: str = "gpt-4o-mini",
         prompt: str = "Say hello in one short sentence.") -> bytes:
    body = {"model": model,
            "messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, "user": user}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


class Load:
    """The traffic lanes, their counters and the samples."""

    def __init__(self, plain_url: str, stream_url: str, rate: float, nonce: str) -> None:
        self.plain_url, self.stream_url = plain_url, stream_url
        self.rate, self.nonce = rate, nonce
        self.status: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.outcome: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.errors: list[str] = []
        self.error_count = 0
        self.skipped: collections.Counter = collections.Counter()  # lane at its in-flight cap
        self.anomalies: collections.Counter = collections.Counter()
        self.seq = collections.Counter()
        self.stopping = False
        self.tasks: set[asyncio.Task] = set()

    # --- bookkeeping ------------------------------------------------------------------------

    def total(self) -> int:
        return sum(sum(c.values()) for c in self.status.values())

    def error(self, lane: str, exc: BaseException | str) -> None:
        self.error_count += 1
        self.outcome[lane]["client error"] += 1
        if len(self.errors) < 20:
            what = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
            self.errors.append(f"{lane}: {what}"[:200])

    def headers(self, client: str, origin: str = ORIGIN, stream: bool = False) -> dict:
        h = {"Content-Type": "application/json", "Origin": origin, "Authorization": "Bearer x",
             "X-Forwarded-For": client}
        if stream:
            h["Accept"] = "text/event-stream"
        return h

    # --- one request per lane ---------------------------------------------------------------

    async def plain(self, s: aiohttp.ClientSession) -> None:
        n = self.seq["plain"] = self.seq["plain"] + 1
        await self.json_request(s, "plain", chat(f"soak-{self.nonce}-{n}"), self.headers(ip(1, n)))

    async def hit(self, s: aiohttp.ClientSession) -> None:
        n = self.seq["hit"] = self.seq["hit"] + 1
        body = chat(f"soak-{self.nonce}-hit-{random.randrange(HIT_BODIES)}")
        await self.json_request(s, "hit", body, self.headers(ip(2, n % HIT_CLIENTS)))

    async def greedy(self, s: aiohttp.ClientSession) -> None:
        n = self.seq["greedy"] = self.seq["greedy"] + 1
        await self.json_request(s, "greedy", chat(f"soak-{self.nonce}-g-{n}"),
                                self.headers(ip(5, n % GREEDY_CLIENTS)))

    async def rejected(self, s: aiohttp.ClientSession) -> None:
        n = self.seq["rejected"] = self.seq["rejected"] + 1
        if n % 2:
            body = chat(f"soak-{self.nonce}-r-{n}", model="gpt-4-not-allowed")
            headers = self.headers(ip(6, n))
        else:
            body = chat(f"soak-{self.nonce}-r-{n}")
            headers = self.headers(ip(6, n), origin="https://evil.example")
        await self.json_request(s, "rejected", body, headers)

    async def json_request(self, s: aiohttp.ClientSession, lane: str, body: bytes,
                           headers: dict) -> None:
        async with s.post(self.plain_url, data=body, headers=headers) as resp:
            data = await resp.read()
            self.status[lane][resp.status] += 1
            if resp.status == 200:
                xc = resp.headers.get("X-Cache", "none")
                self.outcome[lane][f"X-Cache {xc}"] += 1
                if b"chatcmpl-bench0001" not in data:
                    self.anomalies[f"{lane}: 200 without the mock's body"] += 1
            elif resp.status == 429 and "Retry-After" not in resp.headers:
                self.anomalies[f"{lane}: 429 without Retry-After"] += 1

    async def stream(self, s: aiohttp.ClientSession, lane: str) -> None:
        n = self.seq[lane] = self.seq[lane] + 1
        abort = lane == "abort"
        body = chat(f"soak-{self.nonce}-{lane}-{n}", stream=True, max_tokens=300 if abort else 20,
                    prompt="Count slowly.")
        resp = await s.post(self.stream_url, data=body,
                            headers=self.headers(ip(3 if abort else 4, n), stream=True))
        try:
            self.status[lane][resp.status] += 1
            if resp.status != 200:
                await resp.read()
                return
            buf = b""
            async for data in resp.content.iter_any():
                buf += data
                if abort and b"\n\n" in buf:
                    self.outcome[lane]["dropped after the first chunk"] += 1
                    resp.close()  # the client goes away: the connection is closed, not reused
                    return
            # read to the end of the body (not just to [DONE]), so the connection is reused and
            # the gateway never sees a complete stream's client go away
            ended = "complete" if b"data: [DONE]" in buf else "ended without [DONE]"
            self.outcome[lane][ended] += 1
        finally:
            resp.release()

    # --- the lanes --------------------------------------------------------------------------

    async def lane(self, s: aiohttp.ClientSession, name: str, per_second: float, cap: int) -> None:
        """Start one request every 1/per_second s, with at most `cap` in flight (bounded load)."""
        loop = asyncio.get_running_loop()
        interval, nxt = 1.0 / per_second, loop.time() + random.random() / per_second
        inflight = 0
        fn = {"plain": self.plain, "hit": self.hit, "greedy": self.greedy,
              "rejected": self.rejected, "stream": lambda s: self.stream(s, "stream"),
              "abort": lambda s: self.stream(s, "abort")}[name]

        async def one() -> None:
            nonlocal inflight
            try:
                await fn(s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed request is a result
                self.error(name, exc)
            finally:
                inflight -= 1

        while not self.stopping:
            nxt += interval
            await asyncio.sleep(max(0.0, nxt - loop.time()))
            if self.stopping:
                break
            if inflight >= cap:
                self.skipped[name] += 1
                continue
            inflight += 1
            t = asyncio.ensure_future(one())
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)


class Sampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[dict] = []
        self.t0 = time.monotonic()

    def pids(self) -> list[int]:
        return procs.tree(self.pid)

    def take(self, load: Load | None, phase: str) -> dict:
        pids = self.pids()
        now = time.monotonic()
        sample = {"t_s": round(now - self.t0, 1), "phase": phase, "rss_kb": procs.rss_kb(pids),
                  "hwm_kb": procs.hwm_kb(pids), "fds": procs.fd_count(pids),
                  "cpu_s": round(procs.cpu_seconds(pids), 2),
                  "requests": load.total() if load else 0,
                  "status_429": sum(c[429] for c in load.status.values()) if load else 0,
                  "errors": load.error_count if load else 0}
        self.samples.append(sample)
        return sample


def access_log_counts(path: Path) -> dict:
    """Statuses and cache outcomes as the gateway itself logged them (its JSON access lines),
    and the count of warning/error lines of its other loggers."""
    statuses, cache, levels = collections.Counter(), collections.Counter(), collections.Counter()
    samples: list[str] = []
    try:
        f = open(path, errors="replace")  # noqa: SIM115 - closed by the `with` below
    except OSError:
        return {}
    with f:
        for line in f:
            try:
                doc = json.loads(line)
            except ValueError:
                if "Traceback" in line:
                    levels["traceback"] += 1
                continue
            if doc.get("logger") == "gateway.access":
                statuses[str(doc.get("status"))] += 1
                cache[str(doc.get("cache"))] += 1
            else:
                level = str(doc.get("level", "?")).lower()
                levels[level] += 1
                if level in ("warning", "error", "critical") and len(samples) < 10:
                    samples.append(f"{level}: {str(doc.get('message', doc))[:200]}")
    return {"status": dict(sorted(statuses.items())), "cache": dict(cache),
            "other_lines_by_level": dict(levels), "warning_samples": samples}


async def drive(args, base: str, sampler: Sampler, duration: float) -> tuple[Load, float]:
    load = Load(base + CHAT, base + CHAT, args.rate, os.urandom(4).hex())
    conn = aiohttp.TCPConnector(limit=400, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=60, sock_connect=10)
    caps = {"plain": 100, "hit": 100, "stream": 40, "abort": 40, "greedy": 20, "rejected": 10}
    async with aiohttp.ClientSession(connector=conn, timeout=timeout, auto_decompress=False) as s:
        lanes = [asyncio.ensure_future(load.lane(s, name, rate * args.rate, caps[name]))
                 for name, rate in RATES.items()]
        t_end = time.monotonic() + duration
        next_sample, next_report = time.monotonic() + SAMPLE_S, time.monotonic() + 60
        while time.monotonic() < t_end:
            await asyncio.sleep(max(0.0, min(next_sample, t_end) - time.monotonic()))
            if time.monotonic() >= next_sample:
                sm = sampler.take(load, "load")
                next_sample += SAMPLE_S
                if time.monotonic() >= next_report:
                    next_report += 60
                    log(f"soak t={sm['t_s']:.0f}s: RSS {sm['rss_kb'] / 1024:.1f} MB, "
                        f"fds {sm['fds']}, {sm['requests']} requests, "
                        f"{sm['status_429']} 429s, {sm['errors']} errors")
        load.stopping = True
        await asyncio.gather(*lanes)
        t_stop = time.monotonic()
        if load.tasks:  # let in-flight requests finish (streams take at most ~0.3 s)
            await asyncio.wait(set(load.tasks), timeout=30)
        for t in list(load.tasks):
            t.cancel()
    sampler.take(load, "drained")
    return load, t_stop


def evaluate(samples: list[dict], baseline_fds: int, settle: dict, load: Load, healthy: bool,
             warm_s: float) -> tuple[list[dict], dict]:
    under = [s for s in samples if s["phase"] == "load"]
    warm = next((s for s in under if s["t_s"] >= warm_s), under[0])
    end = under[-1]
    ratio = end["rss_kb"] / warm["rss_kb"] if warm["rss_kb"] else None
    five = sum(n for c in load.status.values() for st, n in c.items() if st >= 500)
    # least-squares slope of RSS over the samples after the warm-up, MB per minute
    pts = [(s["t_s"] / 60, s["rss_kb"] / 1024) for s in under if s["t_s"] >= warm["t_s"]]
    slope = None
    if len(pts) >= 3:
        mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
        den = sum((x - mx) ** 2 for x, _ in pts)
        slope = sum((x - mx) * (y - my) for x, y in pts) / den if den else None
    facts = {"rss_warm_kb": warm["rss_kb"], "rss_warm_t_s": warm["t_s"],
             "rss_end_kb": end["rss_kb"],
             "rss_end_t_s": end["t_s"], "rss_end_over_warm": round(ratio, 4) if ratio else None,
             "rss_min_after_warm_kb": min(s["rss_kb"] for s in under if s["t_s"] >= warm["t_s"]),
             "rss_max_after_warm_kb": max(s["rss_kb"] for s in under if s["t_s"] >= warm["t_s"]),
             "rss_slope_mb_per_min_after_warm": round(slope, 4) if slope is not None else None,
             "peak_rss_kb": max(s["hwm_kb"] for s in samples),
             "fds_baseline": baseline_fds, "fds_max": max(s["fds"] for s in samples), **settle,
             "status_5xx": five, "client_errors": load.error_count, "healthy_after": healthy}
    checks = [
        {"check": "RSS at the end within 10 % of RSS after the first minute",
         "value": f"{end['rss_kb'] / 1024:.1f} MB vs {warm['rss_kb'] / 1024:.1f} MB at "
                  f"{warm['t_s']:.0f} s ({(ratio - 1) * 100:+.1f} %)" if ratio else "–",
         "pass": ratio is not None and abs(ratio - 1) <= 0.10},
        {"check": "open descriptors back to the count before the load",
         "value": f"{settle['fds_after']} after {settle['settle_s']:.0f} s idle "
                  f"vs {baseline_fds} before",
         "pass": settle["fds_after"] <= baseline_fds},
        {"check": "no 5xx answers (none is expected in this mix)", "value": str(five),
         "pass": five == 0},
        {"check": "no client-side errors (refused, reset, timed out)",
         "value": str(load.error_count), "pass": load.error_count == 0},
        {"check": "still healthy afterwards (/healthz 200)", "value": "yes" if healthy else "no",
         "pass": healthy},
    ]
    return checks, facts


def per_second(a: dict, b: dict, key: str, digits: int) -> float | None:
    """How fast sample b's `key` grew since sample a (None when no time passed)."""
    dt = b["t_s"] - a["t_s"]
    return round((b[key] - a[key]) / dt, digits) if dt else None


def minute_table(samples: list[dict]) -> list[dict]:
    rows, prev = [], samples[0]
    load = [x for x in samples if x["phase"] == "load"]
    for s in load:
        if int(s["t_s"] // 60) > int(prev["t_s"] // 60) or s is load[-1]:
            rows.append({"minute": round(s["t_s"] / 60, 2), "rss_mb": round(s["rss_kb"] / 1024, 1),
                         "hwm_mb": round(s["hwm_kb"] / 1024, 1), "fds": s["fds"],
                         "req_per_s": per_second(prev, s, "requests", 1),
                         "429_per_s": per_second(prev, s, "status_429", 1),
                         "gateway_cpu_cores": per_second(prev, s, "cpu_s", 3),
                         "errors": s["errors"]})
            prev = s
    return rows


def markdown(doc: dict) -> str:
    m, f = doc["meta"], doc["facts"]
    lines = [f"# Gateway soak, {m['date']}", "",
             f"- command: `{m['command']}` ({m['minutes']} min of load, {m['elapsed_s']} s in all)",
             (f"- machine: {m['nproc']} cores, {m['cpu']}, Linux {m['kernel']}; "
              f"Python {m['python']}, aiohttp {m['aiohttp']}; repository {m['git']}"),
             (f"- gateway: every feature on, memory storage, request limit {m['limit']} per "
              f"client, cache bounded to {m['cache_max_bytes'] // 1024} KiB; nothing pinned"),
             (f"- load: {', '.join(f'{k} {v:g}/s' for k, v in m['rates'].items())} "
              f"(target {sum(m['rates'].values()):g} req/s; "
              f"achieved {m['achieved_rps']:.1f} req/s)"),
             "", "## Checks", "", "| check | value | result |", "|---|---|---|"]
    lines += [f"| {c['check']} | {c['value']} | {'✅' if c['pass'] else '❌'} |"
              for c in doc["checks"]]
    lines += ["", (f"RSS after the warm-up ranged {f['rss_min_after_warm_kb'] / 1024:.1f} to "
                   f"{f['rss_max_after_warm_kb'] / 1024:.1f} MB; least-squares slope "
                   f"{f['rss_slope_mb_per_min_after_warm']} MB/min; peak (VmHWM) "
                   f"{f['peak_rss_kb'] / 1024:.1f} MB. "
                   f"Descriptors: {f['fds_baseline']} before, at most {f['fds_max']} under load, "
                   f"{f['fds_at_stop']} right after the load stopped, {f['fds_after']} after "
                   f"{f['settle_s']:.0f} s idle (RSS then {f['rss_after_kb'] / 1024:.1f} MB)."), "",
              "## Every minute", "",
              "| minute | RSS MB | peak RSS MB | fds | req/s | 429/s | gateway CPU cores "
              "| client errors (cum.) |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["minutes"]:
        lines.append(f"| {r['minute']:g} | {r['rss_mb']} | {r['hwm_mb']} | {r['fds']} "
                     f"| {r['req_per_s']} | {r['429_per_s']} | {r['gateway_cpu_cores']} "
                     f"| {r['errors']} |")
    lines += ["", "## Answers by lane (client side)", "",
              "| lane | requests | statuses | outcomes | skipped (in-flight cap) |",
              "|---|---:|---|---|---:|"]
    for lane in m["rates"]:
        st = doc["status_by_lane"].get(lane, {})
        oc = doc["outcome_by_lane"].get(lane, {})
        lines.append(f"| {lane} | {sum(st.values()):,} | "
                     + ", ".join(f"{k}: {v:,}" for k, v in sorted(st.items())) + " | "
                     + ", ".join(f"{k}: {v:,}" for k, v in sorted(oc.items())) + f" | "
                     f"{doc['skipped'].get(lane, 0)} |")
    g = doc.get("gateway_log") or {}
    if g:
        lines += ["", "## As the gateway logged it", "",
                  "- statuses: " + ", ".join(f"{k}: {v:,}" for k, v in g["status"].items()),
                  "- cache: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(g["cache"].items())),
                  "- other log lines by level: "
                  + (", ".join(f"{k}: {v}" for k, v in g["other_lines_by_level"].items())
                     or "none")]
        lines += [f"  - {x}" for x in g.get("warning_samples", [])]
    if doc["anomalies"]:
        lines += ["", "## Anomalies", ""] + [f"- {k}: {v}" for k, v in doc["anomalies"].items()]
    if doc["errors"]:
        lines += ["", "## Client errors (first 20)", ""] + [f"- {e}" for e in doc["errors"]]
    lines += ["", "The plot (soak.png) shows every 5-second sample. How the soak works: "
              "bench/README.md.", ""]
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> bool:
    plt = report.pyplot()
    if plt is None:
        return False
    s = [x for x in doc["samples"] if x["phase"] in ("load", "drained", "idle")]
    t = [x["t_s"] / 60 for x in s]
    f = doc["facts"]
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    fig.suptitle(f"Gateway soak {doc['meta']['date']}: {doc['meta']['minutes']} min of mixed "
                 f"traffic ({doc['meta']['achieved_rps']:.0f} req/s)", fontsize=11)
    ax = axes[0]
    ax.plot(t, [x["rss_kb"] / 1024 for x in s], marker=".", label="VmRSS")
    warm = f["rss_warm_kb"] / 1024
    ax.axhspan(warm * 0.9, warm * 1.1, color="green", alpha=0.08, label="±10 % of RSS after 1 min")
    ax.axvline(f["rss_warm_t_s"] / 60, color="grey", ls=":", lw=1)
    ax.axvline(doc["meta"]["minutes"], color="grey", ls="--", lw=1, label="load stops")
    ax.set_ylabel("RSS MB")
    ax.set_ylim(0, max(x["rss_kb"] for x in s) / 1024 * 1.25)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    ax = axes[1]
    ax.plot(t, [x["fds"] for x in s], marker=".", color="tab:orange")
    ax.axhline(f["fds_baseline"], color="grey", ls=":", lw=1, label="before the load")
    ax.axvline(doc["meta"]["minutes"], color="grey", ls="--", lw=1)
    ax.set_ylabel("open fds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[2]
    rate = [None] + [per_second(a, b, "requests", 6) for a, b in itertools.pairwise(s)]
    r429 = [None] + [per_second(a, b, "status_429", 6) for a, b in itertools.pairwise(s)]
    ax.plot(t, rate, label="answers/s")
    ax.plot(t, r429, label="429/s")
    ax.set_ylabel("per second")
    ax.set_xlabel("minutes since the load started")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes of load (default 10)")
    ap.add_argument("--rate", type=float, default=1.0, help="multiply every lane's request rate")
    ap.add_argument("--out", default=str(BENCH / "results"),
                    help="directory for soak.{json,md,png}")
    args = ap.parse_args()
    procs.pin_self(procs.ANY_CORE if procs.HAVE_TWO_CORES else None)
    procs.raise_nofile()
    duration = args.minutes * 60
    warm_s = min(60.0, duration / 2)
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gateway-soak-") as tmpdir:
        tmp = Path(tmpdir)
        bench = Bench(argparse.Namespace(no_pin=True), None, tmp)
        try:
            # The SSE mock (10 ms between chunks), then nginx as the one upstream: canned JSON
            # itself, streams (Accept: text/event-stream) relayed unbuffered to the SSE mock.
            bench.start_mocks({"stream"})
            if not bench.nginx:
                raise SystemExit("nginx not found: the JSON mock upstream is nginx "
                                 "(apt-get install nginx)")
            mock = procs.free_port()
            prefix = tmp / "nginx-mock"
            conf = nginx_conf.write(prefix, nginx_conf.mock_upstream(prefix, mock,
                                                                     sse_port=bench.mock_sse))
            bench.spawn("nginx-mock", nginx_conf.command(bench.nginx, prefix, conf),
                        procs.LOAD_CORE)
            bench.ready(f"http://127.0.0.1:{mock}/healthz", bench.started[-1], "nginx mock")
            port = procs.free_port()
            toml = gateway_toml(port, f"http://127.0.0.1:{mock}", True, requests=[LIMIT],
                                cache_max_bytes=CACHE_MAX_BYTES)
            gw = bench.spawn_gateway("gateway-soak", toml, None)
            base = f"http://127.0.0.1:{port}"
            if not procs.wait_ready(base + "/healthz", gw, timeout=30):
                raise SystemExit("the gateway did not start:\n"
                                 + procs.tail(tmp / "gateway-soak.log"))
            time.sleep(1.0)
            sampler = Sampler(gw.pid)
            baseline = sampler.take(None, "idle")
            log(f"soak: {args.minutes:g} min of mixed load, "
                f"about {sum(RATES.values()) * args.rate:.0f} req/s; "
                f"gateway RSS {baseline['rss_kb'] / 1024:.1f} MB, {baseline['fds']} fds")
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                load, t_stop = runner.run(drive(args, base, sampler, duration))
            # the load stopped: wait for the gateway's idle keep-alive connections to go
            fds_at_stop = sampler.samples[-1]["fds"]
            settle_deadline = time.monotonic() + 60
            while time.monotonic() < settle_deadline:
                time.sleep(1.0)
                sm = sampler.take(load, "idle")
                if sm["fds"] <= baseline["fds"]:
                    break
            settle = {"fds_at_stop": fds_at_stop, "fds_after": sampler.samples[-1]["fds"],
                      "settle_s": round(time.monotonic() - t_stop, 1),
                      "rss_after_kb": sampler.samples[-1]["rss_kb"]}
            healthy = procs.http_get(base + "/healthz")[0] == 200
            procs.stop(gw, timeout=15)
            gateway_log = access_log_counts(tmp / "gateway-soak.log")
        finally:
            bench.stop_all()
    checks, facts = evaluate(sampler.samples, baseline["fds"], settle, load, healthy, warm_s)
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip() or "no commit"
    doc = {
        "meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "command": " ".join(["python", "bench/soak.py", *sys.argv[1:]]),
                 "minutes": args.minutes, "elapsed_s": round(time.monotonic() - t_start, 1),
                 "nproc": os.cpu_count(), "cpu": procs.cpu_model(), "kernel": platform.release(),
                 "python": platform.python_version(), "aiohttp": aiohttp.__version__, "git": git,
                 "limit": LIMIT, "cache_max_bytes": CACHE_MAX_BYTES,
                 "rates": {k: v * args.rate for k, v in RATES.items()}, "sample_s": SAMPLE_S,
                 "achieved_rps": round(load.total() / duration, 1)},
        "checks": checks, "facts": facts, "passed": all(c["pass"] for c in checks),
        "minutes": minute_table(sampler.samples),
        "status_by_lane": {k: {str(s): n for s, n in v.items()} for k, v in load.status.items()},
        "outcome_by_lane": {k: dict(v) for k, v in load.outcome.items()},
        "skipped": dict(load.skipped), "anomalies": dict(load.anomalies), "errors": load.errors,
        "gateway_log": gateway_log, "samples": sampler.samples,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "soak.md").write_text(markdown(doc))
    plot(doc, out / "soak.png")
    print(markdown(doc))
    for c in checks:
        print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['check']}: {c['value']}")
    sys.exit(0 if doc["passed"] else 1)


if __name__ == "__main__":
    main()

"""The configurations under test and the three measurement phases (json, stream, hold).

`Bench` owns every process it starts (mocks and proxies) and stops them by pid; each phase starts
a fresh proxy in front of the right mock, measures, and stops it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import select
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nginx_conf
import procs
import wrk_driver

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CHAT = "/v1/chat/completions"
API_KEY = "sk-bench-not-a-real-key"
BODY = (b'{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful '
        b'assistant."},{"role":"user","content":"Say hello in one short sentence."}],'
        b'"max_tokens":64,"temperature":0,"user":"bench-sanity"}')
HEADERS = {"Content-Type": "application/json", "Origin": "http://localhost:5173",
           "Authorization": "Bearer x"}


@dataclasses.dataclass(frozen=True)
class Profile:
    """How long each measurement runs."""
    warm_s: int  # wrk warm-up before each measured run (pools, caches, allocator)
    rps_s: int  # wrk -c64: requests/s
    lat_s: int  # wrk -c1: latency
    ttfb1_streams: int  # sequential single streams
    ttfb100_per_worker: int  # streams per worker, 100 workers
    hold_streams: int  # streams held open at once
    hold_s: float  # how long they are held


FULL = Profile(warm_s=2, rps_s=10, lat_s=8, ttfb1_streams=60, ttfb100_per_worker=6,
               hold_streams=5000, hold_s=5)
QUICK = Profile(warm_s=1, rps_s=2, lat_s=2, ttfb1_streams=15, ttfb100_per_worker=2,
                hold_streams=1000, hold_s=2)

# name -> (kind, JSON scenarios as (result name, wrk body mode)). "vary" changes `user` on every
# request so a cache misses; "same" repeats one body so it hits.
CONFIGS = {
    "direct": ("direct", [("direct", "vary")]),
    "nginx": ("nginx", [("nginx", "vary")]),
    "passthrough": ("passthrough", [("passthrough", "vary")]),
    "gateway-on": ("gateway", [("gateway-on-miss", "vary"), ("gateway-on-hit", "same")]),
    "gateway-off": ("gateway", [("gateway-off", "vary")]),
    # gateway-on plus one feature each, measured on the miss path only (json phase only):
    # users with RS256 tokens from a JWKS file (jwt_tokens.py; "repeat": each user's token
    # comes back, as in real use; "fresh": a signature check on every request), and dollar
    # budgets (a per-client spend limit and a daily ceiling, reserved and settled per request).
    "gateway-on-jwt": ("gateway", [("gateway-on-jwt-miss", "vary"),
                                   ("gateway-on-jwt-fresh", "vary")]),
    "gateway-on-spend": ("gateway", [("gateway-on-spend-miss", "vary")]),
}
JSON_ONLY = {"gateway-on-jwt", "gateway-on-spend"}
# Scenario -> the token set (jwt_tokens.Users.tokens) its requests carry.
SCENARIO_TOKENS = {"gateway-on-jwt-miss": "repeat", "gateway-on-jwt-fresh": "fresh"}
# gateway-on-spend: large enough that nothing trips, so every request reserves and settles.
SPEND_LIMITS = ["1000/day"]
BUDGET_TOML = "\n[budget]\ndaily_usd = 1000000.0\n"
PHASES = ("json", "stream", "hold", "workers")
# Every gateway-on measurement: the request limits of the shipped config.toml, checked on every
# request, and as many client addresses (X-Forwarded-For, from the trusted loopback peer) as a
# public endpoint sees, so that no client ever reaches its limit. One client with a huge limit
# would measure something no deployment has (one ever-growing moving-window list).
CLIENT_LIMITS = ["60/minute", "1000/day"]
CLIENTS = 65536
# The gateway's cache bound in the bench: reached during the warm-up (~2,400 canned answers), so
# misses are measured as a long-running gateway serves them, every store evicting the least
# recently used entry (with the default 64 MiB the cache would still be filling at the end).
CACHE_MAX_BYTES = 2 * 1024 * 1024


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def gateway_toml(port: int, upstream: str, features: bool, *, storage: str = "memory://",
                 requests: list[str] | None = None, workers: int = 1,
                 cache_max_bytes: int | None = None, spend: list[str] | None = None,
                 extra: str = "") -> str:
    """Gateway config per the BRIEF's keys. Features on: the shipped per-client rate limits
    (CLIENT_LIMITS; the load comes from CLIENTS addresses, so they never trip but every request
    pays for the check), cache on, model allowlist on. Off: all three disabled. Origin check,
    validation, metrics and the JSON access log (to a file) stay on in both.

    Callers set the cache's memory bound (CACHE_MAX_BYTES for gateway-on; the soak its own);
    the workers phase and the soak override the storage, the request limits and the number of
    workers. `spend`: rate_limit.spend; `extra`: TOML sections appended ([budget], issuers)."""
    if requests is None:
        requests = CLIENT_LIMITS if features else []
    max_bytes = f"max_bytes = {cache_max_bytes}\n" if cache_max_bytes else ""
    return f"""\
[server]
host = "127.0.0.1"
port = {port}
shutdown_timeout = 2.0    # the bench stops it between phases; nothing is in flight then
workers = {workers}

[upstream]
base_url = "{upstream}/v1"
api_key_env = "OPENAI_API_KEY"
max_connections = 10000   # the hold phase needs one upstream connection per open stream

[cors]
allow_origins = ["http://localhost:5173"]

[storage]
url = "{storage}"

[rate_limit]
requests = {json.dumps(requests)}
spend = {json.dumps(spend or [])}

[cache]
enabled = {"true" if features else "false"}
ttl = 3600
{max_bytes}
[validation]
allowed_models = {'["gpt-4o-mini"]' if features else "[]"}
max_input_chars = 10000
{extra}"""


def jwt_tokens_count(path: Path | None) -> int:
    return sum(1 for _ in path.open()) if path else 0


class Bench:
    def __init__(self, args: argparse.Namespace, profile: Profile, tmp: Path) -> None:
        self.args = args
        self.p = profile
        self.tmp = tmp
        self.pin = not args.no_pin
        self.started: list[subprocess.Popen] = []
        self.notes: list[str] = []
        self.nginx = nginx_conf.nginx_binary()
        self.mock_json = self.mock_sse = self.mock_slow = 0
        self.users = None  # jwt_tokens.Users, made when gateway-on-jwt first runs
        self.current = ""  # base URL of the proxy the json phase is measuring

    # --- processes -------------------------------------------------------------------------

    def core(self, which: int) -> int | None:
        return which if self.pin else None

    def spawn(self, name: str, cmd: list[str], core: int, **kw) -> subprocess.Popen:
        proc = procs.spawn(cmd, core=self.core(core), log=self.tmp / f"{name}.log", **kw)
        self.started.append(proc)
        return proc

    def spawn_gateway(self, tag: str, toml: str, core: int | None) -> subprocess.Popen:
        """`gateway.py` with the config `toml`, on `core` (an absolute choice, see procs)."""
        cfg = self.tmp / f"{tag}.toml"
        cfg.write_text(toml)
        env = dict(os.environ, OPENAI_API_KEY=API_KEY)
        proc = procs.spawn([sys.executable, "gateway.py", "--config", str(cfg)], core=core,
                           log=self.tmp / f"{tag}.log", env=env, cwd=ROOT)
        self.started.append(proc)
        return proc

    def start_memcached(self, core: int | None) -> tuple[subprocess.Popen, int]:
        """A private memcached on a free loopback port (2 threads, 256 MB); (process, port)."""
        binary = shutil.which("memcached") or next(
            (b for b in ("/usr/bin/memcached", "/usr/sbin/memcached") if os.path.exists(b)), None)
        if not binary:
            raise RuntimeError("memcached not found (apt-get install memcached)")
        port = procs.free_port()
        as_root = ["-u", "root"] if os.geteuid() == 0 else []
        proc = procs.spawn([binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "256",
                            "-c", "4096", "-t", "2", *as_root],
                           core=core, log=self.tmp / "memcached.log")
        self.started.append(proc)
        if not procs.wait_tcp("127.0.0.1", port, proc, b"version\r\n", b"VERSION"):
            raise RuntimeError(f"memcached did not start: {procs.tail(self.tmp / 'memcached.log')}")
        return proc, port

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            procs.stop(proc)

    def start_mocks(self, phases: set[str]) -> None:
        if "json" in phases:
            if not self.nginx:
                raise SystemExit("nginx not found: the JSON mock upstream is nginx "
                                 "(apt-get install nginx)")
            self.mock_json = procs.free_port()
            prefix = self.tmp / "nginx-mock"
            conf = nginx_conf.write(prefix, nginx_conf.mock_upstream(prefix, self.mock_json))
            proc = self.spawn("nginx-mock", nginx_conf.command(self.nginx, prefix, conf),
                              procs.LOAD_CORE)
            self.ready(f"http://127.0.0.1:{self.mock_json}/healthz", proc, "nginx mock")
        for phase, attr, interval in (("stream", "mock_sse", 10), ("hold", "mock_slow", 1000)):
            if phase in phases:
                port = procs.free_port()
                setattr(self, attr, port)
                proc = self.spawn(f"sse-{phase}",
                                  [sys.executable, str(BENCH / "sse_upstream.py"),
                                   "--port", str(port), "--interval-ms", str(interval)],
                                  procs.LOAD_CORE)
                self.ready(f"http://127.0.0.1:{port}/healthz", proc, f"SSE mock ({phase})")

    def ready(self, url: str, proc: subprocess.Popen, what: str) -> None:
        if not procs.wait_ready(url, proc):
            raise SystemExit(f"{what} did not start: see {self.tmp}")

    def start_proxy(self, name: str, upstream_port: int, phase: str):
        """Start config `name` in front of the upstream on `upstream_port`.

        Returns (base URL, proxy process or None for direct, error note or None)."""
        kind = CONFIGS[name][0]
        upstream = f"http://127.0.0.1:{upstream_port}"
        if kind == "direct":
            return upstream, None, None
        port = procs.free_port()
        tag = f"{name}-{phase}"
        if kind == "nginx":
            prefix = self.tmp / tag
            conf = nginx_conf.write(prefix, nginx_conf.reverse_proxy(prefix, port, upstream_port))
            proc = self.spawn(tag, nginx_conf.command(self.nginx, prefix, conf), procs.PROXY_CORE)
        elif kind == "passthrough":
            proc = self.spawn(tag, [sys.executable, str(BENCH / "passthrough.py"),
                                    "--port", str(port), "--upstream", upstream], procs.PROXY_CORE)
        else:
            on = name.startswith("gateway-on")
            extra = (self.jwt_users().issuer_toml() if name == "gateway-on-jwt"
                     else BUDGET_TOML if name == "gateway-on-spend" else "")
            toml = gateway_toml(port, upstream, features=on, extra=extra,
                                cache_max_bytes=CACHE_MAX_BYTES if on else None,
                                spend=SPEND_LIMITS if name == "gateway-on-spend" else None)
            proc = self.spawn_gateway(tag, toml, self.core(procs.PROXY_CORE))
        base = f"http://127.0.0.1:{port}"
        if not procs.wait_ready(base + "/healthz", proc, timeout=30):
            procs.stop(proc)
            return base, None, (f"{name} did not answer /healthz within 30 s (exit code "
                                f"{proc.returncode}); log tail:\n"
                                f"{procs.tail(self.tmp / f'{tag}.log')}")
        return base, proc, None

    def jwt_users(self):
        if self.users is None:
            import jwt_tokens  # PyJWT and cryptography: only when the configuration runs
            self.users = jwt_tokens.Users(self.tmp)
        return self.users

    def token_file(self, scenario: str) -> Path | None:
        which = SCENARIO_TOKENS.get(scenario)
        if which is None:
            return None
        t0 = time.monotonic()
        path = self.jwt_users().tokens(which)
        if time.monotonic() - t0 > 0.5:
            log(f"      {scenario}: signed the {which} tokens in {time.monotonic() - t0:.1f} s")
        token = path.open().readline().strip()
        status, _, body = procs.http_post(self.current + CHAT, BODY,
                                          HEADERS | {"Authorization": "Bearer " + token})
        if status != 200 or b"chatcmpl-bench0001" not in body:
            self.notes.append(f"{scenario}: a request with a signed token answered {status} "
                              f"({body[:200]!r}): the numbers measure an error path")
        return path

    # --- phases ----------------------------------------------------------------------------

    def json_phase(self, name: str, results: dict) -> None:
        base, proc, err = self.start_proxy(name, self.mock_json, "json")
        if err:
            return self.skip(name, "json", err)
        pids = procs.tree(proc.pid) if proc else []
        time.sleep(0.5)
        mem = {"idle_rss_kb": procs.rss_kb(pids), "idle_fds": procs.fd_count(pids)} if proc else {}
        checks = self.sanity(base)
        self.current = base
        if name == "gateway-on" and checks["request2"]["x_cache"] != "HIT":
            self.notes.append(f"gateway-on: a repeated request was not a cache hit "
                              f"(X-Cache {checks['request2']['x_cache']}): the hit scenario is "
                              "not one")
        peak_sampled = 0

        def tick() -> None:
            nonlocal peak_sampled
            peak_sampled = max(peak_sampled, procs.rss_kb(pids))

        for scenario, mode in CONFIGS[name][1]:
            nonce = uuid.uuid4().hex[:12]
            url = base + CHAT
            tokens = self.token_file(scenario)
            log(f"json  {scenario}: warm-up, then wrk -c64 {self.p.rps_s}s and -c1 {self.p.lat_s}s")
            warmed = 0
            while True:  # repeating tokens: every user verified once before the measurement
                warmed += wrk_driver.run(url, connections=64, seconds=self.p.warm_s, mode=mode,
                                         clients=CLIENTS, nonce=nonce + "w",
                                         tokens=tokens)["requests"]
                if (SCENARIO_TOKENS.get(scenario) != "repeat"
                        or warmed > 1.2 * jwt_tokens_count(tokens)):
                    break
            rps = wrk_driver.run(url, connections=64, seconds=self.p.rps_s, mode=mode,
                                 clients=CLIENTS, nonce=nonce + "r",
                                 tick=tick if proc else None, tokens=tokens)
            wrk_driver.run(url, connections=1, seconds=1, mode=mode, clients=CLIENTS,
                           nonce=nonce + "x", tokens=tokens)
            lat = wrk_driver.run(url, connections=1, seconds=self.p.lat_s, mode=mode,
                                 clients=CLIENTS, nonce=nonce + "l",
                                 tick=tick if proc else None, tokens=tokens)
            results[scenario] = {"config": name, "body": mode, "checks": checks, "c64": rps,
                                 "c1": lat}
            log(f"      {scenario}: {rps['rps']:.0f} req/s, c1 p50 {lat['p50_us'] / 1000:.3f} ms "
                f"p99 {lat['p99_us'] / 1000:.3f} ms, "
                f"errors {rps['error_total'] + lat['error_total']}")
        if proc:
            mem |= {"peak_rss_kb": procs.hwm_kb(pids), "peak_rss_sampled_kb": peak_sampled,
                    "after_rss_kb": procs.rss_kb(pids), "after_fds": procs.fd_count(pids)}
            procs.stop(proc, timeout=15)
        for scenario, _ in CONFIGS[name][1]:
            results[scenario]["memory"] = mem

    def sanity(self, base: str) -> dict:
        """One request, then the same again: status, X-Cache and whether the body is the mock's."""
        out = {}
        for i in (1, 2):
            status, headers, body = procs.http_post(base + CHAT, BODY, HEADERS)
            out[f"request{i}"] = {"status": status, "x_cache": headers.get("X-Cache"),
                                  "canned_body": b"chatcmpl-bench0001" in body}
        if out["request1"]["status"] != 200 or not out["request1"]["canned_body"]:
            self.notes.append(f"{base}: sanity request answered {out['request1']['status']} "
                              "without the mock's body: the numbers below measure an error path")
        return out

    def stream_phase(self, name: str, results: dict) -> None:
        base, proc, err = self.start_proxy(name, self.mock_sse, "stream")
        if err:
            return self.skip(name, "stream", err)
        url = base + CHAT
        log(f"stream {name}: {self.p.ttfb1_streams} single streams, "
            f"100 concurrent x {self.p.ttfb100_per_worker}")
        one = self.client([url, "--streams", "1", "--per-worker", str(self.p.ttfb1_streams),
                           "--warmup", "3", "--max-tokens", "5"])
        hundred = self.client([url, "--streams", "100",
                               "--per-worker", str(self.p.ttfb100_per_worker),
                               "--warmup", "1", "--max-tokens", "20"])
        res = {"c1": one, "c100": hundred}
        if proc:
            pids = procs.tree(proc.pid)
            res["memory"] = {"peak_rss_kb": procs.hwm_kb(pids), "after_rss_kb": procs.rss_kb(pids)}
            procs.stop(proc, timeout=15)
        results[name] = res
        log(f"      {name}: TTFB p50@1 {one['ttfb_ms'].get('p50', float('nan')):.3f} ms, "
            f"p99@100 {hundred['ttfb_ms'].get('p99', float('nan')):.3f} ms, "
            f"errors {one['errors'] + hundred['errors']}")

    def client(self, argv: list[str], timeout: float = 300) -> dict:
        out = subprocess.run([sys.executable, str(BENCH / "stream_client.py"), *argv],
                             capture_output=True, text=True, timeout=timeout,
                             preexec_fn=lambda: procs.pin_self(self.core(procs.LOAD_CORE)))
        if out.returncode != 0:
            raise RuntimeError(f"stream_client failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def hold_phase(self, name: str, results: dict) -> None:
        base, proc, err = self.start_proxy(name, self.mock_slow, "hold")
        if err:
            return self.skip(name, "hold", err)
        pids = procs.tree(proc.pid)
        time.sleep(0.5)
        before, fds_before = procs.rss_kb(pids), procs.fd_count(pids)
        n = self.p.hold_streams
        log(f"hold  {name}: {n} streams open for {self.p.hold_s} s")
        cmd = [sys.executable, str(BENCH / "stream_client.py"), base + CHAT, "--hold", str(n),
               "--hold-seconds", str(self.p.hold_s), "--max-tokens", "4000"]  # <= the gateway's cap
        client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  preexec_fn=lambda: procs.pin_self(self.core(procs.LOAD_CORE)))
        held_line = self.readline(client, timeout=120)
        held_rss = held_fds = 0
        while client.poll() is None:  # sample while the streams are held, until the client ends
            held_rss = max(held_rss, procs.rss_kb(pids))
            held_fds = max(held_fds, procs.fd_count(pids))
            if select.select([client.stdout], [], [], 0.2)[0]:
                break
        final, stderr = client.communicate(timeout=120)
        summary = json.loads(final.strip().splitlines()[-1]) if final.strip() else {
            "errors": n, "error_samples": [stderr[-500:]]}
        time.sleep(2)  # the proxy notices the disconnects and closes its upstream side
        healthy = self.answers_health(base)
        held = (held_line or {}).get("held", 0)
        results[name] = {
            "streams": n, "held": held, "open_s": (held_line or {}).get("open_s"),
            "errors": summary.get("errors"), "error_samples": summary.get("error_samples"),
            "rss_before_kb": before, "rss_held_kb": held_rss, "rss_after_kb": procs.rss_kb(pids),
            "peak_rss_kb": procs.hwm_kb(pids),
            "kb_per_stream": round((held_rss - before) / held, 2) if held else None,
            "fds_before": fds_before, "fds_held": held_fds, "fds_after": procs.fd_count(pids),
            "healthy_after": healthy}
        procs.stop(proc, timeout=15)
        r = results[name]
        log(f"      {name}: held {held}/{n}, errors {r['errors']}, {r['kb_per_stream']} KB/stream, "
            f"fds {fds_before}->{held_fds}->{r['fds_after']}")

    @staticmethod
    def answers_health(base: str, within_s: float = 15.0) -> bool:
        """Whether /healthz answers 200 within `within_s`: a proxy still closing thousands of
        streams on a busy machine may take longer than one request's timeout."""
        deadline = time.monotonic() + within_s
        while True:
            try:
                return procs.http_get(base + "/healthz")[0] == 200
            except OSError:  # timed out, refused, reset
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.5)

    def workers_phase(self, results: dict) -> None:
        """`server.workers` = 1, then 2, with memcached storage, nothing pinned.

        A real memcached and a second nginx mock start for this phase; the gateway (features on,
        the shipped config's request limits, storage and cache in memcached), wrk, the mock and
        memcached may all run on every core, so the scheduler shares the machine between them.
        The CPU each of them used during the measured run is reported with the throughput."""
        if not self.nginx:
            return self.skip("gateway-on", "workers", "nginx not found (the JSON mock upstream)")
        any_core = procs.ANY_CORE if procs.HAVE_TWO_CORES else None
        try:
            mc, mc_port = self.start_memcached(any_core)
        except RuntimeError as exc:
            return self.skip("gateway-on", "workers", str(exc))
        mock_port = procs.free_port()
        prefix = self.tmp / "nginx-mock-workers"
        conf = nginx_conf.write(prefix, nginx_conf.mock_upstream(prefix, mock_port))
        mock = procs.spawn(nginx_conf.command(self.nginx, prefix, conf), core=any_core,
                           log=self.tmp / "nginx-mock-workers.log")
        self.started.append(mock)
        self.ready(f"http://127.0.0.1:{mock_port}/healthz", mock, "nginx mock (workers)")
        storage = f"memcached://127.0.0.1:{mc_port}"
        out: dict = {"storage": "memcached (local, 2 threads)", "rate_limit": CLIENT_LIMITS,
                     "clients": CLIENTS, "pinning": "none: every process may run on both cores",
                     "runs": {}}
        # One worker on memory first: the reference the shared path is measured against, in
        # the same run and under the same conditions (unpinned, the same mock).
        for key, n, store in (("memory", 1, "memory://"), ("1", 1, storage), ("2", 2, storage)):
            tag = f"gateway-workers{n}" + ("-memory" if key == "memory" else "")
            port = procs.free_port()
            toml = gateway_toml(port, f"http://127.0.0.1:{mock_port}", True, storage=store,
                                requests=CLIENT_LIMITS, workers=n)
            proc = self.spawn_gateway(tag, toml, any_core)
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            ok = procs.wait_ready(base + "/healthz", proc, timeout=30)
            while (ok and n > 1 and len(procs.tree(proc.pid)) < n + 1
                   and time.monotonic() < deadline):
                time.sleep(0.1)  # every worker forked (the first one up already answers)
            if not ok:
                procs.stop(proc)
                return self.skip("gateway-on", "workers", f"workers = {n} did not start:\n"
                                 f"{procs.tail(self.tmp / f'{tag}.log')}")
            time.sleep(1.0)  # every worker listening
            checks = self.sanity(base)
            if checks["request2"]["x_cache"] != "HIT":
                self.notes.append(f"workers = {n}: a repeated request was not a cache hit with "
                                  f"{store} storage (X-Cache {checks['request2']['x_cache']})")
            pids = procs.tree(proc.pid)
            nonce, url = uuid.uuid4().hex[:12], base + CHAT
            log(f"workers {n}: {store.split(':')[0]} storage, unpinned: warm-up, "
                f"then wrk -c64 {self.p.rps_s}s")
            wrk_driver.run(url, connections=64, seconds=self.p.warm_s, mode="vary",
                           nonce=nonce + "w", clients=CLIENTS, core=any_core)
            groups = {"gateway": pids, "nginx mock": procs.tree(mock.pid), "memcached": [mc.pid]}
            cpu0 = {k: procs.cpu_seconds(v) for k, v in groups.items()}
            cpu0_each = {pid: procs.cpu_seconds([pid]) for pid in pids}
            m0, t0 = procs.machine_seconds(), time.monotonic()
            own0 = resource.getrusage(resource.RUSAGE_SELF)
            kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # only wrk is reaped meanwhile
            rps = wrk_driver.run(url, connections=64, seconds=self.p.rps_s, mode="vary",
                                 nonce=nonce + "r", clients=CLIENTS, core=any_core)
            wall = time.monotonic() - t0
            m1 = procs.machine_seconds()
            own1 = resource.getrusage(resource.RUSAGE_SELF)
            kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            used = {k: procs.cpu_seconds(v) - cpu0[k] for k, v in groups.items()}
            used["wrk"] = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
            used["bench runner"] = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
            tasks = m1["tasks"] - m0["tasks"]
            used["other processes"] = max(0.0, tasks - sum(used.values()))
            used["interrupts (irq, softirq)"] = m1["irq"] - m0["irq"]
            used["idle"] = m1["idle"] - m0["idle"]
            cores = {k: round(v / wall, 3) for k, v in used.items()}
            per_process = [round((procs.cpu_seconds([pid]) - cpu0_each[pid]) / wall, 3)
                           for pid in pids]
            gw_cpu = used["gateway"]
            out["runs"][key] = {
                "workers": n, "storage": store.split(":")[0], "processes": len(pids),
                "checks": checks, "c64": rps, "cpu_cores": cores,
                "gateway_process_cores": per_process,
                "steal_cores": round((m1["steal"] - m0["steal"]) / wall, 3),
                "requests_per_gateway_cpu_second": (round(rps["requests"] / gw_cpu, 1)
                                                    if gw_cpu else None),
                "rss_kb": procs.rss_kb(pids)}
            log(f"      workers {n}: {rps['rps']:.0f} req/s, errors {rps['error_total']}, "
                "cores used: " + ", ".join(f"{k} {v:.2f}" for k, v in cores.items()))
            procs.stop(proc, timeout=15)
        procs.stop(mock)
        procs.stop(mc)
        one, two = out["runs"]["1"]["c64"]["rps"], out["runs"]["2"]["c64"]["rps"]
        memory = out["runs"]["memory"]["c64"]["rps"]
        out["ratio_2_over_1"] = round(two / one, 3) if one else None
        out["ratio_memcached_over_memory"] = round(one / memory, 3) if memory else None
        results.update(out)

    @staticmethod
    def readline(proc: subprocess.Popen, timeout: float) -> dict | None:
        if select.select([proc.stdout], [], [], timeout)[0]:
            line = proc.stdout.readline()
            if line.strip():
                return json.loads(line)
        return None

    def skip(self, name: str, phase: str, why: str) -> None:
        note = f"{name} ({phase}) skipped: {why}"
        self.notes.append(note)
        log(note)

"""Profile the gateway under wrk load with py-spy: where its own time goes.

    python bench/profile.py                                  # features on, cache-miss path, 10 s
    python bench/profile.py --config gateway-off --seconds 20
    python bench/profile.py --mode same                      # the cache-hit path
    python bench/profile.py --storage memcached --name profile-gateway-on-memcached

Same set-up as run.py (nginx mock upstream and wrk on core 1, the gateway alone on core 0), with
`py-spy record` attached to the gateway. py-spy pauses the process for each sample (its default:
with --nonblocking about half the stacks come back torn); at 100 Hz that costs little, and the
header of profile.txt gives the requests/s reached while sampled.
Writes bench/results/profile.svg (flame graph; our package's frames in blue), profile.folded (the
collapsed stacks) and profile.txt (functions by self and by total time, files by self time).
py-spy comes from bench/requirements.txt.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path

import phases as bench_run
import procs
import wrk_driver

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy not found: pip install -r bench/requirements.txt")
    return found


def summarize(raw: str, top: int = 25, package: str = "openai_gateway") -> str:
    """Collapsed stacks (py-spy --format raw) -> tables of self and total samples."""
    self_fn: collections.Counter = collections.Counter()
    total_fn: collections.Counter = collections.Counter()
    self_file: collections.Counter = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if FRAME.match(f)]
        if not frames:
            continue
        samples += n
        leaf = FRAME.match(frames[-1])
        self_fn[frames[-1]] += n
        self_file[leaf["file"]] += n
        for f in set(frames):
            total_fn[f] += n

    def table(title: str, counter: collections.Counter, keep=lambda k: True) -> list[str]:
        rows = [(k, v) for k, v in counter.most_common() if keep(k)][:top]
        return [f"## {title}", "", "| % of busy samples | samples | where |", "|---:|---:|---|"] + [
            f"| {100 * v / samples:5.1f} | {v} | `{k}` |" for k, v in rows] + [""]

    ours = lambda k: package in k  # noqa: E731
    return "\n".join(
        [f"# py-spy profile: {samples} busy samples (idle time excluded)", ""]
        + table("Self time, any code", self_fn)
        + table(f"Self time, {package} only", self_fn, ours)
        + table(f"Total time (self + callees), {package} functions", total_fn, ours)
        + table("Self time by file", self_file))


def flamegraph(raw: str, path: Path, title: str, width: int = 1600, row: int = 17) -> None:
    """A static flame graph (SVG, hover for names) from collapsed stacks: root at the bottom,
    each frame as wide as its share of samples. Same samples as profile.txt."""
    root: dict = {"n": 0, "kids": {}}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        node = root
        node["n"] += int(count)
        for frame in stack.split(";"):
            node = node["kids"].setdefault(frame, {"n": 0, "kids": {}})
            node["n"] += int(count)
    rects: list[tuple[int, float, float, str, int]] = []

    def walk(node: dict, depth: int, x: float) -> int:
        deepest = depth
        for name, kid in sorted(node["kids"].items()):
            w = kid["n"] / max(root["n"], 1) * width
            if w >= 0.3:
                rects.append((depth, x, w, name, kid["n"]))
                deepest = max(deepest, walk(kid, depth + 1, x))
            x += w
        return deepest

    depth = walk(root, 0, 0.0) + 1
    height = depth * row + 40

    def esc(t: str) -> str:
        return (t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                .replace('"', "&quot;"))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="monospace" font-size="11">',
           f'<text x="4" y="16" font-size="13">{esc(title)}</text>']
    for d, x, w, name, n in rects:
        y = height - (d + 1) * row
        ours = "openai_gateway" in name
        h = zlib.crc32(name.encode())  # stable colours from run to run
        fill = f"hsl(210,70%,{55 + h % 20}%)" if ours else f"hsl({20 + h % 40},85%,{55 + h % 15}%)"
        label = esc(name[: int(w / 7)]) if w > 25 else ""
        out.append(f'<g><title>{esc(name)}: {n} samples ({100 * n / root["n"]:.1f}%)</title>'
                   f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" fill="{fill}"/>'
                   f'<text x="{x + 3:.1f}" y="{y + row - 5}">{label}</text></g>')
    out.append("</svg>")
    path.write_text("\n".join(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="gateway-on",
                    choices=["gateway-on", "gateway-off", "passthrough", "gateway-on-jwt",
                             "gateway-on-spend"])
    ap.add_argument("--tokens", default="repeat", choices=["repeat", "fresh"],
                    help="gateway-on-jwt: each user's token repeating, or a fresh one every "
                         "request")
    ap.add_argument("--mode", default="vary", choices=["vary", "same"], help="vary = cache misses")
    ap.add_argument("--storage", default="memory", choices=["memory", "memcached"],
                    help="gateway-on only: memcached = a private memcached (on core 1) holds the "
                         "rate limits (the shipped config's) and the cache, as in run.py's "
                         "workers phase")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--name", default="profile", help="output file stem in --out")
    ap.add_argument("--out", default=str(bench_run.BENCH / "results"))
    args = ap.parse_args()
    spy = py_spy()
    procs.pin_self(procs.LOAD_CORE)
    procs.raise_nofile()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gateway-profile-") as tmpdir:
        tmp = Path(tmpdir)
        bench = bench_run.Bench(argparse.Namespace(no_pin=False), bench_run.FULL, tmp)
        try:
            bench.start_mocks({"json"})
            clients = bench_run.CLIENTS  # as in run.py: many clients, the limits never trip
            if args.storage == "memcached":
                if args.config != "gateway-on":
                    raise SystemExit("--storage memcached applies to --config gateway-on")
                _, mc_port = bench.start_memcached(procs.LOAD_CORE)
                port = procs.free_port()
                toml = bench_run.gateway_toml(port, f"http://127.0.0.1:{bench.mock_json}", True,
                                              storage=f"memcached://127.0.0.1:{mc_port}",
                                              requests=bench_run.CLIENT_LIMITS)
                proxy = bench.spawn_gateway("gateway-profile", toml, procs.PROXY_CORE)
                base = f"http://127.0.0.1:{port}"
                if not procs.wait_ready(base + "/healthz", proxy, timeout=30):
                    raise SystemExit(procs.tail(tmp / "gateway-profile.log"))
            else:
                base, proxy, err = bench.start_proxy(args.config, bench.mock_json, "profile")
                if err:
                    raise SystemExit(err)
            wrk = subprocess.Popen(
                [wrk_driver.binary() or "wrk", "-t1", "-c64", f"-d{args.seconds + 4}s", "-s",
                 str(wrk_driver.LUA), base + bench_run.CHAT, "--", args.mode, uuid.uuid4().hex[:12],
                 str(clients)] + ([str(bench.jwt_users().tokens(args.tokens))]
                                  if args.config == "gateway-on-jwt" else []),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                preexec_fn=lambda: procs.pin_self(procs.LOAD_CORE))
            time.sleep(2)  # warm-up
            # One recording in raw form; the flame graph is drawn from it afterwards, so both views
            # show the same samples and the process is paused by one sampler only.
            subprocess.run([spy, "record", "--pid", str(proxy.pid), "-d", str(args.seconds),
                            "-r", str(args.rate), "--format", "raw", "--nolineno",
                            "-o", str(tmp / "raw")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            result = wrk_driver.parse(wrk.communicate()[0].decode(errors="replace"))
        finally:
            bench.stop_all()
        raw = (tmp / "raw").read_text()
        (out / f"{args.name}.folded").write_text(raw)  # collapsed stacks: speedscope, flamegraph.pl
        text = summarize(raw)
    storage = "" if args.storage == "memory" else f", {args.storage} storage"
    header = (f"{args.config}{storage}, {args.mode} bodies, wrk -c64 at {result['rps']:.0f} req/s "
              f"while sampled ({args.seconds} s at {args.rate} Hz)\n\n")
    (out / f"{args.name}.txt").write_text(header + text)
    flamegraph(raw, out / f"{args.name}.svg", title=header.strip())
    print(header + text)


if __name__ == "__main__":
    main()

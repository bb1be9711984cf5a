"""Turn raw results into ratios, target checks, and latest.{json,md,png}."""

from __future__ import annotations

import json
from pathlib import Path

# Configuration -> the JSON scenario that represents it in the target table.
TARGET_COLUMNS = {"gateway-on": "gateway-on-miss", "gateway-off": "gateway-off",
                  "passthrough": "passthrough", "nginx": "nginx"}
GATEWAYS = ("gateway-on", "gateway-off")
# Scenarios that add one feature to gateway-on, compared with gateway-on-miss (issues 14, 15).
FEATURE_SCENARIOS = ("gateway-on-jwt-miss", "gateway-on-jwt-fresh", "gateway-on-spend-miss")


def _get(d: dict, *path, default=None):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def ratios(results: dict) -> dict:
    j, s, h = results["json"], results["stream"], results["hold"]
    rps = {n: _get(v, "c64", "rps") for n, v in j.items()}
    out: dict = {}
    if rps.get("passthrough"):
        out["rps_over_passthrough"] = {n: _r(v / rps["passthrough"]) for n, v in rps.items() if v}
    if "direct" in j:
        d = j["direct"]["c1"]
        out["latency_added_ms_c1"] = {
            n: {"p50": _r((v["c1"]["p50_us"] - d["p50_us"]) / 1000),
                "p99": _r((v["c1"]["p99_us"] - d["p99_us"]) / 1000)}
            for n, v in j.items() if n != "direct"}
    if rps.get("gateway-on-miss"):  # what one more feature costs on the miss path
        out["over_gateway_on_miss_rps"] = {n: _r(rps[n] / rps["gateway-on-miss"])
                                           for n in FEATURE_SCENARIOS if rps.get(n)}
    if rps.get("gateway-on-hit") and rps.get("gateway-on-miss"):
        out["cache_hit_over_miss_rps"] = _r(rps["gateway-on-hit"] / rps["gateway-on-miss"])
    if "direct" in s:
        d = s["direct"]
        out["ttfb_added_ms"] = {
            n: {"p50_c1": _r(_get(v, "c1", "ttfb_ms", "p50", default=0)
                             - d["c1"]["ttfb_ms"]["p50"]),
                "p99_c100": _r(_get(v, "c100", "ttfb_ms", "p99", default=0)
                               - d["c100"]["ttfb_ms"]["p99"])}
            for n, v in s.items() if n != "direct"}
        out["chunk_gap_added_ms_c100"] = {
            n: {"p50": _r(_get(v, "c100", "gap_ms", "p50", default=0) - d["c100"]["gap_ms"]["p50"]),
                "p99": _r(_get(v, "c100", "gap_ms", "p99", default=0) - d["c100"]["gap_ms"]["p99"])}
            for n, v in s.items() if n != "direct"}
    if h:
        out["kb_per_open_stream"] = {n: v.get("kb_per_stream") for n, v in h.items()}
    w = results.get("workers") or {}
    if w.get("ratio_2_over_1") is not None:
        out["workers_2_over_1_rps"] = w["ratio_2_over_1"]
    if w.get("ratio_memcached_over_memory") is not None:
        out["workers_memcached_over_memory_rps"] = w["ratio_memcached_over_memory"]
    return out


def targets(results: dict, rat: dict) -> list[dict]:
    """The issue's targets, evaluated per configuration (reference columns are for context)."""
    j, h = results["json"], results["hold"]
    rows = []

    def row(metric: str, target: str, value_of, ok, unit: str = "") -> None:
        values, passed = {}, {}
        for col, scenario in TARGET_COLUMNS.items():
            v = value_of(col, scenario)
            if v is None:
                continue
            values[col] = v
            passed[col] = bool(ok(v)) if ok else None
        rows.append({"metric": metric, "target": target, "unit": unit, "values": values,
                     "pass": passed})

    row("throughput vs passthrough (c=64)", ">= 0.7x",
        lambda c, s: _get(rat, "rps_over_passthrough", s), lambda v: v >= 0.7, "x")
    row("added latency p50 over direct (c=1)", "<= 0.5 ms",
        lambda c, s: _get(rat, "latency_added_ms_c1", s, "p50"), lambda v: v <= 0.5, "ms")
    row("added latency p99 over direct (c=1)", "<= 1.5 ms",
        lambda c, s: _get(rat, "latency_added_ms_c1", s, "p99"), lambda v: v <= 1.5, "ms")
    row("cache hit / miss throughput", ">= 2x",
        lambda c, s: rat.get("cache_hit_over_miss_rps") if c == "gateway-on" else None,
        lambda v: v >= 2, "x")
    row("stream TTFB p50 added, 1 stream", "<= 1 ms",
        lambda c, s: _get(rat, "ttfb_added_ms", c, "p50_c1"), lambda v: v <= 1, "ms")
    row("stream TTFB p99 added, 100 streams", "<= 5 ms",
        lambda c, s: _get(rat, "ttfb_added_ms", c, "p99_c100"), lambda v: v <= 5, "ms")
    row("chunk gap p99 added, 100 streams", "(report)",
        lambda c, s: _get(rat, "chunk_gap_added_ms_c100", c, "p99"), None, "ms")
    row("held streams without error", "all, 0 errors",
        lambda c, s: (f"{h[c]['held']}/{h[c]['streams']}, {h[c]['errors']} err"
                      if c in h else None),
        lambda v: v.split("/")[0] == v.split("/")[1].split(",")[0] and v.endswith(" 0 err"))
    row("memory per open stream", "(report)", lambda c, s: _get(h, c, "kb_per_stream"), None, "KB")
    row("RS256 user tokens, repeating / gateway-on miss", ">= 0.9x",
        lambda c, s: _get(rat, "over_gateway_on_miss_rps", "gateway-on-jwt-miss")
        if c == "gateway-on" else None, lambda v: v >= 0.9, "x")
    row("RS256, a fresh token every request / gateway-on miss", "(report)",
        lambda c, s: _get(rat, "over_gateway_on_miss_rps", "gateway-on-jwt-fresh")
        if c == "gateway-on" else None, None, "x")
    row("dollar budgets (spend + daily_usd) / gateway-on miss", ">= 0.95x",
        lambda c, s: _get(rat, "over_gateway_on_miss_rps", "gateway-on-spend-miss")
        if c == "gateway-on" else None, lambda v: v >= 0.95, "x")
    row("workers = 2 / workers = 1 throughput (memcached, unpinned)", ">= 1.7x",
        lambda c, s: rat.get("workers_2_over_1_rps") if c == "gateway-on" else None,
        lambda v: v >= 1.7, "x")
    row("1 worker on memcached / 1 worker on memory (unpinned)", ">= 0.5x",
        lambda c, s: rat.get("workers_memcached_over_memory_rps") if c == "gateway-on" else None,
        lambda v: v >= 0.5, "x")
    row("idle RSS", "<= 60 MB",
        lambda c, s: _r(_get(j, s, "memory", "idle_rss_kb") / 1024, 1)
        if _get(j, s, "memory", "idle_rss_kb") else None, lambda v: v <= 60, "MB")
    return rows


# --- Markdown ------------------------------------------------------------------------------

def _ms(us) -> str:
    return "–" if us is None else f"{us / 1000:.3f}"


def _f(x, nd: int = 3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _mb(kb) -> str:
    return "–" if not kb else f"{kb / 1024:.1f}"


def markdown(doc: dict) -> str:
    m, res = doc["meta"], doc["results"]
    lines = [
        f"# Gateway benchmark, {m['date']}", "",
        f"- command: `{m['command']}` ({m['profile']} profile, {m['elapsed_s']} s)",
        f"- machine: {m['nproc']} cores, {m['cpu']}, Linux {m['kernel']}",
        f"- other load: {m['cpu_busy_before']:.0%} of the machine busy just before the run; "
        "during it, other processes used "
        f"{m['foreign_cpu_during_run']['other_processes_cores']:.2f} core, "
        f"hypervisor steal {m['foreign_cpu_during_run']['steal_cores']:.2f} core",
        f"- software: Python {m['python']}, aiohttp {m['aiohttp']}, uvloop {m['uvloop']}, "
        f"{m['nginx']}, {m['wrk']}; repository {m['git']}",
        f"- pinning: {m['pinning']}",
        f"- durations: wrk {m['durations']['rps_s']} s at 64 connections, "
        f"{m['durations']['lat_s']} s "
        f"at 1 connection (after {m['durations']['warm_s']} s warm-up); "
        f"{m['durations']['ttfb1_streams']} single streams; 100 concurrent streams x "
        f"{m['durations']['ttfb100_per_worker']} each; "
        f"{m['durations']['hold_streams']} held streams",
        "",
    ]
    if res["json"]:
        lines += ["## Requests (non-streaming chat completion, wrk)", "",
                  "| configuration | req/s c=64 | p50 c=64 ms | p99 c=64 ms | p50 c=1 ms "
                  "| p99 c=1 ms | errors | idle RSS MB | peak RSS MB | RSS after MB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n, v in res["json"].items():
            mem = v.get("memory", {})
            errs = v["c64"]["error_total"] + v["c1"]["error_total"]
            lines.append(f"| {n} | {v['c64']['rps']:,.0f} | {_ms(v['c64']['p50_us'])} | "
                         f"{_ms(v['c64']['p99_us'])} | {_ms(v['c1']['p50_us'])} | "
                         f"{_ms(v['c1']['p99_us'])} | {errs} | {_mb(mem.get('idle_rss_kb'))} | "
                         f"{_mb(mem.get('peak_rss_kb'))} | {_mb(mem.get('after_rss_kb'))} |")
        lines.append("")
    if res["stream"]:
        lines += ["## Streams (SSE, 10 ms between chunks)", "",
                  "| configuration | TTFB p50 1 stream ms | TTFB p99 1 stream ms "
                  "| TTFB p50 100 streams ms | TTFB p99 100 streams ms | gap p50 ms | gap p99 ms "
                  "| complete | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n, v in res["stream"].items():
            one, hun = v["c1"], v["c100"]
            lines.append(f"| {n} | {_f(_get(one, 'ttfb_ms', 'p50'))} | "
                         f"{_f(_get(one, 'ttfb_ms', 'p99'))} | "
                         f"{_f(_get(hun, 'ttfb_ms', 'p50'))} | {_f(_get(hun, 'ttfb_ms', 'p99'))} | "
                         f"{_f(_get(hun, 'gap_ms', 'p50'))} | {_f(_get(hun, 'gap_ms', 'p99'))} | "
                         f"{one['complete'] + hun['complete']}/{one['streams'] + hun['streams']} | "
                         f"{one['errors'] + hun['errors']} |")
        lines.append("")
    if res["hold"]:
        lines += ["## Held streams (slow upstream, one chunk a second)", "",
                  "| configuration | held | errors | open s | RSS before MB | RSS held MB "
                  "| KB per stream | RSS after MB | fds before / held / after | healthy after |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for n, v in res["hold"].items():
            lines.append(f"| {n} | {v['held']}/{v['streams']} | {v['errors']} | "
                         f"{_f(v['open_s'], 1)} | {_mb(v['rss_before_kb'])} | "
                         f"{_mb(v['rss_held_kb'])} | {_f(v['kb_per_stream'], 1)} | "
                         f"{_mb(v['rss_after_kb'])} | "
                         f"{v['fds_before']} / {v['fds_held']} / {v['fds_after']} | "
                         f"{'yes' if v['healthy_after'] else 'NO'} |")
        lines.append("")
    w = res.get("workers") or {}
    if w.get("runs"):
        runs = w["runs"]
        groups = list(next(iter(runs.values()))["cpu_cores"])
        lines += ["## Workers (gateway-on, memcached storage, nothing pinned)", "",
                  "One worker on memory (the reference), then `server.workers` = 1 and 2 with "
                  "storage and cache in a local memcached; request limits "
                  f"{', '.join(w['rate_limit'])} per client, checked on every request, with "
                  f"{w['clients']:,} client addresses (X-Forwarded-For from the trusted loopback "
                  "peer) so that none trips; bodies vary (cache misses). wrk -c64, the nginx mock "
                  "and memcached share the same two cores with the gateway: the CPU columns "
                  "(cores, averaged over the measured run) show who used what.", "",
                  "| workers | req/s c=64 | p50 ms | p99 ms | errors | req per gateway CPU-s | "
                  + " | ".join(f"{g} cores" for g in groups) + " |",
                  "|---:|---:|---:|---:|---:|---:|" + "---:|" * len(groups)]
        for n, r in runs.items():
            gw = r["cpu_cores"]["gateway"]
            per = r.get("gateway_process_cores") or []
            cells = [f"{r['cpu_cores'][g]:.2f}" for g in groups]
            if len(per) > 2:  # the supervisor and its workers
                each = " + ".join(f"{x:.2f}" for x in per[1:])
                cells[groups.index("gateway")] = f"{gw:.2f} ({each})"
            name = n if n == "memory" else n + " (memcached)"
            lines.append(f"| {name} | {r['c64']['rps']:,.0f} | {_ms(r['c64']['p50_us'])} | "
                         f"{_ms(r['c64']['p99_us'])} | {r['c64']['error_total']} | "
                         f"{_f(r['requests_per_gateway_cpu_second'], 0)} | "
                         + " | ".join(cells) + " |")
        lines += ["", f"Throughput with 2 workers over 1: **{_f(w.get('ratio_2_over_1'), 2)}x**; "
                  f"1 worker on memcached over 1 on memory: "
                  f"**{_f(w.get('ratio_memcached_over_memory'), 2)}x**.", ""]
    if doc["targets"]:
        cols = list(TARGET_COLUMNS)
        lines += ["## Targets", "",
                  "Gateway columns are checked against the target; passthrough and nginx are shown "
                  "for reference (what the stack and a C proxy achieve on the same machine).", "",
                  "| metric | target | " + " | ".join(cols) + " |",
                  "|---|---|" + "---:|" * len(cols)]
        for r in doc["targets"]:
            cells = []
            for c in cols:
                if c not in r["values"]:
                    cells.append("–")
                    continue
                v = r["values"][c]
                text = v if isinstance(v, str) else f"{v:g} {r['unit']}".strip()
                ok = r["pass"].get(c)
                if c in GATEWAYS and ok is not None:
                    text += " ✅" if ok else " ❌"
                cells.append(text)
            lines.append(f"| {r['metric']} | {r['target']} | " + " | ".join(cells) + " |")
        lines.append("")
    if doc["notes"]:
        lines += ["## Notes", ""] + [f"- {n}".replace("\n", "\n  ") for n in doc["notes"]] + [""]
    lines += ["How to read these numbers: bench/README.md.", ""]
    return "\n".join(lines)


# --- Plot ------------------------------------------------------------------------------------

def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot(doc: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    res = doc["results"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    fig.suptitle(f"Gateway benchmark {doc['meta']['date']} ({doc['meta']['profile']}, "
                 f"{doc['meta']['nproc']} cores, {doc['meta']['pinning'].split(';')[0]})",
                 fontsize=11)

    def bars(ax, names, series: dict[str, list], title: str, ylabel: str,
             top: float | None = None) -> None:
        """Grouped bars; values above `top` are cut at it and labelled with their value."""
        width = 0.8 / max(1, len(series))
        for i, (label, vals) in enumerate(series.items()):
            xs = [k + (i - (len(series) - 1) / 2) * width for k in range(len(names))]
            b = ax.bar(xs, [min(v or 0, top or float("inf")) for v in vals], width, label=label)
            ax.bar_label(b, labels=[("" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.2f}")
                                    + (" (cut)" if top and v and v > top else "")
                                    for v in vals], fontsize=7, padding=1)
        if top:
            ax.set_ylim(0, top * 1.08)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        if len(series) > 1:
            ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)

    j = res["json"]
    names = list(j)
    rps = [j[n]["c64"]["rps"] for n in names]
    # direct and nginx are 10-20x faster than any Python proxy: cut them so the rest stay readable
    python_rps = [r for n, r in zip(names, rps, strict=True) if n not in ("direct", "nginx")]
    bars(axes[0][0], names, {"req/s": rps}, "Throughput, 64 connections", "requests / s",
         top=max(python_rps) * 1.3 if python_rps and max(rps) > 3 * max(python_rps) else None)
    bars(axes[0][1], names, {"p50": [j[n]["c1"]["p50_us"] / 1000 for n in names],
                             "p99": [j[n]["c1"]["p99_us"] / 1000 for n in names]},
         "Latency, 1 connection", "ms")
    s = res["stream"]
    sn = list(s)
    bars(axes[1][0], sn,
         {"TTFB p50, 1 stream": [_get(s[n], "c1", "ttfb_ms", "p50") for n in sn],
          "TTFB p99, 100 streams": [_get(s[n], "c100", "ttfb_ms", "p99") for n in sn]},
         "Streaming: time to first chunk", "ms")
    h = res["hold"]
    cfgs = [c for c in ("nginx", "passthrough", "gateway-on", "gateway-off")
            if _get(j, TARGET_COLUMNS[c], "memory", "idle_rss_kb") or c in h]

    def mem(c: str, key: str) -> float | None:
        return (_get(j, TARGET_COLUMNS[c], "memory", key, default=0) / 1024) or None

    bars(axes[1][1], cfgs,
         {"idle": [mem(c, "idle_rss_kb") for c in cfgs],
          "peak under wrk": [mem(c, "peak_rss_kb") for c in cfgs],
          f"{doc['meta']['durations']['hold_streams']} streams held":
              [(_get(h, c, "rss_held_kb", default=0) / 1024) or None for c in cfgs]},
         "Proxy resident memory", "MB")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(doc: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "latest.json", out / "latest.md"]
    paths[0].write_text(json.dumps(doc, indent=2) + "\n")
    paths[1].write_text(markdown(doc))
    if plot(doc, out / "latest.png"):
        paths.append(out / "latest.png")
    return paths

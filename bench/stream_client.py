"""Streaming load client: time to first chunk, gaps between chunks, completeness, held streams.

    # K streams open at once, each worker running N measured streams back to back; K=1 is sequential
    python bench/stream_client.py URL --streams 100 --per-worker 5 --max-tokens 20
    # open K streams against a slow upstream, keep them open S seconds, then drop them all
    python bench/stream_client.py URL --hold 5000 --hold-seconds 5 --max-tokens 100000

URL is the full chat completions URL. Every request has a distinct `user` so a caching gateway
misses (and single-flight does not merge streams). `max_tokens` tells bench/sse_upstream.py how
many content chunks to send. Prints one JSON object on stdout; in --hold mode it first prints a
line `{"event": "held", ...}` once every stream has its first chunk, so the caller can read the
proxy's memory while the streams are open.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import resource
import sys
import time

import aiohttp
import uvloop

HEADERS = {"Content-Type": "application/json", "Origin": "http://localhost:5173",
           "Authorization": "Bearer x", "Accept": "text/event-stream"}
NONCE = os.urandom(4).hex()


def headers(i: int) -> dict:
    """Stream i comes from client address i (as wrk's post.lua does): the gateway trusts the
    loopback peer's X-Forwarded-For, so its per-client limits see many clients."""
    c = i % 65536
    return dict(HEADERS, **{"X-Forwarded-For": f"10.{c >> 16 & 255}.{c >> 8 & 255}.{c & 255}"})


def body(i: int, max_tokens: int) -> bytes:
    return json.dumps({
        "model": "gpt-4o-mini", "stream": True, "max_tokens": max_tokens, "temperature": 0,
        "user": f"bench-{NONCE}-{i}",
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "Count slowly."}]}).encode()


def summary(values: list[float]) -> dict:
    """Nearest-rank percentiles, in milliseconds."""
    if not values:
        return {"n": 0}
    v = sorted(values)
    pick = lambda p: v[max(0, math.ceil(p / 100 * len(v)) - 1)] * 1000  # noqa: E731
    return {"n": len(v), "p50": pick(50), "p90": pick(90), "p99": pick(99),
            "max": v[-1] * 1000, "mean": sum(v) / len(v) * 1000}


class Tally:
    def __init__(self) -> None:
        self.ttfb: list[float] = []
        self.gaps: list[float] = []
        self.complete = 0
        self.errors: list[str] = []

    def error(self, msg: str) -> None:
        self.errors.append(msg)


async def stream(session: aiohttp.ClientSession, url: str, i: int, max_tokens: int, tally: Tally,
                 first: asyncio.Event | None = None) -> str:
    """Run one stream; return "done", "eof" (ended without [DONE]) or "error"."""
    t0 = time.perf_counter()
    times: list[float] = []
    buf = b""
    try:
        async with session.post(url, data=body(i, max_tokens), headers=headers(i)) as resp:
            if resp.status != 200:
                tally.error(f"status {resp.status}: {(await resp.read())[:120]!r}")
                return "error"
            async for data in resp.content.iter_any():
                now = time.perf_counter()
                buf += data
                while (cut := buf.find(b"\n\n")) >= 0:
                    ev, buf = buf[:cut], buf[cut + 2:]
                    if ev.startswith(b"data: [DONE]"):
                        tally.complete += 1
                        _record(times, t0, max_tokens, tally)
                        return "done"
                    if ev.startswith(b"data:"):
                        times.append(now)
                        if len(times) == 1 and first is not None:
                            first.set()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a stream error is a measurement, not a crash
        tally.error(f"{type(exc).__name__}: {exc}"[:160])
        return "error"
    _record(times, t0, max_tokens, tally)
    tally.error("stream ended without [DONE]")
    return "eof"


def _record(times: list[float], t0: float, max_tokens: int, tally: Tally) -> None:
    if times:
        tally.ttfb.append(times[0] - t0)
        # role chunk + max_tokens paced content chunks; what follows is written back to back
        paced = times[: max_tokens + 1]
        tally.gaps.extend(b - a for a, b in itertools.pairwise(paced))


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=300),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30), auto_decompress=False)


async def workers(url: str, k: int, per_worker: int, max_tokens: int, warmup: int) -> dict:
    """K workers, each running `warmup` unmeasured then `per_worker` measured streams back to back.

    Starts are spread over one stream's duration, so the measurement is "latency while K streams
    are open", not the queueing of K requests fired in the same millisecond."""
    tally, seq = Tally(), iter(range(10**9))
    spread = max_tokens * 0.010 if k > 1 else 0.0  # the mock's default pace is 10 ms a chunk

    async def worker(s: aiohttp.ClientSession, w: int) -> None:
        await asyncio.sleep(spread * w / k)
        for _ in range(warmup):
            await stream(s, url, next(seq), max_tokens, Tally())
        for _ in range(per_worker):
            await stream(s, url, next(seq), max_tokens, tally)

    async with session() as s:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(s, w) for w in range(k)))
        elapsed = time.perf_counter() - t0
    return {"mode": "workers", "concurrency": k, "per_worker": per_worker,
            "streams": k * per_worker, "max_tokens": max_tokens, "complete": tally.complete,
            "errors": len(tally.errors),
            "error_samples": tally.errors[:5], "ttfb_ms": summary(tally.ttfb),
            "gap_ms": summary(tally.gaps), "elapsed_s": round(elapsed, 3)}


async def hold(url: str, k: int, seconds: float, max_tokens: int, ramp: int,
               open_timeout: float) -> dict:
    tally = Tally()
    gate = asyncio.Semaphore(ramp)  # connections being opened at once (listen backlogs are finite)
    firsts = 0

    async def one(i: int) -> str:
        nonlocal firsts
        first = asyncio.Event()
        await gate.acquire()
        task = asyncio.ensure_future(stream(s, url, i, max_tokens, tally, first))
        waiter = asyncio.ensure_future(first.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        gate.release()
        if first.is_set():
            firsts += 1
        else:
            waiter.cancel()
        return await task

    async with session() as s:
        t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(one(i)) for i in range(k)]
        deadline = t0 + open_timeout
        while firsts + len(tally.errors) < k and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        opened = time.perf_counter() - t0
        held = firsts
        print(json.dumps({"event": "held", "held": held, "errors": len(tally.errors),
                          "open_s": round(opened, 3)}), flush=True)
        await asyncio.sleep(seconds)
        # a stream that finished normally before release ended early (errors are already counted)
        ended_early = sum(t.done() and not t.cancelled() and t.result() == "done" for t in tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"mode": "hold", "streams": k, "held": held, "open_s": round(opened, 3),
            "hold_s": seconds, "ended_early": ended_early,
            "errors": len(tally.errors) + ended_early,
            "error_samples": tally.errors[:5], "ttfb_ms": summary(tally.ttfb)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("--streams", type=int, default=1, help="concurrent streams (workers)")
    ap.add_argument("--per-worker", type=int, default=10, help="measured streams per worker")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured streams per worker first")
    ap.add_argument("--max-tokens", type=int, default=20, help="content chunks the mock sends")
    ap.add_argument("--hold", type=int, default=0, help="hold this many streams open instead")
    ap.add_argument("--hold-seconds", type=float, default=5.0)
    ap.add_argument("--ramp", type=int, default=100, help="--hold: connections opening at once")
    ap.add_argument("--open-timeout", type=float, default=60.0)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.hold and args.hold + 100 > hard:
        sys.exit(f"--hold {args.hold} needs more file descriptors than RLIMIT_NOFILE {hard}")
    if args.hold:
        coro = hold(args.url, args.hold, args.hold_seconds, args.max_tokens, args.ramp,
                    args.open_timeout)
    else:
        coro = workers(args.url, args.streams, args.per_worker, args.max_tokens, args.warmup)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        print(json.dumps(runner.run(coro)), flush=True)


if __name__ == "__main__":
    main()

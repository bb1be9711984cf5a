"""What one request's feature steps cost in CPU, measured in-process (no network, no wrk).

    python bench/costs.py              # a few seconds; prints a Markdown table

On a machine that other work keeps busy, wrk's requests/s swing by 2x between two 6-second
runs, so a 5 % target cannot be read from them. The steps a feature adds to a request are
pure CPU work in the gateway's process, though, and timing them in a loop (best of several
repeats, each of thousands of calls) is stable: the steady state of a running gateway, built
from the same settings and components the server builds (`app.build`).

Each row is the extra CPU per request that a feature adds to the cache-miss path; divide by
the miss path's CPU per request (1 / its requests/s at c=64 on a quiet machine, where the
gateway saturates core 0) for its share.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

import jwt_tokens  # noqa: E402
import phases  # noqa: E402

from openai_gateway.app import build  # noqa: E402
from openai_gateway.config import settings as settings_mod  # noqa: E402
from openai_gateway.identity.bearer import BearerResolver  # noqa: E402
from openai_gateway.identity.callers import Caller  # noqa: E402
from openai_gateway.metering.budgets import Reservation  # noqa: E402
from openai_gateway.metering.prices import cost, estimate  # noqa: E402
from openai_gateway.metering.prices import table as price_table  # noqa: E402
from openai_gateway.metering.rules import Rules  # noqa: E402
from openai_gateway.pipeline.validation import Validator  # noqa: E402
from openai_gateway.policy import Usage, forward_body  # noqa: E402
from openai_gateway.policy.jsonbody import parse_object  # noqa: E402

CHAT = "/v1/chat/completions"


# thread_time, not a wall clock: time this thread spent on a CPU, so another process that
# preempts it does not count (a busy machine still slows it through the caches and steal).


def best_us(fn: Callable[[], object], n: int, repeats: int = 7) -> float:
    """Best per-call CPU time in microseconds over `repeats` loops of `n` calls (GC off inside)."""
    best = float("inf")
    for _ in range(repeats):
        gc.disable()
        t0 = time.thread_time()
        for _ in range(n):
            fn()
        best = min(best, (time.thread_time() - t0) / n)
        gc.enable()
    return best * 1e6


async def abest_us(fn: Callable[[], Awaitable[object]], n: int, repeats: int = 7) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.disable()
        t0 = time.thread_time()
        for _ in range(n):
            await fn()
        best = min(best, (time.thread_time() - t0) / n)
        gc.enable()
    return best * 1e6


def load(tmp: Path, toml: str):
    path = tmp / "costs.toml"
    path.write_text(toml)
    return settings_mod.load(path, {"OPENAI_API_KEY": phases.API_KEY})


async def jwt_costs(tmp: Path, rows: list) -> None:
    users = jwt_tokens.Users(tmp)
    toml = phases.gateway_toml(1, "http://127.0.0.1:9", True, extra=users.issuer_toml())
    auth = build(load(tmp, toml)).auth
    tokens = [users.sign(f"u{i}") for i in range(1000)]
    headers = ["Bearer " + t for t in tokens]
    async with auth.running():
        bearer = auth.bearer
        for h in headers:  # every token verified once: the cache holds them all
            await bearer.resolve(h)
        it = iter(range(10**9))
        repeat = await abest_us(lambda: bearer.resolve(headers[next(it) % 1000]), 20000)
        rows.append(("RS256 user token, already verified (hash + cache lookup)", repeat))
        # The same issuer behind a resolver that remembers nothing: every call verifies.
        uncached = BearerResolver(issuers=list(bearer.issuers.values()), cache_size=0)
        verify = await abest_us(lambda: uncached.resolve(headers[next(it) % 1000]), 300, repeats=5)
        rows.append(("RS256 user token, first sight (signature and claims checked)", verify))


async def spend_costs(tmp: Path, rows: list) -> None:
    parsed = Validator(load(tmp, phases.gateway_toml(1, "http://127.0.0.1:9", True)).validation
                       ).check(CHAT, phases.BODY, None)
    rows.append(("reserve + settle, no dollar budget", await _spend_case(tmp, parsed, None, "")))
    rows.append(("reserve + settle, dollar budgets (spend 1000/day, daily_usd)",
                 await _spend_case(tmp, parsed, phases.SPEND_LIMITS, phases.BUDGET_TOML)))


async def _spend_case(tmp: Path, parsed, spend: list[str] | None, extra: str) -> float:
    """What the pipeline does around the upstream call: price, estimate, reserve (the store
    call admission makes); cost, settle."""
    settings = load(tmp, phases.gateway_toml(1, "http://127.0.0.1:9", True, spend=spend,
                                             extra=extra))
    c = build(settings)
    rules = Rules(settings.rate_limit, settings.budget)
    c.limiter.configure(rules, settings.rate_limit.strategy)
    c.budgets.configure(rules)
    limiter, budgets, prices = c.limiter, c.budgets, price_table(settings.prices)
    clients = [Caller(id=f"ip:10.0.{i // 256}.{i % 256}", ip="x") for i in range(65536)]
    it = iter(range(10**9))

    async def one() -> None:
        client = clients[next(it) % 65536]
        price = prices.price_for("gpt-4o-mini")
        micro = None
        if budgets.spend_applies(client, CHAT, "gpt-4o-mini"):
            prompt = parsed.prompt_tokens
            micro = estimate(price, prompt, parsed.estimate - prompt)
        holds = budgets.holds(client, CHAT, "gpt-4o-mini", parsed.estimate, micro)
        reservation = Reservation()
        if holds:
            counted = await limiter.count(budgets.hits(holds))
            reservation = budgets.take(counted, holds, time.time())
        await budgets.settle(reservation, tokens=29,
                             micro_usd=cost(price, Usage(input=20, output=9)))

    for _ in range(70000):  # every client once: its windows exist, as after the warm-up
        await one()
    result = await abest_us(one, 20000)
    await c.stores[0][1].close()
    return result


def policy_costs(tmp: Path, rows: list) -> None:
    import orjson
    body = phases.BODY
    settings = load(tmp, phases.gateway_toml(1, "http://127.0.0.1:9", True))
    validator = Validator(settings.validation)
    rows.append(("orjson.loads of the bench body (the floor of any parse)",
                 best_us(lambda: orjson.loads(body), 50000)))
    rows.append(("strict JSON parse (orjson.loads + write-back test)",
                 best_us(lambda: parse_object(body), 50000)))
    rows.append(("request policy check (parse, model, knobs, input walk)",
                 best_us(lambda: validator.check(CHAT, body, None), 50000)))
    parsed = validator.check(CHAT, body, None)
    rows.append(("forward body, client set max_tokens (raw bytes go as they came)",
                 best_us(lambda: forward_body(parsed, body, stream_usage=False), 50000)))
    no_cap = body.replace(b'"max_tokens":64,', b"")
    parsed2 = validator.check(CHAT, no_cap, None)
    rows.append(("forward body, no max_tokens (the output cap added: body written again)",
                 best_us(lambda: forward_body(parsed2, no_cap, stream_usage=False), 50000)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--miss-rps", type=float, default=4124.0,
                    help="gateway-on miss requests/s at c=64 on a quiet machine (README): its CPU "
                         "per request is 1/this, the denominator of the shares")
    args = ap.parse_args()
    import uvloop
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="gateway-costs-") as tmpdir:
        tmp = Path(tmpdir)
        policy_costs(tmp, rows)
        uvloop.run(spend_costs(tmp, rows))
        uvloop.run(jwt_costs(tmp, rows))
    per_request = 1e6 / args.miss_rps
    print(f"# CPU per request of what each step costs (best of 7 loops; python "
          f"{sys.version.split()[0]}, pid {os.getpid()})\n")
    print(f"Shares are of the miss path's {per_request:.0f} µs per request "
          f"({args.miss_rps:,.0f} req/s).\n")
    print("| step | µs per request | share of the miss path |")
    print("|---|---:|---:|")
    for label, us in rows:
        print(f"| {label} | {us:.1f} | {100 * us / per_request:.1f} % |")


if __name__ == "__main__":
    main()

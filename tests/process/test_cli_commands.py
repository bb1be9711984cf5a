"""The money and identity subcommands: `mint-token`, `spend`, and --check's warnings."""
from __future__ import annotations

import re
import time

import aiohttp
import openai
import pytest

from openai_gateway.identity.keys import hash_key

from ..conftest import KEY, ORIGIN, free_port, gateway_cli, toml_dumps
from ..support.store_fixtures import redis_factory  # noqa: F401  (fixture)

SECRET = "gw-token-SECRET-cli-9e8d7c6b5a4f3e2d1c0b-do-not-leak"
TIERS = {"free": {"requests": ["4/minute"]}, "pro": {"requests": ["40/minute"]}}


def write(tmp_path, doc: dict, name: str = "cli.toml") -> str:
    path = tmp_path / name
    path.write_text(toml_dumps(doc))
    return str(path)


async def test_mint_token_prints_a_token_a_running_gateway_accepts(tmp_path, gateway_process,
                                                                   fake):
    doc = {"auth": {"tokens": {"secret_env": "GW_TOKEN_SECRET", "max_ttl": 600}},
           "tiers": TIERS}
    gp = await gateway_process(doc, env={"GW_TOKEN_SECRET": SECRET})
    rc, out, err = await gateway_cli("mint-token", "--user", "ana", "--tier", "pro",
                                     "--ttl", "300", "--config", str(gp.config_path),
                                     env={"GW_TOKEN_SECRET": SECRET, "OPENAI_API_KEY": ""})
    assert rc == 0, err
    token = out.strip()
    assert token.count(".") == 2 and "\n" not in token
    expires = int(re.search(r"\((\d+)\)", err).group(1))
    assert 0 < expires - time.time() <= 300
    assert "user ana, tier pro" in err and SECRET not in out + err
    async with openai.AsyncOpenAI(base_url=gp.url + "/v1", api_key=token, max_retries=0,
                                  default_headers={"Origin": ORIGIN}) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-ratelimit-limit-requests"] == "40"
    assert fake.posts[-1].headers["Authorization"] == f"Bearer {KEY}"


async def test_mint_token_refuses_clearly(tmp_path):
    with_secret = write(tmp_path, {"auth": {"tokens": {"secret_env": "GW_TOKEN_SECRET",
                                                       "max_ttl": 600}}, "tiers": TIERS})
    env = {"GW_TOKEN_SECRET": SECRET}
    rc, out, err = await gateway_cli("mint-token", "--user", "ana", "--tier", "gold",
                                     "--config", with_secret, env=env)
    assert rc == 2 and out == "" and "tier 'gold' is not configured" in err
    rc, out, err = await gateway_cli("mint-token", "--user", "ana", "--ttl", "601",
                                     "--config", with_secret, env=env)
    assert rc == 2 and out == "" and "600" in err
    rc, out, err = await gateway_cli("mint-token", "--user", "two words",
                                     "--config", with_secret, env=env)
    assert rc == 2 and out == "" and "'user'" in err
    without = write(tmp_path, {"tiers": TIERS}, "plain.toml")
    rc, out, err = await gateway_cli("mint-token", "--user", "ana", "--config", without)
    assert rc == 2 and out == "" and "auth.tokens.secret_env is not set" in err
    # The variable named but not exported: the config error names it.
    rc, out, err = await gateway_cli("mint-token", "--user", "ana", "--config", with_secret,
                                     env={"GW_TOKEN_SECRET": ""})
    assert rc == 2 and "GW_TOKEN_SECRET" in err and SECRET not in err


async def test_global_options_go_before_or_after_the_command(tmp_path):
    path = write(tmp_path, {"auth": {"tokens": {"secret_env": "GW_TOKEN_SECRET"}}})
    env = {"GW_TOKEN_SECRET": SECRET}
    for args in (("--config", path, "mint-token", "--user", "42"),
                 ("mint-token", "--user", "42", "--config", path),
                 ("--log-level", "debug", "mint-token", "--config", path, "--user", "42")):
        rc, out, err = await gateway_cli(*args, env=env)
        assert rc == 0, (args, err)
        assert out.strip().count(".") == 2


async def test_mint_token_reads_only_what_it_needs(tmp_path):
    """An issuer whose secret is not exported here, a JWKS file of the server's, the storage's
    password, a fallback's key: none of them is mint-token's business. Serving needs them all
    and names every one."""
    path = write(tmp_path, {
        "auth": {"tokens": {"secret_env": "GW_TOKEN_SECRET"}, "issuers": [
            {"issuer": "https://a.example/", "secret_env": "ISSUER_SECRET",
             "algorithms": ["HS256"]},
            {"issuer": "https://b.example/", "jwks_file": str(tmp_path / "jwks.json"),
             "algorithms": ["RS256"]}]},
        "storage": {"url": "redis://127.0.0.1:6379", "password_env": "REDIS_PASSWORD"},
        "upstream": {"fallbacks": [{"base_url": "https://x.example/v1",
                                    "api_key_env": "OTHER_KEY"}]}})
    rc, out, err = await gateway_cli("mint-token", "--user", "42", "--config", path,
                                     env={"GW_TOKEN_SECRET": SECRET, "OPENAI_API_KEY": ""})
    assert rc == 0, err
    assert out.strip().count(".") == 2
    rc, out, err = await gateway_cli("--check", "--config", path,
                                     env={"GW_TOKEN_SECRET": SECRET, "OPENAI_API_KEY": KEY})
    assert rc == 2
    for name in ("ISSUER_SECRET", "jwks_file", "REDIS_PASSWORD", "OTHER_KEY"):
        assert name in err


MONEY = {"budget": {"daily_usd": 2.0, "monthly_usd": 30.0}, "tiers": TIERS,
         "prices": {"gpt-4o-mini": {"input": 1000.0, "output": 4000.0}}}


async def spend_some(gp) -> dict[str, int]:
    """Three answers (two for the client key of tier pro, one anonymous): micro-dollars by
    tier, from the answers' own x-gateway-cost-usd."""
    costs = {"pro": 0, "none": 0}
    for tier, key in (("pro", "gw-pro-key"), ("none", "sk-dummy"), ("pro", "gw-pro-key")):
        async with openai.AsyncOpenAI(base_url=gp.url + "/v1", api_key=key, max_retries=0,
                                      default_headers={"Origin": ORIGIN}) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                max_tokens=10)
        costs[tier] += int(raw.headers["x-gateway-cost-usd"].replace(".", ""))
    return costs


def usd(micro: int) -> str:
    return f"${micro // 1_000_000}.{micro % 1_000_000:06d}"


def expect_report(out: str, costs: dict[str, int]) -> None:
    today = time.strftime("%Y-%m-%d", time.gmtime())
    total = sum(costs.values())
    lines = out.splitlines()
    assert lines[:4] == [f"today, {today} (UTC): {usd(total)}", f"  tier free: {usd(0)}",
                         f"  tier pro: {usd(costs['pro'])}", f"  no tier: {usd(costs['none'])}"]
    assert lines[4] == f"this month, {today[:7]} (UTC): {usd(total)}"
    assert lines[8].startswith(f"budget.daily_usd: {usd(total)} of $2.000000 spent in the "
                               "last day")
    assert f", {usd(2_000_000 - total)} left" in lines[8]
    assert lines[9].startswith(f"budget.monthly_usd: {usd(total)} of $30.000000 spent")


@pytest.fixture
def redis_url(redis_factory) -> str:  # noqa: F811
    return f"redis://{redis_factory().address}/5"


def with_pro_key(doc: dict) -> dict:
    return {**doc, "clients": [{"name": "shop", "key_sha256": hash_key("gw-pro-key"),
                                "tier": "pro"}]}


async def test_spend_on_memory_asks_the_running_gateway(gateway_process, fake):
    gp = await gateway_process(with_pro_key(MONEY))
    costs = await spend_some(gp)
    assert costs["pro"] > costs["none"] > 0
    rc, out, err = await gateway_cli("spend", "--config", str(gp.config_path),
                                     env={"OPENAI_API_KEY": ""})
    assert rc == 0, err
    expect_report(out, costs)
    assert KEY not in out + err
    # A gateway that is not there: said, with what to check.
    rc, out, err = await gateway_cli("--config", str(gp.config_path), "spend", "--port",
                                     str(free_port()))
    assert rc == 1 and out == "" and "could not reach the gateway" in err and "--port" in err


@pytest.mark.parametrize("store", ["memcached", "redis"])
async def test_spend_on_a_shared_store_reads_the_store(gateway_process, fake, store, request):
    url = request.getfixturevalue(f"{store}_url")
    gp = await gateway_process(with_pro_key({**MONEY, "storage": {"url": url}}))
    costs = await spend_some(gp)
    assert gp.stop() == 0  # no gateway running: the store holds it all
    rc, out, err = await gateway_cli("spend", "--config", str(gp.config_path))
    assert rc == 0, err
    expect_report(out, costs)


async def test_spend_without_a_ceiling_says_so(tmp_path):
    path = write(tmp_path, {"tiers": TIERS})  # memory://, and no gateway to ask: not needed
    rc, out, err = await gateway_cli("spend", "--config", path)
    assert rc == 0 and "no gateway-wide ceiling" in out


async def test_check_prints_the_settings_warnings(tmp_path):
    path = write(tmp_path, {"clients": [{"name": "b", "key_sha256": "a" * 64,
                                         "tier": "platinum"}], "tiers": TIERS})
    rc, out, err = await gateway_cli("--check", "--config", path,
                                     env={"OPENAI_API_KEY": KEY})
    assert rc == 0, err
    assert re.search(r"^warning: .*tier 'platinum' is not defined", err, re.M), err
    assert KEY not in out + err


async def test_mint_token_as_a_client_key_mints_that_keys_users(tmp_path, gateway_process,
                                                                fake):
    client_key = "gw-client-SECRET-cli-backend"
    doc = {"auth": {"tokens": {"secret_env": "GW_TOKEN_SECRET", "max_ttl": 600}},
           "tiers": TIERS, "clients": [{"name": "backend", "key_sha256": hash_key(client_key),
                                        "tier": "free"}]}
    env = {"GW_TOKEN_SECRET": SECRET}
    gp = await gateway_process(doc, env=env)
    rc, out, err = await gateway_cli("mint-token", "--user", "ana", "--client", "backend",
                                     "--config", str(gp.config_path), env=env)
    assert rc == 0, err
    assert "user ana of client backend, tier free" in err  # the key's own tier by default
    from_cli = out.strip()
    async with aiohttp.ClientSession() as s, s.post(
            gp.url + "/gateway/tokens", json={"user": "ana"},
            headers={"Authorization": f"Bearer {client_key}", "Origin": ORIGIN}) as r:
        assert r.status == 200
        from_key = (await r.json())["token"]
    # One user: the two tokens share the free tier's 4 requests a minute.
    async with openai.AsyncOpenAI(base_url=gp.url + "/v1", api_key="-", max_retries=0,
                                  default_headers={"Origin": ORIGIN}) as client:
        left = []
        for token in (from_key, from_cli):
            raw = await client.with_options(api_key=token).chat.completions \
                .with_raw_response.create(model="gpt-4o-mini",
                                          messages=[{"role": "user", "content": "hi"}])
            left.append(raw.headers["x-ratelimit-remaining-requests"])
    assert left == ["3", "2"]
    # As the key would: only the tiers it may mint, and only keys that exist.
    rc, out, err = await gateway_cli("mint-token", "--user", "ana", "--client", "backend",
                                     "--tier", "pro", "--config", str(gp.config_path), env=env)
    assert rc == 2 and out == "" and "'pro'" in err and "free" in err
    rc, out, err = await gateway_cli("mint-token", "--user", "ana", "--client", "nope",
                                     "--config", str(gp.config_path), env=env)
    assert rc == 2 and out == "" and "no [[clients]] named 'nope'" in err


async def test_check_refuses_settings_that_cannot_work_together(tmp_path):
    path = write(tmp_path, {"auth": {
        "anonymous": False,
        "sessions": {"captcha_verify_url": "https://challenges.example/siteverify",
                     "captcha_secret_env": "GW_CAPTCHA"}}})
    rc, out, err = await gateway_cli("--check", "--config", path,
                                     env={"OPENAI_API_KEY": KEY, "GW_CAPTCHA": "0x-captcha"})
    assert rc == 2 and out == ""
    assert err.splitlines() == [
        'config error: auth.sessions.captcha_verify_url: set while auth.tokens.secret_env is "", '
        "expected auth.tokens.secret_env too (sessions are tokens the gateway signs; without "
        "its secret there is no /gateway/session)",
        "config error: auth.anonymous: false while no caller can be identified, expected "
        "[[clients]], [[auth.issuers]] or auth.tokens.secret_env (every request would be "
        "refused with 401)"]

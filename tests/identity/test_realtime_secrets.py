"""The gateway's own realtime client secrets: bound to a caller, its tier and a bounded session,
short-lived, and no API token anywhere else."""
from __future__ import annotations

import base64
import random
import time

import jwt
import orjson
import pytest

from openai_gateway.app import create_app
from openai_gateway.config.settings import parse
from openai_gateway.errors import InvalidRequest, InvalidToken
from openai_gateway.identity.bearer import BearerResolver
from openai_gateway.identity.minted import CLI, TokenMinter
from openai_gateway.identity.realtime_secrets import (
    MAX_SECRET_BYTES,
    RealtimeGrant,
    RealtimeSecrets,
    is_realtime_secret,
    presented_token,
)

from ..conftest import KEY, base_config, merge, trace_config

SECRET = "s" * 40
OLD = "o" * 40
SESSION = {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief.",
           "max_output_tokens": 1000}


class Clock:
    """The minter's clock (PyJWT checks `exp` against the real one)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def issue(secrets: RealtimeSecrets, **kw) -> tuple[str, int]:
    args = {"caller": "key:backend", "tier": "pro", "models": ["gpt-realtime", "whisper-1"],
            "session": SESSION, "ttl": 300, **kw}
    return secrets.issue(**args)


def test_a_secret_carries_its_caller_tier_models_and_session():
    clock = Clock()
    secrets = RealtimeSecrets(secret=SECRET, max_ttl=600, clock=clock)
    token, expires_at = issue(secrets)
    assert expires_at == int(clock.now) + 300
    grant = secrets.verify(token)
    assert grant == RealtimeGrant("key:backend", "pro", frozenset({"gpt-realtime", "whisper-1"}),
                                  SESSION, expires_at, grant.id)
    assert len(grant.id) >= 16 and grant.id != secrets.verify(issue(secrets)[0]).id
    # Nothing about the caller is readable in clear but its id: the session is compressed.
    payload = orjson.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert payload["aud"] == "openai-gateway/realtime" and payload["kind"] == "realtime"
    assert "Be brief." not in token and isinstance(payload["ses"], str)
    assert is_realtime_secret(token)
    anonymous = secrets.verify(issue(secrets, caller="ip:203.0.113.0/24", tier=None,
                                     models=None)[0])
    assert (anonymous.caller, anonymous.tier, anonymous.models) == (
        "ip:203.0.113.0/24", None, None)


def test_the_lifetime_is_capped_and_an_expired_secret_is_refused():
    clock = Clock()
    secrets = RealtimeSecrets(secret=SECRET, max_ttl=600, clock=clock)
    token, expires_at = issue(secrets, ttl=7200)
    assert expires_at == int(clock.now) + 600
    clock.now -= 600 + 6  # minted that long ago: past the leeway of 5 seconds
    token, _ = issue(secrets, ttl=7200)
    with pytest.raises(InvalidToken, match="expired"):
        secrets.verify(token)


def test_only_a_realtime_secret_of_this_gateway_verifies():
    secrets = RealtimeSecrets(secret=SECRET, max_ttl=600)
    user, _ = TokenMinter(secret=SECRET).mint("42", minted_by=CLI)
    with pytest.raises(InvalidToken, match="audience"):
        secrets.verify(user)  # a general API token is no realtime secret
    assert not is_realtime_secret(user) and not is_realtime_secret("sk-not-a-jwt")
    token, _ = issue(secrets)
    head, payload, signature = token.split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=="))
    forged = base64.urlsafe_b64encode(orjson.dumps({**claims, "sub": "key:admin"})).rstrip(b"=")
    with pytest.raises(InvalidToken, match="signature"):
        secrets.verify(f"{head}.{forged.decode()}.{signature}")
    with pytest.raises(InvalidToken, match="signature"):
        RealtimeSecrets(secret="t" * 40).verify(token)
    with pytest.raises(InvalidToken):
        secrets.verify("x" * (MAX_SECRET_BYTES + 1))


def test_a_realtime_secret_is_refused_as_an_api_token_saying_why():
    secrets = RealtimeSecrets(secret=SECRET)
    token, _ = issue(secrets)
    with pytest.raises(InvalidToken, match="realtime client secret") as refused:
        TokenMinter(secret=SECRET).verify(token)
    assert refused.value.status == 401 and refused.value.code == "invalid_token"


async def test_every_other_route_refuses_a_realtime_secret(aiohttp_client, upstream_url):
    settings = parse(merge(base_config(upstream_url), {"auth": {"tokens": {
        "secret_env": "TOK"}}}), environ={"OPENAI_API_KEY": KEY, "TOK": SECRET})
    client = await aiohttp_client(create_app(settings), trace_configs=[trace_config()])
    token, _ = issue(RealtimeSecrets(secret=settings.token_secret))
    auth = {"Authorization": f"Bearer {token}"}
    user, _ = TokenMinter(secret=SECRET).mint("42", minted_by=CLI)
    for method, path, body in (
            ("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [
                {"role": "user", "content": "hi"}]}),
            ("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}),
            ("GET", "/v1/models", None)):
        r = await client.request(method, path, json=body, headers=auth)
        error = (await r.json())["error"]
        assert r.status == 401 and error["code"] == "invalid_token", (path, error)
        assert "realtime client secret" in error["message"]
        # The same route takes a general token of the same secret.
        r = await client.request(method, path, json=body,
                                 headers={"Authorization": f"Bearer {user}"})
        assert r.status == 200, path


async def test_without_a_token_secret_the_resolver_still_refuses_a_realtime_secret():
    """No auth.tokens secret: the per-process signer is the resolver's minter, so a realtime
    secret is a 401 on other routes, not an anonymous request."""
    secrets = RealtimeSecrets()
    token, _ = issue(secrets)
    resolver = BearerResolver(own=secrets.minter)
    with pytest.raises(InvalidToken, match="realtime client secret"):
        await resolver.resolve(f"Bearer {token}")
    # Another JWT is what it was without any issuer: not an identity here, so anonymous.
    other = jwt.encode({"iss": "https://login.example", "sub": "u"}, "k" * 32)
    assert await resolver.resolve(f"Bearer {other}") is None


def test_rotation_keeps_secrets_of_the_previous_key():
    old = RealtimeSecrets(secret=OLD)
    token, _ = issue(old)
    assert RealtimeSecrets(secret=SECRET, previous_secret=OLD).verify(token).caller == \
        "key:backend"
    with pytest.raises(InvalidToken):
        RealtimeSecrets(secret=SECRET).verify(token)


def test_without_a_configured_secret_each_process_has_its_own_key():
    one, two = RealtimeSecrets(), RealtimeSecrets()
    assert one.per_process and two.per_process
    token, _ = issue(one)
    assert one.verify(token).caller == "key:backend"
    with pytest.raises(InvalidToken, match="signature"):
        two.verify(token)  # another worker or VM: hence --check's warning
    shared = RealtimeSecrets(secret=SECRET), RealtimeSecrets(secret=SECRET)
    assert not shared[0].per_process
    assert shared[1].verify(issue(shared[0])[0]).tier == "pro"


def test_long_instructions_fit_until_the_header_would_not():
    secrets = RealtimeSecrets(secret=SECRET)
    prose = ("You are a friendly voice assistant for a bakery. Answer questions about "
             "opening hours, bread, cakes and orders; keep every answer short. ")
    long = {**SESSION, "instructions": (prose * 80)[:10_000]}  # validation.max_input_chars
    token, _ = issue(secrets, session=long)
    assert len(token) < MAX_SECRET_BYTES and secrets.verify(token).session == long
    noise = base64.b64encode(random.Random(1).randbytes(7000)).decode()  # does not compress
    with pytest.raises(InvalidRequest) as refused:
        issue(secrets, session={**SESSION, "instructions": noise[:9_000]})
    assert (refused.value.param, refused.value.code) == ("session.instructions",
                                                         "session_too_large")


@pytest.mark.parametrize("headers,token", [
    ({"Authorization": "Bearer abc.def.ghi"}, "abc.def.ghi"),
    ({"authorization": "bearer tok"}, "tok"),
    ({"Sec-WebSocket-Protocol": "realtime, openai-insecure-api-key.tok"}, "tok"),
    ({"Sec-WebSocket-Protocol": "openai-insecure-api-key.tok,realtime,openai-beta.realtime-v1"},
     "tok"),
    ({"Sec-WebSocket-Protocol": "realtime, openai-insecure-api-key."}, None),
    ({"Sec-WebSocket-Protocol": "realtime"}, None),
    ({"Authorization": "Basic eDp5"}, None),
    ({}, None),
])
def test_the_presented_token(headers, token):
    from multidict import CIMultiDict
    assert presented_token(CIMultiDict(headers)) == token

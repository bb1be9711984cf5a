"""Issuer and KeySet: a provider's tokens against its real JWKS, served on loopback."""
from __future__ import annotations

import asyncio
import base64
import time
from contextlib import AsyncExitStack

import jwt
import orjson
import pytest

from openai_gateway.errors import InvalidToken
from openai_gateway.identity.issuers import Issuer, issuer_problems
from openai_gateway.identity.jwks import KeySet

from ..support.jwks_server import (  # noqa: F401
    Signer,
    assert_no_leak,
    http_fixture,
    jwks_url_fixture,
    logs_fixture,
    provider_fixture,
)


@pytest.fixture
async def make_issuer(provider, jwks_url, http):
    """make_issuer(**overrides) -> a running Issuer for the provider (stopped at the end)."""
    async with AsyncExitStack() as stack:

        async def make(**kw) -> Issuer:
            args = {"issuer": provider.issuer, "audience": provider.audience,
                    "jwks_url": jwks_url, "algorithms": ["RS256", "ES256"],
                    "session": lambda: http, **kw}
            return await stack.enter_async_context(Issuer(**args).running())

        yield make


@pytest.fixture
async def issuer(make_issuer):
    return await make_issuer()


async def verify_with_key(issuer: Issuer, token: str):
    head = token.split(".")[0]
    return await issuer.verify(token, orjson.loads(base64.urlsafe_b64decode(head + "==")))


async def verify(issuer: Issuer, token: str) -> dict:
    return (await verify_with_key(issuer, token))[0]


async def test_a_refetch_keeps_the_keys_still_published_and_lets_go_of_the_others(
        issuer, provider):
    _, rsa = await verify_with_key(issuer, provider.sign(provider.signers[0]))
    _, ec = await verify_with_key(issuer, provider.sign(provider.signers[1]))
    assert rsa.kid == "rsa-1" and rsa.held and ec.held
    provider.signers = [provider.signers[1], Signer.rsa("rsa-2", n=1)]
    assert await issuer.keys.fetch()
    assert not rsa.held and ec.held  # rsa-1 left the set; ec-1 is still the same key
    assert (await verify_with_key(issuer, provider.sign(provider.signers[0])))[1] is ec
    provider.signers.append(Signer.rsa("rsa-1"))  # published again: a new key, held
    assert await issuer.keys.fetch()
    _, again = await verify_with_key(issuer, provider.sign(provider.signers[-1]))
    assert again is not rsa and again.held and not rsa.held


@pytest.mark.parametrize("which", [0, 1], ids=["RS256", "ES256"])
async def test_valid_tokens_verify_with_rsa_and_ec_keys(issuer, provider, which):
    token = provider.sign(provider.signers[which], plan="pro")
    claims = await verify(issuer, token)
    assert claims["sub"] == "user-42@example.com"
    assert issuer.tier(claims) is None  # no tier_claim configured
    assert issuer.ready and provider.fetches == 1


def _hs_with_public_key(provider) -> str:
    """Algorithm confusion: HS256 with the RSA public key (PEM) as the HMAC secret.

    PyJWT itself refuses to use a PEM key as an HMAC secret, so the token is built by hand:
    an attacker is not bound by the library either.
    """
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT","kid":"rsa-1"}')
    import hashlib
    import hmac
    import json
    payload = jwt.utils.base64url_encode(json.dumps(provider.claims()).encode())
    signing_input = header + b"." + payload
    sig = hmac.new(provider.signers[0].public_pem(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + jwt.utils.base64url_encode(sig)).decode()


REFUSALS = {
    "expired": (lambda p: p.sign(exp=int(time.time()) - 3600), "expired"),
    "not yet valid": (lambda p: p.sign(nbf=int(time.time()) + 3600), "not yet valid"),
    "wrong issuer": (lambda p: p.sign(iss="https://other.example/"), "issuer"),
    "wrong audience": (lambda p: p.sign(aud="someone-else"), "audience"),
    "no audience": (lambda p: p.sign(aud=None), "'aud'"),
    "bad signature": (lambda p: p.sign(Signer.rsa("rsa-1", n=7)), "signature"),
    "algorithm confusion": (_hs_with_public_key, "algorithm (HS256) is not allowed"),
    "unknown key": (lambda p: p.sign(Signer.rsa("rsa-unknown", n=3)), "signing key (kid)"),
    "key of the wrong type": (
        lambda p: p.sign(Signer.ec("rsa-1", n=5)), "signing key (kid)"),
    "no expiry": (lambda p: p.sign(exp=None), "'exp'"),
    "no subject": (lambda p: p.sign(sub=None), "'sub'"),
    "malformed signature": (lambda p: p.sign()[:-4] + "!!!!", "malformed"),
    "PS256 not allowed": (lambda p: jwt.encode(p.claims(), p.signers[0].private,
                                               algorithm="PS256", headers={"kid": "rsa-1"}),
                          "algorithm (PS256) is not allowed"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_every_refusal_is_invalid_token_saying_why(issuer, provider, logs, case):
    make, reason = REFUSALS[case]
    token = make(provider)
    with pytest.raises(InvalidToken) as err:
        await verify(issuer, token)
    assert reason in err.value.message
    assert err.value.status == 401 and err.value.code == "invalid_token"
    assert_no_leak([token], err.value.message, logs.text)


async def test_pyjwt_refuses_a_pem_public_key_as_hmac_secret_too(provider):
    """The second line of defence behind the allowlist (a mixed allowlist is refused anyway)."""
    with pytest.raises(jwt.InvalidKeyError):
        jwt.encode({"a": 1}, provider.signers[0].public_pem(), algorithm="HS256")
    assert issuer_problems(issuer="x", jwks_url="https://x/jwks", algorithms=["RS256", "HS256"])


async def test_rotation_fetches_once_per_cooldown(make_issuer, provider):
    issuer = await make_issuer(jwks_cooldown=3600)
    assert provider.fetches == 1
    new = Signer.rsa("rsa-2", n=1)
    provider.signers.append(new)  # the provider rotates: a new kid appears
    assert (await verify(issuer, provider.sign(new)))["sub"]
    assert provider.fetches == 2
    # An attacker's random kids, at once and one after another: no further fetch.
    forged = [provider.sign(Signer.rsa(f"random-{i}", n=2)) for i in range(20)]
    results = await asyncio.gather(*(verify(issuer, t) for t in forged), return_exceptions=True)
    assert all(isinstance(r, InvalidToken) for r in results)
    assert provider.fetches == 2
    # The old key still verifies until the provider drops it.
    assert (await verify(issuer, provider.sign()))["sub"]


async def test_concurrent_unknown_kids_share_one_fetch(make_issuer, provider):
    issuer = await make_issuer(jwks_cooldown=0)
    new = Signer.rsa("rsa-2", n=1)
    provider.signers.append(new)
    tokens = [provider.sign(new) for _ in range(10)]
    await asyncio.gather(*(verify(issuer, t) for t in tokens))
    assert provider.fetches == 2  # the first fetch found the key; the others waited for it


async def test_jwks_down_keeps_cached_keys(make_issuer, provider, logs):
    issuer = await make_issuer(jwks_cooldown=0)
    provider.failing = 503
    new = Signer.rsa("rsa-2", n=1)
    with pytest.raises(InvalidToken, match="signing key"):
        await verify(issuer, provider.sign(new))  # triggers a fetch, which fails
    assert provider.fetches == 2
    assert issuer.ready
    assert (await verify(issuer, provider.sign()))["sub"]  # the held keys still serve
    assert "keeping 2 held key(s)" in logs.text


async def test_down_at_start_is_not_ready_then_recovers(make_issuer, provider):
    provider.failing = 503
    issuer = await make_issuer(jwks_cooldown=0)
    assert not issuer.ready
    with pytest.raises(InvalidToken, match="signing key"):
        await verify(issuer, provider.sign())
    provider.failing = None
    assert (await verify(issuer, provider.sign()))["sub"]
    assert issuer.ready


@pytest.mark.parametrize("body", [b"not json", b'{"keys": "x"}', b'{"keys": []}',
                                  b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}',
                                  b'{"keys": [{"kty": "RSA", "n": "AQAB", "use": "enc"}]}',
                                  b'{"keys": [{"kty": "RSA", "kid": "x", "n": "@@"}]}'])
async def test_unusable_key_sets_keep_the_held_keys(make_issuer, provider, logs, body):
    issuer = await make_issuer()
    provider.raw = body
    assert await issuer.keys.fetch() is False
    assert provider.fetches == 2 and issuer.ready
    assert (await verify(issuer, provider.sign()))["sub"]
    assert "keeping 2 held key(s)" in logs.text


async def test_oversized_key_set_is_refused(make_issuer, provider):
    issuer = await make_issuer()
    provider.published = [{"kty": "RSA", "kid": f"k{i}", "n": "A" * 600, "e": "AQAB"}
                          for i in range(1000)]
    assert await issuer.keys.fetch() is False
    assert (await verify(issuer, provider.sign()))["sub"]  # the earlier keys still serve


async def test_refresh_schedule_honours_max_age_within_bounds(make_issuer, provider):
    issuer = await make_issuer(jwks_cooldown=30)
    keys = issuer.keys
    assert keys.max_age is None and keys.next_refresh(True) == 600  # the default
    assert keys.next_refresh(False) == 30  # after a failure: again after the cooldown
    for header, expected in (("public, max-age=21600, must-revalidate", 21600),
                             ("max-age=5", 60), ("max-age=9999999", 86400)):
        provider.cache_control = header
        assert await keys.fetch() is True
        assert keys.next_refresh(True) == expected


async def test_background_refresh_picks_up_a_rotation(provider, jwks_url, http):
    keys = KeySet(url=jwks_url, session=lambda: http, cooldown=3600)
    keys.next_refresh = lambda ok: 0.01  # type: ignore[method-assign]
    async with keys.running():
        assert keys.key("rsa-2", "RS256") is None
        provider.signers.append(Signer.rsa("rsa-2", n=1))
        for _ in range(500):  # until the loop has fetched again (no token asked for it)
            if keys.key("rsa-2", "RS256") is not None:
                break
            await asyncio.sleep(0.01)
        assert keys.key("rsa-2", "RS256") is not None
    fetched = provider.fetches
    await asyncio.sleep(0.05)
    assert provider.fetches == fetched  # stopped with the app


async def test_jwks_file_and_a_token_without_kid(tmp_path, provider):
    path = tmp_path / "jwks.json"
    path.write_bytes(orjson.dumps({"keys": [provider.signers[0].jwk()]}))
    issuer = Issuer(issuer=provider.issuer, jwks_file=str(path), algorithms=["RS256"])
    assert issuer.ready
    token = jwt.encode(provider.claims(), provider.signers[0].private, algorithm="RS256")
    assert (await verify(issuer, token))["aud"] == provider.audience  # one key: no kid needed
    with pytest.raises(ValueError, match="jwks_file"):
        Issuer(issuer="x", jwks_file=str(tmp_path / "missing.json"))


async def test_hs256_secret_issuer_like_supabase(provider):
    secret = "super-secret-jwt-token-with-at-least-32-characters-long"
    issuer = Issuer(issuer=provider.issuer, audience="authenticated", secret=secret,
                    algorithms=["HS256"], tier_claim="app_metadata.plan")
    token = jwt.encode(provider.claims(aud="authenticated", app_metadata={"plan": "pro"}),
                       secret, algorithm="HS256")
    claims = await verify(issuer, token)
    assert issuer.tier(claims) == "pro"
    with pytest.raises(InvalidToken, match="algorithm"):
        await verify(issuer, provider.sign(aud="authenticated"))  # RS256 to an HS issuer
    forged = jwt.encode(provider.claims(aud="authenticated"), "x" * 40, algorithm="HS256")
    with pytest.raises(InvalidToken, match="signature"):
        await verify(issuer, forged)


@pytest.mark.parametrize("claim, claims, known, tier", [
    ("plan", {"plan": "pro"}, (), "pro"),
    ("https://example.com/plan", {"https://example.com/plan": "team"}, (), "team"),
    ("app_metadata.plan", {"app_metadata": {"plan": "free"}}, (), "free"),
    ("cognito:groups", {"cognito:groups": ["admins", "pro"]}, ("pro", "free"), "pro"),
    ("realm_access.roles", {"realm_access": {"roles": ["offline_access"]}}, ("pro",), None),
    ("plan", {"plan": 3}, (), None),
    ("plan", {"plan": "x" * 65}, (), None),
    ("plan", {}, (), None),
])
def test_tier_claim(claim, claims, known, tier):
    issuer = Issuer(issuer="https://x/", secret="s" * 32, algorithms=["HS256"], tier_claim=claim)
    assert issuer.tier(claims, known) == tier


@pytest.mark.parametrize("kw, problem", [
    ({"jwks_url": "http://login.example.com/jwks"}, "must use https"),
    ({"jwks_url": "https://x/jwks", "algorithms": ["none"]}, "not supported"),
    ({"jwks_url": "https://x/jwks", "algorithms": []}, "is empty"),
    ({"jwks_url": "https://x/jwks", "algorithms": ["RS256", "HS256"]}, "HS* needs secret_env"),
    ({"secret": "s" * 32, "algorithms": ["RS256"]}, "takes only HS"),
    ({"secret": "short", "algorithms": ["HS256"]}, "shorter than 32"),
    ({"secret": "s" * 32, "jwks_url": "https://x/jwks", "algorithms": ["HS256"]},
     "exactly one of"),
    ({}, "exactly one of"),
    ({"issuer": "", "jwks_url": "https://x/jwks"}, "issuer: is empty"),
])
def test_issuer_problems(kw, problem):
    problems = issuer_problems(**{"issuer": "https://x/", **kw})
    assert any(problem in p for p in problems), problems
    with pytest.raises(ValueError):
        Issuer(**{"issuer": "https://x/", **kw})


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/jwks", "http://[::1]:9/jwks",
                                 "http://localhost/jwks", "https://login.example.com/jwks"])
def test_loopback_http_and_any_https_are_fine(url):
    assert issuer_problems(issuer="https://x/", jwks_url=url) == []


def test_a_url_key_set_needs_the_session():
    with pytest.raises(ValueError, match="session"):
        KeySet(url="https://x/jwks")

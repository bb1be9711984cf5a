"""BearerResolver: an Authorization header -> a verified Verified, None (not a JWT), or 401."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from contextlib import AsyncExitStack

import jwt
import orjson
import pytest

from openai_gateway.errors import InvalidToken
from openai_gateway.identity.bearer import (
    MAX_TOKEN_BYTES,
    BearerResolver,
    caller_id,
    jwt_header,
)
from openai_gateway.identity.issuers import Issuer
from openai_gateway.identity.minted import CLI, DEMO, ISSUER, SESSIONS, TokenMinter, key_minter

from ..support.jwks_server import (  # noqa: F401
    Signer,
    assert_no_leak,
    http_fixture,
    jwks_url_fixture,
    logs_fixture,
    provider_fixture,
)

SECRET = "gw-token-SECRET-a1b2c3d4e5f6a7b8c9d0-do-not-leak"


@pytest.fixture
async def make_resolver(provider, jwks_url, http):
    async with AsyncExitStack() as stack:

        async def make(**kw) -> BearerResolver:
            issuer = Issuer(issuer=provider.issuer, audience=provider.audience,
                            jwks_url=jwks_url, algorithms=["RS256", "ES256"], tier_claim="plan",
                            jwks_cooldown=kw.pop("jwks_cooldown", 30), session=lambda: http)
            resolver = BearerResolver(issuers=[issuer], minter=TokenMinter(secret=SECRET),
                                      known_tiers=("free", "pro"), **kw)
            return await stack.enter_async_context(resolver.running())

        yield make


@pytest.fixture
async def resolver(make_resolver):
    return await make_resolver()


def bearer(token: str) -> str:
    return "Bearer " + token


async def test_provider_user_is_identified_by_hashed_issuer_and_subject(resolver, provider):
    caller = await resolver.resolve(bearer(provider.sign(plan="pro")))
    digest = hashlib.sha256(f"{provider.issuer}|user-42@example.com".encode()).hexdigest()
    assert caller.kind == "user" and caller.id == "user:" + digest[:24]
    assert caller.tier == "pro" and caller.label == provider.issuer
    assert "example.com" not in caller.id
    # Another subject of the same issuer is another caller; the scheme is case-insensitive.
    other = await resolver.resolve("bearer " + provider.sign(sub="someone-else"))
    assert other.id != caller.id and other.tier is None


async def test_minted_tokens_and_sessions_resolve_too(resolver):
    minter = TokenMinter(secret=SECRET)  # another process with the same secret
    user = await resolver.resolve(bearer(minter.mint("u-1", "free", 60,
                                                     minted_by=key_minter("backend"))[0]))
    assert (user.kind, user.tier, user.label) == ("user", "free", "gateway")
    assert user.id.startswith("user:") and "u-1" not in user.id
    session = await resolver.resolve(bearer(minter.mint("session:abc", "free", 60,
                                                        kind="session", minted_by=SESSIONS)[0]))
    assert session.kind == "session" and session.id.startswith("session:")


async def test_a_minted_user_is_a_user_of_its_minter(resolver):
    minter = TokenMinter(secret=SECRET)
    ids = {}
    for by in (key_minter("a"), key_minter("b"), key_minter("a|42"), CLI, DEMO):
        ids[by] = (await resolver.resolve(bearer(minter.mint("42", minted_by=by)[0]))).id
    # A token from before the minted_by claim: a namespace of its own.
    now = int(time.time())
    legacy = jwt.encode({"iss": ISSUER, "aud": ISSUER, "sub": "42", "kind": "user",
                         "iat": now, "exp": now + 60}, SECRET, algorithm="HS256")
    ids["legacy"] = (await resolver.resolve(bearer(legacy))).id
    assert len(set(ids.values())) == len(ids)
    digest = hashlib.sha256(b'["openai-gateway","key:a","42"]').hexdigest()[:24]
    assert ids["key:a"] == "user:" + digest
    assert ids["legacy"] == "user:" + hashlib.sha256(b"openai-gateway|42").hexdigest()[:24]
    # No minter and user spell another pair: "a|42" minting "x" is not "a" minting "42|x".
    assert caller_id("user", ISSUER, "x", "key:a|42") != caller_id("user", ISSUER, "42|x",
                                                                    "key:a")
    # The same minter and user, minted again, is the same user.
    again = await resolver.resolve(bearer(minter.mint("42", minted_by=key_minter("a"))[0]))
    assert again.id == ids["key:a"]


@pytest.mark.parametrize("value", [
    None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer sk-dummy",
    "Bearer not-a-key", "Bearer a.b.c", "Bearer abc.def", "Bearer x.y.z.w",
    "Bearer " + base64.urlsafe_b64encode(b"[1,2]").decode().rstrip("=") + ".e30.sig",
    "Bearer " + "a" * 20000,
])
async def test_bearers_that_are_not_jwts_are_none(resolver, value):
    assert await resolver.resolve(value) is None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


REFUSED = {
    "alg none": (lambda p: _b64(b'{"alg":"none","typ":"JWT"}') + "." + _b64(b'{"sub":"x"}')
                 + ".", "alg none"),
    "alg None, the issuer's claims": (
        lambda p: _b64(b'{"alg":"None"}') + "." + _b64(orjson.dumps(p.claims())) + ".",
        "alg none"),
    "unknown issuer": (lambda p: p.sign(iss="https://evil.example/"), "not one this gateway"),
    "no issuer": (lambda p: p.sign(iss=None), "no issuer"),
    "malformed payload": (lambda p: p.sign().split(".")[0] + ".bm90IGpzb24.c2ln", "malformed"),
    "expired": (lambda p: p.sign(exp=int(time.time()) - 3600), "expired"),
    "unknown key": (lambda p: p.sign(Signer.rsa("rsa-9", n=9)), "signing key"),
    "oversized": (lambda p: p.sign(padding="x" * MAX_TOKEN_BYTES), "larger than 8192"),
    "minted with another secret": (
        lambda p: TokenMinter(secret="another-secret-of-at-least-32-bytes!!").mint(
            "u", minted_by="cli")[0],
        "signature"),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_jwts_that_fail_are_401_never_anonymous(resolver, provider, logs, case):
    make, reason = REFUSED[case]
    token = make(provider)
    assert jwt_header(token) is not None or len(token) > MAX_TOKEN_BYTES
    with pytest.raises(InvalidToken) as err:
        await resolver.resolve(bearer(token))
    assert reason in err.value.message
    assert err.value.response().status == 401
    assert err.value.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert_no_leak([token], err.value.message, logs.text)


async def test_a_verified_token_is_remembered_until_its_expiry(make_resolver, provider):
    now = [time.time()]
    resolver = await make_resolver(clock=lambda: now[0])
    token = provider.sign(exp=int(now[0]) + 120)
    first = await resolver.resolve(bearer(token))
    fetches = provider.fetches
    assert await resolver.resolve(bearer(token)) is first  # remembered: no verification
    # A refetch that still finds the key (nothing rotated) keeps what was verified with it.
    await resolver.issuers[provider.issuer].keys.fetch()
    assert await resolver.resolve(bearer(token)) is first
    assert provider.fetches == fetches + 1
    # Past its exp the cache forgets it (PyJWT, on the real clock, would verify it again).
    now[0] += 121
    assert resolver.cache.get(hashlib.sha256(token.encode()).digest()) is None
    assert len(resolver.cache) == 0


@pytest.mark.parametrize("refetch", ["scheduled", "unknown kid"])
async def test_a_remembered_token_ends_with_its_signing_key(make_resolver, provider, refetch):
    resolver = await make_resolver(jwks_cooldown=0.01)
    rsa, ec = provider.signers
    token, kept = provider.sign(rsa, exp=int(time.time()) + 3600), provider.sign(ec)
    await resolver.resolve(bearer(token))
    await resolver.resolve(bearer(kept))
    # The provider retires rsa-1 and publishes rsa-2 in its place.
    provider.signers = [Signer.rsa("rsa-2", n=1), ec]
    keys = resolver.issuers[provider.issuer].keys
    if refetch == "scheduled":
        assert await keys.fetch()
    else:
        await asyncio.sleep(0.02)  # past the cooldown
        await resolver.resolve(bearer(provider.sign(provider.signers[0], sub="fresh")))
    with pytest.raises(InvalidToken, match="signing key"):
        await resolver.resolve(bearer(token))
    assert (await resolver.resolve(bearer(kept))).kind == "user"
    assert len(resolver.cache) == (1 if refetch == "scheduled" else 2)  # kept (and fresh)


async def test_a_failed_refetch_keeps_every_remembered_token(make_resolver, provider):
    resolver = await make_resolver()
    token = provider.sign()
    first = await resolver.resolve(bearer(token))
    provider.failing = 503
    assert not await resolver.issuers[provider.issuer].keys.fetch()
    assert await resolver.resolve(bearer(token)) is first


async def test_the_cache_is_bounded(make_resolver, provider):
    resolver = await make_resolver(cache_size=3)
    tokens = [provider.sign(sub=f"user-{i}") for i in range(5)]
    for t in tokens:
        await resolver.resolve(bearer(t))
    assert len(resolver.cache) == 3
    for t in tokens:  # evicted ones verify again
        assert (await resolver.resolve(bearer(t))).kind == "user"


async def test_off_when_nothing_is_configured(provider):
    resolver = BearerResolver()
    assert not resolver.enabled
    assert await resolver.resolve(bearer(provider.sign())) is None


async def test_not_ready_names_issuers_without_keys(make_resolver, provider):
    provider.failing = 503
    resolver = await make_resolver()
    assert resolver.not_ready() == [provider.issuer]


def test_duplicate_or_reserved_issuers_are_refused():
    one = Issuer(issuer="https://a/", secret="s" * 32, algorithms=["HS256"])
    with pytest.raises(ValueError, match="same issuer"):
        BearerResolver(issuers=[one, one])
    with pytest.raises(ValueError, match="own issuer"):
        BearerResolver(issuers=[Issuer(issuer="openai-gateway", secret="s" * 32,
                                       algorithms=["HS256"])])

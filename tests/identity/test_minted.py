"""TokenMinter: the gateway's own tokens, stateless across processes, with secret rotation."""
from __future__ import annotations

import time

import jwt
import pytest

from openai_gateway.errors import InvalidRequest, InvalidToken
from openai_gateway.identity.minted import (
    ISSUER,
    MINTED_BY,
    MintingNotAllowed,
    TokenMinter,
    choose_tier,
    key_minter,
    new_secret,
)

SECRET = "gw-token-SECRET-a1b2c3d4e5f6a7b8c9d0-do-not-leak"
NEXT_SECRET = "gw-token-SECRET-NEXT-0f1e2d3c4b5a69788796-do-not-leak"
BY = key_minter("backend")


def test_mint_then_verify_carries_user_tier_and_expiry():
    minter = TokenMinter(secret=SECRET, max_ttl=3600)
    before = int(time.time())
    token, expires_at = minter.mint("user-7", "pro", 600, minted_by=BY)
    assert before + 600 <= expires_at <= int(time.time()) + 600
    claims = minter.verify(token)
    assert claims["sub"] == "user-7" and claims["tier"] == "pro" and claims["kind"] == "user"
    assert claims[MINTED_BY] == "key:backend"  # the user's namespace
    assert claims["iss"] == claims["aud"] == ISSUER and claims["exp"] == expires_at
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_stateless_any_instance_with_the_secret_accepts():
    """Two processes (two minters, nothing shared but the secret) accept each other's tokens."""
    a, b = TokenMinter(secret=SECRET), TokenMinter(secret=SECRET)
    token, _ = a.mint("ana@example.com", None, 60, minted_by=BY)
    assert b.verify(token)["sub"] == "ana@example.com"
    with pytest.raises(InvalidToken, match="signature"):
        TokenMinter(secret=NEXT_SECRET).verify(token)


def test_previous_secret_verifies_during_rotation_but_never_signs():
    old = TokenMinter(secret=SECRET)
    rotated = TokenMinter(secret=NEXT_SECRET, previous_secret=SECRET)
    old_token, _ = old.mint("u1", None, 60, minted_by=BY)
    assert rotated.verify(old_token)["sub"] == "u1"
    new_token, _ = rotated.mint("u2", None, 60, minted_by=BY)
    assert jwt.decode(new_token, NEXT_SECRET, algorithms=["HS256"], audience=ISSUER)["sub"] == "u2"
    with pytest.raises(InvalidToken, match="signature"):
        old.verify(new_token)  # the old process does not know the new secret
    finished = TokenMinter(secret=NEXT_SECRET)  # rotation over: previous_secret removed
    with pytest.raises(InvalidToken, match="signature"):
        finished.verify(old_token)


def test_expired_and_future_tokens_are_refused():
    now = [1_600_000_000.0]
    minter = TokenMinter(secret=SECRET, leeway=5, clock=lambda: now[0])
    token, expires_at = minter.mint("u", None, 60, minted_by=BY)
    # PyJWT checks exp against the real clock: mint in the past, then in the future.
    with pytest.raises(InvalidToken, match="expired"):
        minter.verify(token)
    now[0] = time.time() + 3600
    future, _ = minter.mint("u", None, 60, minted_by=BY)
    with pytest.raises(InvalidToken, match="not yet valid"):
        minter.verify(future)


@pytest.mark.parametrize("claims, reason", [
    ({"kind": "admin"}, "kind"),
    ({"kind": None}, "kind"),
    ({"tier": "bad tier!"}, "tier"),
    ({"tier": ["pro"]}, "tier"),
    ({"aud": "someone-else"}, "audience"),
    ({"iat": None}, "'iat'"),
    ({"minted_by": 5}, "minter"),
    ({"minted_by": ""}, "minter"),
    ({"minted_by": "x" * 201}, "minter"),
])
def test_tampered_claims_signed_with_the_secret_are_refused(claims, reason):
    now = int(time.time())
    body = {"iss": ISSUER, "aud": ISSUER, "sub": "u", "kind": "user", "iat": now,
            "exp": now + 60, **claims}
    token = jwt.encode({k: v for k, v in body.items() if v is not None}, SECRET, "HS256")
    with pytest.raises(InvalidToken, match=reason):
        TokenMinter(secret=SECRET).verify(token)


@pytest.mark.parametrize("user, tier, ttl, param", [
    ("", None, 60, "user"),
    ("x" * 129, None, 60, "user"),
    ("ana smith", None, 60, "user"),
    ("ana\nsmith", None, 60, "user"),
    (42, None, 60, "user"),
    (None, None, 60, "user"),
    ("u", "", 60, "tier"),
    ("u", "pro plan", 60, "tier"),
    ("u", 3, 60, "tier"),
    ("u", "enterprise", 60, "tier"),  # not among the configured tiers
    ("u", None, 0, "ttl"),
    ("u", None, 3601, "ttl"),
    ("u", None, "60", "ttl"),
    ("u", None, 1.5, "ttl"),
    ("u", None, True, "ttl"),
])
def test_bad_requests_name_their_param(user, tier, ttl, param):
    minter = TokenMinter(secret=SECRET, max_ttl=3600)
    with pytest.raises(InvalidRequest) as err:
        minter.mint(user, tier, ttl, minted_by=BY, tiers=("free", "pro"))
    assert err.value.param == param and err.value.status == 400


@pytest.mark.parametrize("user", ["42", "auth0|5f1c", "ana@example.com", "a.b_c+d-e:f",
                                  "x" * 128])
def test_real_user_ids_are_accepted(user):
    minter = TokenMinter(secret=SECRET)
    token, _ = minter.mint(user, minted_by=BY)  # default ttl
    claims = minter.verify(token)
    assert claims["sub"] == user and claims["exp"] - claims["iat"] == 900


def test_default_ttl_is_capped_by_max_ttl():
    token, _ = TokenMinter(secret=SECRET, max_ttl=120).mint("u", minted_by=BY)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience=ISSUER)
    assert claims["exp"] - claims["iat"] == 120


@pytest.mark.parametrize("kw", [{"secret": "short"}, {"secret": ""},
                                {"secret": SECRET, "previous_secret": "short"},
                                {"secret": SECRET, "max_ttl": 0}])
def test_weak_settings_are_refused_when_built(kw):
    with pytest.raises(ValueError):
        TokenMinter(**kw)


def test_new_secret_is_long_and_random():
    a, b = new_secret(), new_secret()
    assert a != b and len(a) >= 48
    TokenMinter(secret=a)


@pytest.mark.parametrize("asked, own, allowed, got", [
    ("pro", None, None, "pro"),           # no restriction: what was asked, or nothing
    (None, "free", None, None),
    ("free", "free", ("free",), "free"),  # a key with a tier: that tier by default
    (None, "free", ("free",), "free"),
    (None, "free", ("free", "pro"), "free"),
    ("pro", "free", ("free", "pro"), "pro"),
    (["pro"], "free", ("free",), ["pro"]),  # not a tier name: check_request refuses it
])
def test_choose_tier(asked, own, allowed, got):
    assert choose_tier(asked, own=own, allowed=allowed) == got


@pytest.mark.parametrize("asked, own, allowed, error, says", [
    ("pro", "free", ("free",), InvalidRequest, "may not mint tokens of tier 'pro'"),
    (None, "free", ("pro",), InvalidRequest, "Name the token's 'tier'"),
    (None, None, ("free", "pro"), InvalidRequest, "mints only free, pro"),
    ("free", None, (), MintingNotAllowed, "may not mint tokens"),
    (None, None, (), MintingNotAllowed, "may not mint tokens"),
])
def test_choose_tier_refusals(asked, own, allowed, error, says):
    with pytest.raises(error) as err:
        choose_tier(asked, own=own, allowed=allowed)
    assert says in err.value.message
    if error is InvalidRequest:
        assert (err.value.status, err.value.param, err.value.code) == (400, "tier",
                                                                       "tier_not_allowed")
    else:
        assert (err.value.status, err.value.code) == (403, "minting_not_allowed")

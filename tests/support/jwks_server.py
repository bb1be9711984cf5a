"""A fake login provider (signing keys + a JWKS endpoint) and a fake captcha siteverify.

`KeyProvider` signs tokens with RSA and EC keys (PyJWT + cryptography, as a real provider
would) and serves the public half at GET /jwks.json, counting fetches; it can rotate keys
or go down. `Siteverify` answers POST /siteverify the way Turnstile, hCaptcha and reCAPTCHA
do, or fails in the ways a real one can (refusal, HTTP 500, slowness, nonsense).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "http://127.0.0.1/login/"  # replaced by the served URL in fixtures
AUDIENCE = "my-gateway"
CAPTCHA_SECRET = "0x4AAAA-captcha-SECRET-3e1d0c-do-not-leak"


@functools.cache
def _rsa(n: int):
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def _ec(n: int):
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class Signer:
    """One signing key: its private half signs, its public JWK is published."""

    kid: str
    alg: str
    private: Any

    @classmethod
    def rsa(cls, kid: str, n: int = 0) -> Signer:
        return cls(kid, "RS256", _rsa(n))

    @classmethod
    def ec(cls, kid: str, n: int = 0) -> Signer:
        return cls(kid, "ES256", _ec(n))

    def jwk(self) -> dict:
        algo = RSAAlgorithm if self.alg.startswith("RS") else ECAlgorithm
        doc = algo.to_jwk(self.private.public_key(), as_dict=True)
        return {**doc, "kid": self.kid, "use": "sig"}

    def public_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class KeyProvider:
    issuer: str = ISSUER
    audience: str = AUDIENCE
    signers: list[Signer] = field(default_factory=lambda: [Signer.rsa("rsa-1"),
                                                            Signer.ec("ec-1")])
    #: None: publish every signer's key; else exactly these JWKs.
    published: list[dict] | None = None
    fetches: int = 0
    #: An HTTP status to answer instead of the key set (503: the provider is down).
    failing: int | None = None
    cache_control: str | None = None
    #: Served as the key set's body when set (a broken provider).
    raw: bytes | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/jwks.json", self.jwks)
        return app

    async def jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.failing:
            return web.Response(status=self.failing, text="provider down")
        keys = self.published if self.published is not None else [s.jwk() for s in self.signers]
        headers = {"Cache-Control": self.cache_control} if self.cache_control else None
        body = self.raw if self.raw is not None else orjson.dumps({"keys": keys})
        return web.Response(body=body,
                            content_type="application/json", headers=headers)

    def claims(self, **over) -> dict:
        now = int(time.time())
        base = {"iss": self.issuer, "aud": self.audience, "sub": "user-42@example.com",
                "iat": now, "exp": now + 600}
        base.update(over)
        return {k: v for k, v in base.items() if v is not None}

    def sign(self, signer: Signer | None = None, headers: dict | None = None, **claims) -> str:
        signer = signer or self.signers[0]
        return jwt.encode(self.claims(**claims), signer.private, algorithm=signer.alg,
                          headers={"kid": signer.kid, **(headers or {})})


@dataclass
class Siteverify:
    """mode: "ok", "fail", "error" (HTTP 500), "slow", "garbage", "bad-secret"."""

    mode: str = "ok"
    hostname: str | None = "app.example.com"
    delay: float = 5.0
    seen: list[dict] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/siteverify", self.verify)
        return app

    async def verify(self, request: web.Request) -> web.Response:
        self.seen.append(dict(await request.post()))
        if self.mode == "slow":
            await asyncio.sleep(self.delay)
        if self.mode == "error":
            return web.Response(status=500, text="internal error")
        if self.mode == "garbage":
            return web.Response(text="<html>maintenance</html>", content_type="text/html")
        form = self.seen[-1]
        if self.mode == "bad-secret" or form.get("secret") != CAPTCHA_SECRET:
            return web.json_response({"success": False, "error-codes": ["invalid-input-secret"]})
        if self.mode == "fail":
            return web.json_response({"success": False,
                                      "error-codes": ["timeout-or-duplicate"]})
        return web.json_response({"success": True, "hostname": self.hostname,
                                  "challenge_ts": "2026-12-01T00:00:00Z"})


# --- fixtures: a test module imports the ones it uses (their names end in _fixture) --------


@pytest.fixture(name="provider")
def provider_fixture() -> KeyProvider:
    return KeyProvider()


@pytest.fixture(name="jwks_url")
async def jwks_url_fixture(provider, aiohttp_server) -> str:
    """The provider served on loopback; its issuer becomes the served /login/ URL."""
    server = await aiohttp_server(provider.app())
    provider.issuer = str(server.make_url("/login/"))
    return str(server.make_url("/jwks.json"))


@pytest.fixture(name="http")
async def http_fixture():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(name="siteverify")
def siteverify_fixture() -> Siteverify:
    return Siteverify()


@pytest.fixture(name="siteverify_url")
async def siteverify_url_fixture(siteverify, aiohttp_server) -> str:
    server = await aiohttp_server(siteverify.app())
    return str(server.make_url("/siteverify"))


@pytest.fixture(name="logs")
def logs_fixture(caplog):
    """Every log record at any level, as text, for the leak scan."""
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_no_leak(secrets: list[str], *texts: str) -> None:
    """No secret, nor any token segment of one, in any of the texts."""
    for secret in secrets:
        parts = [secret] + [p for p in secret.split(".") if len(p) >= 16]
        for text in texts:
            for part in parts:
                assert part not in text, f"{part[:12]}... leaked: {text[:200]}"

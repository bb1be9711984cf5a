"""The gateway's own realtime client secrets: what `POST /v1/realtime/client_secrets` answers
with, instead of OpenAI's ephemeral key.

OpenAI's `ek_` key "can be used to create multiple sessions until it expires" and the client
may override the session it was made for: in a browser it would spend on the operator's
account with no limit the gateway can see. The gateway's secret is a token it signs itself
(`TokenMinter.sign`, HS256 with `auth.tokens.secret_env`'s secret) that binds:
- `sub`: the caller id whose limits and budgets the sessions charge ("key:NAME", "user:<hash>",
  "session:<hash>", "ip:..."), `tier` and `models` (the caller's allowlist; absent: the
  gateway's);
- `ses`: the bounded session configuration (policy.realtime_session), JSON compressed with
  zlib and base64url-encoded, so the secret alone says what its sessions may be and no store
  is needed: every process and VM holding the secret verifies it;
- `aud` = `openai-gateway/realtime`, `kind` = "realtime", `jti`, and `exp` at most
  `realtime.max_ttl` away.
Every other route refuses it (`TokenMinter.verify` checks the audience and says why), and
`verify` here refuses every other token: it is accepted only as the Bearer (or the browser
subprotocol `openai-insecure-api-key.<secret>`) of `POST /v1/realtime/calls` and
`GET /v1/realtime`.

Without `auth.tokens.secret_env` the secrets are signed with a random key drawn when the
gateway starts (`per_process`): they end at a restart and only this process verifies them,
which is enough for one process; several (workers, VMs) need the secret (`--check` warns).
"""
from __future__ import annotations

import base64
import binascii
import secrets
import time
import zlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import InvalidRequest, InvalidToken
from .bearer import jwt_header
from .minted import ISSUER, REALTIME_AUDIENCE, TokenMinter, new_secret

KIND = "realtime"
#: The longest secret issued: it travels in an Authorization header or, from a browser, in
#: `Sec-WebSocket-Protocol` next to "realtime, openai-insecure-api-key.", and servers and
#: proxies read header lines of 8 KB (aiohttp's and nginx's default).
MAX_SECRET_BYTES = 7168
#: The subprotocol prefix a browser puts its key in (OpenAI's own browser client does).
KEY_PROTOCOL = "openai-insecure-api-key."


@dataclass(frozen=True, slots=True)
class RealtimeGrant:
    """What a verified realtime secret grants.

    caller: the caller id its sessions are charged to; tier: the caller's tier (None: none);
    models: the caller's model allowlist when minted (None: the gateway's); session: the
    bounded session configuration; expires_at: Unix seconds; id: the secret's `jti`.
    """

    caller: str
    tier: str | None
    models: frozenset[str] | None
    session: dict
    expires_at: int
    id: str


class RealtimeSecrets:
    """Issues and verifies realtime client secrets. Built once from `[auth.tokens]` (the
    secrets) and `[realtime]` (max_ttl)."""

    def __init__(self, *, secret: str = "", previous_secret: str = "", max_ttl: int = 600,
                 clock: Callable[[], float] = time.time):
        #: True when no secret is configured: a random key of this process signs.
        self.per_process = not secret
        self.max_ttl = max_ttl
        #: The signer. Without a configured secret it is this process's own: give it to the
        #: BearerResolver all the same, so that other routes refuse a realtime secret (saying
        #: why) instead of serving it as an anonymous request; no other token carries its key.
        self.minter = TokenMinter(secret=secret or new_secret(),
                                  previous_secret=previous_secret if secret else "",
                                  max_ttl=max_ttl, clock=clock)

    def issue(self, *, caller: str, tier: str | None, models: Collection[str] | None,
              session: Mapping[str, Any], ttl: int) -> tuple[str, int]:
        """(secret, expires_at) for a bounded session; ttl is capped to max_ttl.

        InvalidRequest (400, param `session.instructions`) when the secret would be longer than
        MAX_SECRET_BYTES: its instructions and tools are too long to travel in a header.
        """
        claims: dict[str, Any] = {"aud": REALTIME_AUDIENCE, "kind": KIND, "sub": caller,
                                  "jti": secrets.token_urlsafe(12), "ses": _pack(session)}
        if tier is not None:
            claims["tier"] = tier
        if models is not None:
            claims["models"] = sorted(models)
        token, expires_at = self.minter.sign(claims, max(1, min(ttl, self.max_ttl)))
        if len(token) > MAX_SECRET_BYTES:
            raise InvalidRequest(
                f"The session configuration is too large for a client secret ({len(token)} "
                f"bytes once signed, at most {MAX_SECRET_BYTES}): shorten its instructions or "
                "tools.", param="session.instructions", code="session_too_large")
        return token, expires_at

    def verify(self, token: str) -> RealtimeGrant:
        """The grant of a realtime secret this gateway issued; InvalidToken (401) otherwise,
        a general API token included."""
        if len(token) > MAX_SECRET_BYTES:
            raise InvalidToken("The token is not a realtime client secret of this gateway.")
        claims = self.minter.decode(token, REALTIME_AUDIENCE)
        if claims.get("kind") != KIND:
            raise InvalidToken("The token is not a realtime client secret of this gateway.")
        caller, tier, models = claims.get("sub"), claims.get("tier"), claims.get("models")
        session = _unpack(claims.get("ses"))
        if not (isinstance(caller, str) and caller and (tier is None or isinstance(tier, str))
                and (models is None or (isinstance(models, list)
                                        and all(isinstance(m, str) for m in models)))
                and isinstance(session, dict) and isinstance(claims.get("jti"), str)):
            raise InvalidToken("The realtime client secret is malformed.")
        return RealtimeGrant(caller, tier, None if models is None else frozenset(models),
                             session, int(claims["exp"]), claims["jti"])


def is_realtime_secret(token: str) -> bool:
    """Does `token` claim to be a realtime secret of this gateway (unverified: only to choose
    the verifier; `RealtimeSecrets.verify` decides)?"""
    if len(token) > MAX_SECRET_BYTES or jwt_header(token) is None:
        return False
    payload = token.split(".")[1]
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return False
    return (isinstance(claims, dict) and claims.get("iss") == ISSUER
            and claims.get("aud") == REALTIME_AUDIENCE)


def presented_token(headers: Mapping[str, str]) -> str | None:
    """The credential a realtime request presents: the `Authorization` bearer, else (a
    browser's WebSocket, which cannot set headers) the `openai-insecure-api-key.` subprotocol.
    The subprotocol is never echoed: the handshake selects `realtime`."""
    authorization = headers.get("Authorization", "")
    if authorization[:7].lower() == "bearer " and authorization[7:].strip():
        return authorization[7:].strip()
    for protocol in headers.get("Sec-WebSocket-Protocol", "").split(","):
        protocol = protocol.strip()
        if protocol.startswith(KEY_PROTOCOL) and len(protocol) > len(KEY_PROTOCOL):
            return protocol[len(KEY_PROTOCOL):]
    return None


def _pack(session: Mapping[str, Any]) -> str:
    raw = zlib.compress(orjson.dumps(session, option=orjson.OPT_SORT_KEYS), 9)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unpack(text: object) -> object:
    if not isinstance(text, str):
        return None
    try:
        # The signature was checked: this is the gateway's own writing, bounded in size.
        raw = zlib.decompress(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return orjson.loads(raw)
    except (ValueError, binascii.Error, zlib.error):
        return None

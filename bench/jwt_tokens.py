"""Users with RS256 tokens for the gateway-on-jwt configuration.

One RSA key is generated per bench run; its public half goes to a JWKS file that the gateway
reads (`[[auth.issuers]] jwks_file`), and tokens signed with it go to files that post.lua sends
in turn, one a request. Two sets:

- `repeat`: REPEAT_USERS users, one token each, sent over and over as an app's users do. The
  gateway verifies each once and then finds it in its verified-token cache. Enough users that
  none reaches the shipped `60/minute` per-user limit during a json phase (about 60,000
  requests within a minute: 15 per user).
- `fresh`: more tokens than the gateway's verified-token cache holds (10,000, oldest out
  first), sent in a cycle, so every request pays a full signature check: the worst case.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "https://login.bench.invalid/"
AUDIENCE = "bench-gateway"
KID = "bench-1"
REPEAT_USERS = 4096
FRESH_TOKENS = 10_500  # > auth.caller.DEFAULT_CACHE_SIZE: a cycle never finds its token cached


class Users:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = tmp / "jwks.json"
        self.jwks.write_text(json.dumps({"keys": [jwk | {"kid": KID, "alg": "RS256",
                                                          "use": "sig"}]}))
        self._files: dict[str, Path] = {}

    def issuer_toml(self) -> str:
        return f"""
[[auth.issuers]]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_file = "{self.jwks}"
algorithms = ["RS256"]
"""

    def sign(self, sub: str) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 3 * 3600}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": KID})

    def tokens(self, which: str) -> Path:
        """The token file for `which` ("repeat" or "fresh"), signed on first use."""
        if which not in self._files:
            n = REPEAT_USERS if which == "repeat" else FRESH_TOKENS
            path = self.tmp / f"tokens-{which}.txt"
            path.write_text("\n".join(self.sign(f"{which}-user-{i}") for i in range(n)) + "\n")
            self._files[which] = path
        return self._files[which]

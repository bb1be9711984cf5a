"""What the settings tests share: a valid environment, the problem lines the loader prints, and
documents naming an issuer or a secret."""
from __future__ import annotations

import types

import pytest

from openai_gateway.config.limits import LIMIT_EXPECTED
from openai_gateway.config.settings import ConfigError, parse

from ..conftest import KEY

ENV = {"OPENAI_API_KEY": KEY}
GOOD_HASH = "ab" * 32
ORIGIN_HINT = ('expected "*" or an origin like "https://app.example.com" '
               "(scheme and host, no path)")
MISSING_KEY = ("upstream.api_key_env: environment variable OPENAI_API_KEY is not set (nor a "
               "systemd credential of that name); expected the upstream key")
LIMIT_HINT = ('expected a limit like "60/minute", "10 per hour" or "100/5 minutes" (an amount '
              "of at least 1 per second, minute, hour, day, month or year)")
assert LIMIT_HINT == f"expected {LIMIT_EXPECTED}"
MEMCACHED = '"memcached://host:port[,host:port...]" with numeric ports'
#: A token signing secret long enough for HS256 (RFC 7518 section 3.2: 32 bytes).
SECRET = "t" * 32
#: A value for every variable a secret can be named by in the tests' documents.
SECRET_ENV = {"ISS": "i" * 32, "TOK": SECRET, "OLD": "o" * 40, "CAPTCHA": "0x-captcha",
              "REDIS_PW": "redis-pw", "HASH": "hash-key"}


def problems(doc: dict, environ=ENV) -> list[str]:
    """The lines parse(doc) refuses it with (it must refuse it)."""
    with pytest.raises(ConfigError) as info:
        parse(doc, environ=environ)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def get(obj, dotted: str):
    """The setting at a dotted key ("auth.tokens.max_ttl") of parsed settings."""
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, types.MappingProxyType) else getattr(obj, part)
    return obj


def issuer(**fields) -> dict:
    """A document with one [[auth.issuers]] of the given fields."""
    return {"auth": {"issuers": [{"issuer": "https://login.example.com/", **fields}]}}

"""The [realtime] section: defaults, bounds, and the remark about the signing key."""
from __future__ import annotations

import pytest

from openai_gateway.config.realtime import RealtimeSettings
from openai_gateway.config.settings import ConfigError, parse

ENV = {"OPENAI_API_KEY": "sk-test", "TOK": "s" * 32}


def test_the_contract_defaults():
    s = parse({}, environ=ENV)
    assert s.realtime == RealtimeSettings(max_ttl=600, max_session_seconds=1800,
                                          max_sessions=2, max_frame_bytes=1_048_576,
                                          max_events_per_second=100)
    assert s.redacted()["realtime"]["max_sessions"] == 2


def test_keys_from_the_file():
    s = parse({"realtime": {"max_ttl": 60, "max_session_seconds": 300, "max_sessions": 1,
                            "max_frame_bytes": 65536, "max_events_per_second": 20}},
              environ=ENV)
    assert s.realtime == RealtimeSettings(60, 300, 1, 65536, 20)


@pytest.mark.parametrize("key,value,line", [
    ("max_ttl", 5, "realtime.max_ttl: got 5, expected 10-7200 seconds (OpenAI's range for a "
                   "client secret)"),
    ("max_ttl", 7201, "realtime.max_ttl: got 7201, expected 10-7200 seconds (OpenAI's range "
                      "for a client secret)"),
    ("max_session_seconds", 0, "realtime.max_session_seconds: got 0, expected > 0"),
    ("max_sessions", -1, "realtime.max_sessions: got -1, expected > 0"),
    ("max_frame_bytes", 0, "realtime.max_frame_bytes: got 0, expected > 0"),
    ("max_events_per_second", "10", "realtime.max_events_per_second: got '10', expected an "
                                    "integer"),
    ("max_seconds", 1, "realtime.max_seconds: unknown key"),
])
def test_bad_values_are_named(key, value, line):
    with pytest.raises(ConfigError) as refused:
        parse({"realtime": {key: value}}, environ=ENV)
    assert any(p.startswith(line) for p in refused.value.problems), refused.value.problems


def test_several_workers_without_a_token_secret_are_warned_about():
    doc = {"server": {"workers": 2, "allow_unshared_workers": True}}
    warned = parse(doc, environ=ENV).warnings
    assert [w for w in warned if w.startswith("auth.tokens.secret_env:")] == [
        "auth.tokens.secret_env: not set while server.workers is 2: realtime client secrets "
        "are then signed with a random key per process, and a secret minted by one process is "
        "refused (401) by the others; set auth.tokens.secret_env"]
    # With the secret every process verifies every secret; one process needs none.
    signed = parse({**doc, "auth": {"tokens": {"secret_env": "TOK"}}}, environ=ENV).warnings
    assert not [w for w in signed if w.startswith("auth.tokens")]
    assert parse({}, environ=ENV).warnings == ()

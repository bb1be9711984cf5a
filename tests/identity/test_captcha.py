"""CaptchaVerifier against a fake siteverify: yes, no, down, slow, nonsense, a wrong secret."""
from __future__ import annotations

import pytest

from openai_gateway.errors import GatewayError
from openai_gateway.identity.captcha import CaptchaFailed, CaptchaUnavailable, CaptchaVerifier

from ..conftest import free_port
from ..support.jwks_server import (  # noqa: F401
    CAPTCHA_SECRET,
    assert_no_leak,
    http_fixture,
    logs_fixture,
    siteverify_fixture,
    siteverify_url_fixture,
)

WIDGET_ANSWER = "XXXX.DUMMY.TOKEN.XXXX-widget-response-0123456789abcdef"


@pytest.fixture
def verifier(siteverify_url, http):
    return CaptchaVerifier(url=siteverify_url, secret=CAPTCHA_SECRET, session=lambda: http,
                           timeout=0.5)


async def test_success_posts_secret_response_and_remoteip(verifier, siteverify):
    await verifier.verify(WIDGET_ANSWER, "203.0.113.9")
    assert siteverify.seen == [{"secret": CAPTCHA_SECRET, "response": WIDGET_ANSWER,
                                "remoteip": "203.0.113.9"}]


@pytest.mark.parametrize("mode, error, code, status", [
    ("fail", CaptchaFailed, "captcha_failed", 403),
    ("error", CaptchaUnavailable, "captcha_unavailable", 503),
    ("garbage", CaptchaUnavailable, "captcha_unavailable", 503),
    ("slow", CaptchaUnavailable, "captcha_unavailable", 503),
    ("bad-secret", CaptchaUnavailable, "captcha_unavailable", 503),
])
async def test_refusals_and_failures(verifier, siteverify, logs, mode, error, code, status):
    siteverify.mode = mode
    with pytest.raises(error) as err:
        await verifier.verify(WIDGET_ANSWER, "203.0.113.9")
    assert err.value.code == code and err.value.status == status
    if status == 503:
        assert "no session was created" in err.value.message
        assert err.value.headers["Retry-After"]
    else:
        assert "timeout-or-duplicate" in err.value.message
    assert_no_leak([CAPTCHA_SECRET, WIDGET_ANSWER], err.value.message, logs.text)


async def test_a_wrong_secret_is_an_operator_error_in_the_log(verifier, siteverify, logs):
    siteverify.mode = "bad-secret"
    with pytest.raises(CaptchaUnavailable):
        await verifier.verify(WIDGET_ANSWER)
    assert "captcha_secret_env" in logs.text and "invalid-input-secret" in logs.text
    assert "remoteip" not in siteverify.seen[0]


async def test_verifier_down(http, logs):
    verifier = CaptchaVerifier(url=f"http://127.0.0.1:{free_port()}/siteverify",
                               secret=CAPTCHA_SECRET, session=lambda: http)
    with pytest.raises(CaptchaUnavailable):
        await verifier.verify(WIDGET_ANSWER)
    assert "unreachable" in logs.text
    assert_no_leak([CAPTCHA_SECRET, WIDGET_ANSWER], logs.text)


async def test_hostnames_restrict_where_the_widget_was_solved(siteverify_url, siteverify, http):
    verifier = CaptchaVerifier(url=siteverify_url, secret=CAPTCHA_SECRET, session=lambda: http,
                               hostnames=("chat.example.org",))
    with pytest.raises(CaptchaFailed, match="site"):
        await verifier.verify(WIDGET_ANSWER)
    siteverify.hostname = "chat.example.org"
    await verifier.verify(WIDGET_ANSWER)
    siteverify.hostname = "Chat.Example.ORG."  # host names compare without case or root dot
    await verifier.verify(WIDGET_ANSWER)
    siteverify.hostname = None  # an answer that names no site is no answer for ours
    with pytest.raises(CaptchaFailed, match="site"):
        await verifier.verify(WIDGET_ANSWER)


@pytest.mark.parametrize("url, secret", [
    ("http://challenges.example.com/siteverify", CAPTCHA_SECRET),
    ("ftp://127.0.0.1/siteverify", CAPTCHA_SECRET),
    ("https://challenges.cloudflare.com/turnstile/v0/siteverify", ""),
])
def test_bad_settings_are_refused_when_built(url, secret, http):
    with pytest.raises(ValueError) as err:
        CaptchaVerifier(url=url, secret=secret, session=lambda: http)
    assert CAPTCHA_SECRET not in str(err.value)


def test_errors_are_gateway_errors():
    assert issubclass(CaptchaFailed, GatewayError) and issubclass(CaptchaUnavailable,
                                                                  GatewayError)

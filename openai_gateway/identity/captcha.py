"""Checking a captcha widget's answer with its provider (`[auth.sessions]`).

Cloudflare Turnstile, hCaptcha and reCAPTCHA share one siteverify API: a form POST of
`secret`, `response` and `remoteip`, answered with JSON whose `success` says yes or no. The
answer is checked server-side, with the gateway's own session and a short timeout; a verifier
that is down or slow is a 503 (no session), never a pass.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection

import aiohttp
import orjson

from ..errors import GatewayError
from .remote import TooLarge, read_limited, url_problem

log = logging.getLogger("gateway.auth")

#: Seconds the provider gets to answer; a person is waiting on the other side.
DEFAULT_TIMEOUT = 5.0
#: Longest widget response accepted (Turnstile's are up to 2048 characters).
MAX_RESPONSE_CHARS = 4096
#: The provider's error codes that mean the gateway's own setup is wrong, not the visitor.
OPERATOR_ERRORS = frozenset({"missing-input-secret", "invalid-input-secret"})
#: A verdict is a few hundred bytes of JSON.
MAX_VERDICT_BYTES = 65536
_ERROR_CODE = re.compile(r"[a-z0-9-]{1,40}")


class CaptchaFailed(GatewayError):
    status, type, code = 403, "invalid_request_error", "captcha_failed"


class CaptchaUnavailable(GatewayError):
    status, type, code = 503, "server_error", "captcha_unavailable"


class CaptchaVerifier:
    """Built once from `[auth.sessions]`; `verify(response, remoteip)` per session request.

    `session` returns the gateway's ClientSession; `hostnames`, when given, are the only site
    host names whose widgets count (the provider reports the page's host name; compared
    without case). Without them, an answer solved on any site that embeds the widget's public
    site key buys a session here.
    """

    def __init__(self, *, url: str, secret: str,
                 session: Callable[[], aiohttp.ClientSession],
                 timeout: float = DEFAULT_TIMEOUT, hostnames: Collection[str] = ()):
        if problem := url_problem(url):
            raise ValueError(f"auth.sessions.captcha_verify_url: {problem}")
        if not secret:
            raise ValueError("auth.sessions.captcha_secret_env: the secret is empty")
        self.url, self._secret, self._session = url, secret, session
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.hostnames = frozenset(h.lower().rstrip(".") for h in hostnames)

    async def verify(self, response: str, remoteip: str | None = None) -> None:
        """Returns when the provider says yes; raises CaptchaFailed or CaptchaUnavailable."""
        form = {"secret": self._secret, "response": response}
        if remoteip:
            form["remoteip"] = remoteip
        try:
            async with self._session().post(self.url, data=form, timeout=self.timeout,
                                            allow_redirects=False) as resp:
                status, raw = resp.status, await read_limited(resp, MAX_VERDICT_BYTES)
        except (aiohttp.ClientError, TimeoutError, TooLarge) as exc:
            what = ("timed out" if isinstance(exc, TimeoutError)
                    else str(exc) if isinstance(exc, TooLarge) else type(exc).__name__)
            log.warning("captcha verifier %s unreachable: %s", self.url, what)
            raise self._unavailable() from None
        try:
            doc = orjson.loads(raw) if status == 200 else None
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("success"), bool):
            log.warning("captcha verifier %s answered HTTP %d without a verdict", self.url,
                        status)
            raise self._unavailable()
        codes = [c for c in doc.get("error-codes") or () if isinstance(c, str)
                 and _ERROR_CODE.fullmatch(c)][:3]
        if OPERATOR_ERRORS.intersection(codes):
            log.error("captcha verifier %s refused the gateway's secret (%s): check "
                      "auth.sessions.captcha_secret_env", self.url, ", ".join(codes))
            raise self._unavailable()
        if not doc["success"]:
            raise CaptchaFailed("The captcha was not solved or has expired"
                                + (f" ({', '.join(codes)})." if codes else ".")
                                + " Solve it again for a new session.", param="captcha")
        host = doc.get("hostname")
        if self.hostnames and not (isinstance(host, str)
                                   and host.lower().rstrip(".") in self.hostnames):
            raise CaptchaFailed("The captcha was solved on a site this gateway does not "
                                "serve.", param="captcha")

    @staticmethod
    def _unavailable() -> CaptchaUnavailable:
        return CaptchaUnavailable("The captcha verifier could not be reached; no session "
                                  "was created. Try again in a moment.",
                                  headers={"Retry-After": "5"})

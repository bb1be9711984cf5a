"""The few errors the gateway raises, rendered once in OpenAI's shape.

`{"error": {"message", "type", "param", "code"}}` is what the official SDKs parse into their
typed exceptions (BadRequestError, RateLimitError, ...), so every refusal uses it.
"""
from __future__ import annotations

import logging
import re

import orjson
from aiohttp import web

log = logging.getLogger("gateway.upstream")


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None
    #: Close the connection after the answer: what is left of a refused body (an upload over
    #: its limit, a slow one) is then never read.
    close_connection = False

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, log_detail: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}
        #: Why, for the access log only (e.g. "limit=60/minute"): short, no client text
        #: beyond what identifies the refusal, never a secret.
        self.log_detail = log_detail

    def response(self) -> web.Response:
        response = error_response(self.status, self.message, self.type, self.param, self.code,
                                  self.headers)
        if self.close_connection:
            response.force_close()
        return response


class InvalidRequest(GatewayError):
    status, type, code = 400, "invalid_request_error", None


class InvalidClientKey(GatewayError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class InvalidToken(GatewayError):
    """A bearer that is a JWT but does not verify; never a fall-back to anonymous.

    RFC 6750 section 3.1 names the error and asks for the WWW-Authenticate header. The
    message says why, and never repeats the token or any part of it.
    """

    status, type, code = 401, "invalid_request_error", "invalid_token"

    def __init__(self, message: str, **kwargs):
        super().__init__(message, **kwargs)
        self.headers.setdefault("WWW-Authenticate", 'Bearer error="invalid_token"')


class Unauthenticated(GatewayError):
    """No verified identity while `auth.anonymous = false`."""
    status, type, code = 401, "invalid_request_error", "unauthenticated"

    def __init__(self, message: str, **kw):
        super().__init__(message, **kw)
        self.headers.setdefault("WWW-Authenticate", "Bearer")


class ModelNotPriced(GatewayError):
    """A dollar budget applies but the model has no price: never silently free."""
    status, type, code = 400, "invalid_request_error", "model_not_priced"


class OriginNotAllowed(GatewayError):
    status, type, code = 403, "invalid_request_error", "origin_not_allowed"


class ModelNotAllowed(GatewayError):
    status, type, code = 400, "invalid_request_error", "model_not_found"


class BodyTooLarge(GatewayError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class UnsupportedEncoding(GatewayError):
    status, type, code = 415, "invalid_request_error", "unsupported_content_encoding"


class RequestTimeout(GatewayError):
    status, type, code = 408, "invalid_request_error", "request_timeout"


class RateLimited(GatewayError):
    status, type, code = 429, "requests", "rate_limit_exceeded"


class TokensRateLimited(RateLimited):
    type = "tokens"


class SpendLimited(RateLimited):
    """A dollar budget of the caller (its client key's, its tier's, a rule's) is used up."""

    type, code = "insufficient_quota", "spend_limit_exceeded"


class BudgetExceeded(SpendLimited):
    """The gateway-wide ceiling (budget.daily_usd / budget.monthly_usd) is reached."""

    code = "budget_exceeded"


class StorageUnavailable(GatewayError):
    status, type, code = 503, "server_error", "storage_unavailable"


class UpstreamFailed(GatewayError):
    """The upstream failed; `reached` says whether it may have received the request (and so
    may bill it): False only when no attempt got past connecting."""

    def __init__(self, message: str, *, reached: bool = True, **kwargs):
        super().__init__(message, **kwargs)
        self.reached = reached


class UpstreamUnavailable(UpstreamFailed):
    status, type, code = 502, "server_error", "upstream_unavailable"


class UpstreamTimeout(UpstreamFailed):
    status, type, code = 504, "server_error", "upstream_timeout"


#: What the router's own exceptions become (status -> type, code, message).
_HTTP_ERRORS = {
    404: ("invalid_request_error", "unknown_url", "Unknown request URL: {method} {path}. "
          "This gateway forwards only the routes it is configured for."),
    405: ("invalid_request_error", "method_not_allowed",
          "Method {method} is not allowed for {path}."),
    413: ("invalid_request_error", "request_too_large", "Request body is too large."),
}


def http_error_code(status: int) -> str | None:
    """The `code` a router error with this status is rendered with (for the access log)."""
    return _HTTP_ERRORS.get(status, (None, None))[1]


def error_body(message: str, type_: str, param: str | None = None,
               code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}})


def error_response(status: int, message: str, type_: str, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=error_body(message, type_, param, code),
                        content_type="application/json", headers=headers)


def from_http_exception(exc: web.HTTPException, request: web.Request) -> web.Response:
    """Render aiohttp's router errors (404, 405, 413 ...) in OpenAI's shape."""
    type_, code, template = _HTTP_ERRORS.get(
        exc.status, ("invalid_request_error", None, exc.reason or "Request refused."))
    # The path is echoed truncated and without query: it is client input, keep it short.
    message = template.format(method=request.method, path=request.path[:200])
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return error_response(exc.status, message, type_, None, code, headers)


#: The gateway's own words for an upstream's error, by status. The upstream's text is logged,
#: never sent: OpenAI's 429 names the account's organization and its usage across all clients.
UPSTREAM_MESSAGES = {
    400: "The upstream refused the request as invalid.",
    404: "The upstream does not know the requested model or resource.",
    408: "The upstream timed out while reading the request.",
    409: "The upstream reported a conflict with the request.",
    413: "The request is too large for the upstream.",
    422: "The upstream could not process the request.",
    429: "The upstream is limiting the gateway's requests; try again later.",
}
#: What an upstream's `type`, `code` and `param` may look like to be passed on: identifiers
#: (OpenAI's are like "invalid_request_error", "context_length_exceeded", "messages[0]").
_IDENTIFIER = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,100}")
#: How much of the upstream's message the server log keeps.
LOGGED_CHARS = 300


def upstream_error(status: int, content_type: str, body: bytes) -> tuple[int, str, bytes]:
    """An upstream error as the client should see it: OpenAI's shape, the gateway's message.

    The status and the error's type (and code and param, when they are plain identifiers) are
    kept, so SDKs raise the same exception with the same code; the message is the gateway's
    own, and the upstream's is logged at warning, truncated. A 401/403 means the gateway's own
    key was refused; passing it on would blame the browser's dummy key (and OpenAI's message
    echoes part of the real key, so it is not logged either): it becomes a 502.
    """
    if status in (401, 403):
        return 502, "application/json", error_body(
            "The upstream refused the gateway's credentials.", "server_error", None,
            "upstream_auth_error")
    error = _error_object(content_type, body)
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    type_ = _identifier(error.get("type")) or default_type
    code = _identifier(error.get("code")) or ("upstream_error" if not error else None)
    message = error.get("message") if error else body[:LOGGED_CHARS].decode("utf-8", "replace")
    log.warning("upstream error %d (%s): %r", status, type_, str(message)[:LOGGED_CHARS])
    text = UPSTREAM_MESSAGES.get(status) or (
        "The upstream failed to answer." if status >= 500 else f"The upstream answered {status}.")
    return status, "application/json", error_body(text, type_, _identifier(error.get("param")),
                                                  code)


def _error_object(content_type: str, body: bytes) -> dict:
    """The `error` object of an OpenAI-shaped error body, or {}."""
    if content_type != "application/json":
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    error = doc.get("error") if isinstance(doc, dict) else None
    return error if isinstance(error, dict) else {}


def _identifier(value) -> str | None:
    return value if isinstance(value, str) and _IDENTIFIER.fullmatch(value) else None

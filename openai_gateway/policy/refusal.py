"""The one exception of the request policy: a refusal naming the parameter it is about.

The policy imports no aiohttp; `validation.Validator` turns a `Refusal` into the gateway's
OpenAI-shaped 400 (`errors.InvalidRequest`, or `errors.ModelNotAllowed` for its code).
"""
from __future__ import annotations


class Refusal(Exception):
    """A request the policy will not forward: `message` for the client, `param` it is about."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def shown(value, limit: int = 100) -> str:
    """A client's value as it may appear in a message: a string, truncated."""
    text = value if isinstance(value, str) else repr(value)
    return text[:limit]

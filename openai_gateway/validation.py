"""Pure request rules, checked before anything is forwarded.

Every rejection is an `InvalidRequest` naming the offending `param`, which the SDKs surface as
`BadRequestError`. The rules mirror OpenAI's own where they exist and add the gateway's caps
(model allowlist, input size, max_tokens, n, message count) that protect the key's budget.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson

from .errors import InvalidRequest, ModelNotAllowed
from .settings import ValidationSettings

#: Roles OpenAI's chat API accepts ("function" is legacy but still valid).
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

#: The field each route requires besides `model` (moderations has no required model).
REQUIRED_INPUT = {
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/embeddings": "input",
    "/v1/responses": "input",
    "/v1/moderations": "input",
}
MODEL_OPTIONAL = frozenset({"/v1/moderations"})
#: The deepest nesting orjson can serialise again (it parses deeper).
MAX_WRITABLE_DEPTH = 254
#: Fields that cap the answer's length, per API generation.
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


@dataclass(slots=True)
class ParsedRequest:
    body: dict
    model: str | None
    stream: bool
    #: Characters of input (a cheap, offline stand-in for prompt tokens: about 4 per token).
    input_chars: int
    max_tokens: int | None


class Validator:
    """Built once per settings; `check(route, raw)` is pure and raises `InvalidRequest`."""

    def __init__(self, settings: ValidationSettings):
        self.s = settings
        self.allowed = frozenset(settings.allowed_models)

    def check(self, route: str, raw: bytes, allowed_models: frozenset[str] | None = None
              ) -> ParsedRequest:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidRequest(
                "We could not parse the JSON body of your request. Send a JSON object.") from None
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        # orjson reads 1024 levels but writes only 255; the cache key and a rewritten stream
        # request serialise the body again, so refuse what cannot be. Nesting never exceeds
        # the number of opening brackets, so only bodies with that many pay for the test.
        if raw.count(b"[") + raw.count(b"{") > MAX_WRITABLE_DEPTH:
            try:
                orjson.dumps(body)
            except orjson.JSONEncodeError:
                raise InvalidRequest("The request body is nested too deeply.") from None

        model = body.get("model")
        if model is None and route not in MODEL_OPTIONAL:
            raise InvalidRequest("Missing required parameter: 'model'.", param="model")
        if model is not None and not isinstance(model, str):
            raise InvalidRequest("Invalid type for 'model': expected a string.", param="model")
        allowed = self.allowed if allowed_models is None else allowed_models
        if model is not None and allowed and model not in allowed:
            raise ModelNotAllowed(
                f"The model '{model[:100]}' is not available through this gateway.",
                param="model")

        stream = body.get("stream", False)
        if not isinstance(stream, bool) and stream is not None:
            raise InvalidRequest("Invalid type for 'stream': expected a boolean.", param="stream")

        field = REQUIRED_INPUT[route]
        if field not in body or body[field] is None:
            raise InvalidRequest(f"Missing required parameter: '{field}'.", param=field)
        chars = self._chat_chars(body[field]) if field == "messages" else _text_chars(
            body[field], field)
        if route == "/v1/responses" and isinstance(body.get("instructions"), str):
            chars += len(body["instructions"])
        if chars > self.s.max_input_chars:
            raise InvalidRequest(
                f"The input is too long: {chars} characters, this gateway allows "
                f"{self.s.max_input_chars}.", param=field, code="context_length_exceeded")

        max_tokens = None
        for name in MAX_TOKENS_FIELDS:
            value = body.get(name)
            if value is None:
                continue
            if not _is_int(value) or value < 1:
                raise InvalidRequest(f"Invalid '{name}': expected a positive integer.", param=name)
            if value > self.s.max_tokens:
                raise InvalidRequest(
                    f"'{name}' is {value}; this gateway allows at most {self.s.max_tokens}.",
                    param=name)
            max_tokens = value
        n = body.get("n")
        if n is not None:
            if not _is_int(n) or n < 1:
                raise InvalidRequest("Invalid 'n': expected a positive integer.", param="n")
            if n > self.s.max_n:
                raise InvalidRequest(f"'n' is {n}; this gateway allows at most {self.s.max_n}.",
                                     param="n")
        return ParsedRequest(body, model, bool(stream), chars, max_tokens)

    def _chat_chars(self, messages) -> int:
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array of message objects.",
                                 param="messages")
        if len(messages) > self.s.max_messages:
            raise InvalidRequest(
                f"'messages' has {len(messages)} entries; this gateway allows at most "
                f"{self.s.max_messages}.", param="messages")
        chars = 0
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise InvalidRequest(f"'messages[{i}]' must be an object.", param=f"messages[{i}]")
            role = m.get("role")
            if role not in CHAT_ROLES:
                raise InvalidRequest(
                    f"Invalid value for 'messages[{i}].role': expected one of "
                    f"{', '.join(sorted(CHAT_ROLES))}.", param=f"messages[{i}].role")
            content = m.get("content")
            if content is not None:
                chars += _text_chars(content, f"messages[{i}].content")
        return chars


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text_chars(value, param: str) -> int:
    """Characters of text in a string, a list of strings, or a list of content parts.

    Token-id arrays (embeddings, completions) count one per token id; images and audio are not
    text and count nothing here (the upstream bills them; usage settles the budget).
    """
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        total = 0
        for i, part in enumerate(value):
            if isinstance(part, str):
                total += len(part)
            elif _is_int(part):
                total += 4  # one token id ~ one token ~ four characters
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += len(text)
                elif "content" in part:  # responses API input items
                    total += _text_chars(part["content"], f"{param}[{i}].content")
            elif isinstance(part, list):
                total += _text_chars(part, f"{param}[{i}]")
            else:
                raise InvalidRequest(f"Invalid type for '{param}[{i}]'.", param=param)
        return total
    raise InvalidRequest(f"Invalid type for '{param}': expected a string or an array.",
                         param=param)

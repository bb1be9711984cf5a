"""The request policy as one pure check: raw bytes in, a `ParsedRequest` or a `Refusal` out.

Built once from `[validation]`; `check` is the per-request path. The order below only decides
which refusal a request with several problems gets: the body, then the model, then the knobs
(cheap), then the walk over everything the model reads.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config.settings import ValidationSettings
from . import inputs, knobs, media
from .jsonbody import parse_object
from .refusal import Refusal, shown
from .usage import prompt_estimate

#: The field each route requires besides `model` (moderations has no required model).
REQUIRED_INPUT = {
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/embeddings": "input",
    "/v1/responses": "input",
    "/v1/moderations": "input",
}
MODEL_OPTIONAL = frozenset({"/v1/moderations"})


@dataclass(slots=True)
class ParsedRequest:
    body: dict
    model: str | None
    stream: bool
    #: Characters of everything the model reads (about 4 per token; see policy.inputs).
    input_chars: int
    #: The most output tokens one choice may produce: the client's limit, or the cap the
    #: gateway adds (0 on routes without output: embeddings, moderations).
    max_tokens: int
    #: Answers generated for this request (`n`, `best_of`): each may reach `max_tokens`.
    choices: int = 1
    #: Fields the gateway adds to the body it forwards ({}: the raw bytes go as they came).
    additions: dict = field(default_factory=dict)
    route: str = ""
    #: Tokens reserved for what the model reads besides text (policy.media), by how they are
    #: billed: images (image parts and file pages), audio, the text of file parts.
    image_tokens: int = 0
    audio_tokens: int = 0
    file_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """Every input token reserved: text (characters / 4), files, images and audio."""
        return (prompt_estimate(self.input_chars) + self.file_tokens + self.image_tokens
                + self.audio_tokens)

    @property
    def estimate(self) -> int:
        """Tokens to reserve before forwarding: input plus every choice's full output cap."""
        return self.prompt_tokens + self.max_tokens * self.choices


class RequestPolicy:
    """`check(route, raw, allowed_models)`: pure; raises `Refusal`."""

    def __init__(self, settings: ValidationSettings):
        self.rules = settings
        self.allowed = frozenset(settings.allowed_models)

    def check(self, route: str, raw: bytes, allowed_models: frozenset[str] | None = None
              ) -> ParsedRequest:
        body = parse_object(raw)
        model = self._model(route, body, self.allowed if allowed_models is None
                            else allowed_models)
        stream = body.get("stream", False)
        if not isinstance(stream, bool) and stream is not None:
            raise Refusal("Invalid type for 'stream': expected a boolean.", "stream")
        _check_stream_options(body.get("stream_options"))
        additions = {} if self.rules.stored_state else knobs.stored_state(route, body)
        field_ = REQUIRED_INPUT[route]
        if body.get(field_) is None and not (route == knobs.RESPONSES and self.rules.stored_state
                                             and _refers_to_stored_input(body)):
            raise Refusal(f"Missing required parameter: '{field_}'.", field_)
        knobs.service_tier(body, self.rules.allowed_service_tiers)
        knobs.tools(route, body, self.rules.allowed_tools)
        choices = knobs.choices(route, body, self.rules.max_n)
        max_tokens, cap_field = knobs.output_cap(route, body, self.rules.max_tokens)
        reading = inputs.Reading(self.rules.stored_state)
        chars = self._input_chars(route, body, reading)
        if chars > self.rules.max_input_chars:
            raise Refusal(f"The input is too long: {chars} characters, this gateway allows "
                          f"{self.rules.max_input_chars}.", field_, "context_length_exceeded")
        found = media.NO_MEDIA if not reading.media else media.count(
            reading.media, model or media.DEFAULT_MODERATION_MODEL,
            max_images=self.rules.max_images)
        return ParsedRequest(body, model, bool(stream), chars, max_tokens, choices,
                             {**cap_field, **additions}, route, found.image, found.audio,
                             found.file)

    @staticmethod
    def _model(route: str, body: dict, allowed: frozenset[str]) -> str | None:
        model = body.get("model")
        if model is None:
            if route in MODEL_OPTIONAL:
                return None
            raise Refusal("Missing required parameter: 'model'.", "model")
        if not isinstance(model, str):
            raise Refusal("Invalid type for 'model': expected a string.", "model")
        if allowed and model not in allowed:
            raise Refusal(f"The model '{shown(model)}' is not available through this gateway.",
                          "model", "model_not_found")
        return model

    def _input_chars(self, route: str, body: dict, reading: inputs.Reading) -> int:
        if route == "/v1/chat/completions":
            return inputs.chat_chars(body, max_messages=self.rules.max_messages,
                                     reading=reading)
        if route == knobs.RESPONSES:
            return inputs.responses_chars(body, reading=reading)
        if route == "/v1/moderations":
            return inputs.moderation_chars(body["input"], reading=reading)
        field_ = REQUIRED_INPUT[route]
        chars = inputs.prompt_chars(body[field_], field_)
        suffix = body.get("suffix")  # completions: text after the insertion point
        return chars + (len(suffix) if isinstance(suffix, str) else 0)


def _check_stream_options(options) -> None:
    """The gateway reads (and may add to) `stream_options`: it must be what it claims."""
    if options is None:
        return
    if not isinstance(options, dict):
        raise Refusal("Invalid type for 'stream_options': expected an object.", "stream_options")
    usage = options.get("include_usage")
    if usage is not None and not isinstance(usage, bool):
        raise Refusal("Invalid type for 'stream_options.include_usage': expected a boolean.",
                      "stream_options.include_usage")


def _refers_to_stored_input(body: dict) -> bool:
    """A Responses request may take its input from a stored prompt or conversation."""
    return any(body.get(name) is not None for name in knobs.STORED_STATE_FIELDS)

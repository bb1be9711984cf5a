"""The request policy as one pure check: raw bytes in, a `ParsedRequest` or a `Refusal` out.

Built once from `[validation]`; `check` is the per-request path for JSON bodies, `check_form`
for multipart ones (the parts as pipeline.uploads read them). The order below only decides
which refusal a request with several problems gets: the body, then the model, then the knobs
(cheap), then the walk over everything the model reads. The voice and pictures routes have
their rules in policy.speech, policy.transcription and policy.images, and their parsed request
carries the `units` they are priced by (policy.units).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config.settings import ValidationSettings
from . import images, inputs, knobs, media, speech, transcription
from .form import FormPart, collect
from .jsonbody import parse_object
from .refusal import Refusal, shown
from .units import Units
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
#: The voice and pictures routes, by the form of their body.
MEDIA_JSON = frozenset({speech.ROUTE, images.GENERATIONS, images.EDITS})
MEDIA_FORM = {
    transcription.TRANSCRIPTIONS: (transcription.TEXT[transcription.TRANSCRIPTIONS],
                                   transcription.FILES,
                                   transcription.DATA[transcription.TRANSCRIPTIONS]),
    transcription.TRANSLATIONS: (transcription.TEXT[transcription.TRANSLATIONS],
                                 transcription.FILES,
                                 transcription.DATA[transcription.TRANSLATIONS]),
    images.EDITS: (images.EDIT_FORM_TEXT, images.EDIT_FORM_FILES, frozenset()),
}


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
    #: Voice and pictures routes: what the request asks to be made, in the units it is priced
    #: by (metering.units reserves and settles from them). None on the text routes.
    units: Units | None = None

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
        if route in MEDIA_JSON:
            return self._media_json(route, body, model)
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

    def check_form(self, route: str, parts: list[FormPart],
                   allowed_models: frozenset[str] | None = None, *, upload_bytes: int = 0
                   ) -> ParsedRequest:
        """A multipart request (transcriptions, translations, image edits), from its parts:
        policy.form's rules, then the route's. Its `body` is the text fields by name."""
        text, files, data = MEDIA_FORM[route]
        form = collect(parts, text=text, files=files, data=data)
        model = self._model(route, form.text, self.allowed if allowed_models is None
                            else allowed_models)
        if route == images.EDITS:
            found = images.check_edit_form(form, self.rules, upload_bytes)
            return self._media(route, form.text, model, found.stream, found.chars, found.units)
        audio = transcription.check(route, form, model, self.rules, upload_bytes)
        return self._media(route, form.text, model, audio.stream, audio.chars, audio.units)

    def _media_json(self, route: str, body: dict, model: str | None) -> ParsedRequest:
        if route == speech.ROUTE:
            said = speech.check(body, self.rules)
            return self._media(route, body, model, said.sse, said.chars, said.units)
        check = images.check_generation if route == images.GENERATIONS else \
            images.check_edit_json
        found = check(body, self.rules)
        return self._media(route, body, model, found.stream, found.chars, found.units)

    def _media(self, route: str, body: dict, model: str | None, stream: bool, chars: int,
               units: Units) -> ParsedRequest:
        """The parsed request of a voice or pictures route. Its token figures are the bounds
        the units carry (speech: audio output tokens; transcription: audio input tokens and
        the output cap); an image's output tokens depend on the model's table and are left to
        metering.units."""
        if chars > self.rules.max_input_chars:
            field_ = "input" if route == speech.ROUTE else "prompt"
            raise Refusal(f"The input is too long: {chars} characters, this gateway allows "
                          f"{self.rules.max_input_chars}.", field_, "context_length_exceeded")
        output = units.audio_output_tokens or units.output_tokens
        return ParsedRequest(body, model, stream, chars, output, max(units.images, 1), {},
                             route, image_tokens=units.image_input_tokens,
                             audio_tokens=units.audio_input_tokens, units=units)

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

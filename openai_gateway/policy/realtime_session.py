"""The realtime session policy, pure: what a session configuration and a response may ask for.

The same rules as chat, read from the same settings (README, "Realtime"):
- `model` and the input transcription model (`audio.input.transcription.model`) must be in the
  caller's allowlist (`validation.allowed_models` or its tier's `models`); a session's model
  never changes (OpenAI refuses it too);
- every tool's `type` must be in `validation.allowed_tools` (default `function` only: `mcp`
  makes OpenAI call servers the client names, with credentials the client gives);
- `max_output_tokens` is an integer up to the output cap, `min(validation.max_tokens, 4096)`
  (4096 is the top of OpenAI's documented range). `"inf"` (OpenAI's default, "no limit") is
  replaced by the cap, like an absent limit on chat; a number above the cap is refused, as on
  chat. A new session without a limit gets the cap;
- instructions, tool definitions and a response's own `input` items count like chat's input:
  together at most `validation.max_input_chars` characters;
- `tracing` (traces in the operator's dashboard) and `prompt` (a prompt stored in the
  operator's account) are refused unless `validation.stored_state` is true;
- a field OpenAI's GA session does not have is refused: the gateway cannot bound what it does
  not know (the beta protocol's `modalities`, `voice`, `max_response_output_tokens`... too).

Every refusal is a `Refusal` naming its param, as the rest of the policy.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson

from ..config.settings import ValidationSettings
from .inputs import serialised_chars
from .refusal import Refusal, shown

#: The top of OpenAI's documented range for a realtime `max_output_tokens` (1-4096 or "inf").
MAX_OUTPUT_TOKENS = 4096
#: Every field of OpenAI's GA realtime session (RealtimeSessionCreateRequestGA).
SESSION_FIELDS = frozenset({
    "type", "model", "instructions", "output_modalities", "audio", "include", "tracing",
    "tools", "tool_choice", "parallel_tool_calls", "reasoning", "max_output_tokens",
    "truncation", "prompt"})
#: Every field of a `response.create`'s `response` (RealtimeResponseCreateParams).
RESPONSE_FIELDS = frozenset({
    "output_modalities", "instructions", "audio", "tools", "tool_choice",
    "parallel_tool_calls", "reasoning", "max_output_tokens", "conversation", "metadata",
    "prompt", "input"})
#: Fields that reach state stored in the gateway's account (refused unless stored_state).
STORED_STATE_FIELDS = ("tracing", "prompt")
#: A response's `conversation`: the session's, or none (an out-of-band response).
CONVERSATIONS = ("auto", "none")


@dataclass(frozen=True, slots=True)
class Bounds:
    """What realtime sessions may ask for, built once from [validation] and [realtime]."""

    models: frozenset[str]
    tools: tuple[str, ...]
    output_cap: int
    max_input_chars: int
    stored_state: bool

    @classmethod
    def from_settings(cls, validation: ValidationSettings) -> Bounds:
        return cls(frozenset(validation.allowed_models), validation.allowed_tools,
                   min(validation.max_tokens, MAX_OUTPUT_TOKENS), validation.max_input_chars,
                   validation.stored_state)


class SessionRules:
    """Checks session configurations and response parameters against `Bounds`.

    `models` of a method is the caller's allowlist (None: the gateway's); empty allows any.
    Each check returns the fields to change (`{"max_output_tokens": cap}` for an "inf"), or {}.
    """

    def __init__(self, bounds: Bounds):
        self.bounds = bounds

    def new_session(self, session: object, models: frozenset[str] | None = None,
                    param: str = "session") -> dict:
        """A session a client secret or a call starts with, bounded: checked, `model`
        required, and the output cap set where the client set none (or "inf")."""
        if not isinstance(session, dict):
            raise Refusal(f"Invalid type for '{param}': expected an object.", param,
                          "invalid_type")
        if session.get("model") is None:
            raise Refusal(f"Missing required parameter: '{param}.model'.", f"{param}.model",
                          "missing_required_parameter")
        changes = self.session(session, models, param=param)
        bounded = {"type": "realtime", **session, **changes}
        if not isinstance(bounded.get("max_output_tokens"), int):
            bounded["max_output_tokens"] = self.bounds.output_cap
        return bounded

    def session(self, session: object, models: frozenset[str] | None = None, *,
                current_model: str | None = None, param: str = "session") -> dict:
        """A session configuration or update (`session.update`'s `session`): the changes it
        needs. `current_model`: the session's model, which an update may repeat, not change."""
        if not isinstance(session, dict):
            raise Refusal(f"Invalid type for '{param}': expected an object.", param,
                          "invalid_type")
        _known(session, SESSION_FIELDS, param)
        kind = session.get("type")
        if kind is not None and kind != "realtime":
            raise Refusal(f"'{param}.type' {shown(kind)!r} is not available through this "
                          "gateway: only realtime sessions are.", f"{param}.type",
                          "invalid_value")
        if "model" in session:
            self._model(session["model"], models, f"{param}.model", current_model)
        self._transcription(session.get("audio"), models, f"{param}.audio")
        return self._common(session, param)

    def response(self, response: object, models: frozenset[str] | None = None) -> dict:
        """A `response.create`'s `response` parameters: the changes they need."""
        param = "response"
        if response is None:
            return {}
        if not isinstance(response, dict):
            raise Refusal("Invalid type for 'response': expected an object.", param,
                          "invalid_type")
        _known(response, RESPONSE_FIELDS, param)
        conversation = response.get("conversation")
        if conversation is not None and conversation not in CONVERSATIONS:
            raise Refusal(f"'response.conversation' must be one of {', '.join(CONVERSATIONS)} "
                          "through this gateway.", "response.conversation", "invalid_value")
        return self._common(response, param)

    def _common(self, doc: dict, param: str) -> dict:
        self._stored_state(doc, param)
        self._tools(doc.get("tools"), f"{param}.tools")
        self._input_size(doc, param)
        return self._output_cap(doc.get("max_output_tokens"), f"{param}.max_output_tokens")

    def _model(self, model: object, models: frozenset[str] | None, param: str,
               current: str | None) -> None:
        if not isinstance(model, str):
            raise Refusal(f"Invalid type for '{param}': expected a string.", param,
                          "invalid_type")
        allowed = self.bounds.models if models is None else models
        if allowed and model not in allowed:
            raise Refusal(f"The model '{shown(model)}' is not available through this gateway.",
                          param, "model_not_found")
        if current is not None and model != current:
            raise Refusal(f"A session's model cannot change (it is '{shown(current)}').",
                          param, "invalid_value")

    def _transcription(self, audio: object, models: frozenset[str] | None, param: str) -> None:
        """Input transcription bills a second model: it must be allowed like the first."""
        inner = audio.get("input") if isinstance(audio, dict) else None
        transcription = inner.get("transcription") if isinstance(inner, dict) else None
        if isinstance(transcription, dict) and "model" in transcription:
            self._model(transcription["model"], models, f"{param}.input.transcription.model",
                        None)

    def _stored_state(self, doc: dict, param: str) -> None:
        if self.bounds.stored_state:
            return
        for name in STORED_STATE_FIELDS:
            if doc.get(name) is not None:
                raise Refusal(f"'{param}.{name}' is not available through this gateway: traces "
                              "and stored prompts live in the gateway's account, shared by "
                              "every client (validation.stored_state = false).",
                              f"{param}.{name}", "invalid_value")

    def _tools(self, tools: object, param: str) -> None:
        if tools is None:
            return
        if not isinstance(tools, list):
            raise Refusal(f"Invalid type for '{param}': expected an array.", param,
                          "invalid_type")
        allowed = self.bounds.tools
        for i, tool in enumerate(tools):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if not isinstance(kind, str):
                raise Refusal(f"Invalid type for '{param}[{i}].type': expected a string.",
                              f"{param}[{i}].type", "invalid_type")
            if kind not in allowed:
                raise Refusal(f"Tool type {shown(kind)!r} is not available through this gateway "
                              f"(allowed: {', '.join(allowed) or 'none'}).",
                              f"{param}[{i}].type", "tool_not_allowed")

    def _input_size(self, doc: dict, param: str) -> None:
        instructions = doc.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise Refusal(f"Invalid type for '{param}.instructions': expected a string.",
                          f"{param}.instructions", "invalid_type")
        chars = (len(instructions or "") + serialised_chars(doc.get("tools"))
                 + serialised_chars(doc.get("input")))
        if chars > self.bounds.max_input_chars:
            raise Refusal(f"The instructions, tools and input are too long: {chars} characters, "
                          f"this gateway allows {self.bounds.max_input_chars}.",
                          f"{param}.instructions", "context_length_exceeded")

    def _output_cap(self, value: object, param: str) -> dict:
        cap = self.bounds.output_cap
        if value is None:
            return {}
        if value == "inf":
            return {"max_output_tokens": cap}
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise Refusal(f"Invalid '{param}': expected a positive integer or 'inf'.", param,
                          "invalid_value")
        if value > cap:
            raise Refusal(f"'{param}' is {value}; this gateway allows at most {cap}.", param,
                          "invalid_value")
        return {}

    # --- what a session became (the sideband reads session.updated) -----------------------

    def drift(self, config: dict, bounded: dict) -> dict:
        """The fields of a session's current `config` (as `session.updated` shows it) that are
        out of bounds, with the values that restore them: {} when it is within bounds.

        `bounded` is the session as the gateway started it (`new_session`): an instruction
        too long or a transcription model not allowed goes back to what it was there.
        """
        fix: dict = {}
        cap = config.get("max_output_tokens")
        if not (isinstance(cap, int) and not isinstance(cap, bool)
                and 1 <= cap <= self.bounds.output_cap):
            fix["max_output_tokens"] = self.bounds.output_cap
        tools = config.get("tools")
        if isinstance(tools, list):
            kept = [t for t in tools if isinstance(t, dict) and t.get("type") in self.bounds.tools]
            if len(kept) != len(tools):
                fix["tools"] = kept
        if not self.bounds.stored_state:
            fix.update({name: None for name in STORED_STATE_FIELDS
                        if config.get(name) is not None})
        tools_now = fix.get("tools", tools)
        instructions = config.get("instructions")
        if not isinstance(instructions, str | None) or (
                len(instructions or "") + serialised_chars(tools_now)
                > self.bounds.max_input_chars):
            fix["instructions"] = bounded.get("instructions", "")
            if len(fix["instructions"]) + serialised_chars(tools_now) > \
                    self.bounds.max_input_chars:
                fix["tools"] = bounded.get("tools", [])
        try:
            self._transcription(config.get("audio"), None, "session.audio")
        except Refusal:
            fix["audio"] = {"input": {"transcription": _transcription_of(bounded)}}
        return fix


def merge(base: dict, update: dict) -> dict:
    """A session configuration with an update laid over it, as OpenAI applies `session.update`:
    each given field replaces the old one; `audio.input` and `audio.output` merge by field."""
    merged = {**base, **{k: v for k, v in update.items() if k != "audio"}}
    audio = update.get("audio")
    if isinstance(audio, dict):
        before = base.get("audio")
        old: dict = before if isinstance(before, dict) else {}
        merged["audio"] = {**old, **{side: {**(old.get(side) or {}), **value}
                                     if isinstance(value, dict) else value
                                     for side, value in audio.items()}}
    return merged


def canonical(session: dict) -> bytes:
    """A session configuration as compact JSON with sorted keys: one text per configuration."""
    return orjson.dumps(session, option=orjson.OPT_SORT_KEYS)


def _transcription_of(session: dict) -> dict | None:
    audio = session.get("audio")
    inner = audio.get("input") if isinstance(audio, dict) else None
    value = inner.get("transcription") if isinstance(inner, dict) else None
    return value if isinstance(value, dict) else None


def _known(doc: dict, fields: frozenset[str], param: str) -> None:
    unknown = sorted(set(doc) - fields)
    if unknown:
        name = shown(unknown[0], 60)
        raise Refusal(f"Unknown parameter: '{param}.{name}'. This gateway forwards only the "
                      f"fields of OpenAI's GA realtime API, which it checks.",
                      f"{param}.{name}", "unknown_parameter")

"""The request policy: pure functions over parsed bodies and answers (no aiohttp here).

- `request`: `RequestPolicy.check(route, raw)` -> `ParsedRequest`, or a `Refusal` naming its
  param (strict JSON, model, knobs, input size);
- `forward`: `forward_body`, the exact bytes that go upstream;
- `media`: the tokens of image, audio and file parts, reserved before a request is sent;
- `usage`: `Usage`, the usage of an answer or a stream event, and `prompt_estimate`;
- `speech`, `transcription`, `images`: the voice and pictures routes' rules, over JSON bodies
  or multipart parts (`form`: the parts' own rules; `fields`: typed reads of either form),
  producing the `units` (policy.units) they are priced by.
"""
from .forward import forward_body
from .refusal import Refusal
from .request import REQUIRED_INPUT, ParsedRequest, RequestPolicy
from .usage import (
    STOP_MARGIN_TOKENS,
    OutputCounter,
    Usage,
    prompt_estimate,
    usage_from_answer,
    usage_from_event,
)

__all__ = ["REQUIRED_INPUT", "STOP_MARGIN_TOKENS", "OutputCounter", "ParsedRequest", "Refusal",
           "RequestPolicy", "Usage", "forward_body", "prompt_estimate", "usage_from_answer",
           "usage_from_event"]

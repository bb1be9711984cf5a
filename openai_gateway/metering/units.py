"""Money for the voice and pictures routes, in integer micro-dollars: what a request may cost
(reserved before it is sent) and what it did cost (settled after), from the request's
`policy.units.Units` and the model's `Price` (token rates and `units`, unit_prices).

`reserve`, from above:
- speech: input characters x `per_million_chars`, text tokens x `input`, the audio output bound
  (policy.speech) x the dearer of `output` and `audio_output`;
- transcription and translation: the upload's seconds bound (policy.transcription) x
  `per_minute`, text tokens x `input`, audio tokens x `audio_input`, the output cap x `output`;
- images, each of `n`: its price by quality and size (`per_image`), or its output tokens
  (`image_tokens`) plus PARTIAL_IMAGE_TOKENS per partial image, x `output`; plus the prompt's
  tokens x `input` and an edit's input image bound x `image_input`. "auto" quality or size is
  the dearest it may resolve to.
`settle`, from the answer where it reports usage, else from the request:
- a token usage (speech SSE, gpt-4o transcriptions, GPT image models): prices.cost;
- a duration usage (whisper-1: whole seconds): seconds x `per_minute`;
- no usage (audio bytes, tts-1, DALL-E, a translation's JSON, text and subtitle formats):
  characters x `per_million_chars`, images x `per_image`, the seconds bound x `per_minute`;
  a token-billed model that reported nothing costs its reservation (nothing lower is known).
Each sum is exact and rounded up once. None: the price cannot bound the request (an image
model with neither table, an unknown kind); the caller treats the model as unpriced.
"""
from __future__ import annotations

import math
from fractions import Fraction

from ..policy.speech import AUDIO_TOKENS_PER_SECOND
from ..policy.units import Units
from ..policy.usage import Usage
from .prices import PER_TOKENS, Price, cost
from .unit_prices import PARTIAL_IMAGE_TOKENS

SECONDS_PER_MINUTE = 60


def reserve(price: Price, units: Units) -> int | None:
    """Micro-dollars a request may cost at most (see the module docstring)."""
    rates = price.units
    if units.kind == "speech":
        tokens = (units.text_tokens * price.input
                  + units.audio_output_tokens * max(price.output, price.audio_output))
        return _up(Fraction(tokens + units.characters * rates.per_million_chars, PER_TOKENS))
    if units.kind in ("transcription", "translation"):
        tokens = (units.text_tokens * price.input + units.audio_input_tokens * price.audio_input
                  + units.output_tokens * price.output)
        return _up(Fraction(tokens, PER_TOKENS)
                   + Fraction(units.audio_seconds * rates.per_minute, SECONDS_PER_MINUTE))
    if units.kind == "image":
        reading = units.text_tokens * price.input + units.image_input_tokens * price.image_input
        each = rates.image_price(units.quality, units.size)
        if each is not None:
            return _up(Fraction(reading, PER_TOKENS) + units.images * each)
        per_image = rates.tokens(units.quality, units.size)
        if per_image is None:
            return None
        made = units.images * (per_image + units.partial_images * PARTIAL_IMAGE_TOKENS)
        return _up(Fraction(reading + made * price.output, PER_TOKENS))
    return None


def settle(price: Price, units: Units, usage: Usage | None) -> int | None:
    """Micro-dollars a request cost (see the module docstring); None as for `reserve`."""
    if usage is not None and (usage.input or usage.output):
        return cost(price, usage)
    rates = price.units
    if usage is not None and usage.seconds and rates.per_minute:
        return _up(Fraction(math.ceil(usage.seconds) * rates.per_minute, SECONDS_PER_MINUTE))
    if units.kind == "speech" and rates.per_million_chars:
        return _up(Fraction(units.characters * rates.per_million_chars, PER_TOKENS))
    if units.kind in ("transcription", "translation") and rates.per_minute:
        return _up(Fraction(units.audio_seconds * rates.per_minute, SECONDS_PER_MINUTE))
    if units.kind == "image" and rates.per_image:
        each = rates.image_price(units.quality, units.size)
        return None if each is None else units.images * each
    return reserve(price, units)


def image_output_tokens(price: Price, units: Units) -> int:
    """The image output tokens an image request may make, for token budgets (0: the model
    bills images, not tokens, or is not an image request)."""
    if units.kind != "image":
        return 0
    per_image = price.units.tokens(units.quality, units.size)
    if per_image is None:
        return 0
    return units.images * (per_image + units.partial_images * PARTIAL_IMAGE_TOKENS)


def spoken(units: Units, seconds: float) -> Usage:
    """An upper bound of what a token-billed speech answer without usage cost, from the
    seconds its audio plays (policy.speech.played_seconds): the text it read, and
    policy.speech.AUDIO_TOKENS_PER_SECOND of audio output a second."""
    audio = math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)
    return Usage(input=units.text_tokens, output=audio, audio_output=audio)


def _up(amount: Fraction) -> int:
    return math.ceil(amount)


"""The voice and picture models' prices: per token where OpenAI bills tokens, per unit where it
bills minutes, characters or images, and the image output tokens it publishes per size and
quality. Data only; prices.py turns the rows into `Price`s, units.py into money.

Units (besides OpenAI's usual US dollars per 1M tokens):
- `per_minute`: US dollars a minute of input audio (whisper-1; billed by the second);
- `per_million_chars`: US dollars per 1M input characters (tts-1, tts-1-hd);
- `per_image`: US dollars an image, by "quality/size" (DALL-E: "standard/1024x1024");
- `image_tokens`: image output tokens an image costs, by "quality/size" (GPT image models;
  billed at the output rate, read from the answer's usage; this table bounds the reservation).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

#: Each streamed partial image costs this many more image output tokens (OpenAI, image
#: generation guide, "Partial images cost").
PARTIAL_IMAGE_TOKENS = 100
#: The sizes an image price is published for, from above: a size with no row of its own is
#: reserved per megapixel of the dearest 1024x1024-or-larger row (see `UnitRates.tokens`).
MEGAPIXEL = 1024 * 1024


@dataclass(frozen=True, slots=True)
class UnitRates:
    """Prices that are not per token, in integer micro-dollars (0 or () when the model has
    none), and the image output tokens per image. Tables are ("quality/size", value) pairs."""

    per_minute: int = 0
    per_million_chars: int = 0
    per_image: tuple[tuple[str, int], ...] = ()
    image_tokens: tuple[tuple[str, int], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.per_minute or self.per_million_chars or self.per_image
                    or self.image_tokens)

    def image_price(self, quality: str, size: str) -> int | None:
        """µ$ of one image of this quality and size, from above; None without a table."""
        return _dearest(self.per_image, quality, size)

    def tokens(self, quality: str, size: str) -> int | None:
        """Image output tokens of one image of this quality and size, from above; None
        without a table."""
        return _dearest(self.image_tokens, quality, size)


NO_UNITS = UnitRates()


def _dearest(table: tuple[tuple[str, int], ...], quality: str, size: str) -> int | None:
    """The row for quality/size; "auto" (either) is the dearest row it may resolve to. A size
    without a row (gpt-image-2 takes any WIDTHxHEIGHT) is the dearest row of the quality times
    the megapixels it covers, rounded up: OpenAI's figures grow slower than the area (2048x2048
    high: 14,272 tokens against 4 x 7,024 so reckoned)."""
    if not table:
        return None
    rows = [(q, s, v) for key, v in table for q, _, s in (key.partition("/"),)]
    matching = [v for q, s, v in rows if quality in ("auto", q) and size in ("auto", s)]
    if matching:
        return max(matching)
    same = [v for q, s, v in rows if quality in ("auto", q)] or [v for _, _, v in rows]
    width, _, height = size.partition("x")
    pixels = int(width) * int(height) if width.isdigit() and height.isdigit() else MEGAPIXEL
    return max(same) * max(1, math.ceil(pixels / MEGAPIXEL))


def _sizes(low: tuple[int, int, int], medium: tuple[int, int, int],
           high: tuple[int, int, int]) -> dict[str, int]:
    """A GPT image model's tokens by quality for 1024x1024, 1024x1536 and 1536x1024."""
    out = {}
    for quality, figures in (("low", low), ("medium", medium), ("high", high)):
        for size, value in zip(("1024x1024", "1024x1536", "1536x1024"), figures, strict=True):
            out[f"{quality}/{size}"] = value
    return out


#: OpenAI's table for the GPT image models before gpt-image-2 (image generation guide, "Cost
#: and latency"); gpt-image-1 and gpt-image-1.5's per-image prices are these tokens at their
#: output rates.
GPT_IMAGE_1_TOKENS = _sizes((272, 408, 400), (1056, 1584, 1568), (4160, 6240, 6208))
#: gpt-image-1-mini's per-image prices ($0.005/0.006, $0.011/0.015, $0.036/0.052) are more
#: than that table at its $8 rate: its tokens here are those prices over $8 per 1M, each price
#: taken half a tenth of a cent up (the table rounds to a tenth of a cent), so never less.
GPT_IMAGE_1_MINI_TOKENS = _sizes((688, 813, 813), (1438, 1938, 1938), (4563, 6563, 6563))
#: gpt-image-2: the guide's calculator (high: 7,024 for 1024x1024 and 5,488 for the 3:2 sizes;
#: low 1024x1024: 196) and, where only the per-image price is printed ($0.005 low 3:2, $0.053
#: and $0.041 medium), that price over $30 per 1M taken half a tenth of a cent up.
GPT_IMAGE_2_TOKENS = _sizes((196, 184, 184), (1784, 1384, 1384), (7024, 5488, 5488))

# The rows, US dollars, checked 2026-12-06 against (the gateway itself never reads a pricing
# page): [O] OpenAI's model pages (developers.openai.com/api/docs/models/<id>); [G] OpenAI's
# image generation guide ("Cost and latency", "Partial images cost"), as quoted in dated
# readings; [R] dated readings of OpenAI's pricing page (2026-09-05 for the image models);
# [M] a measured bill (gpt-4o-mini-tts: 4,096 characters, 268 s, 5,392 audio tokens, Nov 2025);
# [T] third-party price lists (OpenRouter, API resellers' pages). Every token rate agrees in
# at least two sources; cached_input is given where OpenAI lists a cache price.
# Retired at OpenAI, kept for compatible upstreams that still serve them: dall-e-2 and dall-e-3
# (removed 2026-05-12), gpt-image-1 (shut down 2026-10-23), as the SDK 3.57 notes say.
# Left out (no published token figures per size, or no audio rate found): gpt-image-2.5-*,
# gpt-image-2.6-*, chatgpt-image-latest, gpt-transcribe, gpt-4o-transcribe-diarize; add them
# under [prices] with the figures of your own invoice.
AS_OF = "2026-12-06"
MEDIA_ROWS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    # Speech. tts-1 and tts-1-hd bill input characters [O][T]; gpt-4o-mini-tts bills text in
    # and audio out, $0.60 and $12 per 1M tokens [O][M][T] (its output is all audio).
    "tts-1": {"per_million_chars": "15.00"},
    "tts-1-hd": {"per_million_chars": "30.00"},
    "gpt-4o-mini-tts": {"input": "0.60", "output": "12.00", "audio_output": "12.00"},
    # Transcription and translation. whisper-1: $0.006 a minute [O][T]. The gpt-4o models:
    # text in and out, audio in [O][T] ($0.006 and $0.003 a minute estimated by OpenAI).
    "whisper-1": {"per_minute": "0.006"},
    "gpt-4o-transcribe": {"input": "2.50", "audio_input": "6.00", "output": "10.00"},
    "gpt-4o-mini-transcribe": {"input": "1.25", "audio_input": "3.00", "output": "5.00"},
    # Images by the image [T] (several dated copies of OpenAI's page agree).
    "dall-e-2": {"per_image": {"standard/256x256": "0.016", "standard/512x512": "0.018",
                               "standard/1024x1024": "0.020"}},
    "dall-e-3": {"per_image": {"standard/1024x1024": "0.040", "standard/1024x1792": "0.080",
                               "standard/1792x1024": "0.080", "hd/1024x1024": "0.080",
                               "hd/1024x1792": "0.120", "hd/1792x1024": "0.120"}},
    # GPT image models: text and image input, image output per 1M tokens [O][R][G].
    "gpt-image-1": {"input": "5.00", "cached_input": "1.25", "image_input": "10.00",
                    "output": "40.00", "image_tokens": GPT_IMAGE_1_TOKENS},
    "gpt-image-1-mini": {"input": "2.00", "cached_input": "0.20", "image_input": "2.50",
                         "output": "8.00", "image_tokens": GPT_IMAGE_1_MINI_TOKENS},
    "gpt-image-1.5": {"input": "5.00", "cached_input": "1.25", "image_input": "8.00",
                      "output": "32.00", "image_tokens": GPT_IMAGE_1_TOKENS},
    "gpt-image-2": {"input": "5.00", "cached_input": "1.25", "image_input": "8.00",
                    "output": "30.00", "image_tokens": GPT_IMAGE_2_TOKENS},
})

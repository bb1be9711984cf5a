"""What the model reads besides text, in tokens reserved before a request is sent: image, audio
and file parts, each counted from above by OpenAI's published rules.

Images (chat and moderation `image_url`, Responses `input_image`, `computer_screenshot`), from
OpenAI's "Images and vision" guide, section "Calculating costs":
- tile models: `detail: low` costs the model's base tokens; `high` and `auto` cost the base
  plus a tile price per 512 px tile, after the image is scaled (never up) to fit 2048 x 2048
  and then to a shortest side of 768 px: at most 8 tiles;
- patch models: one token per 32 px patch covering the image, capped at 1536 patches, times the
  model's multiplier (rounded up). The guide gives `low` its fixed cost for tile models only;
  a patch model is counted by its patches whatever the detail;
- an unknown size (a URL, or a data: URL whose header is not read) counts the largest the
  model accepts (8 tiles, 1536 patches); an image of a data: URL is counted at its real size;
- `detail: original`, and a model none of these families names, count the largest figure of
  any family; no image counts less than 85 tokens.
Audio (`input_audio`, base64 `data` and `format`): OpenAI counts input audio at 1 token per
100 ms ("Managing costs" of the Realtime guide), and the length is bounded from the size: a WAV
by its header (sample rate x block align bytes a second; other WAV codecs are refused), an MP3
at 1,000 bytes a second, its lowest standard bitrate (8 kbit/s).
Files (chat `file`, Responses `input_file`): OpenAI puts a file's extracted text and, for a
PDF, an image of each page in the context. Text is at most one token per byte of the file;
pages are counted as FILE_PAGES images of unknown size. A `file_url` is refused: its size is
not known before the upstream fetches it, and the account would fetch a URL the client chose.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from . import sniff
from .refusal import Refusal

#: OpenAI's snapshot suffixes: `-2024-07-18`, and the older `-0613` form.
SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")
#: No image is counted below this ("detail: low" on GPT-4o).
MIN_IMAGE_TOKENS = 85
#: A PDF's pages are not counted without parsing it: each file part reserves this many page
#: images. A longer PDF is reserved less than it reads (its usage still settles the budget).
FILE_PAGES = 100
#: No OpenAI model reads more text than this (the largest context window, GPT-4.1 and GPT-5.4:
#: about 1.05M tokens): a stored file (`file_id`, stored_state only) counts this much text.
STORED_FILE_TEXT = 1_050_000
#: OpenAI counts input audio at 1 token per 100 ms.
AUDIO_TOKENS_PER_SECOND = 10
#: MP3's lowest standard bitrate (MPEG-2.5 layer III, 8 kbit/s): no MP3 plays longer per byte.
MP3_MIN_BYTES_PER_SECOND = 1000
DETAILS = frozenset({"auto", "low", "high", "original"})
IMAGE_PARTS = frozenset({"image_url", "input_image", "computer_screenshot"})
FILE_PARTS = frozenset({"file", "input_file"})
#: Every part type this module counts (policy.inputs collects them while reading the text).
TYPES = IMAGE_PARTS | FILE_PARTS | {"input_audio"}


@dataclass(frozen=True, slots=True)
class Tiles:
    """A model that counts 512 px tiles."""

    base: int
    tile: int

    def tokens(self, detail: str, size: tuple[int, int] | None) -> int:
        if detail == "low":
            return self.base
        return self.base + self.tile * (8 if size is None else _tiles(*size))


@dataclass(frozen=True, slots=True)
class Patches:
    """A model that counts 32 px patches, times a multiplier."""

    multiplier: Fraction

    def tokens(self, detail: str, size: tuple[int, int] | None) -> int:
        patches = 1536 if size is None else min(
            -(-size[0] // 32) * -(-size[1] // 32), 1536)
        return math.ceil(patches * self.multiplier)


def _tiles(width: int, height: int) -> int:
    """512 px tiles after fitting 2048 x 2048, then a shortest side of 768 (never scaled up).
    Exact fractions: a size on a tile's edge is never rounded into one tile fewer."""
    w, h = Fraction(width), Fraction(height)
    if (longest := max(w, h)) > 2048:
        w, h = w * 2048 / longest, h * 2048 / longest
    if (shortest := min(w, h)) > 768:
        w, h = w * 768 / shortest, h * 768 / shortest
    return math.ceil(w / 512) * math.ceil(h / 512)


#: Image rules by model name (snapshot dates are stripped before looking a name up).
FAMILIES: dict[str, Tiles | Patches] = {
    **dict.fromkeys(("gpt-4o", "chatgpt-4o-latest", "gpt-4.1", "gpt-4.5-preview"),
                    Tiles(85, 170)),
    "gpt-4o-mini": Tiles(2833, 5667),
    **dict.fromkeys(("o1", "o1-pro", "o3"), Tiles(75, 150)),
    **dict.fromkeys(("gpt-5", "gpt-5-chat-latest"), Tiles(70, 140)),
    "computer-use-preview": Tiles(65, 129),
    **dict.fromkeys(("gpt-4.1-mini", "gpt-5-mini"), Patches(Fraction("1.62"))),
    **dict.fromkeys(("gpt-4.1-nano", "gpt-5-nano"), Patches(Fraction("2.46"))),
    "o4-mini": Patches(Fraction("1.72")),
    # Moderation is free: this figure only counts against token budgets. Its models are built
    # on GPT-4o.
    **dict.fromkeys(("omni-moderation-latest", "omni-moderation"), Tiles(85, 170)),
}
#: The moderation model OpenAI uses when a request names none.
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"


@dataclass(frozen=True, slots=True)
class MediaTokens:
    """Tokens reserved for what a request reads besides its text, by how they are billed:
    `image` (image parts and file pages), `audio`, `file` (the text of file parts)."""

    image: int = 0
    audio: int = 0
    file: int = 0


NO_MEDIA = MediaTokens()


def family(model: str | None) -> Tiles | Patches | None:
    """The model's image rules, or None (then the largest figure of any family counts)."""
    if model is None:
        return None
    found = FAMILIES.get(model)
    return found if found is not None else FAMILIES.get(SNAPSHOT.sub("", model))


def image_tokens(model: str | None, detail: str, size: tuple[int, int] | None) -> int:
    """Tokens one image may cost: never below MIN_IMAGE_TOKENS."""
    rules = family(model) if detail != "original" else None
    if rules is not None:
        figure = rules.tokens(detail, size)
    else:  # an unknown model, or "original" (its rules are not published): the largest
        figure = max(r.tokens(detail, None if detail == "original" else size)
                     for r in FAMILIES.values())
    return max(figure, MIN_IMAGE_TOKENS)


def count(parts: list[tuple[dict, str]], model: str | None, *, max_images: int) -> MediaTokens:
    """The tokens of the (part, param) pairs policy.inputs collected, for `model`. Raises
    `Refusal` for a part that cannot be counted, or for the image past `max_images`."""
    images = audio = text = files = 0
    seen = 0
    for part, param in parts:
        kind = part.get("type")
        if kind in IMAGE_PARTS:
            seen += 1
            if seen > max_images:
                raise Refusal(f"'{param}' is image {seen} of this request; this gateway allows "
                              f"at most {max_images} (validation.max_images).", param)
            images += _image(part, param, model)
        elif kind == "input_audio":
            audio += _audio(part, param)
        else:
            text += _file(part, param)
            files += 1
    if files:
        images += files * FILE_PAGES * image_tokens(model, "high", None)
    return MediaTokens(images, audio, text)


def _image(part: dict, param: str, model: str | None) -> int:
    if part["type"] == "image_url":  # chat and moderations: {"url", "detail"} in image_url
        inner = part.get("image_url")
        where = f"{param}.image_url.detail"
        url, detail = (inner.get("url"), inner.get("detail")) if isinstance(inner, dict) \
            else (inner, None)
    else:  # Responses: image_url (or a stored file_id) and detail beside the type
        url, detail, where = part.get("image_url"), part.get("detail"), f"{param}.detail"
    detail = "auto" if detail is None else detail
    if not isinstance(detail, str) or detail not in DETAILS:
        raise Refusal(f"Invalid value for '{where}': expected one of auto, high, low, "
                      "original.", where)
    size = sniff.image_size(url) if isinstance(url, str) else None
    return image_tokens(model, detail, size)


def _audio(part: dict, param: str) -> int:
    inner = part.get("input_audio")
    where = f"{param}.input_audio"
    if not isinstance(inner, dict) or not isinstance(inner.get("data"), str):
        raise Refusal(f"Invalid type for '{where}.data': expected base64 audio.", f"{where}.data")
    data, fmt = inner["data"], inner.get("format")
    size = sniff.decoded_size(data)
    if fmt == "mp3":
        per_second = MP3_MIN_BYTES_PER_SECOND
    elif fmt == "wav":
        found = sniff.wav_bytes_per_second(data)
        if found is None:
            raise Refusal(f"'{where}.data' is not a WAV file of PCM, float, A-law or mu-law "
                          "samples: the gateway cannot tell how long it plays.", f"{where}.data")
        per_second = found
    else:
        raise Refusal(f"Invalid value for '{where}.format': expected one of mp3, wav.",
                      f"{where}.format")
    return -(-size * AUDIO_TOKENS_PER_SECOND // per_second)


def _file(part: dict, param: str) -> int:
    """The text tokens of a file part (its pages are counted by the caller)."""
    fields = part.get("file") if part["type"] == "file" else part
    where = f"{param}.file" if part["type"] == "file" else param
    if not isinstance(fields, dict):
        raise Refusal(f"Invalid type for '{where}': expected an object.", where)
    if fields.get("file_url") is not None:
        raise Refusal(f"'{where}.file_url': files by URL are not accepted by this gateway (the "
                      "upstream would fetch a URL the client chose, and the file's size is not "
                      "known before it does). Send the file as file_data.", f"{where}.file_url")
    data = fields.get("file_data")
    if isinstance(data, str):
        return sniff.decoded_size(sniff.base64_payload(data))
    if fields.get("file_id") is not None:  # only reaches here with validation.stored_state
        return STORED_FILE_TEXT
    raise Refusal(f"Missing required parameter: '{where}.file_data'.", f"{where}.file_data")

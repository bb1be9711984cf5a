"""`POST /v1/images/generations` (JSON) and `/v1/images/edits` (multipart, or JSON with image
references): the request rules, and what they ask to be made.

Parameters are OpenAI's (spec: CreateImageRequest, CreateImageEditRequest,
EditImageBodyJsonParam; SDK 3.57: ImageGenerateParams, ImageEditParams); any other is refused.
`model` is required here (OpenAI's default depends on the other parameters, and the price
depends on the model). `n` is within `validation.max_n`; `size`, `quality`, `background`,
`moderation` and `output_format` are within their `[validation]` allowlists; `partial_images`
is at most 3 (OpenAI's limit; each costs 100 image output tokens). An edit reads at most 16
images (OpenAI's limit) and at most `validation.max_images`; its mask and markup are images
too. The prompt counts in `validation.max_input_chars`.

A multipart edit takes its images as file parts, `image` once or `image[]` repeated (as the
SDKs send an array), never both; a JSON edit as `images: [{"image_url"} | {"file_id"}]`
(`file_id` only with `validation.stored_state`: stored files belong to the whole account).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config.settings import ValidationSettings
from .fields import Fields, unknown, utf8_bytes
from .form import Form, one_of
from .refusal import Refusal
from .units import Units

GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"
#: Parameters both routes take, in either form.
COMMON = frozenset({"prompt", "model", "n", "quality", "response_format", "output_format",
                    "output_compression", "stream", "partial_images", "size", "moderation",
                    "background", "user", "safety_identifier", "complexity", "frame_count",
                    "frame_duration_ms"})
GENERATION_FIELDS = COMMON | {"style", "svg"}
EDIT_JSON_FIELDS = COMMON | {"images", "mask", "input_fidelity"}
EDIT_FORM_TEXT = COMMON | {"input_fidelity", "svg[model]", "svg[reasoning][effort]"}
EDIT_FORM_FILES = frozenset({"image", "image[]", "mask", "markup"})
#: OpenAI's limits: a prompt's characters (GPT image models), images per request, images an
#: edit reads, partial images per image.
MAX_PROMPT_CHARS = 32_000
MAX_N = 10
MAX_INPUT_IMAGES = 16
MAX_PARTIAL_IMAGES = 3
#: Input tokens one image of an edit may cost, from above: gpt-image-1's rule (images and
#: vision guide) at its largest: 65 + 129 per 512 px tile, at most 8 tiles once the image is
#: fit in 2048 x 2048 and its short side in 768, plus 6,240 at high input fidelity.
#: gpt-image-2 reads every image at high fidelity by a rule OpenAI does not publish.
INPUT_IMAGE_TOKENS = 65 + 8 * 129 + 6240
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


@dataclass(frozen=True, slots=True)
class Images:
    units: Units
    #: Answered as server-sent events (`stream: true`).
    stream: bool
    #: The prompt's characters, for max_input_chars.
    chars: int


def check_generation(body: dict, rules: ValidationSettings) -> Images:
    """A generation's JSON body; raises `Refusal` naming the parameter."""
    unknown(body, GENERATION_FIELDS)
    fields = Fields(body)
    fields.choice("style", ("vivid", "natural"))
    svg = body.get("svg")
    if svg is not None:
        if not isinstance(svg, dict):
            raise Refusal("Invalid type for 'svg': expected an object.", "svg")
        unknown((f"svg.{k}" for k in svg), frozenset({"svg.model", "svg.reasoning"}))
        Fields(svg).string("model")
        reasoning = svg.get("reasoning")
        if reasoning is not None:
            if not isinstance(reasoning, dict):
                raise Refusal("Invalid type for 'svg.reasoning': expected an object.",
                              "svg.reasoning")
            unknown((f"svg.reasoning.{k}" for k in reasoning),
                    frozenset({"svg.reasoning.effort"}))
            if reasoning.get("effort") is not None and reasoning["effort"] not in EFFORTS:
                raise Refusal("Invalid value for 'svg.reasoning.effort'.",
                              "svg.reasoning.effort")
    return _common(fields, rules, input_images=0, upload_bytes=0)


def check_edit_json(body: dict, rules: ValidationSettings) -> Images:
    """An edit's JSON body (image references); raises `Refusal` naming the parameter."""
    unknown(body, EDIT_JSON_FIELDS)
    fields = Fields(body)
    fields.choice("input_fidelity", ("low", "high"))
    images = body.get("images")
    if images is None:
        raise Refusal("Missing required parameter: 'images'.", "images")
    if not isinstance(images, list) or not images:
        raise Refusal("Invalid type for 'images': expected a non-empty array.", "images")
    for i, ref in enumerate(images):
        _reference(ref, f"images[{i}]", rules.stored_state)
    if body.get("mask") is not None:
        _reference(body["mask"], "mask", rules.stored_state)
    count = len(images) + (body.get("mask") is not None)
    _input_images(len(images), count, "images", rules)
    return _common(fields, rules, input_images=count, upload_bytes=0)


def check_edit_form(form: Form, rules: ValidationSettings, upload_bytes: int) -> Images:
    """An edit's multipart form (policy.form.collect with EDIT_FORM_TEXT and EDIT_FORM_FILES);
    raises `Refusal` naming the parameter."""
    one_of(form.files, "image", "image[]")
    images = form.file_count("image", "image[]")
    if not images:
        raise Refusal("Missing required parameter: 'image'.", "image")
    fields = Fields(form.text, text=True)
    fields.choice("input_fidelity", ("low", "high"))
    fields.string("svg[model]")
    fields.choice("svg[reasoning][effort]", EFFORTS)
    count = form.file_count("image", "image[]", "mask", "markup")
    _input_images(images, count, "image[]" if "image[]" in form.files else "image", rules)
    return _common(fields, rules, input_images=count, upload_bytes=upload_bytes)


def _common(fields: Fields, rules: ValidationSettings, *, input_images: int,
            upload_bytes: int) -> Images:
    prompt = fields.string("prompt", required=True, max_chars=MAX_PROMPT_CHARS)
    assert prompt is not None
    n = fields.integer("n", 1, MAX_N) or 1
    if n > rules.max_n:
        raise Refusal(f"'n' is {n}; this gateway allows at most {rules.max_n}.", "n")
    size = fields.choice("size", rules.image_sizes, "image_sizes") or "auto"
    quality = fields.choice("quality", rules.image_qualities, "image_qualities") or "auto"
    fields.choice("background", rules.image_backgrounds, "image_backgrounds")
    fields.choice("moderation", rules.image_moderation, "image_moderation")
    fields.choice("output_format", rules.image_formats, "image_formats")
    fields.choice("response_format", ("url", "b64_json"))
    fields.choice("complexity", ("low", "medium", "high"))
    fields.integer("output_compression", 0, 100)
    fields.integer("frame_count", 2, 16)
    fields.integer("frame_duration_ms", 0, 655_350)
    fields.string("user")
    fields.string("safety_identifier")
    stream = bool(fields.boolean("stream"))
    partials = fields.integer("partial_images", 0, MAX_PARTIAL_IMAGES) or 0
    units = Units("image", characters=len(prompt), text_tokens=utf8_bytes(prompt), images=n,
                  size=size, quality=quality, partial_images=partials if stream else 0,
                  input_images=input_images,
                  image_input_tokens=input_images * INPUT_IMAGE_TOKENS,
                  upload_bytes=upload_bytes)
    return Images(units, stream, len(prompt))


def _input_images(images: int, count: int, param: str, rules: ValidationSettings) -> None:
    if images > MAX_INPUT_IMAGES:
        raise Refusal(f"'{param}' has {images} images; at most {MAX_INPUT_IMAGES} are "
                      "allowed.", param)
    if count > rules.max_images:
        raise Refusal(f"This edit reads {count} images (its images, mask and markup); this "
                      f"gateway allows at most {rules.max_images} (validation.max_images).",
                      param)


def _reference(ref, param: str, stored_state: bool) -> None:
    """{"image_url": ...} or {"file_id": ...}, exactly one of them."""
    if not isinstance(ref, dict):
        raise Refusal(f"Invalid type for '{param}': expected an object.", param)
    unknown((f"{param}.{k}" for k in ref),
            frozenset({f"{param}.image_url", f"{param}.file_id"}))
    given = [k for k in ("image_url", "file_id") if ref.get(k) is not None]
    if len(given) != 1:
        raise Refusal(f"'{param}' must have exactly one of image_url and file_id.", param)
    if not isinstance(ref[given[0]], str):
        raise Refusal(f"Invalid type for '{param}.{given[0]}': expected a string.",
                      f"{param}.{given[0]}")
    if given[0] == "file_id" and not stored_state:
        raise Refusal(f"'{param}.file_id' is not available through this gateway: stored "
                      "files belong to the gateway's account, shared by every client "
                      "(validation.stored_state = false). Send the image as image_url.",
                      f"{param}.file_id")

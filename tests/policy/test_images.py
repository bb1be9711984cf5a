"""The request policy of image generations and edits (JSON and multipart): each rule refuses
with a 400 naming its parameter, and what is let through carries the units it is priced by."""
from __future__ import annotations

import orjson
import pytest

from openai_gateway.config.settings import ValidationSettings
from openai_gateway.policy import Refusal, RequestPolicy
from openai_gateway.policy.form import FormPart

MODELS = ("gpt-image-1", "gpt-image-1-mini", "dall-e-3")
GENERATE = "/v1/images/generations"
EDIT = "/v1/images/edits"
PNG = "data:image/png;base64,iVBORw0KGgo="


def policy(**rules) -> RequestPolicy:
    return RequestPolicy(ValidationSettings(allowed_models=MODELS, **rules))


def generate(body: dict, **rules):
    return policy(**rules).check(GENERATE, orjson.dumps(
        {"model": "gpt-image-1", "prompt": "a fox", **body}))


def edit_json(body: dict, **rules):
    return policy(**rules).check(EDIT, orjson.dumps(
        {"model": "gpt-image-1", "prompt": "a fox", "images": [{"image_url": PNG}], **body}))


def text(name: str, value: str) -> FormPart:
    return FormPart(name, None, None, len(value.encode()), value)


def image(name: str = "image[]", filename: str = "a.png") -> FormPart:
    return FormPart(name, filename, "image/png", 1000, None, b"\x89PNG")


def edit_form(*parts: FormPart, **rules):
    base = [text("model", "gpt-image-1"), text("prompt", "a fox")]
    names = {p.name for p in parts}
    return policy(**rules).check_form(EDIT, [b for b in base if b.name not in names]
                                      + list(parts), upload_bytes=5000)


def refused(call, *args, **kw) -> Refusal:
    with pytest.raises(Refusal) as e:
        call(*args, **kw)
    return e.value


def test_generation_units():
    parsed = generate({"n": 2, "size": "1024x1536", "quality": "high", "stream": True,
                       "partial_images": 2})
    u = parsed.units
    assert (u.kind, u.images, u.size, u.quality, u.partial_images) == (
        "image", 2, "1024x1536", "high", 2)
    assert u.characters == 5 and u.text_tokens == 5 and parsed.stream is True
    assert parsed.choices == 2 and parsed.input_chars == 5


def test_defaults_are_auto_and_partials_count_only_when_streaming():
    u = generate({"partial_images": 3}).units
    assert (u.images, u.size, u.quality, u.partial_images) == (1, "auto", "auto", 0)


@pytest.mark.parametrize("body, param", [
    ({"n": 5}, "n"),  # over max_n (4)
    ({"n": 11}, "n"),
    ({"n": 0}, "n"),
    ({"n": "2"}, "n"),
    ({"size": "4096x4096"}, "size"),
    ({"quality": "max"}, "quality"),
    ({"moderation": "low"}, "moderation"),
    ({"output_format": "svg"}, "output_format"),
    ({"background": "glass"}, "background"),
    ({"partial_images": 4}, "partial_images"),
    ({"stream": "true"}, "stream"),
    ({"output_compression": 101}, "output_compression"),
    ({"style": "cubist"}, "style"),
    ({"response_format": "png"}, "response_format"),
    ({"svg": {"model": "x", "budget": 1}}, "svg.budget"),
    ({"seed": 1}, "seed"),
    ({"prompt": None}, "prompt"),
    ({"prompt": "x" * 32_001}, "prompt"),
    ({"model": None}, "model"),
    ({"model": "gpt-image-2"}, "model"),
])
def test_generation_refusals_name_their_parameter(body, param):
    assert refused(generate, body, max_input_chars=100_000).param == param


def test_the_operator_widens_the_allowlists():
    u = generate({"size": "2048x2048", "moderation": "low", "output_format": "gif",
                  "quality": "max"}, image_sizes=("2048x2048",), image_moderation=("low",),
                 image_formats=("gif",), image_qualities=("max",)).units
    assert (u.size, u.quality) == ("2048x2048", "max")


def test_the_prompt_counts_in_max_input_chars():
    e = refused(generate, {"prompt": "x" * 101}, max_input_chars=100)
    assert e.param == "prompt" and e.code == "context_length_exceeded"


# --- edits ---------------------------------------------------------------------------------


def test_a_json_edit_counts_its_images_and_mask():
    parsed = edit_json({"images": [{"image_url": PNG}, {"image_url": "https://x/y.png"}],
                        "mask": {"image_url": PNG}, "input_fidelity": "high"})
    assert parsed.units.input_images == 3 and parsed.units.upload_bytes == 0


@pytest.mark.parametrize("body, param", [
    ({"images": []}, "images"),
    ({"images": None}, "images"),
    ({"images": [{"file_id": "file-1"}]}, "images[0].file_id"),
    ({"images": [{"image_url": PNG, "file_id": "f"}]}, "images[0]"),
    ({"images": [{"url": PNG}]}, "images[0].url"),
    ({"images": [{"image_url": PNG}] * 17}, "images"),
    ({"mask": "m.png"}, "mask"),
    ({"input_fidelity": "max"}, "input_fidelity"),
    ({"style": "vivid"}, "style"),  # generations only
])
def test_json_edit_refusals_name_their_parameter(body, param):
    assert refused(edit_json, body, max_images=20).param == param


def test_file_ids_with_stored_state():
    assert edit_json({"images": [{"file_id": "file-1"}]}, stored_state=True).units.input_images \
        == 1


def test_max_images_bounds_what_an_edit_reads():
    e = refused(edit_json, {"images": [{"image_url": PNG}] * 3}, max_images=2)
    assert e.param == "images" and "validation.max_images" in e.message


def test_a_multipart_edit_with_repeated_image_parts():
    parsed = edit_form(image(), image(filename="b.png"), image("mask"), text("n", "2"),
                       text("stream", "true"), text("partial_images", "1"))
    u = parsed.units
    assert (u.input_images, u.images, u.partial_images, u.upload_bytes) == (3, 2, 1, 5000)
    assert parsed.stream is True and parsed.body["prompt"] == "a fox"


@pytest.mark.parametrize("parts, param", [
    ([], "image"),
    ([image("image"), image("image")], "image"),  # a plain name given twice
    ([image("image"), image("image[]")], "image[]"),  # both spellings
    ([image(), text("image[]", "x")], "image[]"),  # a file parameter sent as text
    ([image(), image("mask"), image("mask")], "mask"),
    ([image(), text("model", "gpt-image-1")], "model"),  # the form's own model, repeated
    ([image(), text("n", "two")], "n"),
    ([image(), text("quality", "ultra")], "quality"),
    ([image(), text("svg[reasoning][effort]", "lots")], "svg[reasoning][effort]"),
    ([image(), text("svg[author]", "x")], "svg[author]"),
    ([image(), image("prompt")], "prompt"),
])
def test_multipart_edit_refusals_name_their_parameter(parts, param):
    if param == "model":
        parts = [text("model", "gpt-image-1"), *parts]
    assert refused(edit_form, *parts).param == param

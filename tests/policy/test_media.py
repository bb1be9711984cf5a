"""The tokens reserved for image, audio and file parts: OpenAI's figures per model family and
detail, the sizes read from data: URLs, the bounds for audio and files, and the refusals."""
from __future__ import annotations

import base64
import struct

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openai_gateway.config.settings import ValidationSettings
from openai_gateway.policy import Refusal, RequestPolicy, media, sniff

LARGEST = 2833 + 8 * 5667  # gpt-4o-mini at 8 tiles: the largest figure of any family


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">II", width, height) + b"\x08\x02\x00\x00\x00"
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0" * 40


def jpeg(width: int, height: int, segments: int = 1) -> bytes:
    """SOI, `segments` APP1 segments of 30,000 bytes (each holding a decoy frame header, as a
    thumbnail would), then the real frame header."""
    decoy = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", 1, 1) + b"\0" * 12
    app1 = b"\xff\xe1" + struct.pack(">H", 30002) + (decoy + b"\0" * 30000)[:30000]
    sof = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", height, width) + b"\x03" + b"\0" * 9
    return b"\xff\xd8" + app1 * segments + sof + b"\xff\xda" + b"\0" * 20


def wav(rate: int = 16000, align: int = 2, frames: int = 16000, tag: int = 1) -> bytes:
    fmt = struct.pack("<HHIIHH", tag, 1, rate, rate * align, align, 8 * align)
    data = b"\0" * (frames * align)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt "
            + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data)


# --- one image, per family ---------------------------------------------------------------------

@pytest.mark.parametrize("model, low, unknown, square_1024, tall_2048x4096", [
    ("gpt-4o", 85, 85 + 8 * 170, 765, 1105),                 # the guide's own examples
    ("gpt-4o-2024-08-06", 85, 1445, 765, 1105),              # a snapshot finds its family
    ("gpt-4.1", 85, 1445, 765, 1105),
    ("gpt-4.5-preview", 85, 1445, 765, 1105),
    ("gpt-4o-mini", 2833, LARGEST, 2833 + 4 * 5667, 2833 + 6 * 5667),
    ("o1", 85, 75 + 8 * 150, 75 + 4 * 150, 75 + 6 * 150),    # base 75: never below 85
    ("o1-pro", 85, 1275, 675, 975),
    ("o3", 85, 1275, 675, 975),
    ("gpt-5", 85, 70 + 8 * 140, 70 + 4 * 140, 70 + 6 * 140),
    ("gpt-5-chat-latest", 85, 1190, 630, 910),
    ("computer-use-preview", 85, 65 + 8 * 129, 65 + 4 * 129, 65 + 6 * 129),
])
def test_tile_models(model, low, unknown, square_1024, tall_2048x4096):
    assert media.image_tokens(model, "low", None) == low
    assert media.image_tokens(model, "low", (4096, 8192)) == low  # low: whatever the size
    for detail in ("auto", "high"):
        assert media.image_tokens(model, detail, None) == unknown
        assert media.image_tokens(model, detail, (1024, 1024)) == square_1024
        assert media.image_tokens(model, detail, (2048, 4096)) == tall_2048x4096


@pytest.mark.parametrize("size, tiles", [
    ((512, 512), 1), ((513, 512), 2), ((128, 64), 1),        # small images are not scaled up
    ((768, 2048), 8), ((100_000, 1), 4), ((1, 100_000), 4),  # never more than 8
    ((4096, 4096), 4), ((1800, 2400), 4), ((1024, 2048), 6),
])
def test_tiles_after_fitting_2048_then_768(size, tiles):
    assert media.image_tokens("gpt-4o", "high", size) == 85 + 170 * tiles


@pytest.mark.parametrize("model, multiplier", [
    ("gpt-4.1-mini", "1.62"), ("gpt-4.1-nano", "2.46"), ("o4-mini", "1.72"),
    ("gpt-5-mini", "1.62"), ("gpt-5-nano", "2.46"), ("gpt-4.1-mini-2025-04-14", "1.62"),
])
def test_patch_models(model, multiplier):
    m = float(multiplier)
    for detail in ("auto", "high", "low"):  # low has no fixed cost on patch models
        assert media.image_tokens(model, detail, None) == pytest.approx(1536 * m, abs=1)
        assert media.image_tokens(model, detail, None) >= 1536 * m
        assert media.image_tokens(model, detail, (1024, 1024)) >= 1024 * m  # 32 x 32 patches
        assert media.image_tokens(model, detail, (1800, 2400)) == media.image_tokens(
            model, detail, None)  # 4275 patches: capped at 1536 (the guide's shrink: 1452)
        assert media.image_tokens(model, detail, (10, 10)) == 85  # 1 patch: never below 85


def test_an_unknown_model_gets_the_largest_figure_of_any_family():
    for model in (None, "gpt-5.4", "o3-pro", "my-local-model"):
        assert media.image_tokens(model, "auto", None) == LARGEST
        assert media.image_tokens(model, "low", None) == 3779  # gpt-5-nano's 1536 x 2.46
        assert media.image_tokens(model, "high", (1024, 1024)) == 2833 + 4 * 5667


def test_detail_original_counts_the_largest_whatever_the_model():
    assert media.image_tokens("gpt-4o", "original", (64, 64)) == LARGEST


@pytest.mark.parametrize("model", [*media.FAMILIES, None])
def test_no_image_counts_below_85(model):
    for detail in ("low", "auto", "high", "original"):
        for size in ((1, 1), (32, 32), None):
            assert media.image_tokens(model, detail, size) >= 85


# --- sizes read from data: URLs ---------------------------------------------------------------

def webp(chunk: bytes, body: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(body)) + b"WEBP" + chunk \
        + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("url, size", [
    (data_url(png(1024, 768)), (1024, 768)),
    (data_url(jpeg(4032, 3024), "image/jpeg"), (4032, 3024)),  # after 30 KB of EXIF
    (data_url(webp(b"VP8 ", b"\0\0\0\x9d\x01\x2a" + struct.pack("<HH", 640, 480) + b"\0" * 8),
              "image/webp"), (640, 480)),
    (data_url(webp(b"VP8L", b"\x2f" + struct.pack("<I", (639) | (479 << 14)) + b"\0" * 8),
              "image/webp"), (640, 480)),
    (data_url(webp(b"VP8X", b"\0" * 4 + (1999).to_bytes(3, "little")
                   + (999).to_bytes(3, "little") + b"\0" * 8), "image/webp"), (2000, 1000)),
])
def test_image_sizes_from_data_urls(url, size):
    assert sniff.image_size(url) == size


@pytest.mark.parametrize("url", [
    "https://example.com/cat.png",                              # not data: unknown
    data_url(b"GIF89a" + struct.pack("<HH", 10, 10) + b"\0" * 40, "image/gif"),  # GIF: not read
    data_url(png(0, 10)),                                       # a zero side
    data_url(jpeg(640, 480, segments=4), "image/jpeg"),         # frame header beyond the limit
    "data:image/png;base64,iVBO!!!!" + "A" * 100,               # not clean base64
    data_url(b"\0" * 64),                                       # no known signature
    "data:image/png,rawbytes",                                  # not base64
    "data:image/png;base64,ééééiVBORw0KGgo" + "A" * 100,        # not ASCII
])
def test_unreadable_sizes_are_unknown(url):
    assert sniff.image_size(url) is None


def test_a_small_data_url_image_is_reserved_at_its_size():
    small = {"type": "image_url", "image_url": {"url": data_url(png(512, 512))}}
    url = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    assert media.count([(small, "p")], "gpt-4o", max_images=10).image == 85 + 170
    assert media.count([(url, "p")], "gpt-4o", max_images=10).image == 1445


# --- audio and files -------------------------------------------------------------------------

def audio(raw: bytes, fmt: str) -> dict:
    return {"type": "input_audio",
            "input_audio": {"data": base64.b64encode(raw).decode(), "format": fmt}}


def test_wav_is_counted_from_its_header_at_ten_tokens_a_second():
    one_second = audio(wav(rate=16000, align=2, frames=16000), "wav")
    assert media.count([(one_second, "p")], "gpt-4o", max_images=0).audio == 11  # + its header
    slow = audio(wav(rate=8000, align=1, frames=80000), "wav")  # 10 s of 8 kHz 8-bit
    assert media.count([(slow, "p")], "gpt-4o", max_images=0).audio == 101
    low_rate = audio(wav(rate=100, align=1, frames=1000), "wav")  # 10 s at 100 Hz: 1 KB
    assert media.count([(low_rate, "p")], "gpt-4o", max_images=0).audio >= 100


def test_mp3_is_counted_at_its_lowest_bitrate():
    part = audio(b"\xff\xfb" + b"\0" * 9998, "mp3")  # 10,000 bytes: at most 10 s at 8 kbit/s
    assert media.count([(part, "p")], "gpt-4o", max_images=0).audio == 100


@pytest.mark.parametrize("part, param", [
    (audio(wav(tag=2), "wav"), "p.input_audio.data"),           # ADPCM: length not measurable
    (audio(b"not a wav file at all" * 4, "wav"), "p.input_audio.data"),
    ({"type": "input_audio", "input_audio": {"data": "ééé", "format": "wav"}},
     "p.input_audio.data"),
    (audio(b"\0" * 100, "flac"), "p.input_audio.format"),
    ({"type": "input_audio", "input_audio": {"format": "mp3"}}, "p.input_audio.data"),
    ({"type": "input_audio", "input_audio": "abc"}, "p.input_audio.data"),
])
def test_audio_that_cannot_be_measured_is_refused(part, param):
    with pytest.raises(Refusal) as info:
        media.count([(part, "p")], "gpt-4o", max_images=0)
    assert info.value.param == param


def test_a_file_counts_a_token_a_byte_plus_its_pages():
    pdf = b"%PDF-1.7\n" + b"x" * 2991  # 3,000 bytes
    chat_part = {"type": "file", "file": {"filename": "a.pdf",
                                          "file_data": data_url(pdf, "application/pdf")}}
    found = media.count([(chat_part, "p")], "gpt-4o", max_images=0)
    assert found.file == 3000
    assert found.image == media.FILE_PAGES * 1445
    responses_part = {"type": "input_file", "file_data": data_url(pdf, "application/pdf")}
    assert media.count([(responses_part, "p")], "gpt-4o", max_images=0) == found


@pytest.mark.parametrize("part, param", [
    ({"type": "input_file", "file_url": "https://example.com/a.pdf"}, "p.file_url"),
    ({"type": "file", "file": {"file_url": "https://example.com/a.pdf"}}, "p.file.file_url"),
    ({"type": "file", "file": {"filename": "a.pdf"}}, "p.file.file_data"),
    ({"type": "file", "file": "abc"}, "p.file"),
])
def test_files_that_cannot_be_measured_are_refused(part, param):
    with pytest.raises(Refusal) as info:
        media.count([(part, "p")], "gpt-4o", max_images=10)
    assert info.value.param == param


def test_a_stored_file_counts_the_most_text_a_model_reads():
    part = {"type": "input_file", "file_id": "file-abc"}
    assert media.count([(part, "p")], "gpt-4o", max_images=0).file == media.STORED_FILE_TEXT


# --- through the request policy ---------------------------------------------------------------

def check(route: str, body: dict, **rules):
    policy = RequestPolicy(ValidationSettings(allowed_models=(), **rules))
    return policy.check(route, orjson.dumps(body))


def image(url: str = "https://example.com/a.png", **extra) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def test_plain_text_reserves_no_media():
    parsed = check("/v1/chat/completions",
                   {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert (parsed.image_tokens, parsed.audio_tokens, parsed.file_tokens) == (0, 0, 0)


def test_chat_images_are_reserved_and_their_urls_are_not_text():
    parsed = check("/v1/chat/completions", {"model": "gpt-4o", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "abcd"}, image(),
                                     image(detail="low")]}]})
    assert parsed.input_chars == 4
    assert parsed.image_tokens == 1445 + 85
    assert parsed.prompt_tokens == 1 + 1445 + 85


def test_responses_images_anywhere_in_the_input_are_reserved():
    body = {"model": "gpt-4.1", "input": [
        {"role": "user", "content": [{"type": "input_image", "image_url": "https://e/a.png",
                                      "detail": "high"}]},
        {"type": "function_call_output", "call_id": "c1", "output": [
            {"type": "input_image", "image_url": "https://e/b.png", "detail": "low"}]},
        {"type": "computer_call_output", "call_id": "c2", "output": {
            "type": "computer_screenshot", "image_url": "https://e/c.png"}}]}
    assert check("/v1/responses", body).image_tokens == 1445 + 85 + 1445


def test_moderation_images_use_the_moderation_models_figure():
    body = {"input": [{"type": "text", "text": "x"}, image()]}
    assert check("/v1/moderations", body).image_tokens == 1445


@pytest.mark.parametrize("max_images, ok", [(2, True), (1, False), (0, False)])
def test_max_images(max_images, ok):
    body = {"model": "gpt-4o", "messages": [
        {"role": "user", "content": [image()]}, {"role": "user", "content": [image()]}]}
    if ok:
        check("/v1/chat/completions", body, max_images=max_images)
        return
    with pytest.raises(Refusal) as info:
        check("/v1/chat/completions", body, max_images=max_images)
    assert info.value.param == f"messages[{max_images}].content[0]"
    assert f"at most {max_images}" in info.value.message


@pytest.mark.parametrize("detail, param", [
    ("ultra", "messages[0].content[0].image_url.detail"),
    (["low"], "messages[0].content[0].image_url.detail"),
])
def test_an_unknown_detail_is_refused(detail, param):
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": [image(detail=detail)]}]}
    with pytest.raises(Refusal) as info:
        check("/v1/chat/completions", body)
    assert info.value.param == param


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=20)
    | st.sampled_from(["low", "auto", "original", "wav", "mp3", "data:image/png;base64,AAAA"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["url", "detail", "data", "format", "file_data", "file_url", "file_id",
                         "image_url", "input_audio", "file", "type"]), inner, max_size=4),
    max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(media.TYPES)), fields=st.dictionaries(
    st.sampled_from(["image_url", "detail", "input_audio", "file", "file_data", "file_url",
                     "file_id"]), json_values, max_size=3))
def test_any_shape_of_a_part_is_counted_or_refused(kind, fields):
    """Never a 500: whatever a part holds, it is counted or refused naming a param."""
    part = {**fields, "type": kind}
    for route, body in (("/v1/chat/completions", {"model": "gpt-4o", "messages": [
                            {"role": "user", "content": [part]}]}),
                        ("/v1/responses", {"model": "gpt-4o", "input": [
                            {"role": "user", "content": [part]},
                            {"type": "function_call_output", "call_id": "c", "output": [part]}]}),
                        ("/v1/moderations", {"input": [part]})):
        try:
            parsed = check(route, body, stored_state=True)
        except Refusal as refusal:
            assert refusal.param
        else:
            assert parsed.prompt_tokens >= 0

"""Sizes read from the first bytes of base64 data or of an upload: an image's width and height
(PNG, JPEG, WebP), a WAV file's bytes per second, whether a file is MP3. Pure, bounded, and
never trusted beyond the header.

Only what a decoder itself reads is used (PNG's IHDR, JPEG's frame header, WebP's frame or
canvas header, WAV's `fmt ` chunk), so the size found is the size the upstream decodes. GIF is
not read: a GIF frame may be larger than its logical screen, and decoders then grow the
canvas. Anything unreadable gives None, and the caller counts the largest figure instead.
"""
from __future__ import annotations

import binascii

#: Base64 characters decoded at most: a JPEG's frame header follows its metadata (EXIF with
#: a thumbnail is up to 64 KB), so this covers 96 KiB of image.
MAX_PREFIX_CHARS = 128 * 1024
#: JPEG segments followed at most before giving up (each is one bounded step).
MAX_JPEG_SEGMENTS = 64
#: JPEG start-of-frame markers: SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC).
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: WAV format tags whose bytes per second is sample rate x block align: PCM, IEEE float,
#: A-law, mu-law (and WAVE_FORMAT_EXTENSIBLE carrying one of them).
WAV_LINEAR = frozenset({1, 3, 6, 7})
WAV_EXTENSIBLE = 0xFFFE


def base64_payload(value: str) -> str:
    """The base64 text of a data: URL ("data:image/png;base64,iVBOR..."), or `value` itself."""
    if value.startswith("data:"):
        comma = value.find(",")
        return value[comma + 1:] if comma >= 0 else ""
    return value


def decoded_size(payload: str) -> int:
    """The bytes base64 `payload` decodes to (an upper bound if it holds other characters)."""
    return len(payload) * 3 // 4 - payload[-2:].count("=")


def head(payload: str, chars: int) -> bytes | None:
    """The first bytes of base64 `payload` (strict: None if it is not clean base64)."""
    cut = min(len(payload), chars) // 4 * 4
    try:
        return binascii.a2b_base64(payload[:cut], strict_mode=True)
    except ValueError:  # binascii.Error, or a character that is not ASCII
        return None


def image_size(url: str) -> tuple[int, int] | None:
    """(width, height) of a base64 data: URL's image, or None (not data, unknown format,
    unreadable header)."""
    if not url.startswith("data:") or ";base64," not in url[:100]:
        return None
    payload = base64_payload(url)
    data = head(payload, 64)
    if data is None or len(data) < 30:
        return None
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        return _positive(int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    if data[:2] == b"\xff\xd8":
        data = head(payload, MAX_PREFIX_CHARS)
        return _jpeg(data) if data is not None else None
    return None


def _positive(width: int, height: int) -> tuple[int, int] | None:
    return (width, height) if width > 0 and height > 0 else None


def _webp(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: the key frame header
        return _positive(int.from_bytes(data[26:28], "little") & 0x3FFF,
                         int.from_bytes(data[28:30], "little") & 0x3FFF)
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit width-1 and height-1
        bits = int.from_bytes(data[21:25], "little")
        return _positive((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":  # extended: the canvas, 24-bit width-1 and height-1
        return _positive(int.from_bytes(data[24:27], "little") + 1,
                         int.from_bytes(data[27:30], "little") + 1)
    return None


def _jpeg(data: bytes) -> tuple[int, int] | None:
    """The first frame header's size, following segment lengths from the start (metadata
    segments, thumbnails inside them included, are skipped whole)."""
    at = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        if at + 9 > len(data) or data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in JPEG_SOF:
            return _positive(int.from_bytes(data[at + 7:at + 9], "big"),
                             int.from_bytes(data[at + 5:at + 7], "big"))
        if marker == 0xD9 or marker == 0xDA:  # end of image, or scan data before any frame
            return None
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    return None


def wav_bytes_per_second(payload: str) -> int | None:
    """Bytes per second of a base64 WAV file of linear PCM, float, A-law or mu-law samples
    (sample rate x block align, as a decoder plays it), or None for anything else."""
    data = head(payload, 4096)
    return None if data is None else wav_rate(data)


def wav_rate(data: bytes) -> int | None:
    """`wav_bytes_per_second` of a WAV file's first bytes (its RIFF header and `fmt ` chunk)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    at = 12
    while at + 8 <= len(data):
        size = int.from_bytes(data[at + 4:at + 8], "little")
        if data[at:at + 4] == b"fmt " and size >= 16 and at + 8 + size <= len(data):
            fmt = data[at + 8:at + 8 + size]
            tag = int.from_bytes(fmt[0:2], "little")
            if tag == WAV_EXTENSIBLE and size >= 26:
                tag = int.from_bytes(fmt[24:26], "little")  # the sub-format's leading code
            rate = int.from_bytes(fmt[4:8], "little")
            align = int.from_bytes(fmt[12:14], "little")
            return rate * align if tag in WAV_LINEAR and rate > 0 and align > 0 else None
        at += 8 + size + (size & 1)  # chunks are padded to an even size
    return None


def is_mp3(data: bytes) -> bool:
    """An MP3 file's first bytes: an ID3v2 tag, or an MPEG audio frame's sync word."""
    return data[:3] == b"ID3" or (len(data) >= 2 and data[0] == 0xFF
                                  and data[1] & 0xE0 == 0xE0)

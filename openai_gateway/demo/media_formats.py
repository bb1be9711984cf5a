"""Small real media and OpenAI's answer shapes for voice and pictures, as pure functions.

- `wav` / `pcm`: a tone as OpenAI's speech PCM (24 kHz, 16-bit little-endian, mono), in a WAV
  file made with the `wave` module, or raw;
- `png`: a small gradient PNG (zlib + struct), optionally grown to a given size by a private
  ancillary chunk that decoders skip (PNG spec 5.4), so a test can send megabyte events;
- `wav_seconds`: how long a WAV upload plays, read from its header with the `wave` module;
- the usage objects OpenAI reports per model (spec: CreateTranscriptionResponseJson,
  SpeechAudioDoneEvent, ImagesUsage), with the fake's own token figures below.
"""
from __future__ import annotations

import base64
import io
import math
import random
import struct
import wave
import zlib

from .formats import count_tokens

#: OpenAI's speech PCM: 24 kHz, 16-bit signed little-endian, one channel.
SAMPLE_RATE = 24_000
SAMPLE_BYTES = 2
PCM_BYTES_PER_SECOND = SAMPLE_RATE * SAMPLE_BYTES
#: Samples in one cycle of the fake's tone (400 Hz at 24 kHz).
CYCLE = 60
#: The fake speaks 15 characters a second (a measured reading: 4,096 characters in 268 s).
CHARS_PER_SECOND = 15
#: Audio tokens of generated speech, 1 per 50 ms (about what OpenAI bills gpt-4o-mini-tts).
SPEECH_TOKENS_PER_SECOND = 20
#: Audio tokens of transcribed input: 1,000 a minute (OpenAI's $0.006/min estimate at $6/1M).
TRANSCRIBE_TOKENS_PER_MINUTE = 1000
#: Image output tokens by quality and size, as OpenAI publishes them for the GPT image models
#: before gpt-image-2 (image generation guide, "Cost and latency").
IMAGE_TOKENS = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
#: Each streamed partial image costs this many more image output tokens (the same guide).
PARTIAL_IMAGE_TOKENS = 100
#: The fake's figure for one input image of an edit (gpt-image-1, low fidelity, 4 tiles).
EDIT_IMAGE_TOKENS = 65 + 4 * 129
#: The Images API's models that bill by the image and report no usage.
DALL_E = ("dall-e-2", "dall-e-3")
#: The transcription model that bills by the second (usage {"type": "duration"}).
WHISPER = "whisper-1"
#: The speech models that bill by the character and report no usage.
TTS_BY_CHARACTER = ("tts-1", "tts-1-hd")
#: Private ancillary PNG chunk type: lowercase first letter = ancillary (decoders skip it),
#: lowercase second = private, uppercase third = reserved bit clear, lowercase fourth = safe
#: to copy.
PAD_CHUNK = b"paDd"
#: Content types OpenAI answers speech with, by response_format; the fake only encodes WAV
#: and PCM, and labels what it sends truthfully (audio/wav) for the others.
SPEECH_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm"}


def pcm(seconds: float) -> bytes:
    """A 400 Hz tone of `seconds` as 16-bit mono samples at SAMPLE_RATE (one 60-sample cycle
    repeated: minutes of audio cost no time to make)."""
    count = max(1, int(seconds * SAMPLE_RATE))
    cycle = struct.pack(f"<{CYCLE}h", *(int(8000 * math.sin(2 * math.pi * i / CYCLE))
                                        for i in range(CYCLE)))
    whole, rest = divmod(count, CYCLE)
    return cycle * whole + cycle[:rest * SAMPLE_BYTES]


def wav(seconds: float) -> bytes:
    """A WAV file of a tone of `seconds`."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(SAMPLE_BYTES)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm(seconds))
    return out.getvalue()


def wav_seconds(data: bytes) -> float | None:
    """How long a WAV file plays, from its header (None: not a WAV file `wave` can read)."""
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            rate, frames = w.getframerate(), w.getnframes()
    except (wave.Error, EOFError, struct.error):
        return None
    return frames / rate if rate else None


def speech_seconds(text: str, speed: float = 1.0) -> float:
    """How long the fake takes to say `text`."""
    return max(len(text), 1) / CHARS_PER_SECOND / speed


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png(width: int = 64, height: int = 64, *, seed: int = 0, total_bytes: int = 0) -> bytes:
    """An RGB gradient PNG; `total_bytes` > its natural size grows it to about that many
    bytes with a private chunk of pseudo-random bytes (deterministic for a seed)."""
    rng = random.Random(seed)
    tint = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    rows = b"".join(
        b"\x00" + bytes(c for x in range(width)
                        for c in ((x * 255 // max(width - 1, 1)) ^ tint[0],
                                  (y * 255 // max(height - 1, 1)) ^ tint[1], tint[2]))
        for y in range(height))
    head = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    data = _chunk(b"IDAT", zlib.compress(rows, 9))
    pad = b""
    room = total_bytes - (8 + len(head) + len(data) + 12) - 12
    if room > 0:
        pad = _chunk(PAD_CHUNK, rng.randbytes(room))
    return b"\x89PNG\r\n\x1a\n" + head + pad + data + _chunk(b"IEND", b"")


def b64_png(*, seed: int = 0, b64_bytes: int = 0) -> str:
    """A PNG as base64 text of about `b64_bytes` characters (its natural size when smaller)."""
    return base64.b64encode(png(seed=seed, total_bytes=b64_bytes * 3 // 4)).decode()


def speech_usage(text: str, seconds: float) -> dict:
    """gpt-4o-mini-tts's usage (SpeechAudioDoneEvent): input text tokens, output audio tokens."""
    tin, tout = count_tokens(text), math.ceil(seconds * SPEECH_TOKENS_PER_SECOND)
    return {"input_tokens": tin, "output_tokens": tout, "total_tokens": tin + tout}


def transcription_usage(model: str, seconds: float, prompt: str, text: str) -> dict:
    """What OpenAI reports for a transcription: whole seconds for whisper-1, else tokens."""
    if model == WHISPER:
        return {"type": "duration", "seconds": math.ceil(seconds)}
    audio = math.ceil(seconds * TRANSCRIBE_TOKENS_PER_MINUTE / 60)
    text_in = count_tokens(prompt) if prompt else 0
    out = len(text.split())
    return {"type": "tokens", "input_tokens": audio + text_in,
            "input_token_details": {"text_tokens": text_in, "audio_tokens": audio},
            "output_tokens": out, "total_tokens": audio + text_in + out}


def image_usage(prompt: str, images: int, size: str, quality: str, *, partials: int = 0,
                input_images: int = 0) -> dict:
    """ImagesUsage of a GPT image model: the prompt and input images in, `images` out (plus
    PARTIAL_IMAGE_TOKENS for each partial image streamed)."""
    text_in = count_tokens(prompt)
    image_in = input_images * EDIT_IMAGE_TOKENS
    out = images * IMAGE_TOKENS[quality][size] + partials * PARTIAL_IMAGE_TOKENS
    return {"input_tokens": text_in + image_in,
            "input_tokens_details": {"text_tokens": text_in, "image_tokens": image_in},
            "output_tokens": out,
            "output_tokens_details": {"image_tokens": out, "text_tokens": 0},
            "total_tokens": text_in + image_in + out}

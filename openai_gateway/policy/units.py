"""What a voice or picture request asks the upstream to make, in the units it is priced by.

The policy fills these from the request alone; metering.units turns them into the money to
reserve (each an upper bound) and, when the answer reports no usage, the money to settle.
Token counts here are upper bounds by the rules stated where they are computed
(policy.speech, policy.transcription, policy.images).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["speech", "transcription", "translation", "image"]


@dataclass(frozen=True, slots=True)
class Units:
    kind: Kind
    #: Characters of the text the model reads (speech: the input; images: the prompt). tts-1
    #: and tts-1-hd bill the input's characters.
    characters: int = 0
    #: An upper bound of the text input tokens: UTF-8 bytes of that text (input, instructions,
    #: prompt), since a token holds at least one byte.
    text_tokens: int = 0
    #: Speech: an upper bound of the audio tokens a token-billed model generates.
    audio_output_tokens: int = 0
    #: Transcription and translation: an upper bound of the audio's seconds, and of the audio
    #: tokens a token-billed model reads for them.
    audio_seconds: int = 0
    audio_input_tokens: int = 0
    #: Transcription: the most text tokens the model writes.
    output_tokens: int = 0
    #: Images: how many, of which requested size and quality ("auto" as asked: priced as the
    #: dearest), and the partial images streamed before each.
    images: int = 0
    size: str = ""
    quality: str = ""
    partial_images: int = 0
    #: Image edits: the images the model reads (each image, the mask, the markup), and an
    #: upper bound of their input tokens.
    input_images: int = 0
    image_input_tokens: int = 0
    #: A multipart request's body size (its upload).
    upload_bytes: int = 0

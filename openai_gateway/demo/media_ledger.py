"""What the fake voice and pictures upstream was sent and what it made, for tests to check.

Every multipart part is recorded by name, file name, content type, size and the SHA-256 of its
bytes, so a test can assert that a relay delivered each part byte for byte. `produced` is the
fake's bill, like the chat fake's: the usage it reported, or, where OpenAI reports none, the
units it bills by (characters for tts-1, whole seconds for whisper-1 answers without a usage,
images of a size and quality for DALL-E).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass
class PartSeen:
    """One part of a multipart body, as it arrived."""

    name: str | None
    filename: str | None
    content_type: str | None
    size: int
    sha256: str
    #: The text of a part without a file name (None for files).
    value: str | None = None

    @classmethod
    def of(cls, name: str | None, filename: str | None, content_type: str | None,
           data: bytes) -> PartSeen:
        """A part whose bytes are all at hand (tests build their expectations with this)."""
        return cls(name, filename, content_type, len(data), hashlib.sha256(data).hexdigest(),
                   None if filename is not None else data.decode("utf-8", "replace"))


@dataclass
class MediaRequest:
    """One request: its route, its Content-Type as received, and its JSON body or parts."""

    route: str
    content_type: str
    headers: dict
    json: dict | None = None
    parts: list[PartSeen] = field(default_factory=list)

    def values(self, name: str) -> list[str]:
        """The text values sent under `name`, in order."""
        return [p.value for p in self.parts if p.name == name and p.value is not None]

    def files(self, name: str) -> list[PartSeen]:
        """The file parts sent under `name`, in order."""
        return [p for p in self.parts if p.name == name and p.filename is not None]


@dataclass
class Produced:
    """What one answer cost, as the upstream would bill it (see the module docstring)."""

    route: str
    model: str
    usage: dict


@dataclass
class MediaLedger:
    requests: list[MediaRequest] = field(default_factory=list)
    produced: list[Produced] = field(default_factory=list)

"""What the upload tests share: multipart bodies written byte for byte, and a gateway (in
process) in front of any upstream with the voice and pictures policy open."""
from __future__ import annotations

from openai_gateway.app import create_app
from openai_gateway.config.settings import parse

from ..conftest import KEY, base_config, merge

BOUNDARY = "b0undary-7f3a"
CTYPE = f"multipart/form-data; boundary={BOUNDARY}"
#: The policy's allowlists open, as the fake serves any model.
OPEN = {"validation": {"allowed_models": [], "max_images": 20}}


def multipart(*parts: tuple[str, str | None, str | None, bytes], boundary: str = BOUNDARY,
              close: bool = True) -> bytes:
    """A multipart/form-data body, byte for byte as given: (name, filename, type, data)."""
    out = b""
    for name, filename, ctype, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"'
                                                     if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def transcription(audio: bytes, model: str = "whisper-1") -> bytes:
    return multipart(("model", None, None, model.encode()),
                     ("file", "talk.wav", "audio/wav", audio))


def sized(total: int) -> bytes:
    """A transcription body of exactly `total` bytes (the file part fills the rest)."""
    empty = transcription(b"")
    return transcription(b"\0" * (total - len(empty)))


async def gateway_to(aiohttp_client, url: str, config: dict | None = None):
    """A client of a gateway in front of the upstream at `url` (ending with /v1)."""
    settings = parse(merge(base_config(url), merge(OPEN, config or {})),
                     environ={"OPENAI_API_KEY": KEY})
    return await aiohttp_client(create_app(settings))

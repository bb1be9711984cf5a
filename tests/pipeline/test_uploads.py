"""Multipart uploads through the gateway (pipeline.uploads, wired by pipeline.media) to the fake
upstream: bounded in size and time, refused early, parsed with aiohttp's reader, relayed byte
for byte (the fake hashes every part it receives). The same bounds through a real
`python gateway.py`, and its memory: tests/process/test_media_uploads.py."""
from __future__ import annotations

import asyncio
import tracemalloc

import aiohttp
import openai
import pytest
from aiohttp import web

from openai_gateway.demo.media_formats import png, wav
from openai_gateway.demo.media_ledger import PartSeen

from ..conftest import merge
from ..support.uploads import (
    BOUNDARY,
    CTYPE,
    OPEN,
    gateway_to,
    multipart,
    sized,
    transcription,
)


@pytest.fixture
def media(fake):
    """The fake upstream's voice and pictures part, and its ledger."""
    return fake.media


@pytest.fixture
def relay(make_gateway):
    """A client of a gateway in front of the fake, with the given upload limit and body
    timeout."""
    async def make(max_bytes: int = 26_214_400, timeout: float = 30.0):
        return await make_gateway(merge(OPEN, {
            "validation": {"max_upload_bytes": max_bytes},
            "server": {"body_timeout": timeout}}))
    return make


async def error(resp: aiohttp.ClientResponse) -> dict:
    doc = await resp.json()
    assert set(doc["error"]) == {"message", "type", "param", "code"}
    return doc["error"]


# --- byte for byte ----------------------------------------------------------------------------


async def test_the_sdks_transcription_reaches_the_upstream_byte_for_byte(relay, media):
    client = await relay()
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=0)
    audio = wav(2.5)
    result = await sdk.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("voice note.wav", audio, "audio/wav"),
        include=["logprobs"], timestamp_granularities=["word", "segment"])
    await sdk.close()
    assert "2.5 seconds" in result.text and result.usage.type == "tokens"
    seen = media.ledger.requests[-1]
    assert seen.files("file") == [PartSeen.of("file", "voice note.wav", "audio/wav", audio)]
    assert seen.values("timestamp_granularities[]") == ["word", "segment"]
    assert seen.values("include[]") == ["logprobs"]


async def test_repeated_image_parts_and_the_mask_are_kept_in_order(relay, media):
    client = await relay()
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=0)
    a, b, m = png(seed=1), png(seed=2, total_bytes=300_000), png(seed=3)
    result = await sdk.images.edit(model="gpt-image-1", prompt="put them together",
                                   image=[("a.png", a, "image/png"), ("b.png", b, "image/png")],
                                   mask=("mask.png", m, "image/png"))
    await sdk.close()
    assert result.usage.input_tokens_details.image_tokens > 0
    seen = media.ledger.requests[-1]
    assert [p.name for p in seen.parts if p.filename] == ["image[]", "image[]", "mask"]
    assert seen.files("image[]") == [PartSeen.of("image[]", "a.png", "image/png", a),
                                     PartSeen.of("image[]", "b.png", "image/png", b)]
    assert seen.files("mask") == [PartSeen.of("mask", "mask.png", "image/png", m)]


async def test_the_raw_body_and_its_content_type_go_upstream_unchanged(aiohttp_server,
                                                                       aiohttp_client):
    """Preamble, the client's own boundary, part headers as written: every byte."""
    got: dict[str, object] = {}

    async def spy(request: web.Request) -> web.Response:
        body = await request.read()
        got.update(ctype=request.headers["Content-Type"], body=body)
        return web.json_response({"text": "ok"})

    app = web.Application()
    app.router.add_post("/v1/audio/transcriptions", spy)
    server = await aiohttp_server(app)
    client = await gateway_to(aiohttp_client, str(server.make_url("/v1")))
    body = b"a preamble line\r\n" + multipart(
        ("model", None, "text/plain; charset=utf-8", b"whisper-1"),
        ("file", "x.wav", "audio/wav", wav(0.5)), ("language", None, None, b"en"))
    quoted = f'multipart/form-data; boundary="{BOUNDARY}"'
    resp = await client.post("/v1/audio/transcriptions", data=body,
                             headers={"Content-Type": quoted})
    assert resp.status == 200
    assert got == {"ctype": quoted, "body": body}


async def test_a_retry_sends_the_same_bytes_again(aiohttp_server, aiohttp_client):
    """The upstream answers 503 once: the gateway's retry reads the spool anew."""
    bodies = []

    async def sink(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        if len(bodies) == 1:
            return web.Response(status=503)
        return web.json_response({"text": "ok"})

    app = web.Application(client_max_size=10**7)
    app.router.add_post("/v1/audio/transcriptions", sink)
    server = await aiohttp_server(app)
    client = await gateway_to(aiohttp_client, str(server.make_url("/v1")))
    body = transcription(wav(3.0))
    resp = await client.post("/v1/audio/transcriptions", data=body,
                             headers={"Content-Type": CTYPE})
    assert resp.status == 200, await resp.text()
    assert bodies == [body, body]


# --- bounds -------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
async def test_at_the_limit_and_one_byte_over(relay, media, chunked):
    client = await relay(max_bytes=200_000)

    async def post(body: bytes):
        if chunked:
            async def gen():
                for i in range(0, len(body), 7000):
                    yield body[i:i + 7000]
            return await client.post("/v1/audio/transcriptions", data=gen(),
                                     headers={"Content-Type": CTYPE})
        return await client.post("/v1/audio/transcriptions", data=body,
                                 headers={"Content-Type": CTYPE})

    assert (await post(sized(200_000))).status == 200
    resp = await post(sized(200_001))
    assert resp.status == 413
    assert (await error(resp))["code"] == "request_too_large"
    assert len(media.ledger.requests) == 1  # the refused one never reached it


async def test_a_slow_upload_gets_408(relay, media):
    client = await relay(timeout=0.5)
    body = transcription(wav(1.0))

    async def slow():
        yield body[:1000]
        await asyncio.sleep(1.5)
        yield body[1000:]

    resp = await client.post("/v1/audio/transcriptions", data=slow(),
                             headers={"Content-Type": CTYPE})
    assert resp.status == 408 and (await error(resp))["code"] == "request_timeout"
    assert media.ledger.requests == []


@pytest.mark.parametrize("body", [
    transcription(wav(1.0))[:-len(f"--{BOUNDARY}--\r\n")],   # no closing boundary
    transcription(wav(1.0))[:5000],                            # cut inside the file
    b"no boundary anywhere in here\r\n",
    multipart(("model", None, None, b"whisper-1"), close=False)
    + b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: form-data; name=\"x\"\r\n",
])
async def test_a_truncated_or_malformed_body_is_400(relay, media, body):
    client = await relay()
    resp = await client.post("/v1/audio/transcriptions", data=body,
                             headers={"Content-Type": CTYPE})
    e = await error(resp)
    assert resp.status == 400 and e["code"] == "invalid_multipart", e
    assert media.ledger.requests == []


async def test_a_body_cut_before_its_content_length(relay, media):
    """The client ends its side after half the declared bytes: aiohttp takes that for a client
    gone, so there is nobody to answer; nothing reaches the upstream."""
    client = await relay()
    body = transcription(wav(1.0))
    port = client.server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: {CTYPE}"
                 f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
    await writer.drain()
    writer.write_eof()
    head = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert head == b""
    assert media.ledger.requests == []


@pytest.mark.parametrize("ctype, words", [
    ("application/json", "multipart/form-data"),
    ("multipart/form-data", "boundary"),
    ("multipart/form-data; boundary=" + "x" * 71, "boundary"),
    ("text/plain", "multipart/form-data"),
])
async def test_wrong_content_type_or_missing_boundary_is_400(relay, media, ctype, words):
    client = await relay()
    resp = await client.post("/v1/audio/transcriptions", data=transcription(b"x"),
                             headers={"Content-Type": ctype})
    e = await error(resp)
    assert resp.status == 400 and e["code"] == "invalid_multipart" and words in e["message"]


async def test_a_compressed_upload_is_415(relay):
    client = await relay()
    resp = await client.post("/v1/audio/transcriptions", data=transcription(b"x"),
                             headers={"Content-Type": CTYPE, "Content-Encoding": "gzip"})
    assert resp.status == 415


@pytest.mark.parametrize("declared", [True, False])
async def test_100_mb_against_1_mb_is_refused_early_with_flat_memory(relay, media,
                                                                      declared):
    client = await relay(max_bytes=1_000_000)
    head = multipart(("model", None, None, b"whisper-1"), close=False) + (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "\r\n").encode()
    total = 100_000_000
    sent = [0]
    answered = asyncio.Event()

    async def gen():
        yield head
        sent[0] += len(head)
        block = b"\0" * 65536
        while sent[0] < total and not answered.is_set():
            yield block
            sent[0] += len(block)
            await asyncio.sleep(0)

    headers = {"Content-Type": CTYPE}
    if declared:
        headers["Content-Length"] = str(total)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        resp = await client.post("/v1/audio/transcriptions", data=gen(), headers=headers)
        answered.set()
        status, body = resp.status, await resp.read()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 413 and b"request_too_large" in body
    print(f"\n100 MB against 1 MB ({'declared' if declared else 'chunked'}): 413 after "
          f"{sent[0] / 1e6:.1f} MB sent, peak traced memory {peak / 1e6:.2f} MB")
    assert sent[0] < 20_000_000  # the answer came long before the body was all sent
    assert peak < 4_000_000, peak  # no more than the limit and a few reads were held
    assert media.ledger.requests == []


# --- the policy over the parts -------------------------------------------------------------


@pytest.mark.parametrize("extra, param", [
    ([("model", None, None, b"gpt-4o-transcribe")], "model"),
    ([("nonsense", None, None, b"1")], "nonsense"),
])
async def test_the_policy_reads_the_parts(relay, media, extra, param):
    client = await relay()
    body = multipart(("model", None, None, b"whisper-1"), *extra,
                     ("file", "a.wav", "audio/wav", wav(0.2)))
    resp = await client.post("/v1/audio/transcriptions", data=body,
                             headers={"Content-Type": CTYPE})
    assert resp.status == 400 and (await error(resp))["param"] == param
    assert media.ledger.requests == []


async def test_an_image_sent_as_text_is_refused_before_the_upstream(relay, media):
    client = await relay()
    body = multipart(("model", None, None, b"gpt-image-1"), ("prompt", None, None, b"p"),
                     ("image[]", None, None, b"not a file"))
    resp = await client.post("/v1/images/edits", data=body, headers={"Content-Type": CTYPE})
    assert resp.status == 400 and (await error(resp))["param"] == "image[]"

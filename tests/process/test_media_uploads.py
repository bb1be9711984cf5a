"""Uploads through a real `python gateway.py`: at the limit and one byte over, slow, truncated,
of the wrong content type or without a boundary, and 100 MB against a small limit (413 long
before it is all sent, the gateway's memory flat); and the relay's memory, measured on the
gateway process against its idle size in the same run, for a 25 MB upload and for a stream of
3 MB image events. The same bounds in process: tests/pipeline/test_uploads.py."""
from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import pytest

from openai_gateway.demo.media_formats import wav

from ..conftest import ORIGIN
from ..support.uploads import BOUNDARY, CTYPE, multipart, sized, transcription

HEADERS = {"Content-Type": CTYPE, "Origin": ORIGIN}
MODELS = ["whisper-1", "gpt-image-1-mini"]


def peak_since_reset(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in bytes."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0]) * 1024
    return found["VmRSS"], found["VmHWM"]


def reset_peak(pid: int) -> int:
    """Reset the process's peak RSS to its current RSS (Linux: clear_refs 5); the RSS now."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    return peak_since_reset(pid)[0]


async def post(session: aiohttp.ClientSession, url: str, data, headers=HEADERS) -> tuple[int,
                                                                                         dict]:
    async with session.post(url + "/v1/audio/transcriptions", data=data,
                            headers=headers) as resp:
        return resp.status, await resp.json()


async def test_the_bounds_of_an_upload(gateway_process, fake):
    gp = await gateway_process({"validation": {"allowed_models": MODELS,
                                               "max_upload_bytes": 200_000},
                                "server": {"body_timeout": 0.5}})

    async def chunked(body: bytes):
        for i in range(0, len(body), 7000):
            yield body[i:i + 7000]

    async with aiohttp.ClientSession() as s:
        for size in (200_000, 200_001):
            for data in (sized(size), chunked(sized(size))):
                status, doc = await post(s, gp.url, data)
                assert status == (200 if size == 200_000 else 413), doc
        assert doc["error"]["code"] == "request_too_large"
        assert len(fake.media.ledger.requests) == 2  # the ones at the limit

        body = transcription(wav(1.0))

        async def slow():
            yield body[:1000]
            await asyncio.sleep(1.0)
            yield body[1000:]

        status, doc = await post(s, gp.url, slow())
        assert status == 408 and doc["error"]["code"] == "request_timeout"
        truncated = body[:-len(f"--{BOUNDARY}--\r\n")]
        for data, ctype, words in [
                (truncated, CTYPE, "truncated"),
                (body, "application/json", "multipart/form-data"),
                (body, "multipart/form-data", "boundary")]:
            status, doc = await post(s, gp.url, data, {"Content-Type": ctype,
                                                       "Origin": ORIGIN})
            assert status == 400 and doc["error"]["code"] == "invalid_multipart"
            assert words in doc["error"]["message"], doc
    assert len(fake.media.ledger.requests) == 2


@pytest.mark.parametrize("declared", [True, False])
async def test_100_mb_against_a_small_limit_is_refused_early(gateway_process, fake, declared):
    gp = await gateway_process({"validation": {"allowed_models": MODELS,
                                               "max_upload_bytes": 1_000_000}})
    head = multipart(("model", None, None, b"whisper-1"), close=False) + (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "\r\n").encode()
    total, sent = 100_000_000, [0]
    answered = asyncio.Event()

    async def gen():
        yield head
        sent[0] += len(head)
        block = b"\0" * 65536
        while sent[0] < total and not answered.is_set():
            yield block
            sent[0] += len(block)
            await asyncio.sleep(0)

    headers = dict(HEADERS)
    if declared:
        headers["Content-Length"] = str(total)
    idle = reset_peak(gp.proc.pid)
    async with aiohttp.ClientSession() as s:
        async with s.post(gp.url + "/v1/audio/transcriptions", data=gen(),
                          headers=headers) as resp:
            answered.set()
            status, body = resp.status, await resp.read()
    growth = peak_since_reset(gp.proc.pid)[1] - idle
    print(f"\n100 MB against 1 MB ({'declared' if declared else 'chunked'}): 413 after "
          f"{sent[0] / 1e6:.1f} MB sent; gateway peak RSS {growth / 1e6:.1f} MB above idle")
    assert status == 413 and b"request_too_large" in body
    assert sent[0] < 20_000_000
    assert growth < 10_000_000
    assert fake.media.ledger.requests == []


async def test_the_relays_memory_for_a_25_mb_upload_and_3_mb_image_events(gateway_process,
                                                                         fake):
    gp = await gateway_process({"validation": {"allowed_models": MODELS}})
    pid = gp.proc.pid
    audio = wav(25_000_000 / 48_000 - 1)
    body = transcription(audio)
    async with aiohttp.ClientSession() as s:
        # Warm: the first request of each kind loads what every later one needs.
        assert (await post(s, gp.url, transcription(wav(1.0))))[0] == 200
        idle = reset_peak(pid)
        status, doc = await post(s, gp.url, body)
        assert status == 200, doc
        upload_peak = peak_since_reset(pid)[1]
        assert fake.media.ledger.requests[-1].files("file")[0].sha256 == \
            hashlib.sha256(audio).hexdigest()

        fake.media.image_event_bytes = 3_000_000
        image = {"model": "gpt-image-1-mini", "prompt": "a fox", "quality": "low",
                 "size": "1024x1024", "stream": True, "partial_images": 3, "n": 2}
        events_idle = reset_peak(pid)
        received = 0
        async with s.post(gp.url + "/v1/images/generations", json=image,
                          headers={"Origin": ORIGIN}) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                received += len(chunk)
        events_peak = peak_since_reset(pid)[1]
    upload_growth, events_growth = upload_peak - idle, events_peak - events_idle
    print(f"\ngateway idle RSS {idle / 1e6:.1f} MB; relaying a {len(body) / 1e6:.1f} MB upload: "
          f"peak {upload_peak / 1e6:.1f} MB (+{upload_growth / 1e6:.1f} MB); a stream of 8 "
          f"image events of 3 MB ({received / 1e6:.1f} MB): peak {events_peak / 1e6:.1f} MB "
          f"(+{events_growth / 1e6:.1f} MB)")
    assert received > 8 * 3_000_000
    assert upload_growth < 10_000_000  # the upload is spooled, never held whole
    assert events_growth < 12_000_000  # at most a read or two of an event at a time

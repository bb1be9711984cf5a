"""The SSE inspector on its own: any chunking, pass-through bytes, usage, end, stripping."""
from __future__ import annotations

import itertools
import random

import pytest

from openai_gateway.policy.usage import Usage
from openai_gateway.upstream.sse import MAX_HELD, _Inspector

USAGE = Usage(input=9, output=3)


def chunk_event(content: str) -> bytes:
    return (b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,'
            b'"delta":{"content":"' + content.encode() + b'"}}],"usage":null}')


USAGE_EVENT = (b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],'
               b'"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}')
CHAT_EVENTS = [chunk_event("Hel"), chunk_event("lo"), chunk_event("!"), USAGE_EVENT,
               b"data: [DONE]"]
RESPONSES_EVENTS = [
    (b'event: response.created\ndata: {"type":"response.created","response":{"id":"r1",'
     b'"status":"in_progress","usage":null}}'),
    (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
     b'"delta":"Hi"}'),
    (b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"r1",'
     b'"status":"completed","usage":{"input_tokens":4,"output_tokens":2,"total_tokens":6}}}'),
]


def sse(events: list[bytes], end: bytes = b"\n\n") -> bytes:
    return b"".join(e.replace(b"\n", end[: len(end) // 2]) + end for e in events)


def split_whole(data: bytes) -> list[bytes]:
    return [data]


def split_bytes(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def split_threes(data: bytes) -> list[bytes]:
    return [data[i:i + 3] for i in range(0, len(data), 3)]


def split_mid_event(data: bytes) -> list[bytes]:
    """Every cut falls one byte before an event's blank line, i.e. between its two newlines."""
    cuts, at = [], 0
    while (at := data.find(b"\n\n", at) + 1) > 0:
        cuts.append(at)
    return split_at(data, cuts)


def split_random(data: bytes) -> list[bytes]:
    rng = random.Random(len(data))
    return split_at(data, sorted(rng.sample(range(1, len(data)), 25)))


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


SPLITS = [split_whole, split_bytes, split_threes, split_mid_event, split_random]
ENDINGS = [b"\n\n", b"\r\n\r\n"]


def run(chunks: list[bytes], strip: bool) -> tuple[_Inspector, list[bytes], bytes]:
    """Feed every chunk; then, as relay() does, inspect and (when stripping) send the rest."""
    insp = _Inspector(strip)
    outs = [insp.feed(c) for c in chunks]
    tail = insp.held
    if tail:
        insp._inspect(tail)
    sent = b"".join(outs) + (tail if strip else b"")
    return insp, outs, sent


# --- pass-through ---------------------------------------------------------------------------


@pytest.mark.parametrize("end", ENDINGS)
@pytest.mark.parametrize("split", SPLITS)
def test_pass_through_returns_every_chunk_unchanged(split, end):
    data = sse(CHAT_EVENTS, end)
    chunks = split(data)
    insp, outs, sent = run(chunks, strip=False)
    assert outs == chunks and sent == data
    assert insp.outcome.usage == USAGE
    assert insp.outcome.complete is True


@pytest.mark.parametrize("end", ENDINGS)
@pytest.mark.parametrize("split", SPLITS)
def test_responses_api_usage_and_end(split, end):
    data = sse(RESPONSES_EVENTS, end)
    insp, _, sent = run(split(data), strip=False)
    assert sent == data
    assert insp.outcome.usage == Usage(input=4, output=2)
    assert insp.outcome.complete is True


def test_responses_completed_without_an_event_line():
    data = sse([e.split(b"\n", 1)[1] for e in RESPONSES_EVENTS])
    insp, _, _ = run([data], strip=False)
    assert insp.outcome.complete is True and insp.outcome.usage.total == 6


@pytest.mark.parametrize("events, complete", [
    (CHAT_EVENTS[:-1], False),  # cut before [DONE]
    (CHAT_EVENTS[:2], False),
    ([b"data:[DONE]"], True),  # the space after the colon is optional
    ([chunk_event("streams end with data: [DONE]"), USAGE_EVENT], False),
    ([chunk_event("see response.completed"), chunk_event("event: response.completed")], False),
    (RESPONSES_EVENTS[:2], False),
])
def test_end_marker(events, complete):
    insp, _, _ = run(split_bytes(sse(events)), strip=False)
    assert insp.outcome.complete is complete


def test_last_event_without_its_blank_line_is_read_at_the_end():
    data = sse(CHAT_EVENTS[:-1]) + b"data: [DONE]\n"
    insp, _, sent = run(split_threes(data), strip=False)
    assert sent == data and insp.held == b"data: [DONE]\n"
    assert insp.outcome.complete is True


@pytest.mark.parametrize("events, usage", [
    (CHAT_EVENTS[:3], None),  # "usage":null everywhere
    ([b'data: {"choices":[{"delta":{}}],"usage": {"prompt_tokens":1}}'], Usage(input=1)),
    ([b"data: not json with \"usage\""], None),
    ([b'data: ["usage"]'], None),
])
def test_usage_capture(events, usage):
    insp, _, _ = run([sse(events)], strip=False)
    assert insp.outcome.usage == usage


# --- strip mode ------------------------------------------------------------------------------


@pytest.mark.parametrize("end", ENDINGS)
@pytest.mark.parametrize("split", SPLITS)
def test_strip_removes_exactly_the_usage_chunk(split, end):
    data = sse(CHAT_EVENTS, end)
    insp, _, sent = run(split(data), strip=True)
    assert sent == sse([e for e in CHAT_EVENTS if e is not USAGE_EVENT], end)
    assert insp.outcome.usage == USAGE and insp.outcome.complete is True


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("events", [
    CHAT_EVENTS[:3] + [b"data: [DONE]"],  # no usage chunk: nothing removed
    RESPONSES_EVENTS,  # usage inside response.completed is not a chunk of its own
    [b'data: {"choices":[{"delta":{"content":"x"}}],"usage":{"total_tokens":1}}',
     b"data: [DONE]"],  # usage on a chunk with content stays
    [b": keep-alive comment", chunk_event("a"), b"event: ping\ndata: {}", b"data: [DONE]"],
])
def test_strip_keeps_every_other_byte_in_order(split, events):
    data = sse(events)
    _, _, sent = run(split(data), strip=True)
    assert sent == data


def test_strip_holds_nothing_back_past_an_event_end():
    insp = _Inspector(True)
    first = sse(CHAT_EVENTS[:1])
    assert insp.feed(first[:-1]) == b""  # not yet a whole event
    assert insp.feed(first[-1:] + b"data: {") == first
    assert insp.held == b"data: {"


@pytest.mark.parametrize("strip", [False, True])
@pytest.mark.parametrize("size", [64 * 1024, 100_000])
def test_oversized_event_is_passed_on_whole(strip, size):
    big = b'data: {"choices":[{"delta":{"content":"' + b"x" * (MAX_HELD + 50_000) + b'"}}]}'
    data = sse([chunk_event("a"), big, USAGE_EVENT, b"data: [DONE]"])
    chunks = [data[i:i + size] for i in range(0, len(data), size)]
    insp, outs, sent = run(chunks, strip)
    expected = data if not strip else sse([chunk_event("a"), big, b"data: [DONE]"])
    assert sent == expected
    if not strip:
        assert outs == chunks
    assert insp.outcome.usage == USAGE and insp.outcome.complete is True
    assert len(insp.held) <= MAX_HELD

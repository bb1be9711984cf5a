"""HeaderGuard on its own: which bytes are a request head (timed) and which are not.

The guard's clock must run from the first byte of every head (leading blank lines included)
to the head's blank line, on every request of a keep-alive connection, and never while a
body arrives or an answer is being generated. Real sockets against a gateway process are in
test_policy_attacks.py.
"""
from __future__ import annotations

import asyncio
import itertools

import pytest

from openai_gateway.server.headguard import BODY, HEAD, LOST, MAX_HEAD, HeaderGuard


class Transport:
    closed = False

    def close(self):
        self.closed = True


class Inner:
    def __init__(self):
        self.data = b""

    def connection_made(self, transport):
        pass

    def data_received(self, data):
        self.data += data

    def connection_lost(self, exc):
        pass


def guard() -> HeaderGuard:
    g = HeaderGuard(Inner(), timeout=60)
    g.connection_made(Transport())
    return g


def feed(g: HeaderGuard, *chunks: bytes) -> HeaderGuard:
    for c in chunks:
        g.data_received(c)
    return g


def timed(g: HeaderGuard) -> bool:
    return g.timer is not None


GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
POST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"content-length: 11\r\n\r\n{\"a\": \"bc\"}")
CHUNKED = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"4;ext=1\r\nabcd\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n")
CHUNKED_NO_TRAILER = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"3\r\nabc\r\n0\r\n\r\n")


async def test_a_new_connection_is_timed_until_its_head_ends():
    g = guard()
    assert timed(g)
    feed(g, GET[:-1])
    assert timed(g)
    feed(g, GET[-1:])
    assert not timed(g) and g.state == HEAD


@pytest.mark.parametrize("blank", [b"\r\n", b"\r\n\r\n", b"\n\n", b"\r\n" * 50])
async def test_leading_blank_lines_do_not_end_the_head(blank):
    g = feed(guard(), blank)
    assert timed(g)
    feed(g, b"GET / HTTP/1.1\r\n", b"X-A: 1\r\n")
    assert timed(g)
    feed(g, b"\r\n")
    assert not timed(g)


@pytest.mark.parametrize("request_", [GET, POST, CHUNKED, CHUNKED_NO_TRAILER])
async def test_the_next_head_is_timed_from_its_first_byte(request_):
    g = feed(guard(), request_)
    assert not timed(g) and g.state == HEAD  # between requests: nothing is timed
    feed(g, b"G")
    assert timed(g)
    feed(g, GET[1:])
    assert not timed(g)


@pytest.mark.parametrize("request_", [POST, CHUNKED, CHUNKED_NO_TRAILER])
async def test_body_bytes_are_not_a_head(request_):
    head_end = request_.index(b"\r\n\r\n") + 4
    g = feed(guard(), request_[:head_end])
    assert not timed(g)
    for i in range(head_end, len(request_)):  # byte by byte: the body never restarts the clock
        feed(g, request_[i:i + 1])
        assert not timed(g)
    assert g.state == HEAD


@pytest.mark.parametrize("requests", [
    [GET, GET], [POST, GET], [CHUNKED, POST], [CHUNKED_NO_TRAILER, CHUNKED, GET],
    [b"\r\n" + GET, POST],
])
async def test_any_split_of_pipelined_requests_ends_between_requests(requests):
    data = b"".join(requests)
    for size in (1, 2, 3, 7, 64, len(data)):
        g = guard()
        for i in range(0, len(data), size):
            feed(g, data[i:i + size])
        assert (g.state, timed(g), bytes(g.buf), g.left) == (HEAD, False, b"", 0), size
        assert g.inner.data == data  # every byte passed through unchanged


async def test_every_split_point_of_two_requests():
    data = POST + CHUNKED
    for a, b in itertools.combinations(range(1, len(data)), 2):
        if b - a > 40 and a % 7:  # keep the pairs to a few thousand
            continue
        g = feed(guard(), data[:a], data[a:b], data[b:])
        assert (g.state, timed(g)) == (HEAD, False)


async def test_an_oversized_head_keeps_its_clock():
    g = feed(guard(), b"GET / HTTP/1.1\r\nX-A: " + b"a" * (MAX_HEAD + 10))
    assert g.state == LOST and timed(g)


async def test_a_bad_chunk_size_stops_following_the_connection():
    g = feed(guard(), b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert g.state == LOST


async def test_content_length_is_read_from_the_headers_only():
    g = feed(guard(), b"GET /content-length:%205 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert g.state == HEAD
    g = feed(guard(), b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
    assert (g.state, g.left) == (BODY, 3)


async def test_the_timer_closes_the_transport():
    g = HeaderGuard(Inner(), timeout=0.01)
    transport = Transport()
    g.connection_made(transport)
    feed(g, b"\r\n\r\n")
    await asyncio.sleep(0.05)
    assert transport.closed

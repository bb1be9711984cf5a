"""Malformed request heads through a real `python gateway.py`: aiohttp refuses them with a 400,
and the log says so without a byte of the request (a client's key or token sits in the same
head), at warning, and at most a few lines a second however many arrive."""
from __future__ import annotations

import asyncio
import json
import socket

import pytest

from openai_gateway.observability.logs import MALFORMED_LINES_PER_SECOND

#: A client's own secret: the gateway never knows it, so its redaction cannot catch it.
CLIENT_SECRET = "sk-client-secret-7d41c0ffee9b2a6e5f38-do-not-log"
HEADS = {
    # The DEL byte in the Authorization line itself: the parser quotes that line.
    "in the authorization line": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
        b"Authorization: Bearer " + CLIENT_SECRET.encode() + b"\x7f\r\n"
        b"Content-Length: 2\r\n\r\n{}"),
    "in another header": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
        b"Authorization: Bearer " + CLIENT_SECRET.encode() + b"\r\n"
        b"X-Note: a\x7fb\r\nContent-Length: 2\r\n\r\n{}"),
    "in a header name": (
        b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n"
        b"X-" + CLIENT_SECRET.encode() + b"\x7f: 1\r\n\r\n"),
    "in the request line, after a good request": (
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
        b"GET /" + CLIENT_SECRET.encode() + b"\x7f HTTP/1.1\r\nHost: gw\r\n\r\n"),
}


def send(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head)  # the 400 closes the connection
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def warnings_about_heads(log: str) -> list[dict]:
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line for line in lines if "malformed request head" in line.get("message", "")]


@pytest.fixture
async def gateway(gateway_process):
    return await gateway_process({"log": {"format": "json", "level": "debug"}})


@pytest.mark.parametrize("where", sorted(HEADS))
async def test_a_malformed_head_is_logged_without_the_request(gateway, where):
    answer = await asyncio.to_thread(send, gateway.port, HEADS[where])
    assert b" 400 Bad Request\r\n" in answer, answer[:300]
    await asyncio.sleep(0.3)
    gateway.stop()
    log = gateway.log()
    assert CLIENT_SECRET not in log and CLIENT_SECRET[:20] not in log
    assert "Traceback" not in log and "\\x7f" not in log
    (line,) = warnings_about_heads(log)
    assert line["level"] == "warning" and "127.0.0.1" in line["message"], line


async def test_a_burst_of_malformed_heads_logs_a_few_lines_and_a_count(gateway):
    burst = 200

    def attack() -> None:
        for _ in range(burst):
            send(gateway.port, HEADS["in the authorization line"])

    await asyncio.to_thread(attack)
    await asyncio.sleep(1.5)  # the count of what was not logged follows within a second
    gateway.stop()
    log = gateway.log()
    assert CLIENT_SECRET[:20] not in log
    lines = warnings_about_heads(log)
    told = [line for line in lines if "not logged" in line["message"]]
    each = [line for line in lines if line not in told]
    # The burst takes a second or two: a few lines each second, and a count for the rest.
    seconds = {line["time"][:19] for line in each}
    assert len(each) <= MALFORMED_LINES_PER_SECOND * len(seconds), each
    assert len(each) < 40 and told, lines
    counted = sum(int(line["message"].split()[0]) for line in told)
    assert len(each) + counted == burst, (len(each), counted)

"""OpenAI's answer formats, as pure functions: usage, stream events, the Response object.

Shapes as OpenAI sends them (the official SDK's types validate them, tests/test_demo.py).
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import time
from dataclasses import dataclass

import orjson

#: The end of a chat or completions stream (the responses API ends with an event instead).
DONE = b"data: [DONE]\n\n"
MODERATION_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening",
                         "illicit", "illicit/violent", "self-harm", "self-harm/instructions",
                         "self-harm/intent", "sexual", "sexual/minors", "violence",
                         "violence/graphic")


def words(text: str) -> list[str]:
    """The streamed pieces of a text: each word with the space after it."""
    return re.findall(r"\S+\s*", text)


def text_of(value) -> str:
    """The text in a prompt, a message, a content or a list of them (content parts too)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(text_of(v) for v in value)
    if isinstance(value, dict):
        return text_of(value["content"] if "content" in value else value.get("text", ""))
    return ""


def last_user_text(messages) -> str:
    """What the user asked last: the last user message, or the whole input."""
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            return text_of(users[-1])
    return text_of(messages)


def count_tokens(text: str) -> int:
    """A prompt's tokens, by OpenAI's rule of thumb (about four characters a token)."""
    return len(text) // 4 + 1


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def sse(data: dict, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


@dataclass
class Answer:
    """What one request is answered with."""

    pieces: list[str]
    finish: str  # "stop", or "length" when a token cap cut the answer
    choices: int
    prompt_tokens: int
    #: OpenAI counts these inside the prompt tokens and the completion tokens.
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def chat_usage(a: Answer) -> dict:
    out = len(a.pieces) * a.choices + a.reasoning_tokens
    cached = min(a.cached_tokens, a.prompt_tokens)
    return {"prompt_tokens": a.prompt_tokens, "completion_tokens": out,
            "total_tokens": a.prompt_tokens + out,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": a.reasoning_tokens,
                                          "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def responses_usage(a: Answer) -> dict:
    out = len(a.pieces) + a.reasoning_tokens
    cached = min(a.cached_tokens, a.prompt_tokens)
    return {"input_tokens": a.prompt_tokens,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": a.reasoning_tokens},
            "total_tokens": a.prompt_tokens + out}


def moderation_result() -> dict:
    """One input's moderation verdict: nothing flagged."""
    return {"flagged": False,
            "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
            "category_scores": dict.fromkeys(MODERATION_CATEGORIES, 1e-06),
            "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES}}


def unit_vector(seed: bytes, dims: int) -> list[float]:
    """A vector of length 1 that depends only on `seed`."""
    rng = random.Random(hashlib.sha256(seed).digest())
    v = [rng.gauss(0, 1) for _ in range(dims)]
    norm = sum(x * x for x in v) ** 0.5 or 1.0
    return [round(x / norm, 6) for x in v]


def response_doc(body: dict, model: str, **fields) -> dict:
    """A Response object as OpenAI returns it, with the request's settings echoed."""
    status = fields["status"]
    return {"id": new_id("resp_"), "object": "response", "created_at": int(time.time()),
            "status": status, "background": False, "error": None,
            "incomplete_details": ({"reason": "max_output_tokens"} if status == "incomplete"
                                   else None),
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": body.get("model", model), "output": fields["output"],
            "parallel_tool_calls": True, "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
            "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
            "top_p": body.get("top_p", 1.0), "truncation": "disabled",
            "usage": fields["usage"], "user": None, "metadata": body.get("metadata") or {}}


def responses_events(doc: dict, item: dict, pieces: list[str]) -> tuple[list[bytes], list[bytes]]:
    """A response's stream as OpenAI sends it: (the opening events, one delta event a word),
    and the closing events, ending with response.completed or response.incomplete."""
    seq = iter(range(1 << 30))

    def event(kind: str, **data) -> bytes:
        return sse({"type": kind, "sequence_number": next(seq), **data}, kind)

    at = {"item_id": item["id"], "output_index": 0, "content_index": 0}
    started = dict(doc, status="in_progress", incomplete_details=None, output=[], usage=None)
    empty = dict(item["content"][0], text="")
    opening = (event("response.created", response=started)
               + event("response.in_progress", response=started)
               + event("response.output_item.added", output_index=0,
                       item=dict(item, status="in_progress", content=[]))
               + event("response.content_part.added", **at, part=empty))
    deltas = [event("response.output_text.delta", **at, delta=p, logprobs=[]) for p in pieces]
    text = item["content"][0]["text"]
    closing = (event("response.output_text.done", **at, text=text, logprobs=[])
               + event("response.content_part.done", **at, part=item["content"][0])
               + event("response.output_item.done", output_index=0, item=item)
               + event(f"response.{doc['status']}", response=doc))
    return [opening, *deltas], [closing]

"""How much the model reads: characters of every input a request carries, per route.

`max_input_chars` and the token estimate (about four characters per token) count all text the
model is given, not only message `content`: tool-call arguments, tool and function definitions
(serialised, as their schemas are read too), structured-output schemas, predictions,
instructions, suffixes and every route's input. Images, audio and files are not text and count
no characters: the walk collects them in its `Reading`, and policy.media counts their tokens.

Content parts are checked on the way: each must be an object of a known type, and a text part's
text must be a string (the upstream would refuse it too, but only after the request was sent).
"""
from __future__ import annotations

import dataclasses

import orjson

from . import media
from .refusal import Refusal

#: Roles OpenAI's chat API accepts ("function" is legacy but still valid).
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
#: Content part types and the field holding their text (None: not text, counts nothing).
CHAT_PARTS = {"text": "text", "refusal": "refusal", "image_url": None, "input_audio": None,
              "file": None}
RESPONSES_PARTS = {"input_text": "text", "output_text": "text", "refusal": "refusal",
                   "summary_text": "text", "reasoning_text": "text", "input_image": None,
                   "input_file": None, "input_audio": None}
MODERATION_PARTS = {"text": "text", "image_url": None}
#: Keys whose string values the model does not read as text: identifiers, enums, and
#: images, audio and files (base64 data or URLs; billed by the upstream as what they are).
NOT_TEXT = frozenset({"type", "id", "call_id", "status", "role", "detail", "format", "url",
                      "image_url", "file_data", "file_url", "file_id", "data"})
#: One token id stands for about one token, i.e. about four characters.
CHARS_PER_TOKEN_ID = 4
#: Image, audio and file part types, wherever they appear (tool outputs, screenshots ...).
MEDIA_TYPES = media.TYPES


@dataclasses.dataclass(slots=True)
class Reading:
    """One walk over a request's input: the rule it follows, and the parts it met that are not
    text, as (part, param) pairs for policy.media (none: nothing more to count)."""

    stored_state: bool
    media: list[tuple[dict, str]] = dataclasses.field(default_factory=list)


def chat_chars(body: dict, *, max_messages: int, reading: Reading) -> int:
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise Refusal("'messages' must be a non-empty array of message objects.", "messages")
    if len(messages) > max_messages:
        raise Refusal(f"'messages' has {len(messages)} entries; this gateway allows at most "
                      f"{max_messages}.", "messages")
    chars = 0
    for i, message in enumerate(messages):
        chars += _message_chars(message, i, reading)
    prediction = body.get("prediction")
    if isinstance(prediction, dict) and prediction.get("content") is not None:
        chars += content_chars(prediction["content"], "prediction.content", CHAT_PARTS,
                               reading)
    for field in CHAT_DEFINITIONS:
        if field in body:
            chars += serialised_chars(body[field])
    return chars


#: Chat fields the model reads whole, as JSON: tool and function definitions, output schemas.
CHAT_DEFINITIONS = ("tools", "functions", "response_format")


def _message_chars(message, i: int, reading: Reading) -> int:
    if not isinstance(message, dict):
        raise Refusal(f"'messages[{i}]' must be an object.", f"messages[{i}]")
    role = message.get("role")
    if not isinstance(role, str) or role not in CHAT_ROLES:  # a list or object is unhashable
        raise Refusal(f"Invalid value for 'messages[{i}].role': expected one of "
                      f"{', '.join(sorted(CHAT_ROLES))}.", f"messages[{i}].role")
    content = message.get("content")
    chars = len(content) if type(content) is str else 0  # the usual case, checked first
    if content is not None and not chars:
        chars = content_chars(content, f"messages[{i}].content", CHAT_PARTS, reading)
    if len(message) > 1 + ("content" in message):  # beyond role and content: name, calls ...
        name = message.get("name")
        if isinstance(name, str):
            chars += len(name)
        for field in ("tool_calls", "function_call"):  # names and arguments the model wrote
            if message.get(field) is not None:
                chars += text_chars(message[field], reading, f"messages[{i}].{field}")
    return chars


def content_chars(content, param: str, parts: dict[str, str | None], reading: Reading) -> int:
    """A string, or an array of content parts (bare strings are read as text parts)."""
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        raise Refusal(f"Invalid type for '{param}': expected a string or an array.", param)
    total = 0
    for j, part in enumerate(content):
        if isinstance(part, str):
            total += len(part)
            continue
        if not isinstance(part, dict):
            raise Refusal(f"Invalid type for '{param}[{j}]'.", f"{param}[{j}]")
        kind = part.get("type")
        if not isinstance(kind, str) or kind not in parts:
            raise Refusal(f"Invalid value for '{param}[{j}].type': expected one of "
                          f"{', '.join(sorted(parts))}.", f"{param}[{j}].type")
        field = parts[kind]
        if field is None:
            if not reading.stored_state:
                _refuse_file_id(part, f"{param}[{j}]")
            reading.media.append((part, f"{param}[{j}]"))
            continue
        text = part.get(field)
        if not isinstance(text, str):
            raise Refusal(f"Invalid type for '{param}[{j}].{field}': expected a string.",
                          f"{param}[{j}].{field}")
        total += len(text)
    return total


def _refuse_file_id(part: dict, param: str) -> None:
    nested = part.get("file")
    if part.get("file_id") is not None or (isinstance(nested, dict)
                                           and nested.get("file_id") is not None):
        raise Refusal(f"'{param}' names a stored file: files stored in the gateway's account "
                      "are not available through it (validation.stored_state = false). Send "
                      "the file's data instead.", f"{param}.file_id")


def prompt_chars(value, param: str) -> int:
    """Completions' `prompt` and embeddings' `input`: text, texts, token ids or lists of them."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, list):
        raise Refusal(f"Invalid type for '{param}': expected a string or an array.", param)
    total = 0
    for i, item in enumerate(value):
        if isinstance(item, str):
            total += len(item)
        elif _is_int(item):
            total += CHARS_PER_TOKEN_ID
        elif isinstance(item, list) and all(_is_int(t) for t in item):
            total += CHARS_PER_TOKEN_ID * len(item)
        else:
            raise Refusal(f"Invalid type for '{param}[{i}]'.", f"{param}[{i}]")
    return total


def moderation_chars(value, *, reading: Reading) -> int:
    """Moderations' `input`: a string, strings, or text and image parts."""
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        return content_chars(value, "input", MODERATION_PARTS, reading)
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        bad = next(i for i, v in enumerate(value) if not isinstance(v, str))
        raise Refusal(f"Invalid type for 'input[{bad}]'.", f"input[{bad}]")
    return prompt_chars(value, "input")


def responses_chars(body: dict, *, reading: Reading) -> int:
    total = 0
    for field in ("input", "instructions"):
        if body.get(field) is not None:
            total += items_chars(body[field], field, reading)
    text = body.get("text")
    if isinstance(text, dict):
        total += serialised_chars(text.get("format"))
    prompt = body.get("prompt")
    if isinstance(prompt, dict):  # only with stored_state = true: the template's variables
        total += text_chars(prompt.get("variables"), reading, "prompt.variables")
    return total + serialised_chars(body.get("tools"))


def items_chars(value, param: str, reading: Reading) -> int:
    """The Responses API's input: a string, or input items (messages, tool calls and outputs,
    reasoning ...). A message's content parts are checked; other items count all their text."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, list):
        raise Refusal(f"Invalid type for '{param}': expected a string or an array.", param)
    total = 0
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise Refusal(f"Invalid type for '{param}[{i}]': expected an object.", f"{param}[{i}]")
        kind = item.get("type", "message")
        if kind == "item_reference" and not reading.stored_state:
            raise Refusal(f"'{param}[{i}]' refers to a stored item: stored responses are not "
                          "available through this gateway (validation.stored_state = false). "
                          "Send the item itself.", f"{param}[{i}]")
        if kind == "message" and item.get("content") is not None:
            total += content_chars(item["content"], f"{param}[{i}].content", RESPONSES_PARTS,
                                   reading)
        else:
            total += text_chars(item, reading, f"{param}[{i}]")
    return total


def text_chars(value, reading: Reading, param: str) -> int:
    """All text in a JSON value, except under keys the model does not read as text. Image,
    audio and file parts met on the way (tool outputs, screenshots) are collected under
    `param`, the item holding them."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(text_chars(v, reading, param) for v in value)
    if isinstance(value, dict):
        if not reading.stored_state and value.get("file_id") is not None:
            raise Refusal("A stored file is named ('file_id'): files stored in the gateway's "
                          "account are not available through it (validation.stored_state = "
                          "false).", "file_id")
        kind = value.get("type")
        if type(kind) is str and kind in MEDIA_TYPES:
            reading.media.append((value, param))
        return sum(text_chars(v, reading, param) for k, v in value.items() if k not in NOT_TEXT)
    return 0


def serialised_chars(value) -> int:
    """Definitions the model reads whole (tools, schemas): their length as JSON."""
    return 0 if value is None else len(orjson.dumps(value))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

"""What a request may make the account do beyond reading its input: the costly knobs.

Each rule reads the parsed body and the `[validation]` settings and either returns what the
rest of the gateway needs (the output cap, the number of choices, fields to add upstream) or
raises a `Refusal` naming the parameter. Defaults and the reason for each are in
docs/policy.md.
"""
from __future__ import annotations

from .refusal import Refusal, shown

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
RESPONSES = "/v1/responses"
#: The fields that bound one choice's output on each route; the first is the one the gateway
#: adds when the client sends none (`max_tokens` is deprecated on chat; reasoning models take
#: only `max_completion_tokens`). Routes not listed produce no output tokens.
OUTPUT_FIELDS = {
    CHAT: ("max_completion_tokens", "max_tokens"),
    COMPLETIONS: ("max_tokens",),
    RESPONSES: ("max_output_tokens",),
}
#: Fields that make one request generate several answers, each up to the output cap.
CHOICE_FIELDS = {CHAT: ("n",), COMPLETIONS: ("n", "best_of")}
#: Responses fields that reach state stored in the gateway's account (shared by every client).
STORED_STATE_FIELDS = ("previous_response_id", "conversation", "prompt")
#: Chat's built-in web search is not a `tools` entry but costs the same: it needs one of these.
WEB_SEARCH_TOOLS = frozenset({"web_search", "web_search_preview"})


def output_cap(route: str, body: dict, max_tokens: int) -> tuple[int, dict]:
    """(tokens one choice may produce, fields to add upstream). The client's own limit counts
    when it is within `max_tokens`; without one, the gateway sends `max_tokens` itself."""
    fields = OUTPUT_FIELDS.get(route)
    if fields is None:
        return 0, {}
    cap = 0
    for name in fields:
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise Refusal(f"Invalid '{name}': expected a positive integer.", name)
        if value > max_tokens:
            raise Refusal(f"'{name}' is {value}; this gateway allows at most {max_tokens}.", name)
        cap = max(cap, value)
    if cap:
        return cap, {}
    return max_tokens, {fields[0]: max_tokens}


def choices(route: str, body: dict, max_n: int) -> int:
    """How many answers one request generates (`n`, and `best_of` on completions)."""
    count = 1
    for name in ("n", "best_of"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise Refusal(f"Invalid '{name}': expected a positive integer.", name)
        if value > max_n:
            raise Refusal(f"'{name}' is {value}; this gateway allows at most {max_n}.", name)
        if name in CHOICE_FIELDS.get(route, ()):
            count = max(count, value)
    return count


def service_tier(body: dict, allowed: tuple[str, ...]) -> None:
    tier = body.get("service_tier")
    if tier is not None and not isinstance(tier, str):
        raise Refusal("Invalid type for 'service_tier': expected a string.", "service_tier")
    if tier is not None and tier not in allowed:
        raise Refusal(f"'service_tier' {shown(tier)!r} is not available through this gateway "
                      f"(allowed: {_listed(allowed)}).", "service_tier")


def tools(route: str, body: dict, allowed: tuple[str, ...]) -> None:
    """Every declared tool's type must be allowed: hosted tools cost extra per call, and some
    (mcp, web search) make the account reach servers the client chooses."""
    declared = body.get("tools")
    if declared is not None:
        if not isinstance(declared, list):
            raise Refusal("Invalid type for 'tools': expected an array.", "tools")
        for i, tool in enumerate(declared):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if not isinstance(kind, str):
                raise Refusal(f"Invalid type for 'tools[{i}].type': expected a string.",
                              f"tools[{i}].type")
            if kind not in allowed:
                raise Refusal(f"Tool type {shown(kind)!r} is not available through this gateway "
                              f"(allowed: {_listed(allowed)}).", f"tools[{i}].type")
    if route != CHAT:
        return
    if body.get("functions") is not None and "function" not in allowed:
        raise Refusal("'functions' are not available through this gateway (allowed tool types: "
                      f"{_listed(allowed)}).", "functions")
    if body.get("web_search_options") is not None and not WEB_SEARCH_TOOLS & set(allowed):
        raise Refusal("Web search is not available through this gateway (allowed tool types: "
                      f"{_listed(allowed)}).", "web_search_options")


def stored_state(route: str, body: dict) -> dict:
    """With `stored_state = false`: refuse what reads or creates state in the account, and
    return the field that keeps /v1/responses from storing the answer ({"store": False})."""
    if route != RESPONSES:
        return {}
    for name in STORED_STATE_FIELDS:
        if body.get(name) is not None:
            raise Refusal(f"'{name}' is not available through this gateway: stored responses, "
                          "conversations and prompts live in the gateway's account, shared by "
                          "every client (validation.stored_state = false). Send the whole "
                          "conversation in 'input' instead.", name)
    if body.get("background") is not None and body["background"] is not False:  # 0 == False
        raise Refusal("'background' responses are not available through this gateway: they are "
                      "stored and keep running after the client leaves "
                      "(validation.stored_state = false).", "background")
    store = body.get("store")
    if store is False:
        return {}
    if store is not None:
        raise Refusal("'store' must be false through this gateway: stored responses are shared "
                      "by every client of its account (validation.stored_state = false).",
                      "store")
    return {"store": False}


def _listed(allowed: tuple[str, ...]) -> str:
    return ", ".join(allowed) if allowed else "none"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


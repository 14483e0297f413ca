"""Compaction: a long conversation folded into one sealed `compaction` item (POST /v1/responses/compact).

The compacted window is what a client sends as the base `input` of its next request instead of
the turns it stands for. The upstream writes a summary of the conversation (the prompt is
`SUMMARY_PROMPT`, below); the gateway seals that summary, together with the user's most recent
messages kept word for word, into the item's `encrypted_content` with the reasoning sealer
(sealing.py, the upstream's `reasoning_key`). When the item comes back in a request's input,
translate.py opens it and sends the kept messages and the summary upstream in its place.

Why the kept user messages travel inside the token rather than as output items of their own
(OpenAI's endpoint returns "all user messages, followed by a single compaction item"): the
openai SDK types `CompactedResponse.output` as output items, whose `message` is an assistant
message only, so a client validating strictly rejects user messages there. Inside the token
they reach the upstream all the same, and the window is one item any client can carry.

A token this gateway cannot open (another key, another provider, altered) is dropped with a
warning: the request goes on without the turns it stood for.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest
from .ids import new_id, new_response_id
from .sealing import sealer_for
from .usage import map_usage

# Asked of the upstream as the last user message after the whole conversation. The summary is
# all that is left of the assistant's side of the conversation, so it must carry state, not prose.
SUMMARY_PROMPT = """\
You are performing a CONTEXT CHECKPOINT. The conversation above is about to be replaced by a \
summary that you write now; another instance of the assistant will continue the work from that \
summary alone, together with the user's most recent messages kept word for word.

Write the summary as a handoff to that assistant. Include, where they apply:
- The user's goal and every explicit request, constraint and preference (quote exact wording \
when it matters).
- What has been done so far: decisions taken and why, results obtained, tool calls made and what \
they returned (names, arguments, file paths, identifiers, numbers, error messages).
- The current state: what is finished, what is in progress, what failed and was abandoned.
- What remains to be done, as concrete next steps, and any open question for the user.
- Facts that would be expensive to rediscover: code snippets, commands, URLs, values agreed on.

Do not answer or continue the conversation, do not address the user, and do not invent anything \
that is not in the conversation. Be complete but concise; use short headings and bullet points. \
Reply with the summary only."""

# Put before the summary when it goes back upstream in place of the compacted turns.
SUMMARY_PREFIX = ("The earlier part of this conversation was compacted to save context. This is a summary of it, "
                  "written as a handoff; continue the work from it:\n\n")

# The user's most recent messages are kept word for word up to this many characters of text
# (about 16k tokens); older ones live on in the summary only.
KEPT_USER_CHARS = 64_000

_PARAMS_OPTIONAL_STR = ("instructions", "previous_response_id", "prompt_cache_key")


@dataclass
class CompactRequest:
    """A validated `POST /v1/responses/compact` body."""

    model: str
    input: str | list[Any]
    instructions: str | None
    previous_response_id: str | None
    prompt_cache_key: str | None


def ends_with_compaction_trigger(items: Any) -> bool:
    """Whether a request's input ends with a `compaction_trigger` item (Codex's remote compaction)."""
    return isinstance(items, list) and bool(items) and isinstance(items[-1], dict) \
        and items[-1].get("type") == "compaction_trigger"


def parse_compact_request(body: Any) -> CompactRequest:
    """The request's fields, or a 400 naming the wrong one (item shapes are checked by translate.py)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if model is None or model == "":
        raise InvalidRequest("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    if not isinstance(model, str):
        raise InvalidRequest("Invalid type for 'model': expected a string.", param="model", code="invalid_type")
    given = body.get("input")
    if given is not None and not isinstance(given, (str, list)):
        raise InvalidRequest("Invalid type for 'input': expected a string or an array of input items.",
                             param="input", code="invalid_type")
    for name in _PARAMS_OPTIONAL_STR:
        if body.get(name) is not None and not isinstance(body[name], str):
            raise InvalidRequest(f"Invalid type for '{name}': expected a string.", param=name, code="invalid_type")
    if not given and body.get("previous_response_id") is None:
        raise InvalidRequest("There is nothing to compact: send 'input' items or a 'previous_response_id'.",
                             param="input", code="missing_required_parameter")
    return CompactRequest(model, given or [], body.get("instructions"), body.get("previous_response_id"),
                          body.get("prompt_cache_key"))


def summary_request(request: CompactRequest, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The Responses request that asks the upstream for the summary: the conversation, then the prompt."""
    ask = {"type": "message", "role": "user", "content": SUMMARY_PROMPT}
    return {"model": request.model, "input": [*items, ask], "instructions": request.instructions,
            "stream": False, "store": False}


def kept_user_messages(items: list[dict[str, Any]], key: str, budget: int = KEPT_USER_CHARS) -> list[dict[str, Any]]:
    """The most recent user messages, oldest first, as many as fit in `budget` characters of text;
    those an earlier compaction item kept count as being where that item is."""
    kept: list[dict[str, Any]] = []
    for item in reversed(_user_messages(items, key)):
        size = _text_size(item.get("content"))
        if size > budget:
            break
        budget -= size
        kept.append({"type": "message", "role": "user", "content": item.get("content")})
    kept.reverse()
    return kept


def _user_messages(items: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    messages = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") == "user":
            messages.append(item)
        elif kind == "compaction":
            window = open_window(item.get("encrypted_content"), key)
            messages += window[0] if window is not None else []
    return messages


def _text_size(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        # An image's URL counts by its length: a data URL is the image, and it goes into the token.
        return sum(len(str(part.get("text") or part.get("image_url") or "")) for part in content
                   if isinstance(part, dict))
    return 0


def seal_window(summary: str, kept: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The `compaction` item standing for the compacted turns."""
    return {"id": new_id("cmp"), "type": "compaction", "encrypted_content": sealer_for(key).seal({"c": summary,
                                                                                                 "u": kept})}


def open_window(token: Any, key: str) -> tuple[list[dict[str, Any]], str] | None:
    """A compaction item's kept user messages and summary, or None when this gateway cannot open it."""
    payload = sealer_for(key).open(token)
    if not isinstance(payload, dict) or not isinstance(payload.get("c"), str) or not isinstance(payload.get("u"), list):
        return None  # not ours, another key, altered, or a reasoning token
    return payload["u"], payload["c"]


def compacted_response(item: dict[str, Any], usage: dict[str, Any] | None) -> dict[str, Any]:
    """The `response.compaction` object (openai SDK: `CompactedResponse`)."""
    return {"id": new_response_id(), "object": "response.compaction", "created_at": int(time.time()),
            "output": [item], "usage": usage or map_usage(None)}

"""Reasoning round trip: out as sealed `encrypted_content`, back in on the assistant message.

Out: when the request's `include` asks for "reasoning.encrypted_content", each reasoning item
the stream produces carries a token sealed with the upstream's `reasoning_key` (see sealing.py).
In: a `reasoning` input item gives back its text (from the token, else its `content`, else its
`summary`); translate.py attaches it to the next assistant message as `reasoning_field`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .sealing import sealer_for

ENCRYPTED_INCLUDE = "reasoning.encrypted_content"


def reasoning_sealer(key: str) -> Callable[[str], str]:
    """`seal(text) -> encrypted_content` for the ResponseStream."""
    sealer = sealer_for(key)

    def seal(text: str) -> str:
        return sealer.seal({"r": text})

    return seal


def reasoning_input_text(item: dict[str, Any], key: str, param: str, warnings: list[str]) -> str:
    """The reasoning text a client sent back in a `reasoning` input item ('' if none)."""
    token = item.get("encrypted_content")
    if isinstance(token, str) and token:
        payload = sealer_for(key).open(token)
        if isinstance(payload, dict) and isinstance(payload.get("r"), str):
            return payload["r"]
        warnings.append(f"{param}.encrypted_content was not sealed by this gateway with its current "
                        "reasoning_key (or was altered); ignored")
    text = _texts(item.get("content"), "reasoning_text")
    if text:
        return text
    return _texts(item.get("summary"), "summary_text")


def _texts(parts: Any, kind: str) -> str:
    if not isinstance(parts, list):
        return ""
    texts = [p["text"] for p in parts
             if isinstance(p, dict) and p.get("type", kind) == kind and isinstance(p.get("text"), str)]
    return "\n\n".join(t for t in texts if t)

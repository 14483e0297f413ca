"""Tool call ids in the form the upstream accepts (pure).

Most upstreams take any string. Mistral wants exactly 9 letters/digits, so with
`upstream.tool_call_id_style: mistral` history call ids are rewritten (the same id always to
the same one: stateless, consistent between a call and its output) and invented ids take that
form too.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Literal

CallIdStyle = Literal["openai", "mistral"]

_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_MISTRAL_ID = re.compile(r"^[A-Za-z0-9]{9}$")


def _alnum9(number: int) -> str:
    chars = []
    for _ in range(9):
        number, digit = divmod(number, 62)
        chars.append(_ALNUM[digit])
    return "".join(chars)


def upstream_call_id(call_id: str, style: CallIdStyle) -> str:
    """A history call id as the upstream accepts it; the same id always maps to the same one."""
    if style != "mistral" or _MISTRAL_ID.match(call_id):
        return call_id
    return _alnum9(int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big"))


def new_call_id(style: CallIdStyle, new_id: Callable[[str], str]) -> str:
    """A call id for a call the upstream sent without one: a fresh `call_…` id in the upstream's form."""
    return upstream_call_id(new_id("call"), style)

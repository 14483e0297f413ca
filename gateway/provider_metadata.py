"""Provider metadata that must survive a turn, carried inside the call item's own id (pure).

Gemini's `extra_content.google.thought_signature` must come back with the next request's
history. It is encoded into the item id (`fc_…` / `ctc_…`), which every client resends
unchanged with the history: stateless, and it survives gateway restarts.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

# A plain item id is `fc_` + 20 hex digits (ids.new_id); with metadata, `x` + base64url(JSON) follows.
_PLAIN_LEN = 20


def id_carrying_extra(item_id: str, extra: Any) -> str:
    """A call item's id with `extra` (the upstream's extra_content) riding along inside it."""
    if extra is None:
        return item_id
    encoded = base64.urlsafe_b64encode(orjson.dumps(extra)).rstrip(b"=").decode()
    return f"{item_id}x{encoded}"


def extra_from_item_id(item_id: Any) -> Any:
    """The provider metadata encoded by `id_carrying_extra`, or None."""
    if not isinstance(item_id, str):
        return None
    head, sep, encoded = item_id.partition("_")
    if not sep or len(encoded) <= _PLAIN_LEN + 1 or encoded[_PLAIN_LEN] != "x":
        return None
    body = encoded[_PLAIN_LEN + 1:]
    try:
        value = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None

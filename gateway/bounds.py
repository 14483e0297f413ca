"""Bounds on values that come from outside (client bodies, upstream chunks) before we re-encode or log them.

orjson decodes nesting it cannot encode (about 255 levels) and integers past 64 bits are
Python ints that no encoder takes, so anything foreign is measured here first.
"""
from __future__ import annotations

from typing import Any

import orjson

# Largest count a JSON client can hold exactly (JavaScript's Number.MAX_SAFE_INTEGER).
MAX_COUNT = 2 ** 53 - 1


def depth_exceeds(document: Any, limit: int) -> bool:
    """True when containers nest deeper than `limit` levels (breadth-first, no recursion)."""
    level = [document]
    for _ in range(limit):
        level = [child for node in level if isinstance(node, (dict, list))
                 for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (dict, list))]
        if not level:
            return False
    return True


def encode_bounded(value: Any, *, depth: int, size: int) -> bytes | None:
    """`value` as JSON when it nests at most `depth` levels and encodes to at most `size` bytes, else None."""
    if depth_exceeds(value, depth):
        return None
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return None
    return encoded if len(encoded) <= size else None


def clip(text: str, limit: int = 200) -> str:
    """A foreign string short enough for a log field or a warning."""
    return text if len(text) <= limit else text[:limit] + "…"

"""A continuation's earlier items as read from the store, parsed only as far as the request needs.

Each stored response keeps the chat messages of its own items, encoded once (translate.turn_messages),
just before its `chain`: `…,"upstream":{…},"upstream_bytes":N,"chain":[…]}`. An ancestor comes without
its chain, so its kept messages are the N bytes before its record's trailing `,"upstream_bytes":N}`:
a continuation joins those of every turn and parses them in one go, instead of parsing each record whole
and translating every item again. Where any turn has none (a record of an earlier version, a turn that
cannot keep them) or they were translated under other options, the records are parsed as before.
"""
from __future__ import annotations

from typing import Any

import orjson

KEPT_KEY = b',"upstream":'
KEPT_SIZE_KEY = b',"upstream_bytes":'
_CHAIN_KEY = b',"chain":['


def ancestor_record(raw: bytes) -> dict[str, Any]:
    """A stored response record without its `chain`, which an ancestor's reader does not need: each record
    of a chain of D turns holds up to D ancestor ids, so parsing them all made loading the chain cost D²."""
    cut = raw.rfind(_CHAIN_KEY) if isinstance(raw, bytes) else -1
    if cut > 0 and raw.endswith(b"]}"):  # `chain` is the record's last key (encode_record)
        return orjson.loads(raw[:cut] + b"}")
    return orjson.loads(raw)  # a record written before `chain` came last


def history_item(item: dict[str, Any]) -> dict[str, Any]:
    """A stored item as context for a new turn: reasoning by its text (the content is stored
    with it, so a token sealed under an earlier process's key is not needed)."""
    if item.get("type") == "reasoning" and "encrypted_content" in item and item.get("content"):
        return {k: v for k, v in item.items() if k != "encrypted_content"}
    return item


def encode_record(record: dict[str, Any], kept: dict[str, Any] | None, chain: list[str]) -> bytes:
    """`record` with the turn's kept messages (when it has them), then its `chain` last."""
    if kept is not None:
        encoded = orjson.dumps(kept)
        record = {**record, "upstream": orjson.Fragment(encoded), "upstream_bytes": len(encoded)}
    return orjson.dumps({**record, "chain": chain})


def kept_bytes(raw: bytes) -> bytes | None:
    """The kept messages of an ancestor's record (read without its chain), or None when it has none."""
    cut = raw.rfind(KEPT_SIZE_KEY, max(len(raw) - 40, 0))
    if cut < 0 or not raw.endswith(b"}"):
        return None
    size = raw[cut + len(KEPT_SIZE_KEY):-1]
    start = cut - int(size) if size.isdigit() else -1
    if start < len(KEPT_KEY) or raw[start - len(KEPT_KEY):start] != KEPT_KEY:
        return None
    return raw[start:cut]


class History:
    """The ancestors' records (oldest first, their owner already checked) and the parent's, parsed."""

    __slots__ = ("ancestors", "parent", "_items")

    def __init__(self, ancestors: list[bytes], parent: dict[str, Any]) -> None:
        self.ancestors = ancestors
        self.parent = parent
        self._items: list[dict[str, Any]] | None = None

    def items(self) -> list[dict[str, Any]]:
        """Every earlier item, oldest first, as a new turn reads it (store.service.history_item)."""
        if self._items is None:
            records = [*map(ancestor_record, self.ancestors), self.parent]
            self._items = [history_item(item) for record in records
                           for item in (*record["input"], *record["response"]["output"])]
        return self._items

    def kept(self, keys: tuple[str, ...]) -> list[dict[str, Any]] | None:
        """Every turn's kept messages, when each has them under translation options of `keys`; else None.
        Parsed afresh on each call: translation merges later messages into them."""
        last = self.parent.get("upstream")
        if last is None or last["key"] not in keys:
            return None
        found = []
        for raw in self.ancestors:
            kept = kept_bytes(raw)
            if kept is None:
                return None
            found.append(kept)
        turns = orjson.loads(b"[" + b",".join(found) + b"]")
        if any(turn["key"] not in keys for turn in turns):
            return None
        turns.append(orjson.loads(orjson.dumps(last)))  # a copy: the parent's may be translated again
        return turns

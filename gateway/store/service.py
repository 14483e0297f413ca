"""Responses semantics on top of a `Store`: owners, input items with ids, chains, conversations.

Records are JSON (orjson):
- a response: `{"owner", "response": <final Response>, "input": [items], "resumable", "upstream": {…},
  "upstream_bytes", "chain": [ancestor ids]}` (`resumable`: a background response created with `stream`,
  its event log kept; `upstream`: the chat messages of its own items, kept for later turns, see
  history.py); `chain` lists every earlier response of its `previous_response_id` chain, oldest first,
  so a chain is read back in one store round trip (`Store.get_chain`); it comes last, so that the store
  hands out an ancestor without it (base.chain_suffix_lengths) and the reader does not parse it;
- a conversation: `{"owner", "conversation": <Conversation object>}`, its items stored apart.
An object of another owner is treated exactly like a missing one.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..compaction import ends_with_compaction_trigger
from ..config import StoreConfig, UpstreamConfig
from ..errors import InvalidRequest
from ..log import get_logger
from ..translate import turn_messages
from . import display_url
from .base import Order, Store, StoreUnavailable
from .history import History, ancestor_record, encode_record, history_item

ANONYMOUS = "anonymous"
TERMINAL_STATUSES = ("completed", "incomplete", "failed", "cancelled")
# Item id prefixes for input items the client sent without an id.
_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs",
              "custom_tool_call": "ctc", "custom_tool_call_output": "ctco", "compaction": "cmp"}
MAX_ITEMS_PER_CALL = 20  # POST /v1/conversations and …/items (OpenAI's limit)


def token_owner(authorization: str | None) -> str:
    """The owner of what a request stores when the gateway has no keys: a hash of its bearer token."""
    token = (authorization or "").removeprefix("Bearer ").strip()
    if not token:
        return ANONYMOUS
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]


def unguessable_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(16).hex()}"


def not_found(kind: str, object_id: str) -> InvalidRequest:
    return InvalidRequest(f"{kind} with id '{object_id}' not found.", status=404)


def previous_not_found(response_id: str) -> InvalidRequest:
    return InvalidRequest(f"Previous response with id '{response_id}' not found.", param="previous_response_id",
                          code="previous_response_not_found")


def both_previous_and_conversation() -> InvalidRequest:
    return InvalidRequest("Mutually exclusive parameters: Ensure you are only providing one of: "
                          "'previous_response_id' or 'conversation'.", param="conversation",
                          code="mutually_exclusive_parameters")


def normalize_items(items: Any, param: str = "input") -> list[dict[str, Any]]:
    """Input items as OpenAI stores them: each with an id, message content as typed parts.

    Shapes are checked by translate.py later; here only what storing needs.
    """
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    if not isinstance(items, list):
        raise InvalidRequest(f"Invalid type for '{param}': expected a string or an array of input items.",
                             param=param)
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidRequest(f"Invalid '{param}[{i}]': expected an object.", param=f"{param}[{i}]")
        item = dict(item)
        # Without a type: a message, or (no role, an id) the SDK's ItemReference.
        kind = item.setdefault("type", "item_reference" if "role" not in item and "id" in item else "message")
        if kind == "message":
            content = item.get("content")
            if isinstance(content, str):
                part = "output_text" if item.get("role") == "assistant" else "input_text"
                item["content"] = [{"type": part, "text": content, **({"annotations": []}
                                                                      if part == "output_text" else {})}]
            item.setdefault("status", "completed")
        if item.get("id") is not None and not isinstance(item["id"], str):
            raise InvalidRequest(f"Invalid type for '{param}[{i}].id': expected a string.", param=f"{param}[{i}].id")
        if not item.get("id"):
            item["id"] = unguessable_id(_ID_PREFIX.get(kind, "item") if isinstance(kind, str) else "item")
        out.append(item)
    return out


@dataclass
class Turn:
    """What one create request needs from the store: its context and what to record after."""

    owner: str
    store: bool
    input_items: list[dict[str, Any]]
    context: list[dict[str, Any]] = field(default_factory=list)   # earlier items, oldest first (a conversation's)
    history: History | None = None                                # a chain's, read when needed
    chain: list[str] = field(default_factory=list)                # ancestors to record with the response
    conversation_id: str | None = None
    resumable: bool = False   # a background response created with stream: its stream can be resumed
    upstream: UpstreamConfig | None = None   # the options the turn was translated with: its messages are kept

    def earlier(self) -> list[dict[str, Any]]:
        """The earlier items, parsed from a chain's records if need be."""
        if self.history is not None:
            self.context, self.history = self.history.items(), None
        return self.context

    @property
    def records(self) -> bool:
        return self.store or self.conversation_id is not None


class StateService:
    def __init__(self, store: Store, config: StoreConfig) -> None:
        self.store = store
        self.config = config
        self.down_since: float | None = None   # set by a failed store call, cleared by a good one

    # ------------------------------------------------------------------ health
    async def call(self, awaitable: Any) -> Any:
        """Await a store operation, keeping track of whether the store is reachable."""
        try:
            result = await awaitable
        except StoreUnavailable as exc:
            if self.down_since is None:
                self.down_since = time.monotonic()
            get_logger().warning("store.unavailable", store=display_url(self.store.url), error=exc.detail)
            raise
        self.down_since = None
        return result

    async def ensure_up(self) -> None:
        """Fail fast (503) before any upstream work while the store is known to be down."""
        if self.down_since is not None:
            await self.call(self.store.ping())

    # ------------------------------------------------------------------ create
    async def prepare(self, body: Any, owner: str) -> Turn | None:
        """The turn's context and recording plan; None for a stateless request (store false, no chain)."""
        if not isinstance(body, dict):
            return None  # translate.py explains what is wrong
        store = body.get("store")
        previous = body.get("previous_response_id")
        conversation = body.get("conversation")
        if store is None:
            store = True
        elif not isinstance(store, bool):
            raise InvalidRequest("Invalid type for 'store': expected a boolean.", param="store")
        if previous is not None and not isinstance(previous, str):
            raise InvalidRequest("Invalid type for 'previous_response_id': expected a string.",
                                 param="previous_response_id")
        conversation_id = conversation_id_of(conversation)
        if previous is not None and conversation_id is not None:
            raise both_previous_and_conversation()
        if not store and previous is None and conversation_id is None:
            return None
        if body.get("input") is None:
            return None  # translate.py names the missing parameter
        turn = Turn(owner, store, normalize_items(body["input"]), conversation_id=conversation_id)
        if turn.records and len(orjson.dumps(turn.input_items)) > self.config.max_stored_bytes:
            raise InvalidRequest(f"The input is larger than this gateway stores for one response "
                                 f"({self.config.max_stored_bytes} bytes, store.max_stored_bytes).",
                                 param="input", code="stored_size_exceeded")
        if previous is not None:
            await self._load_chain(turn, previous)
        elif conversation_id is not None:
            await self._load_conversation(turn, conversation_id)
        else:
            await self.ensure_up()
        await self._resolve_references(turn)
        return turn

    async def _resolve_references(self, turn: Turn) -> None:
        """Each `item_reference` resolved in the turn's context (its previous_response_id chain or
        conversation, both already checked to be the owner's). (The stores keep no index by item id, so
        an item outside the turn's context cannot be found.) The chain is parsed whole only then."""
        if any(item["type"] == "item_reference" for item in turn.input_items):
            turn.input_items = resolve_references(turn.input_items, turn.earlier())

    async def _load_chain(self, turn: Turn, previous: str) -> None:
        found = await self.call(self.store.get_chain(previous))   # the whole chain in one read
        parent = orjson.loads(found[previous]) if previous in found else None
        if parent is None or parent["owner"] != turn.owner:
            raise previous_not_found(previous)
        chain = [*parent["chain"], previous]
        if len(chain) >= self.config.max_chain_length:
            raise InvalidRequest(f"The previous_response_id chain is longer than this gateway allows "
                                 f"({self.config.max_chain_length} responses, store.max_chain_length); start a "
                                 "new chain with the conversation items as input.", param="previous_response_id",
                                 code="chain_too_long")
        owned = b'{"owner":' + orjson.dumps(turn.owner) + b","   # how encode_response begins a record
        ancestors = []
        for rid in parent["chain"]:
            raw = found.get(rid)
            if raw is None or not raw.startswith(owned) and ancestor_record(raw)["owner"] != turn.owner:
                raise previous_not_found(rid)  # an ancestor was deleted: the history cannot be rebuilt
            ancestors.append(raw)
        turn.chain = chain
        turn.history = History(ancestors, parent)

    async def _load_conversation(self, turn: Turn, conversation_id: str) -> None:
        await self.conversation(conversation_id, turn.owner)
        items, _ = await self.call(self.store.list_items(conversation_id, after=None, limit=None, order="asc"))
        turn.context = [history_item(orjson.loads(item)) for item in items]

    def encode_response(self, turn: Turn, response: dict[str, Any]) -> bytes:
        kept = None
        if turn.upstream is not None:
            kept = turn_messages([history_item(item) for item in (*turn.input_items, *response["output"])],
                                 turn.upstream)
        return encode_record({"owner": turn.owner, "response": response, "input": turn.input_items,
                              "resumable": turn.resumable}, kept, turn.chain)

    async def record(self, turn: Turn, response: dict[str, Any]) -> None:
        """Write the finished response (store true) and add the turn to its conversation."""
        added = None
        if turn.conversation_id is not None and response["status"] in ("completed", "incomplete"):
            added = (turn.conversation_id, [(item["id"], orjson.dumps(item))
                                            for item in (*turn.input_items, *response["output"])])
        ttl = self.config.ttl
        if turn.store:
            await self.call(self.store.put_response(response["id"], self.encode_response(turn, response), ttl,
                                                    conversation=added))
            if turn.chain:
                await self.call(self.store.touch_responses(turn.chain, ttl))
        elif added is not None:
            conversation_id, items = added
            record = await self.call(self.store.get_conversation(conversation_id))
            if record is None:
                raise not_found("Conversation", conversation_id)
            await self.call(self.store.put_conversation(conversation_id, record, ttl, items=items))

    # ------------------------------------------------------------------ responses
    async def _owned_response(self, response_id: str, owner: str) -> dict[str, Any] | None:
        found = await self.call(self.store.get_responses([response_id]))
        if response_id not in found:
            return None
        record = orjson.loads(found[response_id])
        return record if record["owner"] == owner else None

    async def response_record(self, response_id: str, owner: str) -> dict[str, Any]:
        record = await self._owned_response(response_id, owner)
        if record is None:
            raise not_found("Response", response_id)
        return record

    async def delete_response(self, response_id: str, owner: str) -> None:
        await self.response_record(response_id, owner)
        await self.call(self.store.delete_response(response_id))

    # ------------------------------------------------------------------ conversations
    async def create_conversation(self, owner: str, items: list[dict[str, Any]],
                                  metadata: dict[str, str]) -> dict[str, Any]:
        conversation = {"id": unguessable_id("conv"), "object": "conversation", "created_at": int(time.time()),
                        "metadata": metadata}
        await self.call(self.store.put_conversation(
            conversation["id"], orjson.dumps({"owner": owner, "conversation": conversation}), self.config.ttl,
            items=[(item["id"], orjson.dumps(item)) for item in items]))
        return conversation

    async def conversation(self, conversation_id: str, owner: str) -> dict[str, Any]:
        raw = await self.call(self.store.get_conversation(conversation_id))
        record = orjson.loads(raw) if raw is not None else None
        if record is None or record["owner"] != owner:
            raise not_found("Conversation", conversation_id)
        return record["conversation"]

    async def update_conversation(self, conversation_id: str, owner: str, metadata: dict[str, str]) -> dict[str, Any]:
        conversation = {**await self.conversation(conversation_id, owner), "metadata": metadata}
        await self.call(self.store.put_conversation(
            conversation_id, orjson.dumps({"owner": owner, "conversation": conversation}), self.config.ttl))
        return conversation

    async def delete_conversation(self, conversation_id: str, owner: str) -> None:
        await self.conversation(conversation_id, owner)
        await self.call(self.store.delete_conversation(conversation_id))

    async def add_items(self, conversation_id: str, owner: str, items: list[dict[str, Any]]) -> None:
        conversation = await self.conversation(conversation_id, owner)
        await self.call(self.store.put_conversation(
            conversation_id, orjson.dumps({"owner": owner, "conversation": conversation}), self.config.ttl,
            items=[(item["id"], orjson.dumps(item)) for item in items]))

    async def list_items(self, conversation_id: str, owner: str, *, after: str | None, limit: int,
                         order: Order) -> tuple[list[dict[str, Any]], bool]:
        await self.conversation(conversation_id, owner)
        items, more = await self.call(self.store.list_items(conversation_id, after=after, limit=limit, order=order))
        return [orjson.loads(item) for item in items], more

    async def item(self, conversation_id: str, owner: str, item_id: str) -> dict[str, Any]:
        await self.conversation(conversation_id, owner)
        raw = await self.call(self.store.get_item(conversation_id, item_id))
        if raw is None:
            raise not_found("Item", item_id)
        return orjson.loads(raw)

    async def delete_item(self, conversation_id: str, owner: str, item_id: str) -> dict[str, Any]:
        conversation = await self.conversation(conversation_id, owner)
        if not await self.call(self.store.delete_item(conversation_id, item_id)):
            raise not_found("Item", item_id)
        return conversation


def resolve_references(items: list[dict[str, Any]], context: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Normalized input `items` with each `item_reference` replaced by the item of `context` it names;
    else a 404."""
    if not any(item["type"] == "item_reference" for item in items):
        return items
    known = {item.get("id"): item for item in context}
    resolved = []
    for i, item in enumerate(items):
        if item["type"] == "item_reference":
            item = known.get(item["id"])
            if item is None:
                raise InvalidRequest(f"Item with id '{items[i]['id']}' not found.", param=f"input[{i}].id",
                                     status=404)
            # A copy under an id of its own: a conversation keeps its items by id.
            item = {**item, "id": unguessable_id(_ID_PREFIX.get(item["type"], "item"))}
        resolved.append(item)
    return resolved


def with_context(body: Any, turn: Turn | None) -> Any:
    """The request as translate.py should see it: earlier items, then this turn's input.

    The turn lets go of its context here: the translated request is the only copy needed.
    """
    if turn is None or not turn.earlier():
        return body
    context, turn.context = turn.context, []
    return {**body, "input": [*context, *turn.input_items]}


def with_history(body: Any, turn: Turn | None) -> tuple[Any, History | None]:
    """`with_context`, except that a chain's earlier turns stay as read, for translate.py to place by their
    kept messages: the request with this turn's input alone, and the history. Not where something else reads
    the earlier items (the mcp tool loop its approvals and listings, compaction the whole context)."""
    if turn is None or turn.history is None or _reads_context(body):
        return with_context(body, turn), None
    history, turn.history = turn.history, None
    return {**body, "input": turn.input_items}, history


def _reads_context(body: dict[str, Any]) -> bool:
    """Whether the request asks for compaction or has mcp tools (gateway/auto_compaction.py, gateway/tools)."""
    tools = body.get("tools")
    mcp = isinstance(tools, list) and any(isinstance(tool, dict) and tool.get("type") == "mcp" for tool in tools)
    return mcp or ends_with_compaction_trigger(body["input"]) or body.get("context_management") is not None


def conversation_id_of(value: Any) -> str | None:
    """`conversation` on a create request: "conv_…" or {"id": "conv_…"}."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("id")
    if not isinstance(value, str) or not value:
        raise InvalidRequest("Invalid 'conversation': expected a conversation id or an object with an 'id'.",
                             param="conversation")
    return value

"""Cheap, unique ids in OpenAI's shapes (`resp_…`, `msg_…`, `fc_…`, `call_…`, `rs_…`)."""
from __future__ import annotations

import itertools
import os

# Item ids: a random per-process prefix plus a counter, unique across restarts and
# far cheaper than a uuid4 per item on the hot path.
_PREFIX = os.urandom(6).hex()
_COUNTER = itertools.count(1)


def new_id(kind: str) -> str:
    return f"{kind}_{_PREFIX}{next(_COUNTER):08x}"


def new_response_id() -> str:
    """Unguessable: a response id may later be the key to a stored response."""
    return "resp_" + os.urandom(16).hex()


def new_request_id() -> str:
    return "req_" + os.urandom(12).hex()

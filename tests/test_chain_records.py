"""Stored response records keep `chain` last, so an ancestor is read without it (loading a chain of D turns
parsed D² ancestor ids before); records written before that change read as they always did."""
from __future__ import annotations

import orjson

from gateway.config import StoreConfig
from gateway.store import open_store_url
from gateway.store.history import ancestor_record
from gateway.store.service import StateService, Turn


def test_new_records_end_with_their_chain_and_ancestors_are_read_without_it():
    service = StateService(open_store_url("memory:"), StoreConfig())
    turn = Turn("alice", True, [{"type": "message", "role": "user", "content": 'say ,"chain":[ "x"]}'}],
                chain=["resp_a", "resp_b"])
    raw = service.encode_response(turn, {"id": "resp_c", "output": []})
    assert raw.endswith(b',"chain":["resp_a","resp_b"]}')
    record = ancestor_record(raw)
    assert "chain" not in record and record["owner"] == "alice"
    assert record["input"][0]["content"] == 'say ,"chain":[ "x"]}'  # the user's text is not mistaken for the key


def test_records_written_before_read_whole():
    old = orjson.dumps({"owner": "alice", "response": {"id": "r"}, "input": [], "chain": ["resp_a"],
                        "resumable": False})
    assert ancestor_record(old) == orjson.loads(old)

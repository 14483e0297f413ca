"""Request bodies with Content-Encoding, over a real gateway: decoded (gzip, deflate, br, zstd), bounded after
decoding (a decompression bomb is a 413), an unknown encoding a 415, all in the error envelope."""
from __future__ import annotations

import gzip
import json
import zlib

import brotli
import pytest

from .conftest import assert_valid_stream

try:
    from compression.zstd import compress as zstd_compress  # type: ignore[import-not-found]
except ImportError:
    from backports.zstd import compress as zstd_compress

_CODECS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstd_compress,
}


def _codex_body(text: str = "hi") -> bytes:
    """The shape Codex sends: streaming, instructions, a message item, store false."""
    return json.dumps({"model": "scripted", "instructions": "You are Codex.", "stream": True, "store": False,
                       "input": [{"type": "message", "role": "user",
                                  "content": [{"type": "input_text", "text": text}]}]}).encode()


@pytest.mark.parametrize("coding", list(_CODECS))
async def test_compressed_bodies_are_decoded(upstream, gateway, http, coding):
    body = _CODECS[coding](_codex_body("compressed hello"))
    async with http.post(gateway.make_url("/v1/responses"), data=body,
                         headers={"Content-Type": "application/json", "Content-Encoding": coding}) as response:
        raw = await response.read()
    assert response.status == 200, raw
    assert assert_valid_stream(raw)["status"] == "completed"
    assert upstream.requests[-1].body["messages"][-1] == {"role": "user", "content": "compressed hello"}


async def test_codex_zstd_body_with_several_frames_and_a_stacked_encoding(upstream, gateway, http):
    """Concatenated zstd frames are one body; `gzip, zstd` is undone last-applied first."""
    document = _codex_body("x" * 5000)
    framed = zstd_compress(document[:100]) + zstd_compress(document[100:])
    stacked = zstd_compress(gzip.compress(document))
    for data, coding in ((framed, "zstd"), (stacked, "gzip, zstd")):
        async with http.post(gateway.make_url("/v1/responses"), data=data,
                             headers={"Content-Type": "application/json", "Content-Encoding": coding}) as response:
            raw = await response.read()
        assert response.status == 200, raw
        assert upstream.requests[-1].body["messages"][-1]["content"] == "x" * 5000


@pytest.mark.parametrize("coding", list(_CODECS))
async def test_a_decompression_bomb_is_a_413(upstream, make_gateway, http, coding):
    """A few kilobytes on the wire that inflate far past max_body_bytes: refused at the limit."""
    gateway = await make_gateway(max_body_bytes=1024 * 1024)
    document = b'{"model": "scripted", "input": "' + b"a" * (64 * 1024 * 1024) + b'"}'
    bomb = _CODECS[coding](document)
    assert len(bomb) < 1024 * 1024
    async with http.post(gateway.make_url("/v1/responses"), data=bomb,
                         headers={"Content-Type": "application/json", "Content-Encoding": coding}) as response:
        error = (await response.json())["error"]
    assert response.status == 413
    assert error["code"] == "request_entity_too_large" and "1048576" in error["message"]
    assert not upstream.requests


async def test_unknown_and_corrupt_encodings_are_refused_in_the_envelope(upstream, gateway, http):
    async with http.post(gateway.make_url("/v1/responses"), data=_codex_body(),
                         headers={"Content-Type": "application/json", "Content-Encoding": "compress"}) as response:
        error = (await response.json())["error"]
    assert response.status == 415
    assert error["code"] == "unsupported_content_encoding" and "'compress'" in error["message"]
    for coding in _CODECS:
        async with http.post(gateway.make_url("/v1/responses"), data=b"not compressed at all",
                             headers={"Content-Type": "application/json", "Content-Encoding": coding}) as response:
            error = (await response.json())["error"]
        assert response.status == 400, coding
        assert error["code"] == "invalid_body" and coding in error["message"]
    assert not upstream.requests


async def test_the_chat_completions_passthrough_sends_the_decoded_body(upstream, gateway, http):
    document = {"model": "scripted", "stream": True, "messages": [{"role": "user", "content": "zipped"}]}
    async with http.post(gateway.make_url("/v1/chat/completions"), data=zstd_compress(json.dumps(document).encode()),
                         headers={"Content-Type": "application/json", "Content-Encoding": "zstd"}) as response:
        await response.read()
    assert response.status == 200
    assert upstream.requests[-1].body == document
    assert "Content-Encoding" not in upstream.requests[-1].headers

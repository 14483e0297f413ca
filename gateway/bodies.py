"""Request bodies: `Content-Encoding` (gzip, deflate, br, zstd) decoded by the gateway, bounded by
`server.max_body_bytes` after decoding.

aiohttp's own decoding is turned off (app.py): it answered an encoding it could not decode with a
plain-text 400 outside the error envelope, and passed an unknown encoding through as if it were JSON.
Here every codec is asked for at most `limit + 1` bytes, so a decompression bomb stops at the limit
(a 413) instead of filling memory.
"""
from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable

from aiohttp import web

from .errors import InvalidRequest

try:  # Python 3.14 has zstd in the standard library; before it, backports.zstd (setup.cfg)
    from compression.zstd import ZstdDecompressor, ZstdError  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports.zstd import ZstdDecompressor, ZstdError

import brotli

# Decoding a body past this size runs in a thread: inflating megabytes takes milliseconds of CPU.
_INLINE_DECODE = 64 * 1024


class _Corrupt(Exception):
    """The body is not valid data of its declared encoding."""


def _zlib(wbits: int) -> Callable[[bytes, int], bytes]:
    def decode(data: bytes, cap: int) -> bytes:
        out = bytearray()
        while data and len(out) < cap:
            inflater = zlib.decompressobj(wbits)
            try:
                out += inflater.decompress(data, cap - len(out))
            except zlib.error as exc:
                raise _Corrupt(str(exc)) from None
            if len(out) >= cap:
                break
            if not inflater.eof:
                raise _Corrupt("the compressed data ends early")
            data = inflater.unused_data  # concatenated gzip members are one body
        return bytes(out)
    return decode


def _deflate(data: bytes, cap: int) -> bytes:
    """HTTP's `deflate` is zlib-wrapped; some clients send the raw stream, which is accepted too."""
    try:
        return _zlib(zlib.MAX_WBITS)(data, cap)
    except _Corrupt:
        return _zlib(-zlib.MAX_WBITS)(data, cap)


def _brotli(data: bytes, cap: int) -> bytes:
    decoder = brotli.Decompressor()
    try:
        out = decoder.process(data, output_buffer_limit=cap)
    except brotli.error as exc:
        raise _Corrupt(str(exc)) from None
    if len(out) < cap and not decoder.is_finished():
        raise _Corrupt("the compressed data ends early")
    return out


def _zstd(data: bytes, cap: int) -> bytes:
    out = bytearray()
    while data and len(out) < cap:
        decoder = ZstdDecompressor()
        try:
            out += decoder.decompress(data, max_length=cap - len(out))
        except ZstdError as exc:
            raise _Corrupt(str(exc)) from None
        if len(out) >= cap:
            break
        if not decoder.eof:
            raise _Corrupt("the compressed data ends early")
        data = decoder.unused_data  # concatenated frames are one body
    return bytes(out)


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _zlib(16 + zlib.MAX_WBITS), "x-gzip": _zlib(16 + zlib.MAX_WBITS), "deflate": _deflate,
    "br": _brotli, "zstd": _zstd,
}
ENCODINGS = ("gzip", "deflate", "br", "zstd")


def encodings_of(header: str) -> list[str]:
    """The codings applied, in the order they were applied ("identity" is none)."""
    return [name for name in (part.strip().lower() for part in header.split(",")) if name and name != "identity"]


def decode_body(data: bytes, codings: list[str], limit: int) -> bytes:
    """`data` with `codings` undone (last applied first); at most `limit` bytes, or an InvalidRequest."""
    for coding in reversed(codings):
        try:
            data = _DECODERS[coding](data, limit + 1)
        except _Corrupt as exc:
            raise InvalidRequest(f"The request body is not valid {coding} data ({exc}).",
                                 code="invalid_body") from None
        if len(data) > limit:
            raise InvalidRequest(f"Request body too large: it decodes to more than {limit} bytes "
                                 "(server.max_body_bytes).", status=413, code="request_entity_too_large")
    return data


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request's body, decoded: a 415 for an encoding the gateway cannot decode, a 413 past `limit`."""
    codings = encodings_of(request.headers.get("Content-Encoding", ""))
    unknown = [coding for coding in codings if coding not in _DECODERS]
    if unknown:
        raise InvalidRequest(f"Unsupported Content-Encoding {unknown[0]!r}: send the body uncompressed or "
                             f"with one of {', '.join(ENCODINGS)}.", status=415,
                             code="unsupported_content_encoding")
    data = await request.read()  # aiohttp bounds the bytes on the wire by the same limit (client_max_size)
    if not codings:
        return data
    if len(data) <= _INLINE_DECODE:
        return decode_body(data, codings, limit)
    return await asyncio.to_thread(decode_body, data, codings, limit)

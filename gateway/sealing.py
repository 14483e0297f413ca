"""Opaque, authenticated tokens for state that a stateless client carries between turns.

Codex and other clients that send `store: false` and resend the whole history each turn get
their reasoning back only through a reasoning item's `encrypted_content`. The gateway seals the
reasoning (and any provider metadata) into such a token with AES-256-GCM and opens it when the
item comes back. A token this gateway did not seal, or sealed with another key, or that was
altered, does not open: `open` returns None and the caller ignores it with a warning.

Token: ``gwr1.`` + base64url(nonce[12] ‖ AES-GCM(zlib(JSON))). The AES key is SHA-256 of the
configured `upstream.reasoning_key`; an empty key means a random key for this process only, so
tokens then stop opening after a restart (the reasoning is simply not sent back).
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import zlib
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "gwr1."
_AAD = b"responses-gateway sealed state v1"
_MAX_PLAIN = 32 * 1024 * 1024       # refuse to inflate more than this
_PROCESS_KEY = os.urandom(32).hex()  # used when no reasoning_key is configured


class Sealer:
    def __init__(self, key: str) -> None:
        self._aead = AESGCM(hashlib.sha256(b"responses-gateway/reasoning-key\0" + key.encode()).digest())
        # Names the key without revealing it: what was translated under it is told apart by it.
        self.fingerprint = hashlib.sha256(b"responses-gateway/key-fingerprint\0" + key.encode()).hexdigest()[:16]

    def seal(self, payload: Any) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, zlib.compress(orjson.dumps(payload), 6), _AAD)
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()

    def open(self, token: Any) -> Any:
        """The sealed payload, or None for anything that is not a valid token of this key."""
        if not isinstance(token, str) or not token.startswith(PREFIX):
            return None
        body = token[len(PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            if len(raw) < 12 + 16:
                return None
            plain = self._aead.decrypt(raw[:12], raw[12:], _AAD)
            inflate = zlib.decompressobj()
            data = inflate.decompress(plain, _MAX_PLAIN)
            if inflate.unconsumed_tail:
                return None
            return orjson.loads(data)
        except (InvalidTag, ValueError, binascii.Error, zlib.error, orjson.JSONDecodeError):
            return None


@functools.lru_cache(maxsize=16)
def sealer_for(key: str) -> Sealer:
    """The sealer for a configured key ('' = this process's random key); cached per key."""
    return Sealer(key or _PROCESS_KEY)

"""Gateway-issued client keys (`[[clients]]`): stored as SHA-256 hashes, found by the hash of
what a request presents."""
from __future__ import annotations

import hashlib

from ..config import ClientSettings


def hash_key(key: str) -> str:
    """The hex SHA-256 of a client key: what `[[clients]] key_sha256` holds."""
    return hashlib.sha256(key.encode()).hexdigest()


class ClientKeys:
    """The configured client keys by hash; `find(authorization)` per request."""

    def __init__(self, clients: tuple[ClientSettings, ...]):
        self._keys = {c.key_sha256.lower(): c for c in clients}
        self._names = {c.name: c for c in clients}

    def find(self, authorization: str | None) -> ClientSettings | None:
        """The client key's settings when `authorization` carries a known one."""
        # The scheme is case-insensitive (RFC 9110 section 11.1): "bearer KEY" is the same.
        if not self._keys or not authorization or authorization[:7].lower() != "bearer ":
            return None
        return self._keys.get(hash_key(authorization[7:].strip()))

    def named(self, name: str) -> ClientSettings | None:
        """The client key called `name` (a realtime secret names the key it was issued to)."""
        return self._names.get(name)

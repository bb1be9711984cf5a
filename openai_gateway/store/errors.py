"""The store's two errors: every client library's exception is converted to one of these at
the boundary, so callers decide fail-open or fail-closed on one type.

Messages name the server ("host:port") and never a key, a value or a password.
"""
from __future__ import annotations


class StoreError(Exception):
    """A storage call failed (refused command, unexpected answer, or a server down)."""


class ServerDown(StoreError):
    """`server` did not answer in time or refused the connection; it is probed in the background
    and used again once it answers. Raised at once, without network I/O, while it stays down."""

    def __init__(self, server: str) -> None:
        super().__init__(f"storage server {server} is down")
        self.server = server

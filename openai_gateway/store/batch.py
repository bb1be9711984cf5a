"""What a batched call returns, and the interface both stores (memcached ring, Redis) offer.

A batch touches several servers; one of them may be down while the others answer. The result
keeps both, key by key, so a caller applies its fail-open/fail-closed policy only to the limits
whose keys failed and stays exact for the rest.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from .errors import StoreError

T = TypeVar("T")


@dataclass(frozen=True)
class Batch(Generic[T]):
    #: Keys that answered. A key in neither `values` nor `failed` was not found.
    values: dict[str, T] = field(default_factory=dict)
    #: Keys whose server is down or failed during this call (`ServerDown` or `StoreError`).
    failed: dict[str, StoreError] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def raise_failed(self) -> None:
        """Raise the first failure, for callers that treat any failure as the whole call's."""
        for exc in self.failed.values():
            raise exc


class BatchStore(Protocol):
    """Counters and bytes with TTLs. Increments are atomic per key; a missing counter counts
    from 0 and gets `ttl` (seconds) when created; decrements stop at 0. `existing` names keys
    the caller just read (a hint: the store may skip creating them; correct either way)."""

    async def get_many(self, keys: Iterable[str]) -> Batch[bytes]: ...

    async def incr_many(self, items: Iterable[tuple[str, int, int]],
                        existing: Collection[str] = ()) -> Batch[int]: ...

    async def decr_many(self, items: Iterable[tuple[str, int]]) -> Batch[int]: ...

    async def get_and_incr(self, keys: Sequence[str], items: Sequence[tuple[str, int, int]]
                           ) -> tuple[Batch[bytes], Batch[int]]:
        """`get_many(keys)` and `incr_many(items)` sent together: one round trip."""
        ...

    def down_servers(self) -> list[str]: ...

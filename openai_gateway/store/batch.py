"""What the store's calls return: per-key batches, and what counting a request did.

A batch touches several servers; one of them may be down while the others answer. The results
keep both, key by key, so a caller applies its fail-open/fail-closed policy only to the windows
whose keys failed and stays exact for the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from . import windows
from .errors import StoreError
from .windows import Stats, Window

T = TypeVar("T")


@dataclass(frozen=True)
class Batch(Generic[T]):
    #: Keys that answered. A key in neither `values` nor `failed` was not found.
    values: dict[str, T] = field(default_factory=dict)
    #: Keys whose server is down or failed during this call (`ServerDown` or `StoreError`).
    failed: dict[str, StoreError] = field(default_factory=dict)

    def raise_failed(self) -> None:
        """Raise the first failure, for callers that treat any failure as the whole call's."""
        for exc in self.failed.values():
            raise exc


@dataclass(slots=True, eq=False)
class Hit:
    """`cost` units against `window`; `moving`: a moving window (request limits where the store
    keeps one), else a sliding-window counter. A sliding hit of cost 0 is only read."""

    window: Window
    cost: int = 1
    moving: bool = False


@dataclass(slots=True)
class Counted:
    """What `Store.count` did."""

    #: True when every window that answered had room and was counted.
    allowed: bool = True
    #: The first window without room (None when allowed, or when only a failure refused).
    refused_by: Window | None = None
    #: When the sliding windows were read (their stats are computed from `counts` then).
    now: float = 0.0
    #: Remaining and reset of each moving window that answered (after the hit if counted).
    moving: dict[Window, Stats] = field(default_factory=dict)
    #: (previous, current) of each sliding window that answered: after the hit when it was
    #: counted, before it when it was refused or not counted.
    counts: dict[Window, tuple[int, int]] = field(default_factory=dict)
    #: Windows whose server failed: not decided, not counted.
    failed: list[Window] = field(default_factory=list)
    #: The first failure behind `failed` (names the server), for the log line or a re-raise.
    error: StoreError | None = None
    #: Values of the `reads` keys (missing keys absent).
    extra: dict[str, bytes] = field(default_factory=dict)

    def stats(self, w: Window) -> Stats | None:
        """Remaining and reset of a window that answered (None: its server failed). Computed
        on demand: a budget's stats are its counts, which budgets read directly."""
        found = self.moving.get(w)
        if found is not None:
            return found
        counts = self.counts.get(w)
        return None if counts is None else windows.stats(w, *counts, self.now)

    def fail(self, w: Window, error: StoreError) -> None:
        self.failed.append(w)
        if self.error is None:
            self.error = error

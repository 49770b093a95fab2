"""Where the tokens are counted: one process's memory, or Redis shared by every instance.

    QuotaStore
    ├── MemoryQuotaStore     this process only
    └── RedisQuotaStore      (quotas/redis_store.py) every instance on the same Redis

A store counts tokens per owner, per window and per model, and answers an
owner's counts for the current window. `add` returns at once (it is called
from a run listener, on the event loop): the memory store adds in place; the
Redis store writes in the background.
"""

from __future__ import annotations

from typing import Protocol

from chatstream.limiting.quotas.window import Window


class QuotaStore(Protocol):
    async def used(self, owner: str, window: Window) -> dict[str, int]:
        """The owner's tokens in `window`, by model (models with none are absent)."""
        ...

    def add(self, owner: str, model: str, tokens: int, window: Window) -> None:
        """Count `tokens` of `model` for the owner in `window`; returns at once."""
        ...


class MemoryQuotaStore:
    """The counts of the current window, in this process; older windows are dropped."""

    def __init__(self) -> None:
        self._start = 0  # the newest window seen
        self._counts: dict[str, tuple[int, dict[str, int]]] = {}  # owner → (window start, counts)

    def _advance(self, window: Window) -> None:
        if window.start > self._start:
            self._start = window.start
            self._counts = {
                owner: entry for owner, entry in self._counts.items() if entry[0] >= window.start
            }

    async def used(self, owner: str, window: Window) -> dict[str, int]:
        self._advance(window)
        entry = self._counts.get(owner)
        if entry is None or entry[0] != window.start:
            return {}
        return dict(entry[1])

    def add(self, owner: str, model: str, tokens: int, window: Window) -> None:
        self._advance(window)
        entry = self._counts.get(owner)
        if entry is None or entry[0] != window.start:
            entry = self._counts[owner] = (window.start, {})
        counts = entry[1]
        counts[model] = counts.get(model, 0) + tokens

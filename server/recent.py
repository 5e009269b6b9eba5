"""Per-stream state that cannot grow without bound: streams come and go over a server's days of
uptime, so each map of the server's per-stream state keeps its most recently used keys only."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RecentlyUsed(OrderedDict[K, V]):
    """A dict of at most ``limit`` keys, least recently used first: `use` and `put` make a key the
    most recent and forget the least recent beyond the limit (``on_evict`` is given each value
    forgotten). Reading (``get``, ``[]``, iterating) does not count as use."""

    def __init__(self, limit: int, on_evict: Callable[[V], None] | None = None) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        super().__init__()
        self.limit, self._on_evict = limit, on_evict

    def use(self, key: K, make: Callable[[], V]) -> V:
        """``key``'s value, made by ``make()`` if it has none, now the most recently used."""
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self.put(key, value)
        return value

    def put(self, key: K, value: V) -> None:
        """Set ``key``'s value and make it the most recently used."""
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            _, forgotten = self.popitem(last=False)
            if self._on_evict is not None:
                self._on_evict(forgotten)

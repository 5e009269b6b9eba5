"""What the server remembers per stream to de-duplicate resent frames (lossless mode): the frames
still being processed, those answered, and the most recent results, kept for resends."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

import zmq


@dataclass
class StreamLedger:
    """Per-stream memory for de-duplicating resent frames (lossless mode)."""

    pending: set[int] = field(default_factory=set)
    results: OrderedDict[int, list[zmq.Frame]] = field(default_factory=OrderedDict)
    done: set[int] = field(default_factory=set)
    done_order: deque[int] = field(default_factory=deque)

    def finish(self, seq: int, parts: list[zmq.Frame] | None, cache: int) -> int:
        """Mark ``seq`` answered; keep its result for resends. Returns cached bytes added."""
        self.pending.discard(seq)
        self.done.add(seq)
        self.done_order.append(seq)
        if len(self.done_order) > 100_000:
            self.done.discard(self.done_order.popleft())
        added = 0
        if parts is not None and cache:
            self.results[seq] = parts
            added += nbytes(parts)
            while len(self.results) > cache:
                added -= self.evict_oldest()
        return added

    def evict_oldest(self) -> int:
        _, parts = self.results.popitem(last=False)
        return nbytes(parts)


def nbytes(parts: list[zmq.Frame]) -> int:
    return sum(len(p) for p in parts)

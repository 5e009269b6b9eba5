"""What the server remembers of one sender's stream to answer resent frames (lossless mode): the
frames being processed, and the most recent results, each with its frame's pixel checksum.

A sender is its routing id, so two clients (or two acquisitions: each client has its own id)
that use the same stream name and seq never share anything here. A resent frame is answered
from here only when it is the same frame: the same pixels as the one in flight (compared byte
for byte) or as the one whose result is kept (CRC-32). Any other frame, including a resend whose
result is no longer kept, is processed (again): a result is always its own frame's.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

import zmq


def checksum(pixels: object) -> int:
    """CRC-32 of a frame's pixel buffer (zlib releases the GIL for large buffers)."""
    return zlib.crc32(pixels)


@dataclass
class StreamLedger:
    pending: dict[int, zmq.Frame] = field(default_factory=dict)  # seq -> its pixels, being processed
    results: OrderedDict[int, tuple[int, list[zmq.Frame]]] = field(default_factory=OrderedDict)  # seq -> (crc, result)

    def same_as_pending(self, seq: int, pixels: zmq.Frame) -> bool | None:
        """None if ``seq`` is not being processed; else whether ``pixels`` are that frame's."""
        queued = self.pending.get(seq)
        return None if queued is None else queued.buffer == pixels.buffer

    def cached_result(self, seq: int, pixels: zmq.Frame) -> list[zmq.Frame] | None:
        """The kept result of ``seq`` if ``pixels`` are its frame's."""
        kept = self.results.get(seq)
        if kept is None or kept[0] != checksum(pixels.buffer):
            return None
        return kept[1]

    def finish(self, seq: int, parts: list[zmq.Frame] | None, crc: int | None, cache: int) -> int:
        """Mark ``seq`` answered; keep its result (with its frame's ``crc``) for resends, at most
        ``cache`` per stream. Returns the cached bytes added (negative when evicting)."""
        self.pending.pop(seq, None)
        added = 0
        if seq in self.results:  # a frame processed again replaces its earlier result
            added -= nbytes(self.results.pop(seq)[1])
        if parts is not None and crc is not None and cache:
            self.results[seq] = (crc, parts)
            added += nbytes(parts)
            while len(self.results) > cache:
                added -= self.evict_oldest()
        return added

    def evict_oldest(self) -> int:
        _, (_, parts) = self.results.popitem(last=False)
        return nbytes(parts)

    def cached_bytes(self) -> int:
        return sum(nbytes(parts) for _, parts in self.results.values())


def nbytes(parts: list[zmq.Frame]) -> int:
    return sum(len(p) for p in parts)

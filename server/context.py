"""A live stream's frames before the current one, for models that see them (context frames).

A model with ``context_frames`` > 1 answers for each frame from it and the frames just before it
in its stream (causal: a live result never waits for the next frame). The worker keeps, per
stream, the last ``context_frames - 1`` frames by seq; a frame whose predecessors are missing
(the start of a stream, frames dropped in ``latest`` mode, a changed frame size) has them
replaced by the nearest frame after them, which at the start of a stream is what the offline
commands do (the first frame repeated, ``livescope.context.causal_windows``).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

import numpy as np

from livescope.server.recent import RecentlyUsed


def fill_window(history: dict[int, np.ndarray], seq: int, current: np.ndarray, out: np.ndarray) -> None:
    """``out`` (context, H, W) := the frames before ``seq`` from ``history`` (seq -> frame), oldest
    first, then ``current``; ``current`` joins the history and frames too old for the next leave it."""
    context = out.shape[0]
    nearest = current
    for j in range(context - 2, -1, -1):  # the frames before, from the latest back
        before = history.get(seq - (context - 1 - j))
        if before is not None and before.shape == current.shape:
            nearest = before
        out[j] = nearest
    out[context - 1] = current
    history[seq] = np.array(current, copy=True)
    for old in [s for s in history if s <= seq - context + 1]:
        del history[old]


class StreamContext:
    """Per key (a stream, and the model it feeds), the frames before, for windows of any model."""

    def __init__(self, max_streams: int = 64) -> None:
        self._history: RecentlyUsed[Hashable, dict[int, np.ndarray]] = RecentlyUsed(max_streams)
        self._lock = threading.Lock()

    def windows(self, keys: list[Hashable], seqs: list[int], frames: np.ndarray, context: int) -> np.ndarray:
        """(N, context, H, W) windows of the batch's frames (N, H, W), in order, in their dtype;
        remembers them for the frames after (frames of one stream may follow each other in a batch)."""
        n, h, w = frames.shape
        out = np.empty((n, context, h, w), frames.dtype)
        with self._lock:
            for k, (key, seq) in enumerate(zip(keys, seqs)):
                fill_window(self._history.use(key, dict), seq, frames[k], out[k])
        return out

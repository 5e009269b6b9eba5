"""How many waiting frames to run as one batch: only as many as pay for themselves.

A batch of n frames makes each of them wait for all n: worth it only where the provider runs n
frames in clearly less than n times one frame's time (a GPU, small frames), never on a CPU whose
threads already share each frame's work. So batching is learned per batch key (model versions,
frame shape and dtype) from the server's own timings: a key runs one frame at a time until a
probe, when frames are waiting, times a batch of two; batches (of all that wait) continue only while their
time per frame stays below ``GAIN`` of one frame's, each side timed again now and then as
conditions change. A key's first run (a new shape: the runtime allocates) is not taken as a timing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

GAIN = 0.6  # a batch must cost at most this share of one frame's time per frame (a GPU: far less)
SMOOTHING = 0.3  # weight of a new timing in the running per-frame means
PROBE_EVERY = 256  # one-frame runs between probes of a batch (and batches between one-frame timings)
PROBE_FRAMES = 2  # a probe batches two frames: where two do not pay, more would not either, and it
# costs one frame's wait


@dataclass
class _KeyTimings:
    single_s: float | None = None  # per-frame time of one-frame runs (running mean)
    batched_s: float | None = None  # per-frame time of the batches tried (running mean)
    batched_size: int = 0
    runs_since_probe: int = 0  # one-frame runs since the last batch
    batches_since_single: int = 0  # batches since the last one-frame run
    warmed_up: bool = False  # the first run of a new shape (allocations) is not a timing


class BatchPolicy:
    """The batch size to take for each batch key (thread-safe: the worker asks and records)."""

    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames
        self._keys: dict[tuple, _KeyTimings] = {}
        self._lock = threading.Lock()

    def limit(self, key: tuple) -> int:
        """At most this many frames of ``key`` in the next batch."""
        if self.max_frames == 1:
            return 1
        with self._lock:
            t = self._keys.setdefault(key, _KeyTimings())
            if t.single_s is None:
                return 1  # first learn what one frame costs
            if t.batched_s is None or t.runs_since_probe >= PROBE_EVERY:
                return min(PROBE_FRAMES, self.max_frames)  # a probe
            if t.batched_s > GAIN * t.single_s:
                return 1
            # batching pays: but time one frame alone now and then, so a stale single time cannot keep it on
            return 1 if t.batches_since_single >= PROBE_EVERY else self.max_frames

    def record(self, key: tuple, frames: int, seconds: float) -> None:
        """One run of ``frames`` frames of ``key`` took ``seconds`` (inference only)."""
        per_frame = seconds / max(frames, 1)
        with self._lock:
            t = self._keys.setdefault(key, _KeyTimings())
            if not t.warmed_up:
                t.warmed_up = True
                return
            if frames == 1:
                t.single_s = _mean(t.single_s, per_frame)
                t.runs_since_probe += 1
                t.batches_since_single = 0
            else:
                t.batched_s = _mean(t.batched_s, per_frame)
                t.batched_size = frames
                t.runs_since_probe = 0
                t.batches_since_single += 1

    def batching_pays(self, key: tuple) -> bool | None:
        """Whether batches of ``key`` were found to pay (None: not tried yet)."""
        with self._lock:
            t = self._keys.get(key)
            if t is None or t.single_s is None or t.batched_s is None:
                return None
            return t.batched_s <= GAIN * t.single_s


def _mean(running: float | None, new: float) -> float:
    return new if running is None else (1 - SMOOTHING) * running + SMOOTHING * new

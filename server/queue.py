"""The bounded queue of frames waiting for inference, and its micro-batcher.

Fair across streams (round-robin), first-in-first-out within a stream, so one stream's results
never overtake each other. A `latest`-mode frame supersedes the frames of its stream that are
still waiting: those come back from `put` as dropped, for the server to report.

``take_batch`` gathers up to N frames that can run as one batch (same model versions, frame
shape and dtype), taking only from the heads of the streams' queues, so batching never
reorders a stream.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np
import zmq

from livescope.protocol import FrameHeader
from livescope.repository import ModelVersion


class QueueFullError(Exception):
    pass


@dataclass
class Job:
    identity: bytes
    header: FrameHeader
    image: np.ndarray
    stages: list[ModelVersion]
    t_received: float = field(default_factory=time.perf_counter)
    # Keeps the received zmq buffer alive while `image` views it without a copy.
    payload: zmq.Frame | None = None

    @property
    def batch_key(self) -> tuple:
        """Jobs with equal keys can run as one batch."""
        return (tuple(v.ref for v in self.stages), self.header.shape, self.header.dtype)


class WorkQueue:
    def __init__(self, max_jobs: int) -> None:
        self.max_jobs = max_jobs
        self._streams: OrderedDict[str, deque[Job]] = OrderedDict()
        self._count = 0
        self._closed = False
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return self._count

    def put(self, job: Job) -> list[Job]:
        """Queue a job; return the jobs it superseded (latest mode)."""
        with self._cond:
            pending = self._streams.setdefault(job.header.stream, deque())
            dropped: list[Job] = []
            if job.header.mode == "latest":
                dropped, pending_kept = list(pending), deque()
                self._streams[job.header.stream] = pending = pending_kept
                self._count -= len(dropped)
            if self._count >= self.max_jobs:
                raise QueueFullError(f"server queue is full ({self.max_jobs} frames)")
            pending.append(job)
            self._count += 1
            self._cond.notify()
            return dropped

    def take(self, timeout_s: float) -> Job | None:
        """The next job, round-robin across streams; None on timeout or when closed and empty."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._count == 0:
                if self._closed:
                    return None
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    if self._count == 0:
                        return None
            for stream, pending in self._streams.items():
                if pending:
                    job = pending.popleft()
                    self._count -= 1
                    self._streams.move_to_end(stream)  # fairness: this stream goes last
                    if not pending:
                        del self._streams[stream]
                    return job
            raise AssertionError("count and queues disagree")

    def take_batch(self, max_frames: int, timeout_s: float, wait_s: float = 0.0) -> list[Job]:
        """Up to ``max_frames`` jobs of one batch key; waits ``timeout_s`` for the first and
        then up to ``wait_s`` for more (0: batch only what is already waiting)."""
        first = self.take(timeout_s)
        if first is None:
            return []
        batch, key = [first], first.batch_key
        deadline = time.monotonic() + wait_s
        with self._cond:
            while len(batch) < max_frames:
                job = self._take_matching(key)
                if job is not None:
                    batch.append(job)
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._closed or not self._cond.wait(left):
                    break
        return batch

    def _take_matching(self, key: tuple) -> Job | None:
        for stream, pending in self._streams.items():
            if pending and pending[0].batch_key == key:
                job = pending.popleft()
                self._count -= 1
                if not pending:
                    del self._streams[stream]
                return job
        return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

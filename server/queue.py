"""The bounded queue of frames waiting for inference, and its micro-batcher.

Fair across streams (round-robin), first-in-first-out within a stream, so one stream's results
never overtake each other. A `latest`-mode frame supersedes the frames of its stream that are
still waiting: those come back from `put` as dropped, for the server to report.

``take_batch`` gathers up to N frames that can run as one batch (same model versions, frame
shape and dtype), taking only from the heads of the streams' queues, so batching never
reorders a stream. With several workers, a stream one worker has taken frames of is not given to
another until that worker is ``done`` with them: a stream's frames run one batch after another, in
order, whichever worker runs them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import zmq

from livescope.protocol import FrameHeader
from livescope.repository import ModelVersion
from livescope.shared_memory import MappedRegion


class QueueFullError(Exception):
    pass


class SenderBusyError(Exception):
    """The sender has its share of the queue already (frames or bytes)."""


@dataclass
class Job:
    identity: bytes
    header: FrameHeader
    image: np.ndarray
    stages: list[ModelVersion]
    t_received: float = field(default_factory=time.perf_counter)
    # Keeps the received zmq buffer alive while `image` views it without a copy.
    payload: zmq.Frame | None = None
    # The sender's shared memory the frame lies in (same host); its result goes there too.
    shared: MappedRegion | None = None

    @property
    def batch_key(self) -> tuple:
        """Jobs with equal keys can run as one batch."""
        return (tuple(v.ref for v in self.stages), self.header.shape, self.header.dtype)


class WorkQueue:
    """Frames waiting for the worker, per stream, taken round-robin across streams. Bounded in frames
    overall, and per sender in frames and bytes, so that a client sending faster than it reads its
    results is refused (`SenderBusyError`) while the others are still served."""

    def __init__(self, max_jobs: int, *, max_jobs_per_sender: int | None = None,
                 max_bytes_per_sender: int | None = None) -> None:
        self.max_jobs = max_jobs
        self.max_jobs_per_sender = max_jobs_per_sender or max_jobs
        self.max_bytes_per_sender = max_bytes_per_sender
        self._streams: OrderedDict[tuple[bytes, str], deque[Job]] = OrderedDict()  # (sender, stream)
        self._senders: dict[bytes, list[int]] = {}  # identity -> [frames, bytes] queued
        self._count = 0
        self._closed = False
        self._cond = threading.Condition()
        self._taken: set[tuple[bytes, str]] = set()  # streams a worker is running frames of

    def __len__(self) -> int:
        return self._count

    def put(self, job: Job) -> list[Job]:
        """Queue a job; return the jobs it superseded (latest mode: the sender's older frames of the
        stream). QueueFullError when the queue is full, SenderBusyError when the job's sender
        already has its share queued (a sender with nothing queued always gets one frame in);
        either way nothing changes."""
        with self._cond:
            key = (job.identity, job.header.stream)
            pending = self._streams.get(key, deque())
            superseded = list(pending) if job.header.mode == "latest" else []
            frames, nbytes = self._senders.get(job.identity, (0, 0))
            frames -= len(superseded)
            nbytes -= sum(old.image.nbytes for old in superseded)
            if self._count - len(superseded) >= self.max_jobs:
                raise QueueFullError(f"the server's queue is full ({self.max_jobs} frames from all clients)")
            if frames and (frames >= self.max_jobs_per_sender or (
                    self.max_bytes_per_sender is not None and nbytes + job.image.nbytes > self.max_bytes_per_sender)):
                raise SenderBusyError(f"you have {frames} frames ({nbytes / 2**20:.0f} MiB) queued, your share of "
                                      "the server: wait for their answers before sending more")
            if superseded:  # the caller acks them
                pending.clear()
                self._count -= len(superseded)
                for old in superseded:
                    self._account(old, -1)
            pending.append(job)
            self._streams[key] = pending
            self._count += 1
            self._account(job, +1)
            self._cond.notify()
            return superseded

    def _account(self, job: Job, sign: int) -> None:
        frames, nbytes = self._senders.get(job.identity, (0, 0))
        frames, nbytes = frames + sign, nbytes + sign * job.image.nbytes
        if frames:
            self._senders[job.identity] = [frames, nbytes]
        else:
            self._senders.pop(job.identity, None)

    def take(self, timeout_s: float) -> Job | None:
        """The next job, round-robin across streams; None on timeout or when closed and empty."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for stream, pending in self._streams.items():
                    if pending and stream not in self._taken:
                        job = pending.popleft()
                        self._count -= 1
                        self._account(job, -1)
                        self._taken.add(stream)
                        self._streams.move_to_end(stream)  # fairness: this stream goes last
                        if not pending:
                            del self._streams[stream]
                        return job
                if self._closed and self._count == 0:
                    return None
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    return None

    def done(self, jobs: list[Job]) -> None:
        """A worker has answered these jobs: their streams may go to any worker again."""
        with self._cond:
            for job in jobs:
                self._taken.discard((job.identity, job.header.stream))
            self._cond.notify_all()

    def take_batch(self, max_frames: int | Callable[[tuple], int], timeout_s: float,
                   wait_s: float = 0.0) -> list[Job]:
        """Up to ``max_frames`` jobs of one batch key (a number, or the number for the first job's
        key); waits ``timeout_s`` for the first and then up to ``wait_s`` for more (0: batch only
        what is already waiting)."""
        first = self.take(timeout_s)
        if first is None:
            return []
        batch, key = [first], first.batch_key
        if callable(max_frames):
            max_frames = max_frames(key)
        deadline = time.monotonic() + wait_s
        with self._cond:
            while len(batch) < max_frames:
                job = self._take_matching(key, {(j.identity, j.header.stream) for j in batch})
                if job is not None:
                    batch.append(job)
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._closed or not self._cond.wait(left):
                    break
        return batch

    def _take_matching(self, key: tuple, held: set[tuple[bytes, str]]) -> Job | None:
        """The next job of ``key`` from a stream no worker holds, or one this batch ``held`` already."""
        for stream, pending in self._streams.items():
            if pending and pending[0].batch_key == key and (stream not in self._taken or stream in held):
                job = pending.popleft()
                self._count -= 1
                self._account(job, -1)
                self._taken.add(stream)
                if not pending:
                    del self._streams[stream]
                return job
        return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

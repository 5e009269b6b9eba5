"""Helpers shared by the benchmarks: free ports, a server subprocess, medians, a timestamped log."""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Iterator

import numpy as np

from livescope.client import Result, StreamClient
from livescope.launch import free_port, spawn_server

__all__ = ["free_port", "livescope_server", "log", "median", "stream_all"]


@contextlib.contextmanager
def livescope_server(*extra: str, threads: int | None = None) -> Iterator[str]:
    """`livescope serve` in a subprocess on free ports; yields the frames address."""
    args = ["--log-level", "warning", *extra] + (["--threads", str(threads)] if threads else [])
    with spawn_server(*args) as server:
        yield server.frames


def stream_all(client: StreamClient, frames: list[np.ndarray]) -> None:
    """Submit every frame, reading results as they come (as a live consumer does: each is dropped
    once read), until all are answered; every answer must be a result."""
    for frame in frames:
        client.submit(frame)
        while (o := client.next_outcome(0)) is not None:
            assert isinstance(o, Result), o
    for o in client.outcomes(timeout_s=120):
        assert isinstance(o, Result), o


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def log(message: str) -> None:
    """A timestamped line on stderr (stdout carries the benchmarks' JSON)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

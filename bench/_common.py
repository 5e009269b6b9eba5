"""Helpers shared by the benchmarks: free ports, a server subprocess, medians, a timestamped log."""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Iterator

from livescope.launch import free_port, spawn_server

__all__ = ["free_port", "livescope_server", "log", "median"]


@contextlib.contextmanager
def livescope_server(*extra: str, threads: int | None = None) -> Iterator[str]:
    """`livescope serve` in a subprocess on free ports; yields the frames address."""
    args = ["--log-level", "warning", *extra] + (["--threads", str(threads)] if threads else [])
    with spawn_server(*args) as server:
        yield server.frames


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def log(message: str) -> None:
    """A timestamped line on stderr (stdout carries the benchmarks' JSON)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

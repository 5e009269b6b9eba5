"""Helpers shared by the benchmarks: free ports, a server subprocess, medians."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator

from livescope.launch import free_port, spawn_server

__all__ = ["free_port", "livescope_server", "median"]


@contextlib.contextmanager
def livescope_server(*extra: str, threads: int | None = None) -> Iterator[str]:
    """`livescope serve` in a subprocess on free ports; yields the frames address."""
    args = ["--log-level", "warning", *extra] + (["--threads", str(threads)] if threads else [])
    with spawn_server(*args) as server:
        yield server.frames


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))

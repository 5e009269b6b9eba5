"""Helpers shared by the benchmarks: free ports, a server subprocess, medians."""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def livescope_server(*extra: str, threads: int | None = None) -> Iterator[str]:
    """`livescope serve` in a subprocess on free ports; yields the frames address."""
    frames, results = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "livescope.cli", "serve", "--frames", frames, "--results",
           results, "--metrics-port", "0", "--log-level", "warning", *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"server did not start: {line!r}")
        yield frames
    finally:
        proc.terminate()
        proc.wait(30)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0

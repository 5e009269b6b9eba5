"""Shared fixtures: real `livescope serve` subprocesses on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import zmq


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    frames: str
    results: str
    proc: subprocess.Popen
    args: tuple[str, ...]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout_s)


def start_server(*extra: str, frames: str | None = None, results: str | None = None) -> ServerProcess:
    frames = frames or f"tcp://127.0.0.1:{free_port()}"
    results = results or f"tcp://127.0.0.1:{free_port()}"
    args = ("serve", "--frames", frames, "--results", results, "--metrics-port", "0",
            "--log-level", "warning", "--threads", "1", *extra)
    proc = subprocess.Popen([sys.executable, "-m", "livescope.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r} {proc.stderr.read()}")
    return ServerProcess(frames, results, proc, args)


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """One server shared by the tests that only talk to it."""
    srv = start_server()
    yield srv
    srv.stop()


@pytest.fixture
def own_server() -> Iterator[callable]:
    """Start servers private to one test (for restarts, limits, signals); stopped after."""
    started: list[ServerProcess] = []

    def start(*extra: str, **kw: str) -> ServerProcess:
        srv = start_server(*extra, **kw)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()


@pytest.fixture
def dealer() -> Iterator[callable]:
    """A raw DEALER socket, for sending what no well-behaved client would."""
    ctx = zmq.Context()
    socks = []

    def connect(address: str) -> zmq.Socket:
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.rcvtimeo = 10_000
        s.connect(address)
        socks.append(s)
        return s

    yield connect
    for s in socks:
        s.close(0)
    ctx.term()

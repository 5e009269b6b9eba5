"""Shared fixtures: real `livescope serve` subprocesses on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from livescope.launch import ServerProcess, free_port, spawn_server

__all__ = ["free_port", "start_server"]


def start_server(*extra: str, frames: str | None = None, results: str | None = None) -> ServerProcess:
    return spawn_server("--log-level", "warning", "--threads", "1", *extra,
                        frames=frames, results=results)


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

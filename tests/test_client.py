"""The client: flow control, delivery modes, reconnects. Every frame is accounted for."""

import signal
import threading

import numpy as np
import pytest

from livescope.client import Refusal, Result, ServerUnreachableError, StreamClient
from tests.conftest import free_port


def frames(n, shape=(64, 64)):
    return [np.full(shape, i, np.uint16) for i in range(n)]


def test_lossless_delivers_every_frame_in_order(server):
    with StreamClient(server.frames, pipeline=["identity"], max_in_flight=3) as c:
        c.connect()
        for img in frames(40):
            c.submit(img)
            assert c.stats.in_flight <= 3
        got = list(c.outcomes())
        assert [o.seq for o in got] == list(range(40))
        assert all(isinstance(o, Result) and o.data[0, 0] == o.seq for o in got)
        assert c.stats.results == 40 and c.stats.dropped == 0 and c.stats.accounted


def test_latest_drops_the_oldest_unsent_frame_and_counts_it(server):
    with StreamClient(server.frames, pipeline=["identity"], mode="latest", max_in_flight=1) as c:
        c.connect()
        for img in frames(200, shape=(512, 512)):
            c.submit(img)  # never blocks
        outcomes = list(c.outcomes())
        s = c.stats
    assert len(outcomes) == 200 and s.accounted
    assert s.dropped_by_client > 0
    dropped = [o for o in outcomes if isinstance(o, Refusal)]
    assert len(dropped) == s.dropped and all(o.reason.startswith("dropped") for o in dropped)
    results = [o for o in outcomes if isinstance(o, Result)]
    assert results[-1].seq == 199  # the newest frame always gets through


def test_lossless_resends_unanswered_frames_after_the_server_restarts(own_server):
    srv = own_server()
    c = StreamClient(srv.frames, pipeline=["identity"], max_in_flight=4, liveness_s=3)
    c.connect()
    got: list = []
    reader_done = threading.Event()

    def read():
        for o in c.outcomes(timeout_s=60):
            got.append(o)
        reader_done.set()

    for img in frames(10):
        c.submit(img)
    c.wait_idle()
    srv.proc.kill()  # the server dies with nothing answered for what comes next
    srv.proc.wait()
    submitter = threading.Thread(target=lambda: [c.submit(i) for i in frames(20)[10:]])
    submitter.start()
    own_server(frames=srv.frames, results=srv.results)  # same address, fresh process
    submitter.join(60)
    threading.Thread(target=read, daemon=True).start()
    assert reader_done.wait(60)
    c.close()
    assert sorted(o.seq for o in got) == list(range(20))
    assert all(isinstance(o, Result) for o in got)
    assert c.stats.accounted


def test_sigterm_finishes_frames_in_flight_then_exits_cleanly(own_server):
    srv = own_server()
    with StreamClient(srv.frames, pipeline=["identity"], max_in_flight=64) as c:
        c.connect()
        for img in frames(64, shape=(256, 256)):
            c.submit(img)
        srv.proc.send_signal(signal.SIGTERM)
        outcomes = list(c.outcomes(timeout_s=30))
        assert len(outcomes) == 64 and c.stats.accounted
        # accepted before the signal: restored; arriving after: refused by name, never lost
        assert all(isinstance(o, Result) or o.reason == "shutting_down" for o in outcomes)
    assert srv.proc.wait(30) == 0


def test_connect_says_clearly_when_no_server_answers():
    c = StreamClient(f"tcp://127.0.0.1:{free_port()}")
    with pytest.raises(ServerUnreachableError, match="no livescope server answered"):
        c.connect(timeout_s=0.5)
    c.close(timeout_s=0)


def test_a_frame_must_be_two_dimensional(server):
    with StreamClient(server.frames) as c:
        with pytest.raises(ValueError, match="2-D"):
            c.submit(np.zeros((2, 3, 4), np.uint16))

"""Several inference workers behind the one ROUTER (`serve --workers N`, issue 19): frames of many
streams are shared between the workers, each stream's results still come back in order and each
frame is answered exactly once with its own result."""

from __future__ import annotations

import numpy as np

from livescope.client import Result, StreamClient


def test_two_workers_share_the_frames_and_every_stream_gets_its_own_results_in_order(own_server):
    srv = own_server("--workers", "2", "--threads", "1")
    rng = np.random.default_rng(0)
    sent = {s: [rng.integers(0, 4000, (96, 128), dtype=np.uint16) for _ in range(30)] for s in range(4)}
    clients = [StreamClient(srv.frames, pipeline=["identity"], stream=f"w{s}", max_in_flight=8,
                            shared_memory=s % 2 == 0) for s in sent]
    try:
        for c in clients:
            c.connect(timeout_s=30)
        for i in range(30):
            for s, c in enumerate(clients):
                c.submit(sent[s][i])
        for s, c in enumerate(clients):
            seqs = []
            for outcome in c.outcomes():
                assert isinstance(outcome, Result) and np.array_equal(outcome.data, sent[s][outcome.seq])
                seqs.append(outcome.seq)
            assert seqs == list(range(30))  # in order, each once
            assert c.stats.accounted and c.stats.results == 30
        stats = clients[0].control("stats")
    finally:
        for c in clients:
            c.close()
    assert stats["results"] == 120 and stats["errors"] == 0
    assert len(stats["frames_per_worker"]) == 2 and sum(stats["frames_per_worker"]) == 120
    assert min(stats["frames_per_worker"]) > 0  # both workers ran frames


def test_a_version_activated_on_two_workers_is_active_and_listed_once(own_server):
    srv = own_server("--workers", "2", "--threads", "1")
    with StreamClient(srv.frames, pipeline=["identity"]) as c:
        c.connect(timeout_s=30)
        reply = c.control("activate", model="identity@1", timeout_s=60)
        assert reply["active"] == "identity@1"
        health = c.control("health")
        assert health["models_loaded"].count("identity@1") == 1  # one entry per version, not per worker

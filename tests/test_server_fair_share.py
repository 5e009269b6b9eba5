"""Every queue is bounded, in bytes too, and one client cannot take the server from the others
(issue 16, defect 6): a client that floods frames without reading its results is refused `busy`
beyond its share, while another client's lossless frames are all restored; a pipeline may not
name more stages than the protocol allows."""

from __future__ import annotations

import json
import time

import numpy as np
import zmq

from livescope.client import Result, StreamClient
from livescope.protocol import PROTOCOL_VERSION, ErrorHeader, FrameHeader, ResultHeader, decode_header, encode_header


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_flooding_client_is_refused_busy_and_another_clients_frames_are_all_restored(own_server):
    srv = own_server("--max-queued-mb-per-client", "32", "--batch-max-frames", "1")  # one frame's working memory
    ctx = zmq.Context()
    flood = ctx.socket(zmq.DEALER)
    flood.linger = 0
    flood.sndhwm = 0
    flood.connect(srv.frames)
    big = np.zeros((512, 1024), np.uint16)  # 1 MiB each
    try:
        # more frames than the whole queue holds, never reading an answer, through a model slow
        # enough (on any machine) that they pile up: with the identity a fast machine kept up
        for seq in range(300):
            header = FrameHeader(stream="flood", seq=seq, shape=big.shape, pipeline=("denoise@2",))
            flood.send_multipart([encode_header(header), big])
        time.sleep(0.5)
        with StreamClient(srv.frames, stream="polite", pipeline=["identity"], mode="lossless") as polite:
            polite.connect()
            for k in range(20):
                polite.submit(np.full((64, 64), k, np.uint16))
            outcomes = list(polite.outcomes())
        assert len(outcomes) == 20 and all(isinstance(o, Result) for o in outcomes), outcomes
        assert rss_mb(srv.proc.pid) < 600  # the flood is not all held in memory
        answers = []
        flood.rcvtimeo = 30_000
        for _ in range(300):
            answers.append(decode_header(flood.recv_multipart()[0]))
        busy = [a for a in answers if isinstance(a, ErrorHeader) and a.code.value == "busy"]
        results = [a for a in answers if isinstance(a, ResultHeader)]
        assert busy and results and len(busy) + len(results) == 300
        assert "queued" in busy[0].message and busy[0].stream == "flood"
        with StreamClient(srv.frames) as observer:  # counted where a facility looks
            observer.connect()
            assert observer.control("stats")["busy"] == len(busy)
    finally:
        ctx.destroy(linger=0)


def test_a_pipeline_of_more_stages_than_the_protocol_allows_is_refused(server, dealer):
    sock = dealer(server.frames)
    header = {"protocol": PROTOCOL_VERSION, "type": "frame", "stream": "long", "seq": 0, "shape": [4, 4],
              "dtype": "uint16", "pipeline": ["identity"] * 4000}
    sock.send_multipart([json.dumps(header).encode(), b"\0" * 32])
    reply = decode_header(sock.recv_multipart()[0])
    assert isinstance(reply, ErrorHeader) and reply.code.value == "bad_header" and "pipeline" in reply.message


def test_a_lossless_client_beyond_its_share_sends_again_and_loses_nothing(own_server):
    srv = own_server("--max-queued-mb-per-client", "1")  # two of these frames
    frames = [np.full((512, 512), k, np.uint16) for k in range(24)]  # 0.5 MiB each
    with StreamClient(srv.frames, stream="eager", pipeline=["identity"], mode="lossless",
                      max_in_flight=8) as client:
        client.connect()
        for f in frames:
            client.submit(f)
        outcomes = list(client.outcomes())
    assert len(outcomes) == 24 and all(isinstance(o, Result) for o in outcomes), outcomes[:3]
    assert [int(o.data[0, 0]) for o in sorted(outcomes, key=lambda o: o.seq)] == list(range(24))

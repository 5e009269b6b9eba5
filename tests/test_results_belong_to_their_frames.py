"""Lossless delivery keeps every result, and every result is its own frame's (issue 16, defects 3
and 4): a resent frame whose result the server no longer keeps is processed again, and a
(stream, seq) that another sender, another acquisition or other pixels used before never gets
that earlier frame's result."""

from __future__ import annotations

import time

import numpy as np
import zmq

from livescope.client import Result, StreamClient
from livescope.protocol import AckHeader, FrameHeader, ResultHeader, decode_header, encode_header

SHAPE = (16, 24)


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, SHAPE, dtype=np.uint16)


def frame_message(seq: int, pixels: np.ndarray, stream: str = "cam1") -> list:
    header = FrameHeader(stream=stream, seq=seq, shape=SHAPE, pipeline=("identity",))
    return [encode_header(header), pixels]


def dealer(ctx: zmq.Context, address: str, routing_id: bytes) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = 10_000
    sock.routing_id = routing_id
    sock.connect(address)
    return sock


def collect_results(sock: zmq.Socket, expected: int, timeout_s: float = 30.0) -> dict[int, np.ndarray]:
    """seq -> the pixels of its result, until ``expected`` distinct seqs have a result."""
    got: dict[int, np.ndarray] = {}
    deadline = time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        parts = sock.recv_multipart()
        header = decode_header(parts[0])
        if isinstance(header, ResultHeader):
            got[header.seq] = np.frombuffer(parts[1], np.uint16).reshape(SHAPE).copy()
        else:
            assert isinstance(header, AckHeader) and "will follow" in header.detail, header
    return got


def test_forty_frames_in_flight_across_a_reconnect_all_end_with_their_own_result(server):
    ctx = zmq.Context()
    routing_id = b"reconnecting-client"
    images = {seq: image(seq) for seq in range(40)}
    try:
        first = dealer(ctx, server.frames, routing_id)
        for seq, pixels in images.items():
            first.send_multipart(frame_message(seq, pixels, stream="forty"))
        time.sleep(1.0)  # the server answers them all while we are gone
        first.close(0)
        second = dealer(ctx, server.frames, routing_id)  # as a lossless client does after a reconnect
        for seq, pixels in images.items():
            second.send_multipart(frame_message(seq, pixels, stream="forty"))
        got = collect_results(second, 40)
        second.close(0)
    finally:
        ctx.destroy(linger=0)
    assert sorted(got) == list(range(40))
    for seq, pixels in images.items():
        assert np.array_equal(got[seq], pixels), f"seq {seq} came back with another frame's image"


def test_another_sender_reusing_a_stream_and_seq_gets_its_own_image(server):
    ctx = zmq.Context()
    try:
        a = dealer(ctx, server.frames, b"sender-a")
        a.send_multipart(frame_message(2, image(1), stream="shared"))
        assert np.array_equal(collect_results(a, 1)[2], image(1))
        b = dealer(ctx, server.frames, b"sender-b")
        b.send_multipart(frame_message(2, image(2), stream="shared"))
        assert np.array_equal(collect_results(b, 1)[2], image(2))
        a.close(0)
        b.close(0)
    finally:
        ctx.destroy(linger=0)


def test_the_same_sender_resending_a_seq_with_other_pixels_gets_the_new_image(server):
    ctx = zmq.Context()
    try:
        sock = dealer(ctx, server.frames, b"restarting-sender")
        sock.send_multipart(frame_message(0, image(10), stream="restart"))
        assert np.array_equal(collect_results(sock, 1)[0], image(10))
        sock.send_multipart(frame_message(0, image(11), stream="restart"))  # the same seq, new pixels
        assert np.array_equal(collect_results(sock, 1)[0], image(11))
        sock.close(0)
    finally:
        ctx.destroy(linger=0)


def test_a_restarted_acquisition_reusing_the_stream_name_gets_only_its_own_images(server):
    for run in range(2):
        with StreamClient(server.frames, stream="cam-restart", pipeline=["identity"], mode="lossless",
                          max_in_flight=4) as client:
            client.connect()
            sent = {seq: image(100 * run + seq) for seq in range(12)}
            for pixels in sent.values():
                client.submit(pixels)
            outcomes = list(client.outcomes())
        results = [o for o in outcomes if isinstance(o, Result)]
        assert len(results) == 12
        for r in results:
            assert np.array_equal(r.data.astype(np.uint16), sent[r.header.seq]), (run, r.header.seq)


def test_a_frame_resent_after_its_answer_gets_its_kept_result_without_running_again(server):
    """The server keeps each answered frame's pixels beside its result and compares them byte for byte
    only when the frame comes again (no checksum of every frame)."""
    ctx = zmq.Context()
    try:
        sock = dealer(ctx, server.frames, b"resending-sender")
        sock.send_multipart(frame_message(0, image(20), stream="kept"))
        assert np.array_equal(collect_results(sock, 1)[0], image(20))
        with StreamClient(server.frames, pipeline=["identity"]) as control:
            before = control.control("stats")
            sock.send_multipart(frame_message(0, image(20), stream="kept"))  # the answer was "lost"
            assert np.array_equal(collect_results(sock, 1)[0], image(20))
            after = control.control("stats")
        assert after["duplicates"] == before["duplicates"] + 1
        assert after["inference"]["identity@1"]["frames"] == before["inference"]["identity@1"]["frames"]
        assert after["result_cache_bytes"] >= 2 * image(20).nbytes  # the frame and its result
        sock.close(0)
    finally:
        ctx.destroy(linger=0)

"""Every message the server could not deliver is counted (issue 16, defect 6): a result published
to a subscriber too slow to take it, and an answer to a client that does not read its own or has
gone. ZeroMQ drops such messages silently at its high-water mark; the server sends without
blocking and counts each one in `stats` and Prometheus, while fast subscribers and reading clients
still get everything."""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import zmq

from livescope.client import StreamClient
from livescope.launch import free_port
from livescope.protocol import FrameHeader, encode_header


def stats(address: str) -> dict:
    with StreamClient(address) as observer:
        observer.connect()
        return observer.control("stats")


def wait_until_answered(address: str, n: int, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = stats(address)
        if s["results"] + s["errors"] >= n:
            return s
        time.sleep(0.2)
    raise AssertionError(f"server answered {s['results'] + s['errors']} of {n}")


def test_results_a_slow_subscriber_misses_are_counted_and_a_fast_one_gets_them_all(own_server):
    port = free_port()
    srv = own_server("--metrics-port", str(port))
    ctx = zmq.Context()
    try:
        slow = ctx.socket(zmq.SUB)
        slow.rcvhwm = 1
        slow.setsockopt(zmq.RCVBUF, 4096)
        slow.setsockopt(zmq.SUBSCRIBE, b"cam")
        slow.connect(srv.results)
        fast = ctx.socket(zmq.SUB)
        fast.rcvhwm = 0
        fast.setsockopt(zmq.SUBSCRIBE, b"cam")
        fast.connect(srv.results)
        time.sleep(0.5)  # subscriptions reach the server
        n = 300
        received = 0
        with StreamClient(srv.frames, stream="cam", pipeline=["identity"], mode="lossless") as client:
            client.connect()
            for k in range(n):
                client.submit(np.full((256, 256), k, np.uint16))
                while fast.poll(0):
                    fast.recv_multipart()
                    received += 1
            outcomes = list(client.outcomes())
        assert len(outcomes) == n
        deadline = time.monotonic() + 10
        while received < n and time.monotonic() < deadline:
            if fast.poll(100):
                fast.recv_multipart()
                received += 1
        assert received == n  # the fast subscriber is not held back or cut off by the slow one
        s = stats(srv.frames)
        assert s["undelivered_publications"] > 0
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert (f'livescope_messages_undelivered_total{{reason="slow_subscriber"}} '
                f'{float(s["undelivered_publications"])}') in text
    finally:
        ctx.destroy(linger=0)


def test_every_answer_to_a_client_that_does_not_read_is_delivered_or_counted(own_server):
    srv = own_server()
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.rcvhwm = 1
        sock.setsockopt(zmq.RCVBUF, 4096)
        sock.sndhwm = 0
        sock.connect(srv.frames)
        image = np.zeros((64, 64), np.uint16)
        n = 3000
        for seq in range(n):
            header = FrameHeader(stream="deaf", seq=seq, shape=image.shape, pipeline=("identity",))
            sock.send_multipart([encode_header(header), image])
            if seq % 200 == 199:
                time.sleep(0.05)  # let the server answer some, refusing fewer as busy
        s = wait_until_answered(srv.frames, n)
        assert s["undelivered_replies"] > 0
        received = 0
        sock.rcvtimeo = 2000
        try:
            while True:
                sock.recv_multipart()
                received += 1
        except zmq.Again:
            pass
        assert received + stats(srv.frames)["undelivered_replies"] == n  # one answer each: got or counted
    finally:
        ctx.destroy(linger=0)


def test_answers_to_a_client_that_has_gone_are_counted(own_server):
    """An answer queued before ZeroMQ sees the connection drop goes with the connection (a lossless
    client's resend gets it from the kept results); every one after that is counted."""
    srv = own_server()
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 1000
        sock.connect(srv.frames)
        image = np.zeros((1024, 1024), np.uint16)  # a denoiser takes a good fraction of a second
        for seq in range(4):
            header = FrameHeader(stream="gone", seq=seq, shape=image.shape, pipeline=("denoise",))
            sock.send_multipart([encode_header(header), image])
        sock.close()  # sends what it holds, then goes before most answers come
        s = wait_until_answered(srv.frames, 4)
        assert 0 < s["undelivered_replies"] <= 4
    finally:
        ctx.destroy(linger=0)

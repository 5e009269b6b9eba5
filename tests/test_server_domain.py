"""Frames unlike a model's training data are restored, but never silently (issue 17): the live
result says why in its `warnings`, and the frames are counted in `stats` and Prometheus, as the
offline commands already warn."""

from __future__ import annotations

import urllib.request

import numpy as np

from livescope.client import Result, StreamClient
from livescope.launch import free_port


def restore(address: str, frames: list[np.ndarray], stream: str) -> list[Result]:
    with StreamClient(address, stream=stream, pipeline=["denoise@2"]) as client:
        client.connect()
        for frame in frames:
            client.submit(frame)
        outcomes = sorted(client.outcomes(), key=lambda o: o.seq)
    assert all(isinstance(o, Result) for o in outcomes), outcomes
    return outcomes


def test_frames_from_another_camera_are_restored_with_a_warning_and_counted(own_server):
    port = free_port()
    srv = own_server("--metrics-port", str(port))
    rng = np.random.default_rng(0)
    eight_bit = [rng.poisson(20, (64, 64)).astype(np.uint16) for _ in range(3)]  # darkest pixels near 0
    results = restore(srv.frames, eight_bit, "foreign")
    for r in results:
        assert len(r.header.warnings) == 1
        assert "darkest 1% of stream 'foreign'" in r.header.warnings[0]
        assert "denoise@2 was trained on" in r.header.warnings[0]
    with StreamClient(srv.frames) as observer:
        observer.connect()
        assert observer.control("stats")["out_of_domain"] == 3
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'livescope_out_of_domain_frames_total{model="denoise@2"} 3.0' in text


def test_frames_like_the_training_data_carry_no_warning(server):
    rng = np.random.default_rng(1)
    camera_like = [(95 + rng.poisson(30, (64, 64))).astype(np.uint16) for _ in range(2)]
    for r in restore(server.frames, camera_like, "native"):
        assert r.header.warnings == ()

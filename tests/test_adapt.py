"""Live self-adaptation and rollback: a running server trains a denoiser on a stream's own frames in
a separate process while it goes on serving, activates it only if it is better on held-out frames
of the same stream, records where it came from, and `models rollback` returns to the version before."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from livescope.client import StreamClient
from livescope.deploy import active_version, deploy
from livescope.modelcard import CARD_FILE, ModelCard
from tests.test_deploy import served_by, version_with


def cli(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "livescope.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s)


def test_rollback_serves_the_version_before_and_says_when_there_is_none(own_server, tmp_path):
    repo = tmp_path / "models"
    version_with(repo, 1)
    srv = own_server("--models", str(repo))
    assert served_by(srv) == "identity@1"
    assert deploy(srv.frames, version_with(repo, 2, against="identity@1", new=31.0, active=30.0)).activated
    assert served_by(srv) == "identity@2"

    r = cli("models", "rollback", "identity", "--server", srv.frames)
    assert r.returncode == 0, r.stderr
    assert "active: identity@1 (rolled back from identity@2)" in r.stdout
    assert served_by(srv) == "identity@1"

    again = cli("models", "rollback", "identity", "--server", srv.frames)
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert "no earlier version of identity was active" in again.stderr
    assert served_by(srv) == "identity@1"  # nothing changed
    named = cli("models", "rollback", "identity@2", "--server", srv.frames)
    assert named.returncode != 0 and "takes a model name" in named.stderr


def noisy_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """A drifting field of blurred blobs at a few tens of photons, through a camera (100 ADU offset,
    0.5 e-/ADU): the stream a rig would send."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((160, 160)) ** 8, 2.0)
    field = 40.0 * field / field.max() + 3.0
    out = []
    for t in range(n):
        clean = field[t % 16:t % 16 + 128, 8:136]
        out.append((rng.poisson(clean) * 2.0 + 100.0).astype(np.uint16))
    return out


class Streamer(threading.Thread):
    """Sends frames of stream ``cam1`` through the identity pipeline until stopped; keeps what it sent."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address, self.stop, self.sent = address, threading.Event(), {}

    def run(self) -> None:
        frames = noisy_frames(400)
        with StreamClient(self.address, stream="cam1", pipeline=["identity"], max_in_flight=2) as c:
            c.connect()
            for seq, frame in enumerate(frames):
                if self.stop.is_set():
                    break
                c.submit(frame)
                self.sent[seq] = hashlib.sha256(frame.tobytes()).hexdigest()
                self.stop.wait(0.05)
            list(c.outcomes(timeout_s=30))


@pytest.mark.timeout(600)
def test_adapt_trains_on_the_streams_own_frames_while_serving_and_activates_only_what_is_better(
        own_server, tmp_path):
    repo = tmp_path / "models"
    version_with(repo, 1)
    srv = own_server("--models", str(repo))
    before = active_version(srv.frames, "denoise")
    streamer = Streamer(srv.frames)
    streamer.start()
    try:
        r = cli("adapt", "denoise", "--stream", "cam1", "--frames", "24", "--minutes", "0.2",
                "--context-frames", "3", "--server", srv.frames, timeout_s=540)
        served_meanwhile = served_by(srv)  # the server went on serving
    finally:
        streamer.stop.set()
        streamer.join(timeout=60)
    assert served_meanwhile == "identity@1"
    said = " ".join((r.stdout + r.stderr).split())
    assert "Traceback" not in said and "collected 24 frames" in said, said

    with StreamClient(srv.frames) as status:
        status.connect()
        data = status.control("adapt_status")
    assert data["state"] in ("activated", "not_activated"), data
    new = data["model"]
    assert new is not None and new.startswith("denoise@")
    card = ModelCard.load(repo / "denoise" / new.split("@")[1] / CARD_FILE)
    assert card.context_frames == 3  # a stream is a time series: it sees each frame with the two before

    # Where it came from: the stream's saved frames, named in the card, hashed frame by frame.
    stack = Path(data["data"])
    assert stack.parent == repo / ".adapt" and stack.name.startswith("cam1-") and str(stack) in card.provenance.data
    sidecar = json.loads(stack.with_suffix("").with_suffix(".json").read_text())
    assert sidecar["stream"] == "cam1" and len(sidecar["sha256"]) == 24
    assert sidecar["sha256"] == [streamer.sent[s] for s in sidecar["seq"]]
    assert sidecar["seq"] == list(range(sidecar["seq"][0], sidecar["seq"][0] + 24))  # consecutive frames

    # Scored against the version that was active, on held-out frames of the same stream; activated
    # exactly when it passed the gate and was not worse.
    assert card.comparison is not None and card.comparison.against == before.ref
    better = card.serves_by_default and card.comparison.not_worse
    after = active_version(srv.frames, "denoise")
    if better:
        assert r.returncode == 0 and data["state"] == "activated" and after.ref == new
        rolled = cli("models", "rollback", "denoise", "--server", srv.frames)
        assert rolled.returncode == 0 and active_version(srv.frames, "denoise").ref == before.ref
    else:
        assert r.returncode == 1 and data["state"] == "not_activated" and after.ref == before.ref
        assert "not activated" in said


@pytest.mark.timeout(600)
def test_adapt_fine_tunes_an_active_camera_agnostic_model_on_the_streams_neighbouring_frames(own_server, tmp_path):
    repo = tmp_path / "models"
    version_with(repo, 1)
    srv = own_server("--models", str(repo))
    before = active_version(srv.frames, "denoise")
    assert before.ref == "denoise@3"  # the shipped camera-agnostic default
    streamer = Streamer(srv.frames)
    streamer.start()
    try:
        r = cli("adapt", "denoise", "--stream", "cam1", "--frames", "24", "--minutes", "0.2",
                "--server", srv.frames, timeout_s=540)
    finally:
        streamer.stop.set()
        streamer.join(timeout=60)
    said = " ".join((r.stdout + r.stderr).split())
    assert "Traceback" not in said and "fine-tuning denoise@3" in said, said
    with StreamClient(srv.frames) as status:
        status.connect()
        data = status.control("adapt_status")
    assert data["fine_tune_from"] == "denoise@3"
    if data["model"] is None:  # fine-tuning did not beat denoise@3: nothing was written, and it stays
        assert data["state"] == "not_activated" and "did not improve on denoise@3" in data["reason"], data
        assert r.returncode == 1 and active_version(srv.frames, "denoise").ref == "denoise@3"
        return
    card = ModelCard.load(repo / "denoise" / data["model"].split("@")[1] / CARD_FILE)
    assert card.description.startswith("denoise@3 fine-tuned") and card.normalisation.kind == "photons"
    assert card.comparison is not None and card.comparison.against == "denoise@3"
    assert (data["state"] == "activated") == (card.serves_by_default and card.comparison.not_worse)


def test_adapt_refuses_what_it_cannot_do_in_one_line(own_server, tmp_path):
    srv = own_server("--models", str(tmp_path / "models"))
    r = cli("adapt", "localise", "--stream", "cam1", "--server", srv.frames)
    assert r.returncode != 0 and "adapt trains denoise models, not 'localise'" in r.stderr
    assert "Traceback" not in r.stderr

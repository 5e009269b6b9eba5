"""A denoiser that sees the frames before the one it denoises (`train denoise --context-frames 3`):
in a time series the noise of each frame is independent of the others', so the frames before
carry what the blind spot hides. Trained on the user's time series, served live on a stream's
frames in order and offline on a stack's, with a temporal classical anchor for the gate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import tifffile

from livescope.client import Result, StreamClient
from livescope.context import causal_windows
from livescope.modelcard import CARD_FILE, MODEL_FILE, ModelCard
from livescope.server.context import StreamContext


def cli(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "livescope.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s)


def time_series(frames: int = 24, size: int = 64, seed: int = 0) -> np.ndarray:
    """A slowly drifting pattern at a few tens of photons, a fresh Poisson draw per frame, 100 ADU offset."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    clean = [20 + 40 * (np.sin((x + 0.3 * t) / 5.0) * np.cos(y / 7.0) + 1) for t in range(frames)]
    return (rng.poisson(np.stack(clean)) + 100).astype(np.uint16)


def test_windows_are_the_frame_and_the_ones_before_with_the_first_standing_in_before_the_start():
    frames = np.arange(5)[:, None, None] * np.ones((5, 2, 2), np.uint16)
    windows = causal_windows(frames, 3, 0, 5)
    assert windows[:, :, 0, 0].tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]


def test_a_live_stream_gets_the_same_windows_and_a_missing_frame_is_stood_in_for_by_the_next():
    context = StreamContext()
    frames = np.arange(6)[:, None, None] * np.ones((6, 2, 2), np.uint16)
    live = np.concatenate([context.windows([("a", "cam1")], [i], frames[i:i + 1], 3) for i in range(5)])
    assert np.array_equal(live, causal_windows(frames, 3, 0, 5))
    other = context.windows([("b", "cam1"), ("a", "cam1")], [0, 6], frames[[0, 5]], 3)  # seq 5 never came
    assert other[0, :, 0, 0].tolist() == [0, 0, 0]  # another sender's stream has its own history
    assert other[1, :, 0, 0].tolist() == [4, 5, 5]  # frame 5 missing: the nearest after stands in


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, ModelCard]:
    folder = tmp_path_factory.mktemp("context")
    tifffile.imwrite(folder / "series.tif", time_series())
    r = cli("train", "denoise", "--data", str(folder / "series.tif"), "--context-frames", "3", "--steps", "30",
            "--patch", "32", "--models", str(folder / "repo"))
    assert r.returncode in (0, 1), r.stderr  # 1: a candidate (30 steps may not pass the gate)
    (version,) = (folder / "repo" / "denoise").iterdir()
    return version, ModelCard.load(version / CARD_FILE)


def test_the_card_and_graph_say_the_model_sees_three_frames_and_the_gate_anchor_is_temporal(trained):
    version, card = trained
    assert card.denoise is not None and card.context_frames == 3
    graph = onnx.load(str(version / MODEL_FILE))
    assert graph.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 3
    assert "the last 3 of 24 frames" in card.provenance.data  # held out in order, with their frames before
    classical = card.gate.classical_method
    assert "Gaussian" in classical or "median" in classical or "mean of the 3 frames" in classical


def test_offline_denoising_runs_each_frame_with_the_ones_before(trained, tmp_path):
    version, card = trained
    tifffile.imwrite(tmp_path / "in.tif", time_series(seed=5))
    r = cli("denoise", str(tmp_path / "in.tif"), str(tmp_path / "out.tif"), "--model", card.ref,
            "--models", str(version.parent.parent))
    assert r.returncode == 0, r.stderr
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.shape == (24, 64, 64) and np.isfinite(out).all()


def test_a_live_stream_is_denoised_with_its_context_exactly_as_the_same_frames_offline(trained, own_server,
                                                                                        tmp_path):
    version, card = trained
    srv = own_server("--models", str(version.parent.parent))
    if not card.serves_by_default:  # a candidate serves only once activated by force
        assert cli("models", "activate", card.ref, "--force", "--server", srv.frames).returncode == 0
    frames = time_series(seed=7)
    with StreamClient(srv.frames, stream="cam1", pipeline=[card.ref], max_in_flight=4) as c:
        c.connect()
        for frame in frames[:6]:
            c.submit(frame)
        results = [o for o in c.outcomes(timeout_s=60)]
    assert len(results) == 6 and all(isinstance(o, Result) for o in results)
    assert all(o.header.model == card.ref for o in results)
    live = np.stack([o.data for o in sorted(results, key=lambda o: o.seq)])
    tifffile.imwrite(tmp_path / "six.tif", frames[:6])
    r = cli("denoise", str(tmp_path / "six.tif"), str(tmp_path / "six-out.tif"), "--model", card.ref,
            "--models", str(version.parent.parent))
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(live, tifffile.imread(tmp_path / "six-out.tif"), rtol=1e-5, atol=1e-3)

"""Fine-tuning the camera-agnostic denoiser on the user's own time series (issue 17): each frame's
neighbour, its drift registered out, is its noisy target (Noise2Noise); the start is kept when
fine-tuning does not beat it, and a fine-tune is held to the same gate as any training."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from livescope.cli import app
from livescope.models.compare import CLASSICAL_SUFFIX
from livescope.models.denoise.broad import PhotonDenoiser, export_photon_denoiser, photon_denoiser
from livescope.models.denoise.finetune import (
    METRIC,
    FineTuneConfig,
    FineTuneError,
    NoImprovement,
    fine_tune_and_publish,
    neighbour_pairs,
)
from livescope.models.denoise.user_data import load_training_stacks
from livescope.models.unet import UNet, UNetConfig
from livescope.repository import ModelRepository, shipped_models_root
from livescope.stackio import write_stack

DRIFT_PX = (0.8, -0.5)  # per frame


def drifting_series(frames: int, side: int = 96, seed: int = 0, peak_photons: float = 30.0) -> np.ndarray:
    """A textured scene drifting by ``DRIFT_PX`` per frame, through a camera of 100 ADU baseline and
    2 ADU per photo-electron: uint16 (T, H, W)."""
    rng = np.random.default_rng(seed)
    scene = ndimage.gaussian_filter(rng.random((side + 32, side + 32)), 2.0)
    scene = (scene - scene.min()) / np.ptp(scene) * peak_photons + 2.0
    out = []
    for t in range(frames):
        moved = ndimage.shift(scene, (DRIFT_PX[0] * t, DRIFT_PX[1] * t), order=3, mode="nearest")[16:-16, 16:-16]
        out.append(100 + 2 * rng.poisson(np.maximum(moved, 0)))
    return np.stack(out).astype(np.uint16)


def shipped_default():
    return ModelRepository([shipped_models_root()]).resolve("denoise", 3)


def test_an_exported_camera_agnostic_denoiser_is_read_back_as_the_same_trainable_graph():
    graph = PhotonDenoiser(UNet(UNetConfig(depth=2, base_channels=4, top_skip=True)))
    with __import__("torch").no_grad():
        for p in graph.parameters():
            p.add_(0.01)
    photons = np.random.default_rng(0).poisson(20, (2, 32, 32)).astype(np.float32)
    proto = export_photon_denoiser(graph, photons)
    again = PhotonDenoiser.from_onnx(proto)
    assert again.net.config == graph.net.config
    x = photons[:, None]
    np.testing.assert_allclose(photon_denoiser(export_photon_denoiser(again, photons))(x),
                               photon_denoiser(proto)(x), rtol=1e-5, atol=1e-4)
    identity = onnx.load(ModelRepository([shipped_models_root()]).resolve("identity", None).onnx_path)
    with pytest.raises(ValueError, match="not a camera-agnostic denoiser"):
        PhotonDenoiser.from_onnx(identity)


def test_each_frame_is_paired_with_its_neighbours_in_its_series_their_drift_registered_out():
    frames = drifting_series(4, peak_photons=3000.0).astype(np.float32)  # bright: the structure shows
    pairs = neighbour_pairs(frames, np.array([0, 0, 0, 1]))  # the last frame is another series, alone
    assert len(pairs) == 3
    np.testing.assert_array_equal(pairs.inputs, frames[:3])
    assert pairs.drift_px == pytest.approx(max(abs(d) for d in DRIFT_PX), abs=0.15)
    m = pairs.margin_px
    inner = (slice(None), slice(m, -m), slice(m, -m))
    unregistered = np.stack([frames[1], (frames[0] + frames[2]) / 2, frames[1]])
    registered_error = np.abs(pairs.inputs - pairs.targets)[inner].mean()
    assert registered_error < 0.5 * np.abs(pairs.inputs - unregistered)[inner].mean()
    with pytest.raises(FineTuneError, match="time series"):
        neighbour_pairs(frames, np.arange(4))


def test_a_long_series_of_large_frames_is_sampled_evenly_within_the_memory_cap():
    frames = drifting_series(12)
    pairs = neighbour_pairs(frames, np.zeros(12, int), max_pixels=4 * frames[0].size)
    assert len(pairs) == 4
    picked = [int(np.flatnonzero((frames.astype(np.float32) == p).all(axis=(1, 2)))[0]) for p in pairs.inputs]
    assert picked == [0, 4, 7, 11]  # evenly spread, ends included


def test_a_frame_between_two_neighbours_gets_their_mean_half_as_noisy():
    frames = drifting_series(3).astype(np.float32)
    pairs = neighbour_pairs(frames, np.zeros(3, int))
    noise = lambda a: (a - ndimage.gaussian_filter(a, 2.0))[8:-8, 8:-8].var()  # noqa: E731
    assert noise(pairs.targets[1]) < 0.7 * noise(pairs.targets[0])


@pytest.fixture(scope="module")
def series_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("series")
    paths = []
    for seed in (1, 2):
        path = folder / f"series{seed}.tif"
        write_stack(path, drifting_series(10, seed=seed))
        paths.append(path)
    return paths


def test_a_fine_tune_is_scored_against_its_start_and_a_gaussian_on_held_out_neighbours(tmp_path, series_files):
    data = load_training_stacks(series_files, 32, 0, context_frames=2)
    assert set(data.train_series) == {0, 1} and set(data.held_out_series) == {1}
    start = shipped_default()
    config = FineTuneConfig(steps=30, batch_size=4, patch_px=32, validate_every_steps=10, learning_rate=3e-4)
    try:
        folder, card = fine_tune_and_publish(tmp_path, data, start, config=config, compare_with=start)
    except NoImprovement as e:  # also a correct outcome: then nothing was written
        assert "denoise@3" in str(e) and not any(tmp_path.iterdir())
        return
    assert card.normalisation.kind == "photons" and card.inputs[0].dtype == "float32"
    assert card.metrics[METRIC] < card.metrics[METRIC + CLASSICAL_SUFFIX] or not card.serves_by_default
    assert card.comparison is not None and card.comparison.against == start.ref
    assert card.comparison.metric == METRIC and card.comparison.new_value <= card.comparison.active_value
    assert "fine-tuned" in card.description and card.provenance.data_hash == data.data_hash


def test_a_fine_tune_that_cannot_beat_its_start_writes_nothing(tmp_path, series_files):
    data = load_training_stacks(series_files, 32, 0, context_frames=2)
    start = shipped_default()
    config = FineTuneConfig(steps=2, batch_size=2, patch_px=32, validate_every_steps=1, learning_rate=10.0)
    with pytest.raises(NoImprovement, match="did not improve on denoise@3"):
        fine_tune_and_publish(tmp_path, data, start, config=config, compare_with=start)
    assert not list(tmp_path.iterdir())


def invoke(*args: str):
    return CliRunner().invoke(app, ["train", "denoise", *args])


def test_the_cli_fine_tunes_only_a_camera_agnostic_model_on_a_time_series(tmp_path, series_files):
    models = str(tmp_path / "models")
    data = ["--data", str(series_files[0])]
    adu_model = invoke("--from", "denoise@2", *data, "--models", models, "--steps", "1")
    assert adu_model.exit_code == 2 and "takes one camera's ADU" in adu_model.output
    no_data = invoke("--from", "denoise@3", "--models", models)
    assert no_data.exit_code == 2 and "--data" in no_data.output
    depth = invoke("--from", "denoise@3", *data, "--depth", "2", "--models", models)
    assert depth.exit_code == 2 and "--depth" in depth.output
    odd_patch = invoke("--from", "denoise@3", *data, "--patch", "20", "--models", models)
    assert odd_patch.exit_code == 2 and "multiple of 8 (denoise@3's UNet)" in odd_patch.output
    single = tmp_path / "single.tif"
    write_stack(single, drifting_series(1, side=256))
    one_frame = invoke("--from", "denoise@3", "--data", str(single), "--models", models)
    assert one_frame.exit_code == 2 and "time series" in one_frame.output
    assert "Traceback" not in adu_model.output + no_data.output + depth.output + one_frame.output
    ran = invoke("--from", "denoise@3", *data, "--models", models, "--steps", "3", "--patch", "32")
    assert ran.exit_code in (0, 1), ran.output
    assert "Traceback" not in ran.output
    assert ("did not improve on denoise@3" in ran.output) == (ran.exit_code == 1 and "wrote" not in ran.output)

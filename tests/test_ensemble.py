"""`livescope denoise --ensemble`: each frame the mean of the model's outputs over its 8 flips and
quarter turns (geometric self-ensemble), offline only, for tasks with that symmetry."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from livescope.models.denoise.data import VirtualDenoiseData, virtual_frames
from livescope.repository import ModelRepository, shipped_models_root
from livescope.server.ensemble import TRANSFORMS, ensembled
from livescope.server.models import LoadedModel
from livescope.server.offline import OfflineError, restore_stack, run_offline
from livescope.server.providers import RuntimeOptions
from livescope.stackio import read_stack
from tests.test_offline import noisy


def turned(x: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    y = np.rot90(x, turns, axes=(-2, -1))
    return y[..., ::-1] if flip else y


def lopsided(x: np.ndarray) -> np.ndarray:
    """A 'model' with a preferred direction: it adds each pixel's row number and blurs along rows."""
    rows = np.arange(x.shape[-2], dtype=np.float32)[:, None]
    return (x + rows + 0.5 * np.roll(x, 1, axis=-1)).astype(np.float32)


def test_the_ensemble_has_the_symmetry_the_model_lacks():
    frames = noisy((2, 12, 20)).astype(np.float32)
    mean = ensembled(lopsided)
    out = mean(frames)
    assert out.shape == frames.shape and out.dtype == np.float32
    for turns, flip in TRANSFORMS:
        np.testing.assert_allclose(mean(np.ascontiguousarray(turned(frames, turns, flip))),
                                   turned(out, turns, flip), rtol=1e-5, atol=1e-3)
    assert not np.allclose(out, lopsided(frames))


def test_the_ensemble_takes_context_windows_and_returns_frames():
    windows = noisy((3, 2, 16, 16)).astype(np.float32)  # (N, C, H, W): a frame and the one before it
    out = ensembled(lambda w: w[:, -1] - w[:, 0])(windows)
    np.testing.assert_allclose(out, windows[:, -1] - windows[:, 0], atol=1e-3)


def test_an_identity_model_comes_out_unchanged_and_the_output_says_it_was_ensembled(tmp_path):
    frames = noisy((3, 24, 40))  # not square: a quarter turn swaps the axes
    tifffile.imwrite(tmp_path / "in.tif", frames, photometric="minisblack")
    summary = run_offline("identity", tmp_path / "in.tif", tmp_path / "out.ome.tif", ensemble=True, threads=1)
    out = read_stack(tmp_path / "out.ome.tif")
    np.testing.assert_allclose(out.frames, frames.astype(np.float32), atol=1e-3)
    (run,) = out.info.provenance.model_runs
    assert run.ensemble_transforms == 8 and summary.ensemble_transforms == 8
    assert "mean of 8 flips/turns" in summary.line()
    plain = run_offline("identity", tmp_path / "in.tif", tmp_path / "plain.ome.tif", threads=1)
    assert read_stack(tmp_path / "plain.ome.tif").info.provenance.model_runs[0].ensemble_transforms == 1
    assert "flips" not in plain.line()


def test_the_shipped_denoiser_ensembled_is_symmetric_and_closer_to_the_truth():
    model = LoadedModel.load(ModelRepository([shipped_models_root()]).resolve("denoise", 3),
                             RuntimeOptions(provider="cpu", intra_op_threads=2))
    virtual = virtual_frames(VirtualDenoiseData(modalities=("widefield",), specimens=("filaments",),
                                                signal_photons_per_ms=(1.0,), frames_per_condition=2,
                                                sensor_shape_px=(64, 64), seed=7))
    frames = virtual.noisy_adu
    plain = restore_stack(model, frames)
    mean = restore_stack(model, frames, ensemble=True)
    turned_back = turned(restore_stack(model, np.ascontiguousarray(turned(frames, 1, True)), ensemble=True), 1, True)
    rmse = lambda a: float(np.sqrt(np.mean((a - virtual.clean_adu) ** 2)))  # noqa: E731
    assert np.abs(turned_back - mean).max() <= 1e-3 * float(np.ptp(mean))
    assert rmse(mean) < rmse(plain) < rmse(frames.astype(np.float32))


def test_a_model_whose_task_a_quarter_turn_changes_is_refused_before_any_work(tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", noisy((1, 64, 64)))
    with pytest.raises(OfflineError, match="restore model .* does not allow; run it without --ensemble"):
        run_offline("restore", tmp_path / "in.tif", tmp_path / "out.tif", task="restore", ensemble=True)
    assert not (tmp_path / "out.tif").exists()


def test_the_cli_denoises_with_the_ensemble_when_asked(tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", noisy((2, 32, 32)), photometric="minisblack")
    done = subprocess.run([sys.executable, "-m", "livescope.cli", "denoise", str(tmp_path / "in.tif"),
                           str(tmp_path / "out.ome.tif"), "--model", "identity", "--ensemble"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "mean of 8 flips/turns" in done.stdout
    assert read_stack(tmp_path / "out.ome.tif").info.provenance.model_runs[0].ensemble_transforms == 8

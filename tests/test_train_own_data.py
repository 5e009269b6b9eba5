"""`livescope train denoise --data STACK`: Noise2Void on the user's own noisy stacks.

Bad data is refused in one line (exit 2) before any training, and nothing is written; good data
gives a new version whose card names the data and holds the held-out N2V validation loss, with the
quality gate's verdict (exit 1 when it is a candidate: tests/test_quality_gate.py).
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tifffile

from livescope.code_version import code_version
from livescope.modelcard import CARD_FILE, MODEL_FILE, ModelCard


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "livescope.cli", *args], capture_output=True,
                          text=True, timeout=120)


def noisy_stack(frames: int = 8, height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """Poisson noise on a smooth pattern plus a camera offset: uint16 counts (T, H, W)."""
    y, x = np.mgrid[:height, :width]
    pattern = 20 + 60 * (np.sin(x / 5.0) * np.cos(y / 7.0) + 1)
    rng = np.random.default_rng(seed)
    return (rng.poisson(np.broadcast_to(pattern, (frames, height, width))) + 100).astype(np.uint16)


def train(tmp_path: Path, *data: Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    args = [a for path in data for a in ("--data", str(path))]
    return cli("train", "denoise", *args, "--steps", "20", "--patch", "32",
               "--models", str(tmp_path / "repo"), *extra)


def float_stack(value: float) -> np.ndarray:
    frames = noisy_stack().astype(np.float32)
    frames[0, 3, 4] = value
    return frames


BAD_INPUTS = {
    "frames smaller than the patch": (noisy_stack(20, 16, 64), "smaller than the 32 px"),
    "constant images": (np.full((8, 64, 64), 300, np.uint16), "constant image"),
    "NaN values": (float_stack(np.nan), "NaN or infinite"),
    "infinite values": (float_stack(np.inf), "NaN or infinite"),
    "negative floats": (float_stack(-40.0), "do not fit camera counts"),
    "floats above 65535": (float_stack(7e4), "do not fit camera counts"),
    "floats normalised to 0..1": (noisy_stack().astype(np.float32) / 300, "grey levels"),
    "RGB colour": (np.stack([noisy_stack(1)[0]] * 3, axis=-1), "colour"),
    "one dimension": (noisy_stack(1, 1, 64)[0, 0], "dimension"),
    "too few pixels": (noisy_stack(1, 64, 64), "too few pixels"),
}


@pytest.mark.parametrize("problem", list(BAD_INPUTS))
def test_bad_data_is_refused_in_one_line_before_training_and_nothing_is_written(tmp_path, problem):
    frames, words = BAD_INPUTS[problem]
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, frames, photometric="rgb" if frames.ndim == 3 and frames.shape[-1] == 3
                     else None)
    r = train(tmp_path, path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("livescope: error:") and "Traceback" not in r.stderr
    assert str(path) in r.stderr and words in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_a_missing_file_is_named_and_nothing_is_written(tmp_path):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, noisy_stack())
    r = train(tmp_path, good, tmp_path / "missing.tif")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("livescope: error:") and "missing.tif: no such file" in r.stderr
    assert not (tmp_path / "repo").exists()


def test_a_patch_size_the_network_cannot_take_is_refused(tmp_path):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, noisy_stack())
    r = train(tmp_path, good, extra=("--patch", "36"))
    assert r.returncode == 2 and r.stderr.startswith("livescope: error: --patch")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("option,words", [
    (("--struct", "diagonal"), "--struct must be 'row' or 'column'"),
    (("--intensity", "log"), "--intensity must be 'sqrt' or 'linear'"),
    (("--depth", "3", "--patch", "36"), "--patch 36 must be a multiple of 8"),
])
def test_options_the_trainer_cannot_take_are_refused_in_one_line(tmp_path, option, words):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, noisy_stack())
    r = train(tmp_path, good, extra=option)
    assert r.returncode == 2 and r.stderr.startswith("livescope: error:") and words in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "repo").exists()


def test_struct_n2v_for_row_correlated_noise_is_recorded_in_the_card(tmp_path):
    stack = tmp_path / "striped.tif"
    frames = noisy_stack().astype(np.int32)
    frames += np.random.default_rng(1).integers(-5, 6, (8, 64, 1))  # a random offset per row
    tifffile.imwrite(stack, frames.astype(np.uint16))
    r = train(tmp_path, stack, extra=("--struct", "row", "--struct-span", "3"))
    card = ModelCard.load(tmp_path / "repo" / "denoise" / "4" / CARD_FILE)
    assert r.returncode == (0 if card.serves_by_default else 1), r.stderr  # 1: a candidate (the gate)
    assert '"struct_axis":"row","struct_span_px":3' in card.description


@pytest.fixture(scope="module")
def trained_on_own_data(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """A 20-step run on one small OME-TIFF with a pixel size."""
    tmp_path = tmp_path_factory.mktemp("own")
    stack = tmp_path / "cells.ome.tif"
    tifffile.imwrite(stack, noisy_stack(), ome=True, metadata={
        "axes": "TYX", "PhysicalSizeX": 0.108, "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": 0.108, "PhysicalSizeYUnit": "µm"})
    return tmp_path / "repo", stack, train(tmp_path, stack, extra=("--seed", "4"))


def test_a_run_on_own_data_writes_the_next_version_with_a_card_naming_the_data(trained_on_own_data):
    repository, stack, r = trained_on_own_data
    assert r.stdout.strip().splitlines()[-1] == "denoise@4"
    assert sorted(p.name for p in repository.iterdir()) == ["denoise"]
    folder = repository / "denoise" / "4"
    card = ModelCard.load(folder / CARD_FILE)
    # written either way; a 20-step model rarely beats a classical filter: then it is a candidate
    assert r.returncode == (0 if card.serves_by_default else 1), r.stderr
    assert card.gate.classical_value == card.metrics["n2v_validation_mse_adu2_classical"]
    assert str(stack) in card.provenance.data and "held out" in card.provenance.data
    assert card.provenance.data_hash.startswith("sha256:") and card.provenance.seed == 4
    assert "--data" in card.provenance.command and card.provenance.trained_at is not None
    assert card.provenance.code_version == code_version()  # with the commit, from a checkout
    assert card.trained_for.pixel_size_nm == (108.0, 108.0)
    assert card.metrics["n2v_validation_mse_adu2"] > 0
    assert card.metrics["n2v_validation_mse_adu2_median_filter"] > 0
    assert "20 steps" in card.description


def test_the_model_trained_on_own_data_denoises_a_frame_of_another_size(trained_on_own_data):
    repository, _, _ = trained_on_own_data
    session = ort.InferenceSession(str(repository / "denoise" / "4" / MODEL_FILE),
                                   providers=["CPUExecutionProvider"])
    raw = noisy_stack(1, 48, 80, seed=9)[None]
    out = session.run(["restored"], {"raw": raw})[0]
    assert out.shape == raw.shape and out.dtype == np.float32 and np.isfinite(out).all()


def test_the_same_data_hash_for_the_same_pixels_and_a_new_one_for_others(tmp_path):
    from livescope.models.denoise.user_data import load_training_stacks

    for name, seed in (("a.tif", 0), ("b.tif", 0), ("c.tif", 1)):
        tifffile.imwrite(tmp_path / name, noisy_stack(seed=seed))
    a, b, c = (load_training_stacks([tmp_path / n], 32).data_hash for n in ("a.tif", "b.tif", "c.tif"))
    assert a == b != c


def test_stacks_of_different_sizes_are_tiled_and_a_seeded_tenth_is_held_out(tmp_path):
    from livescope.models.denoise.user_data import load_training_stacks

    tifffile.imwrite(tmp_path / "small.tif", noisy_stack(10, 64, 64))
    tifffile.imwrite(tmp_path / "wide.tif", noisy_stack(5, 64, 128).astype(np.float32))
    data = load_training_stacks([tmp_path / "small.tif", tmp_path / "wide.tif"], 32, seed=2)
    assert data.train_adu.dtype == np.uint16
    assert data.train_adu.shape[1:] == data.held_out_adu.shape[1:] == (64, 64)
    assert len(data.train_adu) + len(data.held_out_adu) == 20 and len(data.held_out_adu) == 2
    again = load_training_stacks([tmp_path / "small.tif", tmp_path / "wide.tif"], 32, seed=2)
    assert np.array_equal(data.held_out_adu, again.held_out_adu)
    assert data.pixel_size_nm is None  # plain TIFFs do not say


def test_a_single_frame_holds_out_its_last_rows(tmp_path):
    from livescope.models.denoise.user_data import load_training_stacks

    tifffile.imwrite(tmp_path / "one.tif", noisy_stack(1, 128, 96)[0])
    data = load_training_stacks([tmp_path / "one.tif"], 32)
    assert data.train_adu.shape == (1, 96, 96) and data.held_out_adu.shape == (1, 32, 96)


def test_ome_zarr_stacks_are_read_with_their_pixel_size(tmp_path):
    from livescope.models.denoise.user_data import load_training_stacks
    from livescope.stackio import StackInfo, write_stack

    like = StackInfo(path="x", format="ome-tiff", axes="TYX", shape=(8, 64, 64), dtype="uint16",
                     pixel_size_um=0.25)
    write_stack(tmp_path / "s.ome.zarr", noisy_stack(), like)
    data = load_training_stacks([tmp_path / "s.ome.zarr"], 32)
    assert data.pixel_size_nm == (250.0, 250.0) and data.train_adu.shape == (7, 64, 64)


def test_an_epoch_is_as_many_patches_as_the_training_frames_hold():
    from livescope.models.denoise.train import DenoiseTrainConfig, steps_per_epoch

    config = DenoiseTrainConfig(patch_px=32, batch_size=16, steps=1)
    assert steps_per_epoch(np.zeros((10, 64, 96), np.uint16), config) == 4  # 60 patches / 16

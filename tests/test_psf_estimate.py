"""The PSF estimator (issue 20, offline): simulated training data whose blur follows the defocus, a
model trained for a few steps that exports to ONNX and runs on the server's runtime, and
`livescope psf IN OUT.csv` writing per-tile estimates with units and provenance; mistakes are one
line, without a traceback."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from livescope.cli import app
from livescope.modelcard import ModelCard
from livescope.models.psf.estimate_data import FINE, PsfSimulation, otfs, simulate, texture
from livescope.models.psf.estimate_train import PsfTrainConfig, train_and_publish_psf
from livescope.provenance import Provenance
from livescope.psf_estimate import CSV_COLUMNS, OUTPUT_CHANNELS, PsfOptics
from livescope.repository import ModelRepository
from livescope.server.models import LoadedModel
from livescope.server.offline_psf import run_psf_offline

runner = CliRunner()


def _sharpness(image: np.ndarray) -> float:
    gy, gx = np.gradient(image)
    return float(np.mean(gy**2 + gx**2) / np.mean(image) ** 2)


def test_simulated_patches_blur_more_the_further_from_focus():
    specimen = torch.from_numpy(texture("puncta", np.random.default_rng(3)))[None]
    sharpness = []
    for z in (0.0, 0.4, 0.8, 1.4):
        one = np.array
        transfer = otfs(one([1.3]), one([600.0]), one([100.0]), one([1.515]), one([z]), one([0.0]), one([0.0]))
        image = torch.fft.irfft2(torch.fft.rfft2(specimen) * transfer, s=specimen.shape[-2:])[0, ::FINE, ::FINE]
        sharpness.append(_sharpness(image.numpy()))
    assert all(a > b for a, b in zip(sharpness, sharpness[1:])), sharpness


def test_simulated_batches_hold_truth_and_camera_counts_within_the_documented_ranges():
    sim = PsfSimulation()
    batch = simulate(sim, 8, np.random.default_rng(0))
    assert batch.adu.shape == (8, 64, 64) and batch.adu.min() >= 0 and float(batch.adu.max()) <= 65535
    assert np.all(np.abs(batch.defocus_um) <= 1.0)
    na, em = batch.optics[:, 0], batch.optics[:, 1] * 1e3
    assert not any(sim.held_out(a, e) for a, e in zip(na, em))  # the benchmark's optics are never drawn
    held = simulate(sim, 8, np.random.default_rng(0), held_out=True)
    assert all(sim.held_out(a, e) for a, e in zip(held.optics[:, 0], held.optics[:, 1] * 1e3))


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    config = PsfTrainConfig(steps=4, batch_size=8, width=8, validate_every_steps=2, held_out_patches=8)
    folder, card = train_and_publish_psf(root, config=config, command="livescope train psf --steps 4")
    return root, card.ref  # numbered after the shipped versions


def test_a_briefly_trained_model_is_a_versioned_psf_model_that_loads_on_the_server_runtime(repository):
    repository, ref = repository
    folder = repository / "psf" / ref.split("@")[1]
    card = ModelCard.load(folder / "card.yaml")
    assert card.task == "psf" and card.tiling.tile_px == 64
    assert card.trained_for.na == (0.7, 1.49) and card.trained_for.peak_photons == (30.0, 3000.0)
    assert "held_out_optics_abs_defocus_rms_nm" in card.metrics
    assert (folder / "model.onnx").stat().st_size < 5e6
    loaded = LoadedModel.load(ModelRepository([repository]).resolve("psf", int(ref.split("@")[1])))
    x = np.zeros((3, 5, 64, 64), np.float32)
    x[:, 0] = np.random.default_rng(0).poisson(100, (3, 64, 64))
    x[:, 1:] = PsfOptics(na=1.4, emission_nm=600, pixel_size_nm=100, immersion_index=1.515).channels()[:, None, None]
    assert loaded.run_windows(x).shape == (3, len(OUTPUT_CHANNELS), 1, 1)


def test_a_psf_reader_no_better_than_one_constant_guess_is_a_candidate_not_served_by_default(repository):
    repository, ref = repository
    card = ModelRepository([repository]).resolve("psf", int(ref.split("@")[1])).card
    gate = card.gate
    assert gate is not None and gate.metric == "held_out_optics_abs_defocus_rms_nm" and not gate.higher_is_better
    assert gate.classical_value == card.metrics["held_out_optics_abs_defocus_rms_nm_classical"] > 0
    assert "constant" in gate.classical_method
    assert not card.serves_by_default and "does not beat" in gate.reason  # four steps read nothing yet


def _stack(path, frames=2, side=150):
    rng = np.random.default_rng(1)
    tifffile.imwrite(path, rng.poisson(200, (frames, side, side)).astype(np.uint16))
    return path


def test_psf_writes_a_row_per_tile_with_units_and_a_provenance_sidecar(repository, tmp_path):
    repository, ref = repository
    stack = _stack(tmp_path / "in.tif")
    out = tmp_path / "psf.csv"
    result = runner.invoke(app, ["psf", str(stack), str(out), "--pixel-size", "100", "--na", "1.4",
                                 "--models", str(repository), "--model", ref])
    assert result.exit_code == 0, result.output
    # the optics it was not given are said, never assumed silently
    assert "optics not given, assumed --emission 600, --immersion 1.515" in result.output
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert all(c.endswith(("_um", "_waves", "_px")) or c.startswith(("p_", "frame")) for c in CSV_COLUMNS)
    assert len(rows) == 2 * 4  # 150 px: 2 x 2 whole tiles of 64 px per frame
    assert [(r["frame"], r["tile_y_px"], r["tile_x_px"]) for r in rows[:4]] == [
        ("1", "0", "0"), ("1", "0", "64"), ("1", "64", "0"), ("1", "64", "64")]
    assert all(float(r["abs_defocus_sd_um"]) > 0 for r in rows)
    provenance = Provenance.of_table(out)
    assert provenance.model_of(1) == ref and provenance.frame_count == 2
    assert json.loads((tmp_path / "psf.csv.provenance.json").read_text())["model_runs"][0]["model_sha256"]


def test_the_summary_runs_on_the_same_loaded_model_api(repository, tmp_path):
    repository, ref = repository
    summary = run_psf_offline(_stack(tmp_path / "in.tif", frames=1, side=64), tmp_path / "one.csv", na=1.2,
                              emission_nm=520, immersion_index=1.33, pixel_size_nm=80, model=ref,
                              model_dirs=[repository])
    assert summary.tiles_per_frame == 1 and summary.frames == 1 and summary.model == ref


@pytest.mark.parametrize("args, says", [
    (["missing.tif", "out.csv", "--pixel-size", "100"], "missing.tif"),
    (["in.tif", "out.txt", "--pixel-size", "100"], "name it .csv"),
    (["in.tif", "out.csv"], "--pixel-size"),
    (["in.tif", "out.csv", "--pixel-size", "100", "--na", "1.6"], "immersion"),
    (["in.tif", "out.csv", "--pixel-size", "100", "--tile", "200"], "smaller --tile"),
    (["in.tif", "out.csv", "--pixel-size", "100", "--model", "identity"], "psf needs a PSF estimation model"),
])
def test_mistakes_are_one_line_without_a_traceback(repository, tmp_path, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    _stack(tmp_path / "in.tif")
    named = [] if "--model" in args else ["--model", repository[1]]  # the fixture's own 4-step candidate
    result = runner.invoke(app, ["psf", *args, "--models", str(repository[0]), *named])
    assert result.exit_code == 2
    assert says in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out.csv").exists()


def test_the_bare_name_uses_the_shipped_version_that_passed_the_gate_not_a_newer_candidate(repository, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    _stack(tmp_path / "in.tif")
    result = runner.invoke(app, ["psf", "in.tif", "out.csv", "--pixel-size", "100", "--models", str(repository[0])])
    assert result.exit_code == 0, result.output
    assert repository[1] != "psf@1" and Provenance.of_table(tmp_path / "out.csv").model_of(1) == "psf@1"

"""`livescope train refocus` and `livescope refocus`: z-stacks in, a refocusing model out; a stack
refocused by delta-z, or one frame swept into a z-stack; delta-z outside the trained range refused.

The models trained here run for a few steps: they do not beat leaving the input unchanged, so each is
written as a candidate that failed the quality gate. The offline commands use one only when it is
named (`--model refocus@2`, with a warning), and a server only when it is activated by force."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from livescope.deploy import active_version
from livescope.modelcard import CARD_FILE, ModelCard
from livescope.models.refocus.virtual import VirtualRefocusData, virtual_stacks
from livescope.stackio import read_stack

Z_STEP_UM = 0.25


def cli(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "livescope.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s)


@pytest.fixture(scope="module")
def stacks(tmp_path_factory) -> list[Path]:
    """Three virtual z-stacks of nuclei, -1..1 µm around focus, as OME-TIFF with their spacing."""
    folder = tmp_path_factory.mktemp("stacks")
    spec = VirtualRefocusData(specimens=("cells",), fields_per_specimen=3, sensor_shape_px=(64, 64),
                              z_range_um=(-1.0, 1.0), z_step_um=Z_STEP_UM, signal_photons_per_ms=(10.0,))
    paths = []
    for i, stack in enumerate(virtual_stacks(spec)):
        path = folder / f"field{i}.ome.tif"
        tifffile.imwrite(path, stack.planes_adu, ome=True, metadata={
            "axes": "ZYX", "PhysicalSizeZ": Z_STEP_UM, "PhysicalSizeX": 0.108, "PhysicalSizeY": 0.108})
        paths.append(path)
    return paths


TRAINED = "refocus@2"  # after the shipped refocus@1


@pytest.fixture(scope="module")
def training(tmp_path_factory, stacks) -> tuple[Path, subprocess.CompletedProcess]:
    """A 2-step run of `train refocus` on the stacks: its repository, and the run."""
    folder = tmp_path_factory.mktemp("models")
    data = [a for path in stacks for a in ("--data", str(path))]
    return folder, cli("train", "refocus", *data, "--dz-max", "1", "--steps", "2", "--models", str(folder))


@pytest.fixture(scope="module")
def repository(training) -> Path:
    """The repository holding refocus@2: it runs; it does not refocus well (a candidate)."""
    folder, r = training
    assert r.stdout.strip().splitlines()[-1] == TRAINED, r.stderr
    return folder


def test_a_few_steps_write_a_candidate_that_does_not_beat_the_unchanged_input_and_say_so_in_one_line(training):
    folder, r = training
    assert r.returncode == 1 and r.stdout.strip().splitlines()[-1] == TRAINED  # written, and named
    error = r.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"livescope: error: {TRAINED} failed the quality gate: ")
    assert "Traceback" not in r.stderr
    card = ModelCard.load(folder / "refocus" / "2" / CARD_FILE)
    assert card.gate is not None and not card.gate.passed and not card.serves_by_default
    assert card.gate.metric == "psnr_db_refocused_at_1_um" and card.gate.classical_method
    # the strongest classical refocusing of one frame: none, the input left as it is
    assert card.gate.classical_value == card.metrics["psnr_db_refocused_at_1_um_classical"]
    assert card.gate.classical_value == card.metrics["psnr_db_unchanged_at_1_um"]


def test_training_on_z_stacks_writes_a_version_recording_its_delta_z_range_and_plane_spacing(repository):
    card = ModelCard.load(repository / "refocus" / "2" / CARD_FILE)
    assert card.task == "refocus" and card.refocus.dz_range_um == (-1.0, 1.0)
    assert card.refocus.z_step_um == pytest.approx(Z_STEP_UM)
    assert card.trained_for.pixel_size_nm == pytest.approx((108.0, 108.0))
    assert "--steps 2" in card.provenance.command
    # scored against the true planes, next to leaving the input as it is
    assert {"psnr_db_refocused_at_1_um", "psnr_db_unchanged_at_1_um"} <= card.metrics.keys()


def test_a_stack_is_refocused_frame_by_frame_keeping_its_layout(tmp_path, stacks, repository):
    out = tmp_path / "moved.ome.tif"
    r = cli("refocus", str(stacks[0]), str(out), "--dz", "0.5", "--models", str(repository), "--model", TRAINED)
    assert r.returncode == 0, r.stderr
    # named, the candidate runs, but never silently
    assert f"warning: {TRAINED} is a candidate that failed the quality gate" in " ".join(r.stdout.split())
    moved, original = read_stack(out), read_stack(stacks[0])
    assert moved.frames.shape == original.frames.shape and moved.frames.dtype == np.float32
    assert moved.info.pixel_size_um == pytest.approx(0.108)


def test_a_sweep_turns_one_frame_into_a_z_stack_with_the_step_as_its_spacing(tmp_path, stacks, repository):
    out = tmp_path / "sweep.ome.zarr"
    r = cli("refocus", str(stacks[0]), str(out), "--sweep", "-1:1:0.5", "--frame", "4", "--models",
            str(repository), "--model", TRAINED)
    assert r.returncode == 0, r.stderr
    sweep = read_stack(out)
    assert sweep.frames.shape == (5, 64, 64) and sweep.info.axes == "ZYX"
    assert sweep.info.z_step_um == pytest.approx(0.5)


@pytest.mark.parametrize("args, words", [
    (("--dz", "1.5"), "delta-z +1.5 µm is outside the -1 to +1 µm refocus@2 was trained for"),
    (("--sweep", "-2:0:0.5"), "delta-z -2 µm is outside"),
    ((), "give either --dz MICRONS (every frame) or --sweep START:STOP:STEP"),
    (("--dz", "0.5", "--sweep", "-1:1:0.5"), "give either --dz"),
    (("--sweep", "1:-1:0.5"), "needs STEP > 0 and STOP >= START"),
    (("--sweep", "-1:1"), "expected START:STOP:STEP"),
    (("--sweep", "-1:1:0.5", "--frame", "9"), "--frame 9: "),
    (("--dz", "0.5", "--model", "identity"), "identity@1 is not a refocusing model (its task: identity)"),
])
def test_mistakes_are_refused_in_one_line_before_anything_is_written(tmp_path, stacks, repository, args, words):
    out = tmp_path / "out.ome.tif"
    model = () if "--model" in args else ("--model", TRAINED)
    r = cli("refocus", str(stacks[0]), str(out), *args, *model, "--models", str(repository))
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_an_existing_output_is_kept_without_overwrite(tmp_path, stacks, repository):
    out = tmp_path / "out.ome.tif"
    out.write_bytes(b"mine")
    r = cli("refocus", str(stacks[0]), str(out), "--dz", "0.5", "--models", str(repository), "--model", TRAINED)
    assert r.returncode == 2 and "already exists" in r.stderr and out.read_bytes() == b"mine"


def test_training_needs_two_fields_and_stacks_spanning_the_delta_z_range(tmp_path, stacks):
    r = cli("train", "refocus", "--data", str(stacks[0]), "--steps", "1", "--dz-max", "1",
            "--models", str(tmp_path))
    assert r.returncode == 2 and "give at least 2 fields" in r.stderr
    r = cli("train", "refocus", "--data", str(stacks[0]), "--data", str(stacks[1]), "--steps", "1",
            "--dz-max", "3", "--models", str(tmp_path))
    assert r.returncode == 2 and "less than --dz-max 3: lower --dz-max" in r.stderr
    assert not any(tmp_path.iterdir())


def test_deploy_compares_with_the_active_version_on_the_same_data_and_swaps_only_if_not_worse(
        own_server, tmp_path, stacks):
    repo = tmp_path / "models"
    srv = own_server("--models", str(repo))  # serving the shipped refocus@1
    data = [a for path in stacks for a in ("--data", str(path))]
    train = ("train", "refocus", *data, "--dz-max", "1", "--steps", "2", "--models", str(repo),
             "--deploy", "--server", srv.frames)
    r = cli(*train)
    assert r.returncode == 1 and "failed the quality gate" in r.stderr, r.stdout + r.stderr  # a candidate
    card = ModelCard.load(repo / "refocus" / "2" / CARD_FILE)  # the shipped one is refocus@1
    comparison = card.comparison
    assert comparison.against == "refocus@1" and comparison.metric == "psnr_db_refocused_at_1_um"
    assert comparison.new_value == card.metrics["psnr_db_refocused_at_1_um"]
    assert comparison.active_value > comparison.new_value  # 2 steps do not beat the shipped model
    said = " ".join(r.stdout.split())
    assert "refocus@2 registered, NOT activated" in said and "failed the quality gate" in said
    assert "active: refocus@1" in said and r.stdout.strip().splitlines()[-1] == "refocus@2"
    assert active_version(srv.frames, "refocus").ref == "refocus@1"  # still serving the shipped model
    r = subprocess.run([sys.executable, "-m", "livescope.cli", "models", "list", "--server", srv.frames],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "400"})
    assert "refocus@2" in r.stdout and "psnr_db_refocused_at_1_um" in r.stdout  # its lineage
    r = cli(*train, "--force")  # worse and a candidate: served only because forced
    said = " ".join(r.stdout.split())
    assert r.returncode == 1 and "refocus@3 activated" in said and "activated because forced" in said, \
        r.stdout + r.stderr
    assert active_version(srv.frames, "refocus").ref == "refocus@3"


def test_deploy_without_a_server_fails_before_training(tmp_path, stacks):
    from livescope.launch import free_port

    r = cli("train", "refocus", "--data", str(stacks[0]), "--data", str(stacks[1]), "--dz-max", "1",
            "--steps", "1", "--models", str(tmp_path), "--deploy", "--server", f"tcp://127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "--deploy: no livescope server answered" in r.stderr
    assert "Traceback" not in r.stderr and not any(tmp_path.iterdir())

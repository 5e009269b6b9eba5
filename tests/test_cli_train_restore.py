"""`livescope train restore`: virtual-microscope pairs, or calibration pairs sessions, in; a new
`restore` version out. Bad sessions are refused in one line (exit 2), before any training, and
nothing is written.

The command is registered here on a local typer app as livescope/cli/train.py registers it
(``train_app.command("restore")(train_restore)``); the sessions are real session folders (the
manifest and one OME-Zarr per position, as `livescope.session` reads them).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from livescope.cli.train import train_restore
from livescope.modelcard import CARD_FILE, ModelCard
from livescope.models.restore.data import VirtualRestoreData, virtual_pairs
from livescope.protocol import CameraCalibration
from livescope.repository import next_version
from livescope.session import (
    MANIFEST_FILE,
    CompletedPosition,
    PlannedPosition,
    RigSnapshot,
    SessionManifest,
    SessionPlan,
    file_checksums,
    store_name,
)
from livescope.stackio import StackInfo, write_stack

PIXEL_SIZE_UM = 0.03

app = typer.Typer()
train_app = typer.Typer()
app.add_typer(train_app, name="train")
train_app.command("restore")(train_restore)


@app.callback()
def main() -> None:
    """livescope (the part under test)."""


def run(*args: str):
    return CliRunner().invoke(app, ["train", "restore", *args])


def write_session(folder: Path, fields: list[tuple[np.ndarray, np.ndarray]], *, kind: str = "pairs",
                  session_id: str = "s-test") -> Path:
    """A completed calibration session: per position one repeat of (low, high) uint16 frames."""
    folder.mkdir()
    now = datetime.now(timezone.utc)
    positions = tuple(PlannedPosition(name=f"p{i}", x_um=10.0 * i, y_um=0.0) for i in range(max(len(fields), 1)))
    if kind == "pairs":
        plan = SessionPlan(kind="pairs", positions=positions, exposure_ms=10.0, group="Modality",
                           low_preset="Confocal", high_preset="STED")
    else:
        plan = SessionPlan(kind=kind, positions=positions, exposure_ms=10.0, z_range_um=1.0, z_step_um=0.5,
                           z_offsets_um=(-0.5, 0.0, 0.5))
    completed = []
    for i, (low, high) in enumerate(fields):
        data = np.stack([low, high])[None]  # (T, C, Y, X)
        store = folder / store_name(i)
        write_stack(store, data.reshape(-1, *low.shape), StackInfo(
            path=str(store), format="ome-zarr", axes="TCYX", shape=data.shape, dtype="uint16",
            pixel_size_um=PIXEL_SIZE_UM))
        completed.append(CompletedPosition(
            index=i, name=f"p{i}", x_um=10.0 * i, y_um=0.0, path=store.name, axes="TCYX",
            channels=("Confocal", "STED"), sha256=file_checksums(store), frame_count=2, started_at=now,
            finished_at=now))
    manifest = SessionManifest(
        session_id=session_id, kind=kind, created_at=now, updated_at=now,
        rig=RigSnapshot(source="virtual", pixel_size_um=PIXEL_SIZE_UM,
                        camera=CameraCalibration(baseline_adu=100.0, e_per_adu=0.5)),
        plan=plan, completed=completed, complete=True)
    (folder / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    return folder


def assert_one_line_gate_failure(stderr: str, ref: str) -> None:
    """`train` names a version that failed the quality gate in one line, and how to serve it."""
    error = stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"livescope: error: {ref} failed the quality gate"), stderr
    assert f"models activate {ref} --force" in error[0] and "Traceback" not in stderr


def assert_gated_against_the_classical_methods(card: ModelCard) -> None:
    """The card's gate: the held-out PSNR against the better of the input unchanged and a tuned
    Richardson-Lucy on the same held-out pairs, and failed (so it is not served by default)."""
    gate = card.gate
    assert gate is not None and not gate.passed and not card.serves_by_default
    assert gate.metric == "psnr_db_restored" and gate.new_value == card.metrics["psnr_db_restored"]
    assert gate.classical_method and gate.classical_value == card.metrics["psnr_db_restored_classical"]


@pytest.fixture(scope="module")
def fields() -> list[tuple[np.ndarray, np.ndarray]]:
    """Three virtual fields of nuclei as a rig gives them: noisy confocal and noisy STED, uint16."""
    spec = VirtualRestoreData(specimens=("cells",), fields_per_specimen=3, sensor_shape_px=(72, 72),
                              signal_photons_per_ms=(10.0,), seed=3)
    return [(p.low_adu.astype(np.uint16), np.rint(p.high_adu).astype(np.uint16)) for p in virtual_pairs(spec)]


def test_training_on_a_pairs_session_writes_a_version_naming_the_session(tmp_path, fields):
    session = write_session(tmp_path / "pairs.ome.zarr", fields)
    repository = tmp_path / "models"
    expected = f"restore@{next_version(repository, 'restore')}"
    r = run("--data", str(session), "--steps", "2", "--models", str(repository))
    # 2 steps do not beat the classical methods on the held-out pairs: written, but as a candidate
    assert r.exit_code == 1, r.output
    assert r.stdout.strip().splitlines()[-1] == expected
    assert_one_line_gate_failure(r.stderr, expected)
    card = ModelCard.load(repository / "restore" / expected.split("@")[1] / CARD_FILE)
    assert card.task == "restore" and card.provenance.session_ids == ("s-test",)
    assert card.trained_for.pixel_size_nm == pytest.approx((30.0, 30.0))
    assert '"target":"noisy"' in card.description  # noisy STED targets: Noise2Noise-style
    assert {"psnr_db_restored", "psnr_db_unchanged"} <= card.metrics.keys()
    assert_gated_against_the_classical_methods(card)


def test_without_data_it_trains_on_virtual_microscope_pairs(tmp_path):
    repository = tmp_path / "models"
    r = run("--steps", "1", "--models", str(repository), "--name", "restore-virtual")
    assert r.exit_code == 1, r.output  # 1 step: a candidate
    assert r.stdout.strip().splitlines()[-1] == "restore-virtual@1"
    assert_one_line_gate_failure(r.stderr, "restore-virtual@1")
    card = ModelCard.load(repository / "restore-virtual" / "1" / CARD_FILE)
    assert card.provenance.data.startswith("virtual confocal/STED pairs")
    assert card.trained_for.modalities == ("confocal", "sted") and card.provenance.session_ids == ()
    assert_gated_against_the_classical_methods(card)


BAD_SESSIONS = {
    "one position only": (lambda tmp, f: write_session(tmp / "one.ome.zarr", f[:1]),
                          "needs pairs at 2 or more positions"),
    "no session there": (lambda tmp, f: tmp / "missing.ome.zarr", "no such session folder"),
    "a z-stack session": (lambda tmp, f: write_session(tmp / "z.ome.zarr", [], kind="zstack"),
                          "it has stacks, not pairs"),
    "no pairs acquired yet": (lambda tmp, f: write_session(tmp / "empty.ome.zarr", []), "holds no completed pairs"),
    "fields smaller than a patch": (lambda tmp, f: write_session(
        tmp / "small.ome.zarr", [(lo[:40, :40], hi[:40, :40]) for lo, hi in f]), "smaller than the 64 px"),
}


@pytest.mark.parametrize("problem", list(BAD_SESSIONS))
def test_a_bad_session_is_refused_in_one_line_before_training_and_nothing_is_written(tmp_path, fields, problem):
    make, words = BAD_SESSIONS[problem]
    repository = tmp_path / "models"
    r = run("--data", str(make(tmp_path, fields)), "--steps", "1", "--models", str(repository))
    assert r.exit_code == 2, r.output
    assert words in r.stderr and r.stderr.startswith("livescope: error:") and len(r.stderr.splitlines()) == 1
    assert "Traceback" not in r.output
    assert not (repository / "restore").exists()


def test_sessions_from_two_cameras_are_not_mixed(tmp_path, fields):
    a = write_session(tmp_path / "a.ome.zarr", fields, session_id="a")
    b = write_session(tmp_path / "b.ome.zarr", fields, session_id="b")
    manifest = SessionManifest.model_validate_json((b / MANIFEST_FILE).read_text())
    rig = manifest.rig.model_copy(update={"camera": CameraCalibration(baseline_adu=400.0, e_per_adu=0.5)})
    (b / MANIFEST_FILE).write_text(manifest.model_copy(update={"rig": rig}).model_dump_json())
    r = run("--data", str(a), "--data", str(b), "--steps", "1", "--models", str(tmp_path / "models"))
    assert r.exit_code == 2 and "camera baselines 100 and 400 ADU" in r.stderr

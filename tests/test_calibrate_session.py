"""Calibration sessions on the virtual microscope (real pymmcore-plus acquisitions, real OME-Zarr
stores): what a session stores and how it is read back, and how it survives what goes wrong -
a missing preset or group, an unreachable position, a full disk, Ctrl-C, a failing camera -
without losing or duplicating a position."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

import livescope.acquire.calibration.store as calibration_store
from livescope.acquire.calibration.run import (
    SessionInterrupted,
    grid_positions,
    make_plan,
    run_session,
)
from livescope.acquire.microscope import VirtualMicroscope
from livescope.acquire.virtual import VirtualRigConfig
from livescope.session import (
    MANIFEST_FILE,
    GridSpec,
    PlannedPosition,
    SessionError,
    is_session,
    load_session,
    read_manifest,
)

SIZE_PX = 64


@pytest.fixture(scope="module")
def flat_rig() -> VirtualMicroscope:
    """One virtual microscope for the pairs tests (its STED PSF is computed once)."""
    return VirtualMicroscope(VirtualRigConfig(sensor_shape_px=(SIZE_PX, SIZE_PX), signal_photons_per_ms=10.0))


@pytest.fixture
def rig(flat_rig: VirtualMicroscope):
    """The shared microscope, back at the origin with an unlimited stage after each test."""
    yield flat_rig
    flat_rig.setProperty("XY", "TravelRange-um", 0.0)
    flat_rig.setXYPosition(0.0, 0.0)


def pairs_plan(n: int = 2, *, repeats: int = 1, low: str = "Confocal", high: str = "STED", group: str = "Modality"):
    positions = tuple(PlannedPosition(name=f"field{i}", x_um=8.0 * i, y_um=-3.0, z_um=0.0) for i in range(n))
    return make_plan("pairs", positions, exposure_ms=2.0, group=group, low_preset=low, high_preset=high,
                     repeats=repeats)


def indices(session_dir: Path) -> list[int]:
    return sorted(p.index for p in read_manifest(session_dir).completed)


def test_a_pairs_session_stores_each_position_as_low_high_pairs_described_by_its_manifest(rig, tmp_path):
    grid = GridSpec(rows=1, columns=2, spacing_um=7.0, centre_x_um=0.0, centre_y_um=0.0)
    plan = make_plan("pairs", grid_positions(grid, 0.0), exposure_ms=2.0, grid=grid, group="Modality",
                     low_preset="Confocal", high_preset="STED", repeats=2)
    session = run_session(rig, plan, tmp_path / "s.ome.zarr", command_line=["livescope", "calibrate", "pairs"])

    m = session.manifest
    assert (m.format, m.schema_version, m.kind, m.complete) == ("livescope-calibration-session", 1, "pairs", True)
    assert m.command_line == ["livescope", "calibrate", "pairs"] and len(m.session_id) == 32
    assert m.created_at <= m.updated_at
    assert m.rig.source == "virtual" and m.rig.pixel_size_um == pytest.approx(6.5 / 60)
    assert m.rig.pixel_size_config == "60x" and m.rig.system_state["LightPath"]["NumericalAperture"] == "1.4"
    assert m.rig.camera.baseline_adu == 100.0 and m.rig.camera.e_per_adu == 0.5
    assert m.rig.virtual_rig_config["sensor_shape_px"] == [SIZE_PX, SIZE_PX] and m.rig.virtual_rig_metadata["na"] == 1.4
    assert (m.plan.group, m.plan.channels, m.plan.repeats) == ("Modality", ("Confocal", "STED"), 2)
    assert [(p.index, p.name, p.path, p.axes, p.channels, p.frame_count) for p in m.completed] == [
        (0, "r0c0", "p000.ome.zarr", "TCYX", ("Confocal", "STED"), 4),
        (1, "r0c1", "p001.ome.zarr", "TCYX", ("Confocal", "STED"), 4)]
    assert [(p.x_um, p.y_um) for p in m.completed] == [(-3.5, 0.0), (3.5, 0.0)]
    assert all(p.started_at <= p.finished_at for p in m.completed) and m.interrupted == []
    assert "zarr.json" in m.completed[0].sha256 and all(len(h) == 64 for h in m.completed[0].sha256.values())
    omero = json.loads((session.root / "p000.ome.zarr" / "zarr.json").read_text())["attributes"]["ome"]["omero"]
    assert [c["label"] for c in omero["channels"]] == ["Confocal", "STED"]  # the channel axis names the presets

    pairs = session.pairs()
    assert [(p.position, p.name, p.repeat) for p in pairs] == [(0, "r0c0", 0), (0, "r0c0", 1), (1, "r0c1", 0),
                                                               (1, "r0c1", 1)]
    assert all(p.low_adu.shape == p.high_adu.shape == (SIZE_PX, SIZE_PX) for p in pairs)
    assert pairs[0].low_adu.dtype == np.uint16 and not np.array_equal(pairs[0].low_adu, pairs[0].high_adu)
    assert not np.array_equal(pairs[0].low_adu, pairs[2].low_adu)  # another field
    assert session.verify() == [] and session.baseline_adu == 100.0

    again = load_session(session.root, verify=True)
    assert again.manifest == m and again.session_id == m.session_id and is_session(session.root)
    with pytest.raises(SessionError, match="has pairs, not stacks"):
        again.stacks()


def test_a_zstack_session_stores_planes_about_each_positions_focus(tmp_path):
    core = VirtualMicroscope(VirtualRigConfig(sensor_shape_px=(SIZE_PX, SIZE_PX), specimen="beads",
                                              specimen_depth_um=2.0, signal_photons_per_ms=10.0))
    grid = GridSpec(rows=2, columns=1, spacing_um=10.0, centre_x_um=5.0, centre_y_um=5.0)
    plan = make_plan("zstack", grid_positions(grid, 1.0), exposure_ms=2.0, grid=grid, z_range_um=1.0, z_step_um=0.5)
    session = run_session(core, plan, tmp_path / "z.ome.zarr")

    assert session.kind == "zstack" and session.manifest.plan.z_offsets_um == (-0.5, 0.0, 0.5)
    assert [(p.axes, p.frame_count, p.z_um) for p in session.manifest.completed] == [("ZYX", 3, 1.0)] * 2
    stacks = load_session(session.root, verify=True).stacks()
    assert [(s.position, s.name) for s in stacks] == [(0, "r0c0"), (1, "r1c0")]
    assert stacks[0].planes_adu.shape == (3, SIZE_PX, SIZE_PX) and stacks[0].planes_adu.dtype == np.uint16
    np.testing.assert_allclose(stacks[0].z_um, [-0.5, 0.0, 0.5])
    assert not np.array_equal(stacks[0].planes_adu[0], stacks[0].planes_adu[2])
    with pytest.raises(SessionError, match="has stacks, not pairs"):
        session.pairs()


def test_a_changed_file_fails_verification(rig, tmp_path):
    session = run_session(rig, pairs_plan(1), tmp_path / "s.ome.zarr")
    chunk = next(p for p in (session.root / "p000.ome.zarr").rglob("*") if p.is_file() and p.name != "zarr.json")
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    problems = session.verify()
    assert len(problems) == 1 and "checksum differs" in problems[0]
    with pytest.raises(SessionError, match="is damaged"):
        load_session(session.root, verify=True)


def test_a_folder_without_a_manifest_is_not_a_session(tmp_path):
    assert not is_session(tmp_path)
    with pytest.raises(SessionError, match="not a livescope calibration session"):
        load_session(tmp_path)
    with pytest.raises(SessionError, match="no such session folder"):
        load_session(tmp_path / "missing.ome.zarr")


@pytest.mark.parametrize(("plan_kw", "message"), [
    ({"high": "Sted"}, "preset 'Sted' does not exist in config group 'Modality' (presets: Confocal, STED, Widefield)"),
    ({"group": "Objective"}, "config group 'Objective' does not exist on this rig (groups: Modality)"),
])
def test_a_missing_preset_or_group_is_refused_before_anything_is_acquired(rig, tmp_path, plan_kw, message):
    with pytest.raises(SessionError) as e:
        run_session(rig, pairs_plan(**plan_kw), tmp_path / "s.ome.zarr")
    assert str(e.value) == message
    assert not (tmp_path / "s.ome.zarr").exists()


def test_an_existing_output_is_refused_without_resume_and_resume_needs_one(rig, tmp_path):
    (tmp_path / "s.ome.zarr").mkdir()
    with pytest.raises(SessionError, match="already exists; add --resume"):
        run_session(rig, pairs_plan(), tmp_path / "s.ome.zarr")
    with pytest.raises(SessionError, match="nothing to resume"):
        run_session(rig, pairs_plan(), tmp_path / "other.ome.zarr", resume=True)


def test_resuming_with_another_plan_is_refused(rig, tmp_path):
    out = tmp_path / "s.ome.zarr"
    run_session(rig, pairs_plan(1), out)
    with pytest.raises(SessionError, match=r"cannot resume .* the plan differs .*low_preset: 'Confocal' vs 'Widefield'"):
        run_session(rig, pairs_plan(1, low="Widefield"), out, resume=True)
    with pytest.raises(SessionError, match="the plan differs .*positions"):
        run_session(rig, pairs_plan(3), out, resume=True)


def test_an_unreachable_position_stops_the_session_keeping_what_is_done_and_resume_finishes_it(rig, tmp_path):
    out = tmp_path / "s.ome.zarr"
    plan = pairs_plan(3)  # fields at x = 0, 8, 16 µm
    rig.setProperty("XY", "TravelRange-um", 10.0)
    with pytest.raises(SessionError) as e:
        run_session(rig, plan, out)
    assert str(e.value).startswith("the stage cannot reach position field2 (16, -3, z 0 µm): ValueError: "
                                   "(16, -3) µm is beyond the stage's travel")
    assert "2 of 3 positions are saved" in str(e.value) and "--resume" in str(e.value)
    m = read_manifest(out)
    assert indices(out) == [0, 1] and not m.complete
    assert [(a.index, a.path) for a in m.interrupted] == [(2, None)]
    done = {p.path: p.sha256 for p in m.completed}

    rig.setProperty("XY", "TravelRange-um", 0.0)
    session = run_session(rig, plan, out, resume=True)
    assert indices(out) == [0, 1, 2] and session.manifest.complete
    assert {p.path: p.sha256 for p in session.manifest.completed if p.index < 2} == done  # untouched
    assert session.verify() == []


def test_a_full_disk_keeps_the_completed_positions_and_sets_the_partial_one_aside(rig, tmp_path, monkeypatch):
    out = tmp_path / "s.ome.zarr"
    writes = []
    real_write = calibration_store.write_bytes_durably

    def disk_fills_up(path: Path, data: bytes) -> None:
        writes.append(path)
        if len(writes) >= 3:  # the new session's manifest, after p000, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(calibration_store, "write_bytes_durably", disk_fills_up)
    with pytest.raises(SessionError) as e:
        run_session(rig, pairs_plan(3), out)
    assert str(e.value).startswith("the disk is full: position field1 could not be written (set aside); "
                                   "1 of 3 positions are saved")
    assert indices(out) == [0] and sorted(p.name for p in out.iterdir()) == [
        "interrupted", MANIFEST_FILE, "p000.ome.zarr"]  # no half-written store, no temp manifest
    [aside] = (out / "interrupted").iterdir()
    assert aside.name.startswith("p001.") and (aside / "zarr.json").is_file()  # kept, not deleted

    monkeypatch.setattr(calibration_store, "write_bytes_durably", real_write)
    session = run_session(rig, pairs_plan(3), out, resume=True)
    assert indices(out) == [0, 1, 2] and session.verify() == []
    assert [(a.index, a.path) for a in session.manifest.interrupted] == [(1, f"interrupted/{aside.name}")]


def test_ctrl_c_mid_position_sets_it_aside_and_resume_acquires_every_position_exactly_once(rig, tmp_path):
    out = tmp_path / "s.ome.zarr"
    frames = []

    def press_ctrl_c(img, event, meta=None):
        frames.append(event)
        if len(frames) == 3:  # the first frame of the second position
            os.kill(os.getpid(), signal.SIGINT)

    rig.mda.events.frameReady.connect(press_ctrl_c)
    try:
        with pytest.raises(SessionInterrupted, match=r"interrupted at position field1 \(1 of 2 frames, set aside\)"):
            run_session(rig, pairs_plan(3), out)
    finally:
        rig.mda.events.frameReady.disconnect(press_ctrl_c)
    m = read_manifest(out)
    assert indices(out) == [0] and [(a.index, a.frames_acquired) for a in m.interrupted] == [(1, 1)]
    assert (out / m.interrupted[0].path / "zarr.json").is_file()

    session = run_session(rig, pairs_plan(3), out, resume=True)
    assert [p.index for p in session.manifest.completed] == [0, 1, 2]  # once each, in order
    assert len(session.pairs()) == 3 and session.manifest.complete


def test_a_failing_camera_or_an_interrupt_mid_position_is_set_aside_and_resumed(rig, tmp_path, monkeypatch):
    out = tmp_path / "s.ome.zarr"
    camera = rig.virtual_camera
    snaps = []
    real_snap = camera.snap

    def fails_on_the_fourth_frame(buffer):
        snaps.append(1)
        if len(snaps) == 4:
            raise RuntimeError("camera timed out")
        return real_snap(buffer)

    monkeypatch.setattr(camera, "snap", fails_on_the_fourth_frame)
    with pytest.raises(SessionError, match=r"position field1: the camera delivered 1 of 2 frames"):
        run_session(rig, pairs_plan(3), out)
    monkeypatch.undo()
    assert indices(out) == [0]

    def interrupt(img, event, meta=None):
        raise KeyboardInterrupt

    rig.mda.events.frameReady.connect(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_session(rig, pairs_plan(3), out, resume=True)
    finally:
        rig.mda.events.frameReady.disconnect(interrupt)
    assert indices(out) == [0]
    # What a power cut would leave: a partial store that nobody set aside.
    (out / ".p002.partial.ome.zarr").mkdir()
    (out / ".p002.partial.ome.zarr" / "zarr.json").write_text("{}")

    session = run_session(rig, pairs_plan(3), out, resume=True)
    assert [p.index for p in session.manifest.completed] == [0, 1, 2] and session.verify() == []
    reasons = [(a.index, a.reason.split(":")[0]) for a in session.manifest.interrupted]
    assert reasons == [(1, "the camera delivered 1 of 2 frames"), (1, "stopped by KeyboardInterrupt"),
                       (2, "found on resume")]
    assert len(list((out / "interrupted").iterdir())) == 3

"""`livescope calibrate pairs|zstack|beads` on the virtual microscope: a session folder that
`load_session` reads, a live progress display and a one-line summary, positions from a grid or a
YAML/JSON file, Ctrl-C then --resume acquiring every position exactly once, and each user mistake
answered in one line (exit code 2, no traceback) with nothing already on disk lost.

Most runs are real `python -m livescope.cli` processes; the two that need the rig changed under the
CLI (a stage with limited travel, a disk that fills up) run the same app in-process."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from typer.testing import CliRunner

import livescope.acquire.calibration.store as calibration_store
import livescope.acquire.microscope as microscope
from livescope.cli import app
from livescope.session import MANIFEST_FILE, load_session, read_manifest

SIZE = ("--size", "64")  # CI size; the virtual field of view is then 6.9 µm wide


def cli(*args: str, tty: bool = False, timeout_s: float = 120) -> subprocess.CompletedProcess:
    """``livescope ARGS`` in a fresh process; ``tty``: rich draws its live display as in a terminal."""
    env = {**os.environ, "TTY_COMPATIBLE": "1", "COLUMNS": "120"} if tty else None
    return subprocess.run([sys.executable, "-m", "livescope.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=env)


def assert_user_error(returncode: int, stderr: str, message: str) -> None:
    """A user mistake: exit code 2 and one line, `livescope: error: ...message...`, no traceback."""
    lines = stderr.strip().splitlines()
    assert returncode == 2, stderr
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    assert lines[0].startswith("livescope: error: ") and message in lines[0], lines[0]


def summary(stdout: str) -> str:
    """The line `SESSION: KIND session ID, N positions, M frames[, complete]`."""
    [line] = [ln for ln in stdout.splitlines() if " session " in ln and " positions, " in ln]
    return re.sub(r"session [0-9a-f]{32}", "session ID", line)


class Run(NamedTuple):
    session: Path
    stdout: str


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory) -> Run:
    """A complete 2x1-grid pairs session, written once (tests must not change it)."""
    out = tmp_path_factory.mktemp("pairs") / "s.ome.zarr"
    r = cli("calibrate", "pairs", "--output", str(out), *SIZE, "--grid", "2x1", "--exposure", "2")
    assert r.returncode == 0, r.stderr
    return Run(out, r.stdout)


def test_calibrate_pairs_writes_a_session_that_load_session_reads_and_prints_its_summary(pairs_run):
    pairs_session, stdout = pairs_run
    assert summary(stdout) == f"{pairs_session}: pairs session ID, 2 positions, 4 frames, complete"
    assert stdout.splitlines()[0].startswith(f"{pairs_session}: ")  # piped: no live display, no blank line
    assert re.search(r"^registration: .*2 pairs", stdout, re.M) and f"QA report: {pairs_session}" in stdout

    session = load_session(pairs_session, verify=True)
    m = session.manifest
    assert (m.kind, m.complete, m.rig.source) == ("pairs", True, "virtual")
    assert m.rig.virtual_rig_config["sensor_shape_px"] == [64, 64]
    assert "--grid" in m.command_line and m.plan.exposure_ms == 2.0
    assert (m.plan.grid.rows, m.plan.grid.columns) == (2, 1)
    assert m.plan.grid.spacing_um == pytest.approx(64 * 6.5 / 60, abs=1e-3)  # default: one field of view
    assert [(p.name, p.path, p.frame_count) for p in m.completed] == [
        ("r0c0", "p000.ome.zarr", 2), ("r1c0", "p001.ome.zarr", 2)]
    pairs = session.pairs()
    assert len(pairs) == 2 and pairs[0].low_adu.shape == pairs[0].high_adu.shape == (64, 64)
    assert (pairs_session / "registration.json").is_file()


@pytest.mark.parametrize(("kind", "specimen"), [("zstack", "filaments"), ("beads", "beads")])
def test_zstack_and_beads_show_live_progress_and_store_stacks_about_the_specimens_middle(tmp_path, kind, specimen):
    out = tmp_path / f"{kind}.ome.zarr"
    r = cli("calibrate", kind, "--output", str(out), *SIZE, "--grid", "1x2", "--range", "1", "--step", "0.5",
            "--exposure", "2", tty=True)
    assert r.returncode == 0, r.stderr
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", r.stdout)  # the live display, without its escapes
    assert re.search(r"positions .* 0/2", shown) and re.search(r"frames .* 3/3", shown)
    assert "r0c1" in shown  # the position being acquired
    assert summary(shown) == f"{out}: {kind} session ID, 2 positions, 6 frames, complete"

    session = load_session(out, verify=True)
    assert session.manifest.rig.virtual_rig_config["specimen"] == specimen
    # the default 4 µm thick specimen, focused in its middle
    assert [(p.name, p.axes, p.z_um) for p in session.manifest.completed] == [("r0c0", "ZYX", 2.0),
                                                                              ("r0c1", "ZYX", 2.0)]
    stacks = session.stacks()
    assert stacks[0].planes_adu.shape == (3, 64, 64)
    np.testing.assert_allclose(stacks[0].z_um, [-0.5, 0.0, 0.5])


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_positions_from_a_yaml_or_json_file_are_acquired_in_their_order_under_their_names(tmp_path, suffix):
    entries = [{"x_um": 20.0, "y_um": 20.0, "name": "bright"}, {"x_um": -3.5, "y_um": 0.0, "z_um": 0.5}]
    file = tmp_path / f"positions{suffix}"
    if suffix == ".json":
        file.write_text(json.dumps(entries))
    else:
        file.write_text("- {x_um: 20, y_um: 20, name: bright}\n- x_um: -3.5\n  y_um: 0\n  z_um: 0.5\n")
    out = tmp_path / "s.ome.zarr"
    r = cli("calibrate", "pairs", "--output", str(out), *SIZE, "--positions", str(file), "--exposure", "2")
    assert r.returncode == 0, r.stderr
    m = read_manifest(out)
    assert m.plan.positions_file == str(file) and m.plan.grid is None
    # unnamed entries are named by their place; those without z take the focus of the day (0 µm)
    assert [(p.name, p.x_um, p.y_um, p.z_um) for p in m.completed] == [("bright", 20.0, 20.0, 0.0),
                                                                        ("p001", -3.5, 0.0, 0.5)]


def test_ctrl_c_mid_position_exits_130_and_resume_acquires_each_position_exactly_once(tmp_path):
    out = tmp_path / "s.ome.zarr"
    args = ("calibrate", "pairs", "--output", str(out))
    # 120 frames a position: long enough to press Ctrl-C while the second one is being written
    proc = subprocess.Popen([sys.executable, "-m", "livescope.cli", *args, *SIZE, "--grid", "2x1",
                             "--repeats", "60", "--exposure", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / ".p001.partial.ome.zarr").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    [line] = stderr.strip().splitlines()
    assert re.fullmatch(rf"livescope: error: interrupted at position r1c0 \(\d+ of 120 frames, set aside\); "
                        rf"1 of 2 positions are saved in {re.escape(str(out))}, continue with --resume", line)
    m = read_manifest(out)
    assert [p.index for p in m.completed] == [0] and not m.complete
    [attempt] = m.interrupted
    assert attempt.index == 1 and (out / attempt.path / "zarr.json").is_file()  # set aside, kept
    manifest_before = (out / MANIFEST_FILE).read_bytes()

    # --resume refuses what would not continue the same session, and changes nothing
    r = cli(*args, "--resume", "--grid", "3x1")
    assert_user_error(r.returncode, r.stderr, "the plan differs from the session's (positions")
    r = cli(*args, "--resume", "--size", "128")
    assert_user_error(r.returncode, r.stderr, "its virtual microscope had sensor_shape_px (64, 64)")
    r = cli("calibrate", "zstack", "--output", str(out), "--resume")
    assert_user_error(r.returncode, r.stderr, "it is a pairs session, not zstack")
    assert (out / MANIFEST_FILE).read_bytes() == manifest_before

    r = cli(*args, "--resume")  # options left out take the session's own
    assert r.returncode == 0, r.stderr
    assert summary(r.stdout) == f"{out}: pairs session ID, 2 positions, 240 frames, complete"
    session = load_session(out, verify=True)
    assert [p.index for p in session.manifest.completed] == [0, 1]  # once each
    assert session.manifest.session_id == m.session_id and len(session.pairs()) == 120

    r = cli(*args, "--resume")
    assert r.returncode == 0 and r.stdout.strip() == f"{out}: the session is already complete (2 positions)"


def test_an_existing_output_is_refused_without_resume_and_left_as_it_was(pairs_run):
    pairs_session = pairs_run.session
    before = {p: p.read_bytes() for p in pairs_session.rglob("*") if p.is_file()}
    r = cli("calibrate", "pairs", "--output", str(pairs_session), *SIZE)
    assert_user_error(r.returncode, r.stderr, f"{pairs_session} already exists; add --resume")
    assert {p: p.read_bytes() for p in pairs_session.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(("options", "message"), [
    (("--high", "Sted"), "preset 'Sted' does not exist in config group 'Modality' (presets: Confocal, STED, "
                         "Widefield)"),
    (("--group", "Objective"), "config group 'Objective' does not exist on this rig (groups: Modality)"),
    (("--grid", "2y1"), "--grid must be ROWSxCOLS with at least 1 of each (e.g. 2x3), not '2y1'"),
    (("--grid", "0x3"), "--grid must be ROWSxCOLS"),
    (("--grid", "2x1", "--positions", "{yaml}"), "give either --grid or --positions, not both"),
    (("--positions", "{missing}"), "cannot read positions file"),
    (("--positions", "{txt}"), "use a .yaml, .yml or .json file"),
    (("--positions", "{bad_yaml}"), "is not valid YAML"),
    (("--positions", "{no_y}"), "0.y_um: Field required (expected a list of {x_um, y_um, z_um?, name?})"),
    (("--positions", "{empty}"), "lists no positions"),
    (("--resume",), "cannot resume: {out}: no such session folder"),
    (("--repeats", "0"), "--repeats must be at least 1, got 0"),
])
def test_a_user_mistake_is_one_line_with_exit_code_2_and_nothing_written(tmp_path, options, message):
    files = {"yaml": ("p.yaml", "- {x_um: 0, y_um: 0}\n"), "missing": ("absent.yaml", None),
             "txt": ("p.txt", "0 0\n"), "bad_yaml": ("bad.yaml", "- {x_um: 0, y_um: [\n"),
             "no_y": ("no_y.json", '[{"x_um": 1}]'), "empty": ("empty.yml", "[]\n")}
    paths = {}
    for key, (name, text) in files.items():
        paths[key] = tmp_path / name
        if text is not None:
            paths[key].write_text(text)
    out = tmp_path / "s.ome.zarr"
    r = cli("calibrate", "pairs", "--output", str(out), *SIZE,
            *(o.format(**paths) if o.startswith("{") else o for o in options))
    assert_user_error(r.returncode, r.stderr, message.replace("{out}", str(out)))
    assert not out.exists()


# -- in-process: the rig or the disk changed under the CLI -------------------------------------------


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_a_position_beyond_the_stages_travel_stops_keeping_the_rest_and_resume_finishes(tmp_path, monkeypatch):
    real_open = microscope.open_microscope

    def stage_travel_20_um(*args, **kwargs):
        core = real_open(*args, **kwargs)
        core.setProperty("XY", "TravelRange-um", 20.0)  # the virtual stage's limit (0: none)
        return core

    positions = tmp_path / "positions.yaml"
    positions.write_text("- {x_um: 0, y_um: 0}\n- {x_um: 30, y_um: 0}\n")
    out = tmp_path / "s.ome.zarr"
    monkeypatch.setattr(microscope, "open_microscope", stage_travel_20_um)
    r = invoke("calibrate", "pairs", "--output", str(out), *SIZE, "--positions", str(positions))
    assert_user_error(r.exit_code, r.stderr,
                      "the stage cannot reach position p001 (30, 0, z 0 µm): ValueError: (30, 0) µm is beyond "
                      f"the stage's travel (±20 µm); 1 of 2 positions are saved in {out}, resume with --resume "
                      "once it is reachable")
    assert [p.index for p in read_manifest(out).completed] == [0]

    monkeypatch.setattr(microscope, "open_microscope", real_open)
    r = invoke("calibrate", "pairs", "--output", str(out), "--resume")
    assert r.exit_code == 0, r.stderr
    assert [p.index for p in load_session(out, verify=True).manifest.completed] == [0, 1]


def test_a_full_disk_keeps_the_positions_written_and_says_to_free_space_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "s.ome.zarr"
    real_write = calibration_store.write_bytes_durably
    writes = []

    def disk_fills_up(path: Path, data: bytes) -> None:
        writes.append(path)
        if len(writes) >= 3:  # the new session's manifest, the manifest listing p000, then full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(calibration_store, "write_bytes_durably", disk_fills_up)
    r = invoke("calibrate", "pairs", "--output", str(out), *SIZE, "--grid", "1x3", "--exposure", "2")
    assert_user_error(r.exit_code, r.stderr,
                      "the disk is full: position r0c1 could not be written (set aside); 1 of 3 positions are "
                      f"saved in {out}; free some space and continue with --resume")
    assert [p.index for p in read_manifest(out).completed] == [0]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial store, no temp manifest

    monkeypatch.setattr(calibration_store, "write_bytes_durably", real_write)
    r = invoke("calibrate", "pairs", "--output", str(out), "--resume")
    assert r.exit_code == 0, r.stderr
    session = load_session(out, verify=True)
    assert [p.index for p in session.manifest.completed] == [0, 1, 2] and session.manifest.complete



def test_a_grid_whose_fields_overlap_is_acquired_with_a_warning_about_held_out_fields(tmp_path):
    r = cli("calibrate", "zstack", "--output", str(tmp_path / "s.ome.zarr"), *SIZE, "--grid", "1x2",
            "--spacing", "3", "--range", "0.5", "--step", "0.5")
    assert r.returncode == 0, r.stderr
    assert "neighbouring fields overlap" in " ".join(r.stdout.split())
    assert len(load_session(tmp_path / "s.ome.zarr").stacks()) == 2

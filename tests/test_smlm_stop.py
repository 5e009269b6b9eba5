"""An SMLM acquisition that knows when it has enough: a live localise acquisition with a target FRC
resolution ends by itself once the drift-corrected localisations reach it, saves everything as at a
planned end (exit 0, the journal says complete) and writes the table corrected for the drift the
localisations show, saying by how much; the summary gives the resolution, drift and density."""

from __future__ import annotations

import subprocess
import sys

import useq

from livescope.emitters import EmitterTable
from livescope.provenance import Provenance


def test_a_live_localisation_stops_itself_at_the_target_resolution_with_drift_corrected_output(own_server, tmp_path):
    from livescope.acquire.journal import read_account
    from livescope.acquire.localisations import SmlmStop
    from livescope.acquire.microscope import open_microscope
    from livescope.acquire.run import run_acquisition
    from livescope.acquire.virtual import VirtualRigConfig
    from livescope.acquire.virtual.specimen import EmitterKinetics
    from livescope.camera import CameraCalibration

    srv = own_server()  # the shipped localise model
    # dense blinking (about 20 molecules on per frame) and a sample drifting 0.5 nm per frame along x
    rig = VirtualRigConfig(sensor_shape_px=(128, 128), specimen="smlm", seed=2, drift_um_per_frame=(0.0005, 0, 0),
                           kinetics=EmitterKinetics(on_rate_per_s=10.0, bleach_rate_per_s=0.5))
    cam = rig.camera
    planned = 150
    summary = run_acquisition(
        open_microscope(rig=rig), useq.MDASequence(time_plan={"interval": 0.15, "loops": planned}),  # a camera's pace
        server=srv.frames, pipeline=("localise",), output=tmp_path / "run.ome.zarr", render_px_nm=20.0,
        camera=CameraCalibration(baseline_adu=cam.baseline_adu, e_per_adu=cam.e_per_adu, em_gain=cam.em_gain),
        stop=SmlmStop(resolution_nm=60.0, check_every_frames=20, min_frames=40))

    assert summary.ended_early is not None and "reached the target 60 nm" in summary.ended_early
    assert summary.frames_planned == planned and 40 <= summary.frames_acquired < planned
    assert summary.stopped_reason is None and summary.output_error is None and summary.errors == 0
    assert summary.results == summary.tables == summary.frames_acquired  # every frame acquired was localised
    q = summary.smlm
    assert q.frc_resolution_nm is None or q.frc_resolution_nm <= 60.0
    assert q.density_per_um2 > 0 and q.emitters == summary.emitters > 0
    assert read_account(tmp_path / "run.ome.zarr").status == "complete"

    table = EmitterTable.read_csv(tmp_path / "run.localise.csv")
    assert len(table) == summary.emitters
    made = Provenance.of_table(tmp_path / "run.localise.csv")
    assert q.drift_corrected and made.drift_correction is not None
    assert (made.drift_correction.final_x_nm, made.drift_correction.final_y_nm) == q.drift_nm
    assert made.frame_count == summary.frames_acquired


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "livescope.cli", *args], capture_output=True, text=True, timeout=120)


def test_a_stop_rule_without_a_localise_pipeline_is_refused_in_one_line():
    for args in (("--pipeline", "denoise", "--stop-at-resolution", "30"), ("--min-density", "0.1"),
                 ("--pipeline", "localise", "--stop-at-resolution", "-5")):
        r = cli("acquire", "--frames", "2", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().startswith("livescope: error:") and len(r.stderr.strip().splitlines()) == 1

"""Autofocus in the loop (issue 20): a drifting sample stays in focus on the virtual microscope."""

from __future__ import annotations

import math

import numpy as np
import pytest
import useq

from livescope.acquire.autofocus import (AutofocusSettings, FocusController, FocusedSequence, FocusScorer,
                                         focus_score, peak_offset)
from livescope.acquire.microscope import open_microscope
from livescope.acquire.run import run_acquisition
from livescope.acquire.virtual import VirtualRigConfig


def gaussian_scores(z_um, peak_um, width_um=0.3):
    return math.exp(-((z_um - peak_um) ** 2) / (2 * width_um**2)) + 0.05


def test_three_scores_about_a_peak_give_where_it_is_and_a_flat_run_gives_none():
    step = 0.15
    for peak in (-0.1, 0.0, 0.07):
        scores = tuple(math.exp(-((z - peak) ** 2) / 0.18) for z in (-step, 0.0, step))
        assert peak_offset(scores, step) == pytest.approx(peak, abs=1e-9)
    assert peak_offset((1.0, 1.0, 1.0), step) is None
    assert peak_offset((1.0, 0.8, 1.0), step) is None  # a valley: no peak between


def test_the_controller_follows_a_drifting_peak_between_its_dithered_frames():
    ctl = FocusController(0.0, AutofocusSettings(step_um=0.15))
    peak = 0.0
    for t in range(300):
        z = ctl.position_for(t)
        ctl.observe(t, gaussian_scores(z, peak))
        peak += 0.01
    assert ctl.report().corrections == 100 and not ctl.report().alarms
    assert abs(ctl.working_um - peak) < 0.05


def test_cycles_without_a_peak_raise_a_focus_loss_alarm():
    ctl = FocusController(0.0, AutofocusSettings(lost_after_cycles=3))
    for t in range(12):
        ctl.position_for(t)
        ctl.observe(t, 1.0)  # a blank field: no sharper plane anywhere
    report = ctl.report()
    assert report.searching_cycles == 4 and len(report.alarms) == 1 and "focus lost" in report.alarms[0]


def test_a_focus_loss_alarm_stands_from_the_alarm_until_a_peak_is_found_again():
    ctl = FocusController(0.0, AutofocusSettings(lost_after_cycles=2))
    standing = []
    for t in range(9):  # three cycles of a blank field
        ctl.position_for(t)
        ctl.observe(t, 1.0)
        standing.append(ctl.standing_alarm)
    assert standing[:5] == [None] * 5  # the first cycle, and the second until its last frame
    assert all(a is not None and "no focus peak for" in a for a in standing[5:])
    for t in range(9, 12):  # the sample comes back: a peak
        ctl.observe(t, gaussian_scores(ctl.position_for(t), ctl.working_um))
    assert ctl.standing_alarm is None


def test_frames_taken_while_focus_is_lost_say_so_in_their_results_and_the_metrics(own_server, tmp_path):
    # A sample that races out of the autofocus's reach (0.5 µm a frame): from the alarm on, each frame
    # carries it to the server, which says it back in the frame's result and counts it
    import urllib.request

    from livescope.launch import free_port

    port = free_port()
    srv = own_server("--metrics-port", str(port))
    rig = VirtualRigConfig(sensor_shape_px=(128, 128), drift_um_per_frame=(0.0, 0.0, 0.5), seed=2)
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 24})
    summary = run_acquisition(open_microscope(rig=rig), seq, server=srv.frames, pipeline=["identity"],
                              autofocus=AutofocusSettings(lost_after_cycles=2))
    alarms = [w for w in summary.warnings if w.startswith("focus alarm (acquisition): autofocus: no focus peak")]
    assert summary.autofocus.alarms and summary.results == 24 and alarms
    assert summary.frames_with_warnings >= len(alarms)  # each distinct text once; frames counted each
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    counted = [float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith('livescope_focus_alarms_total{source="acquisition"}')]
    assert counted and 1 <= counted[0] <= summary.frames_with_warnings


def test_a_sequence_with_a_z_plan_cannot_be_autofocused():
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 3}, z_plan={"range": 2, "step": 1})
    with pytest.raises(ValueError, match="z plan"):
        FocusedSequence.of(seq, FocusController(0.0))


def test_the_focus_score_is_highest_in_focus_and_ignores_brightness():
    core = open_microscope(rig=VirtualRigConfig(sensor_shape_px=(256, 256), seed=3))
    scores = {}
    for z in (-1.0, 0.0, 1.0):
        core.setPosition(z)
        scores[z] = focus_score(core.snap(), baseline_adu=100.0)
    assert scores[0.0] > 1.5 * max(scores[-1.0], scores[1.0])
    frame = core.snap().astype(np.float64)
    assert focus_score(3 * (frame - 100) + 100, 100.0) == pytest.approx(focus_score(frame, 100.0), rel=1e-3)


def _run(autofocus: bool, frames: int = 120):
    rig = VirtualRigConfig(sensor_shape_px=(256, 256), drift_um_per_frame=(0.0, 0.0, 0.01), seed=1)
    core = open_microscope(rig=rig)
    errors = []

    class Truth:  # where the focus was relative to the sample, frame by frame (the camera's ground truth)
        def frameReady(self, img, event, meta):
            truth = core.virtual_camera.truth_of(img)
            errors.append(truth.defocus_um - truth.drift_um[2])

    seq = useq.MDASequence(time_plan={"interval": 0, "loops": frames})
    if autofocus:
        ctl = FocusController(core.getPosition())
        core.mda.run(FocusedSequence.of(seq, ctl), output=[FocusScorer(ctl, 100.0), Truth()])
    else:
        core.mda.run(seq, output=[Truth()])
    return np.abs(errors)


def test_a_sample_drifting_1_2_um_stays_within_0_3_um_of_focus_with_autofocus_and_not_without():
    with_af, without = _run(True), _run(False)
    assert len(with_af) == len(without) == 120
    assert with_af.max() < 0.3  # every frame, the dithered ones included
    assert without[-1] > 1.1


def test_an_acquisition_with_autofocus_reports_what_it_did(tmp_path):
    rig = VirtualRigConfig(sensor_shape_px=(256, 256), drift_um_per_frame=(0.0, 0.0, 0.01), seed=2)
    core = open_microscope(rig=rig)
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 30})
    summary = run_acquisition(core, seq, autofocus=AutofocusSettings(), output=tmp_path / "run.ome.zarr")
    assert summary.frames_acquired == 30
    report = summary.autofocus
    assert report is not None and report.cycles == 10 and report.working_um > report.start_um


def test_on_micro_managers_demo_rig_autofocus_drives_its_z_stage_and_says_it_finds_no_focus(tmp_path):
    # DemoCamera's image does not change with its Z stage: no plane is sharper, so the loop searches
    # and the run says so in its summary, in one alarm, and still ends normally with every frame
    from tests.test_acquire_channels import MM_DEMO_CONFIG, _micro_manager_demo_env, cli

    r = cli("acquire", "--mm-config", str(MM_DEMO_CONFIG), "--frames", "15", "--autofocus",
            "--output", str(tmp_path / "run.ome.zarr"), env=_micro_manager_demo_env())
    assert r.returncode == 0, r.stderr
    assert "focus alarm" in r.stdout and "without a focus peak" in r.stdout
    assert "Traceback" not in r.stderr


def test_autofocus_refuses_a_z_plan_and_target_without_autofocus_in_one_line(tmp_path):
    from tests.test_acquire_channels import cli

    seq = tmp_path / "seq.yaml"
    seq.write_text("time_plan: {interval: 0, loops: 3}\nz_plan: {range: 2, step: 1}\n")
    r = cli("acquire", "--sequence", str(seq), "--autofocus", "--size", "64")
    assert r.returncode == 2 and "z plan" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("acquire", "--frames", "3", "--target-um", "0.5")
    assert r.returncode == 2 and "add --autofocus" in r.stderr


def test_autofocus_runs_beside_live_restoration_and_the_progress_shows_the_focus(server, tmp_path):
    rig = VirtualRigConfig(sensor_shape_px=(256, 256), drift_um_per_frame=(0.0, 0.0, 0.01), seed=4)
    core = open_microscope(rig=rig)
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 24})
    seen = []
    summary = run_acquisition(core, seq, server=server.frames, pipeline=["identity"], autofocus=AutofocusSettings(),
                              output=tmp_path / "run.ome.zarr", progress=lambda p: seen.append(p.focus_um))
    assert summary.results == summary.frames_acquired == 24 and summary.dropped == 0
    assert summary.autofocus.cycles == 8 and not summary.autofocus.alarms
    assert seen and seen[-1] == pytest.approx(summary.autofocus.working_um)

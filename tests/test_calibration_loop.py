"""The whole retraining loop on the virtual microscope, at CI size: a calibration pairs session
is acquired and registered, a restoration model is trained from it, and deployed into a server
while a live acquisition streams through it. The stream's results switch to the new version with
no frame dropped; a worse version is registered but not swapped in.

At CI size every version trained here is a candidate (a few steps do not beat Richardson-Lucy on
the held-out pairs): `train` writes it and exits 1, no server serves it by default, and each swap
into the stream is forced (`models activate --force`, `train --deploy --force`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import useq

from livescope.acquire.microscope import open_microscope
from livescope.acquire.run import run_acquisition
from livescope.acquire.virtual import VirtualRigConfig
from livescope.deploy import active_version
from livescope.modelcard import CARD_FILE, ModelCard
from livescope.session import load_session

SIZE_PX = "128"


def cli(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "livescope.cli", *args], capture_output=True, text=True,
                       timeout=timeout_s, env={**__import__("os").environ, "COLUMNS": "200"})
    assert "Traceback" not in r.stderr, r.stderr
    return r


def card_of(repo, ref: str) -> ModelCard:
    name, version = ref.split("@")
    return ModelCard.load(repo / name / version / CARD_FILE)


def written_as_a_candidate(r: subprocess.CompletedProcess) -> str:
    """The version a `train` run wrote (stdout's last line), which failed the quality gate: exit 1
    and one stderr line that says so."""
    error = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(error) == 1, r.stderr
    ref = r.stdout.strip().splitlines()[-1]
    assert error[0].startswith(f"livescope: error: {ref} failed the quality gate"), r.stderr
    return ref


def test_calibrate_register_train_deploy_swaps_the_new_version_into_a_running_stream(own_server, tmp_path):
    # 1. calibrate: confocal/STED pairs at nine positions, registered and QA'd when the last is on
    # disk (the virtual filaments are sparse: empty fields fail QA and are left out of training)
    session = tmp_path / "pairs.ome.zarr"
    r = cli("calibrate", "pairs", "--output", str(session), "--grid", "3x3", "--size", SIZE_PX, "--seed", "1")
    assert r.returncode == 0, r.stderr
    passed = int(re.search(r"registration: (\d+) of 9 pairs pass QA", r.stdout).group(1))
    assert passed >= 3 and "is empty" in r.stdout
    assert (session / "registration.json").is_file() and (session / "qa" / "report.html").is_file()
    session_id = load_session(session).session_id

    # 2. train: a first version from the session, a candidate, served from the repository once
    # activated by force (by default the server keeps serving the shipped version)
    repo = tmp_path / "models"
    r = cli("train", "restore", "--data", str(session), "--models", str(repo), "--steps", "40", "--seed", "0")
    first = written_as_a_candidate(r)
    srv = own_server("--models", str(repo))
    assert active_version(srv.frames, "restore").ref != first
    r = cli("models", "activate", first, "--force", "--server", srv.frames)
    assert r.returncode == 0, r.stderr
    assert active_version(srv.frames, "restore").ref == first

    # 3. a live acquisition streams confocal frames through the active restore model meanwhile
    core = open_microscope(rig=VirtualRigConfig(sensor_shape_px=(int(SIZE_PX),) * 2, seed=1))
    core.setConfig("Modality", "Confocal")
    summaries = []
    live = threading.Thread(target=lambda: summaries.append(run_acquisition(
        core, useq.MDASequence(time_plan={"interval": 0.05, "loops": 100_000}), server=srv.frames,
        pipeline=("restore",))))
    live.start()
    try:
        time.sleep(2.0)
        # 4. deploy: an undertrained version is worse on the held-out pairs (and fails the quality
        # gate): registered, not swapped in
        r = cli("train", "restore", "--data", str(session), "--models", str(repo), "--steps", "1", "--seed", "0",
                "--deploy", "--server", srv.frames)
        worse = written_as_a_candidate(r)
        said = " ".join(r.stdout.split())
        assert f"{worse} registered, NOT activated" in said and "failed the quality gate" in said
        assert "--force activates it anyway" in said
        assert active_version(srv.frames, "restore").ref == first
        # ... with --force it is swapped in while frames keep flowing: the gate refused it, the
        # force activated it
        r = cli("train", "restore", "--data", str(session), "--models", str(repo), "--steps", "1", "--seed", "0",
                "--deploy", "--force", "--server", srv.frames)
        forced = written_as_a_candidate(r)
        said = " ".join(r.stdout.split())
        assert f"{forced} activated in" in said and "failed the quality gate" in said
        assert "activated because forced" in said
        assert active_version(srv.frames, "restore").ref == forced
        time.sleep(2.0)
    finally:
        core.mda.cancel()
        live.join(timeout=60)
    (summary,) = summaries

    assert set(summary.models) == {first, forced}, summary  # never the refused one
    assert summary.dropped == 0 and summary.errors == 0 and summary.unanswered == 0
    assert summary.results == summary.frames_acquired > 0

    # 5. lineage: each version's card names the session, the command and its held-out metrics
    for ref in (first, worse, forced):
        card = card_of(repo, ref)
        assert card.provenance.session_ids == (session_id,)
        assert "psnr_db_restored" in card.metrics
        assert card.gate is not None and not card.gate.passed and card.gate.classical_method
    assert card_of(repo, worse).comparison.against == first and not card_of(repo, worse).comparison.not_worse
    r = cli("models", "list", "--server", srv.frames)
    assert session_id[:8] in r.stdout


def test_a_session_whose_pairs_all_fail_registration_is_refused_for_training(tmp_path):
    session = tmp_path / "pairs.ome.zarr"
    assert cli("calibrate", "pairs", "--output", str(session), "--grid", "1x2", "--size", "64",
               "--seed", "2").returncode == 0
    # confocal and STED never correlate this well: every pair fails QA
    r = cli("calibrate", "register", str(session), "--min-ncc", "0.999")
    assert r.returncode == 0 and "none of the 2 pairs passes QA" in r.stdout
    report = json.loads((session / "registration.json").read_text())
    assert report["pairs"] and not any(p["passed"] for p in report["pairs"])
    r = cli("train", "restore", "--data", str(session), "--models", str(tmp_path / "m"), "--steps", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert not (tmp_path / "m" / "restore").exists()

"""Retraining the other tasks from calibration sessions acquired on the virtual microscope: a
zstack session trains refocusing (plane spacing and pixel size from its manifest), any session's
frames train denoising, and each new version's card names the session it came from."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from livescope.modelcard import CARD_FILE, ModelCard
from livescope.models.refocus.user_data import read_stacks
from livescope.session import load_session


def cli(*args: str, timeout_s: float = 400) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "livescope.cli", *args], capture_output=True, text=True,
                       timeout=timeout_s, env={**os.environ, "COLUMNS": "200"})
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.fixture(scope="module")
def zstack_session(tmp_path_factory):
    path = tmp_path_factory.mktemp("sessions") / "stacks.ome.zarr"
    r = cli("calibrate", "zstack", "--output", str(path), "--grid", "3x1", "--spacing", "30", "--size", "64",
            "--range", "2", "--step", "0.25", "--specimen", "beads", "--seed", "4")
    assert r.returncode == 0, r.stderr
    return path


def test_a_zstack_session_reads_as_one_stack_per_position_with_its_plane_spacing(zstack_session):
    session = load_session(zstack_session, verify=True)
    stacks = read_stacks([zstack_session])
    assert len(stacks) == 3
    for stack in stacks:
        assert stack.planes_adu.shape == (9, 64, 64)
        np.testing.assert_allclose(np.diff(stack.z_um), 0.25)
        assert stack.pixel_size_um == pytest.approx(session.pixel_size_um)
        assert session.session_id in stack.field_id


def written_as_a_candidate(r: subprocess.CompletedProcess) -> tuple[str, str]:
    """NAME and VERSION of the version a 2-step `train` wrote: it does not beat the classical method, so
    it is kept as a candidate, and the run says so in one line and exits 1."""
    name, version = r.stdout.strip().splitlines()[-1].split("@")
    error = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(error) == 1, r.stderr
    assert error[0].startswith(f"livescope: error: {name}@{version} failed the quality gate: ")
    return name, version


def test_refocusing_and_denoising_retrain_from_a_session_and_name_it_in_their_cards(zstack_session, tmp_path):
    session_id = load_session(zstack_session).session_id
    r = cli("train", "refocus", "--data", str(zstack_session), "--models", str(tmp_path), "--dz-max", "1",
            "--steps", "2")
    name, version = written_as_a_candidate(r)
    card = ModelCard.load(tmp_path / name / version / CARD_FILE)
    assert card.provenance.session_ids == (session_id,) and card.refocus.dz_range_um == (-1.0, 1.0)
    assert card.gate is not None and not card.gate.passed and card.gate.classical_method

    r = cli("train", "denoise", "--data", str(zstack_session), "--models", str(tmp_path), "--steps", "2")
    name, version = written_as_a_candidate(r)
    card = ModelCard.load(tmp_path / name / version / CARD_FILE)
    assert card.provenance.session_ids == (session_id,)
    assert card.gate is not None and not card.gate.passed and card.gate.classical_method

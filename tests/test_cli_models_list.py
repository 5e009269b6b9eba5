"""`livescope models list --models DIR`: a repository's versions without a server. Every version
of the shipped models and of DIR, its task, held-out metrics and lineage (the data, the calibration
sessions, the command that trained it), and which version a server would serve (the newest); as
tables that fit an 80-column terminal, or as JSON for scripts.

The version listed is really trained (2 steps of `livescope train denoise` on a calibration session
acquired on the virtual microscope), and no server runs in these tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from livescope.session import load_session


def cli(*args: str, columns: int = 200, timeout_s: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "livescope.cli", *args], capture_output=True, text=True,
                       timeout=timeout_s, env={**os.environ, "COLUMNS": str(columns)})
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str, str]:
    """(repository, the new version's name@version, the session it was trained on)."""
    folder = tmp_path_factory.mktemp("list")
    session, repository = folder / "stacks.ome.zarr", folder / "models"
    r = cli("calibrate", "zstack", "--output", str(session), "--grid", "2x1", "--spacing", "30", "--size", "64",
            "--range", "1", "--step", "0.25", "--specimen", "beads", "--seed", "4")
    assert r.returncode == 0, r.stderr
    r = cli("train", "denoise", "--data", str(session), "--models", str(repository), "--steps", "2")
    assert r.returncode == 0, r.stderr
    return repository, r.stdout.strip().splitlines()[-1], load_session(session).session_id


def test_a_new_version_is_listed_with_its_lineage_without_a_server(trained):
    repository, ref, session_id = trained
    r = cli("models", "list", "--models", str(repository))
    assert r.returncode == 0, r.stderr
    assert ref in r.stdout and "restore@1" in r.stdout  # the user's versions and the shipped ones
    assert session_id in r.stdout and "--steps 2" in r.stdout  # trained on the session, by this command
    assert "n2v_validation_mse_adu2" in r.stdout  # its held-out metric


def test_json_names_every_version_and_the_one_a_server_would_serve(trained):
    repository, ref, session_id = trained
    r = cli("models", "list", "--models", str(repository), "--json")
    assert r.returncode == 0, r.stderr
    listing = json.loads(r.stdout)
    name = ref.split("@")[0]
    assert listing["served"][name] == ref  # the newest version of a name is served
    (entry,) = [m for m in listing["models"] if m["ref"] == ref]
    assert entry["served"] and entry["task"] == "denoise" and "n2v_validation_mse_adu2" in entry["metrics"]
    assert entry["lineage"]["session_ids"] == [session_id]
    assert entry["lineage"]["command"].startswith("livescope train denoise --data")
    older = [m for m in listing["models"] if m["name"] == name and m["ref"] != ref]
    assert older and not any(m["served"] for m in older)


def test_the_tables_fit_an_80_column_terminal(trained):
    repository, ref, _ = trained
    r = cli("models", "list", "--models", str(repository), columns=80)
    assert r.returncode == 0, r.stderr
    assert ref in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80


def test_a_models_path_that_is_a_file_is_a_one_line_error(tmp_path):
    file = tmp_path / "models.txt"
    file.write_text("not a repository")
    r = cli("models", "list", "--models", str(file))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is a file" in r.stderr
    assert r.stdout == ""

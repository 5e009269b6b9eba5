"""An acquisition that is killed (kill -9, mid-run) leaves data that reads and an account of what
it holds (issue 16, crash consistency): the raw and restored stores open, every frame the run
journal says was restored is in the restored store, `livescope report RUN` says the run was
interrupted and how to restore the rest, and a new run refuses to replace it silently. The
server killed mid-stream is covered by the client's reconnection tests (test_client.py)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from livescope.acquire.journal import journal_path, read_account
from tests.test_acquire_channels import cli, read_zarr


def start_acquisition(server: str, output: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "livescope.cli", "acquire", "--frames", "400", "--size", "64",
         "--exposure-ms", "20", "--server", server, "--pipeline", "identity", "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when_restored(proc: subprocess.Popen, output: Path, frames: int, timeout_s: float = 120) -> None:
    journal = journal_path(output)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the acquisition ended before it was killed: {proc.stderr.read()}")
        if journal.exists() and journal.read_text().count('"restored"') >= frames:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the acquisition restored too few frames in time")


def restored_in_journal(output: Path) -> list[int]:
    lines = journal_path(output).read_text().splitlines()[1:]
    return sorted(json.loads(line)["restored"] for line in lines if '"restored"' in line and line.endswith("}"))


@pytest.mark.parametrize("suffix", [".ome.zarr", ".ome.tiff"])
def test_a_killed_acquisition_leaves_readable_data_and_an_account_of_it(server, tmp_path, suffix):
    output = tmp_path / f"run{suffix}"
    proc = start_acquisition(server.frames, output)
    kill_when_restored(proc, output, frames=30)

    account = read_account(output)
    assert account.status == "interrupted" and account.plan.frames_planned == 400
    assert 30 <= account.frames_restored <= account.frames_acquired < 400
    restored_path = Path(account.plan.results_path)
    assert restored_path.name == f"run.identity{suffix}"
    if suffix == ".ome.zarr":
        raw, restored = read_zarr(output), read_zarr(restored_path)
    else:
        # pymmcore-plus completes a raw OME-TIFF only at the end of a run: readers see one frame
        # of a killed one, and `report --recover` writes every frame the file holds to a new one.
        r = cli("report", str(output), "--recover")
        assert r.returncode == 0, r.stderr
        recovered = tmp_path / "run.recovered.ome.tiff"
        frames_in_raw = int(re.search(r"recovered (\d+) frames", " ".join(r.stdout.split())).group(1))
        # the raw writer works on its own thread: the file may hold a frame or two more or fewer
        # than the journal had recorded as handed to it when the kill came
        assert abs(frames_in_raw - account.frames_acquired) <= 4
        raw, restored = tifffile.imread(recovered), tifffile.imread(restored_path)
    raw = raw.reshape(-1, 64, 64)
    restored = restored.reshape(-1, 64, 64)
    assert raw.shape[0] == restored.shape[0] == 400  # every planned plane, the missing ones zeros
    # Every frame journaled as restored is there, and is its own raw frame (the identity model);
    # tensorstore writes Zarr asynchronously, so the last few handed to it may be lost by a kill.
    seqs = restored_in_journal(output)
    sure = seqs if suffix == ".ome.tiff" else seqs[:-8]
    sure = [seq for seq in sure if raw[seq].any()] if suffix == ".ome.tiff" else sure
    assert len(sure) >= len(seqs) - 8
    for seq in sure:
        assert restored[seq].any() and np.array_equal(restored[seq], raw[seq]), seq

    r = cli("report", str(output))
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stdout.split())
    assert "interrupted" in said and f"interrupted after {account.frames_acquired} of 400 frames" in said
    assert "Traceback" not in r.stderr
    r = cli("report", str(output), "--json")
    assert json.loads(r.stdout)["frames_restored"] == account.frames_restored

    r = cli("acquire", "--frames", "3", "--size", "64", "--output", str(output))
    assert r.returncode == 2
    assert "an interrupted run" in r.stderr and "livescope report" in r.stderr


def test_a_complete_run_is_reported_complete(server, tmp_path):
    output = tmp_path / "run.ome.zarr"
    r = cli("acquire", "--frames", "5", "--size", "64", "--server", server.frames, "--pipeline", "identity",
            "--output", str(output))
    assert r.returncode == 0, r.stderr
    account = read_account(output)
    assert (account.status, account.frames_acquired, account.frames_restored) == ("complete", 5, 5)
    assert account.end.summary["results"] == 5


def test_report_on_data_without_a_journal_is_one_clear_line(tmp_path):
    r = cli("report", str(tmp_path / "elsewhere.ome.zarr"))
    assert r.returncode == 2 and "no run journal" in r.stderr and "Traceback" not in r.stderr

"""bench/reproduce_model.py reruns a card's documented command into a scratch repository and says whether
the weights it trains are the file's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.bench_scripts import load_bench_script

reproduce = load_bench_script("reproduce_model.py")
ROOT = Path(__file__).resolve().parent.parent


def test_the_rerun_writes_into_the_scratch_repository_whatever_repository_the_card_names(tmp_path) -> None:
    assert reproduce.rerun_args("livescope train psf --steps 4000 --seed 0 --models models/shipped", tmp_path) == [
        "train", "psf", "--steps", "4000", "--seed", "0", "--models", str(tmp_path)]
    assert reproduce.rerun_args("livescope train denoise --models=/x --steps 5", tmp_path) == [
        "train", "denoise", "--steps", "5", "--models", str(tmp_path)]


def test_only_training_commands_are_rerun(tmp_path) -> None:
    with pytest.raises(SystemExit, match="only `livescope train` commands"):
        reproduce.rerun_args("python -m livescope.models.identity models/shipped", tmp_path)


def test_weights_are_compared_tensor_by_tensor() -> None:
    a = {"w": np.ones((2, 2), np.float32), "b": np.zeros(3, np.float32)}
    assert reproduce.compare(a, {k: v.copy() for k, v in a.items()}) == {
        "same_layout": True, "bit_identical": True, "max_abs_difference": 0.0}
    moved = {"w": a["w"] + np.float32(0.25), "b": a["b"]}
    assert reproduce.compare(a, moved) == {"same_layout": True, "bit_identical": False, "max_abs_difference": 0.25}
    assert reproduce.compare(a, {"w": a["w"]})["same_layout"] is False


def test_a_version_trained_by_its_command_is_repeated_bit_for_bit(tmp_path) -> None:
    repository = tmp_path / "repo"
    trained = subprocess.run([sys.executable, "-m", "livescope.cli", "train", "psf", "--steps", "2",
                              "--models", str(repository)], capture_output=True, text=True, cwd=ROOT)
    ref = trained.stdout.strip().splitlines()[-1]  # a 2-step model is a candidate (exit 1), written all the same
    assert ref.startswith("psf@"), trained.stderr
    rerun = subprocess.run([sys.executable, "bench/reproduce_model.py", ref, "--models", str(repository)],
                           capture_output=True, text=True, cwd=ROOT)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["model"] == ref and report["bit_identical"] and report["max_abs_difference"] == 0.0
    assert report["trained_by_code"] == report["rerun_by_code"]


@pytest.mark.parametrize("model, says", [("nosuch@1", "no model named 'nosuch'"), ("psf", "NAME@VERSION")])
def test_a_model_it_cannot_find_is_one_line_without_a_traceback(model, says) -> None:
    r = subprocess.run([sys.executable, "bench/reproduce_model.py", model], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and says in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

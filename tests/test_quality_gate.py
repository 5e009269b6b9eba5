"""No model that does worse than a classical filter is served by default (issue 17: a 2-minute
training wrote a model that erased every filament, and it became the newest version, which
offline `denoise` and the next `serve` used by default).

A new version is always written, with its quality gate on its card: it must beat the strongest
classical method on its own held-out data and not be worse than the default version there. One that
fails is a candidate: `train` says why in one line and exits 1, the default stays what it was (for
the offline commands, `serve` and `models list`), a frame naming the candidate is refused, and
`models activate NAME@V --force` is the only way to serve it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from livescope.client import ControlError, Refusal, Result, StreamClient
from livescope.modelcard import CARD_FILE, Comparison, ModelCard
from livescope.models.compare import quality_gate
from livescope.repository import ModelRepository, UnknownModelError, shipped_models_root
from tests.test_train_own_data import noisy_stack


def cli(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "livescope.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, check=False, env={"COLUMNS": "200", **__import__("os").environ})


@pytest.fixture(scope="module")
def five_steps(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """`train denoise --data cells.tif --steps 5`: the repository, the stack, the run."""
    tmp = tmp_path_factory.mktemp("gate")
    stack = tmp / "cells.tif"
    tifffile.imwrite(stack, noisy_stack(8, 64, 64))
    run = cli("train", "denoise", "--data", str(stack), "--steps", "5", "--patch", "32",
              "--models", str(tmp / "repo"))
    return tmp / "repo", stack, run


def test_a_five_step_training_is_written_as_a_candidate_and_says_why_in_one_line(five_steps):
    repository, _, run = five_steps
    assert run.returncode == 1, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "denoise@4"  # written, and named
    error = run.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("livescope: error: denoise@4 failed the quality gate")
    assert "--force" in error[0] and "Traceback" not in run.stderr
    card = ModelCard.load(repository / "denoise" / "4" / CARD_FILE)
    assert card.gate is not None and not card.gate.passed and not card.serves_by_default
    assert card.gate.metric == "n2v_validation_mse_adu2" and card.gate.classical_method
    assert card.gate.classical_value == card.metrics["n2v_validation_mse_adu2_classical"]
    assert card.comparison is not None and card.comparison.against == "denoise@3"  # the default then


def test_the_default_stays_the_version_that_passed(five_steps):
    repository, _, _ = five_steps
    assert ModelRepository([shipped_models_root(), repository]).resolve("denoise").ref == "denoise@3"
    listed = cli("models", "list", "--models", str(repository))
    row = next(line for line in listed.stdout.splitlines() if line.strip().startswith("denoise@4"))
    assert "candidate" in row


def test_offline_denoise_uses_the_default_and_warns_when_told_to_use_a_candidate(five_steps, tmp_path):
    repository, stack, _ = five_steps
    r = cli("denoise", str(stack), str(tmp_path / "out.tif"), "--models", str(repository))
    assert r.returncode == 0, r.stderr
    assert "denoise@3" in r.stdout and "candidate" not in r.stdout
    r = cli("denoise", str(stack), str(tmp_path / "out3.tif"), "--models", str(repository), "--model", "denoise@4")
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stdout.split())
    assert "warning: denoise@4 is a candidate that failed the quality gate" in said


def test_a_server_serves_the_default_refuses_the_candidate_and_serves_it_only_when_forced(five_steps, own_server):
    repository, _, _ = five_steps
    srv = own_server("--models", str(repository))
    frame = noisy_stack(1, 64, 64)[0]
    with StreamClient(srv.frames, pipeline=["denoise"]) as plain, \
            StreamClient(srv.frames, stream="explicit", pipeline=["denoise@4"]) as explicit:
        plain.connect()
        explicit.connect()
        plain.submit(frame)
        (outcome,) = list(plain.outcomes())
        assert isinstance(outcome, Result) and outcome.header.model == "denoise@3"
        explicit.submit(frame)
        (refused,) = list(explicit.outcomes())
        assert isinstance(refused, Refusal) and refused.reason == "unknown_model"
        assert "quality gate" in refused.message and "--force" in refused.message
        with pytest.raises(ControlError, match="quality gate"):
            plain.control("activate", model="denoise@4")
        assert plain.control("activate", model="denoise@4", force=True)["active"] == "denoise@4"
        plain.submit(frame)
        (outcome,) = list(plain.outcomes())
        assert isinstance(outcome, Result) and outcome.header.model == "denoise@4"


# -- the gate's verdicts --------------------------------------------------------------------------

CLASSICAL = "a Gaussian filter"


def gate(new: float, classical: float | None, default: float | None = None):
    metrics = {"psnr_db_restored": new} | ({} if classical is None else {"psnr_db_restored_classical": classical})
    comparison = None if default is None else Comparison(
        against="restore@1", metric="psnr_db_restored", higher_is_better=True, new_value=new, active_value=default)
    return quality_gate("restore", metrics, CLASSICAL, comparison)


def test_a_version_passes_when_it_beats_the_classical_method_and_is_not_worse_than_the_default():
    verdict = gate(31.0, 30.0, default=31.0)
    assert verdict.passed and "beats a Gaussian filter" in verdict.reason


@pytest.mark.parametrize("new,classical,default,words", [
    (29.0, 30.0, None, "does not beat a Gaussian filter"),
    (30.0, 30.0, None, "does not beat"),  # a tie is no reason to serve a network
    (31.0, 30.0, 32.0, "worse than the default restore@1"),
    (31.0, None, None, "no classical method was scored"),
])
def test_a_version_fails_when(new, classical, default, words):
    verdict = gate(new, classical, default)
    assert not verdict.passed and words in verdict.reason


def test_lower_is_better_for_a_loss():
    metrics = {"n2v_validation_mse_adu2": 9.0, "n2v_validation_mse_adu2_classical": 10.0}
    assert quality_gate("denoise", metrics, CLASSICAL, None).passed
    metrics["n2v_validation_mse_adu2"] = 11.0
    assert not quality_gate("denoise", metrics, CLASSICAL, None).passed


def test_a_repository_of_candidates_alone_serves_none_by_default_and_says_how_to_serve_one(five_steps, tmp_path):
    repository, _, _ = five_steps
    only = tmp_path / "only"
    (only / "mine").mkdir(parents=True)
    card = ModelCard.load(repository / "denoise" / "4" / CARD_FILE).model_copy(update={"name": "mine", "version": 1})
    (only / "mine" / "1").mkdir()
    card.dump(only / "mine" / "1" / CARD_FILE)
    (only / "mine" / "1" / "model.onnx").write_bytes((repository / "denoise" / "4" / "model.onnx").read_bytes())
    with pytest.raises(UnknownModelError, match=r"no version of 'mine' passed the quality gate.*--force"):
        ModelRepository([only]).resolve("mine")
    assert ModelRepository([only]).resolve("mine", 1).ref == "mine@1"  # named, it is found
    assert np.isfinite(card.gate.new_value)


def test_a_training_draws_its_loss_curves_and_held_out_examples_next_to_the_card(five_steps):
    import imageio.v3 as iio

    repository, _, _ = five_steps
    svg = (repository / "denoise" / "4" / "training.svg").read_text()
    assert svg.startswith("<svg") and "held-out loss" in svg and "training loss (running mean)" in svg
    assert svg.count("<polyline") == 2 and "denoise@4" in svg
    examples = iio.imread(repository / "denoise" / "4" / "held_out.png")  # held-out input | the version's output
    assert examples.ndim == 2 and examples.shape[1] == 64 + 4 + 64 and (examples.shape[0] + 4) % 68 == 0
    assert examples[:, :64].std() > 0 and examples[:, 68:].std() > 0  # both sides show something


def test_the_training_loop_records_both_losses_at_each_validation():
    import torch

    from livescope.models.training_loop import LoopSettings, fit

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    loss = lambda g: torch.nn.functional.mse_loss(g(x), y)  # noqa: E731
    trained = fit(net, loss, lambda g: float(loss(g)), LoopSettings(learning_rate=0.05, steps=6, budget_seconds=None,
                                                                     validate_every_steps=2))
    assert [s for s, _ in trained.curve.held_out] == [2, 4, 6] == [s for s, _ in trained.curve.train]
    assert trained.curve.held_out[-1][1] < trained.curve.held_out[0][1]  # it learned

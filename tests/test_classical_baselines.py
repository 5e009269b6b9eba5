"""Every trainer scores the strongest classical method on its own held-out data, so the quality gate
can ask whether the new version beats it: the card's metrics hold the classical score of the
deciding metric (``<metric>_classical``) and its gate names the method.

- localise: the ThunderSTORM-like Poisson-MLE fitter (models/localise/classical.py), its detection
  threshold and fitting radius tuned on the held-out frames; laterally for a 3-D model;
- refocus: the input left unchanged (no classical method refocuses one frame);
- restore: the better of the input unchanged and Richardson-Lucy deconvolution, its Gaussian PSF
  and iteration count chosen against the held-out targets.

A few training steps do not beat these: such a version fails the gate (a candidate, not served by
default), and its card says why.
"""

from __future__ import annotations

import numpy as np
import pytest

from livescope.modelcard import CARD_FILE, ModelCard
from livescope.models.localise.data import LocaliseSimulation, simulate_batch
from livescope.models.localise.train import (
    LocaliseTrainConfig,
    classical_held_out_jaccard,
    train_and_publish_localiser,
)
from livescope.models.refocus.data import split_fields as split_stacks
from livescope.models.refocus.train import RefocusTrainConfig, train_and_publish_refocuser
from livescope.models.refocus.virtual import VirtualRefocusData, virtual_stacks
from livescope.models.restore.data import VirtualRestoreData, split_fields, virtual_pairs
from livescope.models.restore.train import RestoreTrainConfig, train_and_publish_restorer


def _gate_follows_the_numbers(card: ModelCard, metric: str) -> None:
    """The gate decided on ``metric`` against its classical score, both as the card records them."""
    gate = card.gate
    assert gate is not None and gate.metric == metric and gate.higher_is_better
    assert gate.new_value == card.metrics[metric]
    assert gate.classical_value == card.metrics[metric + "_classical"]
    assert gate.classical_method and gate.classical_method in gate.reason
    if not gate.new_value > gate.classical_value:
        assert not gate.passed


# -- localise --------------------------------------------------------------------------------------


def test_a_localiser_is_gated_against_the_classical_fitter_on_its_held_out_frames(tmp_path):
    simulation = LocaliseSimulation(frame_shape_px=(16, 16))
    config = LocaliseTrainConfig(frame_channels=4, temporal_channels=4, batch_size=4, steps=2,
                                 validate_every_steps=1, held_out_samples=8, frame_px=16)
    folder, card = train_and_publish_localiser(tmp_path, name="localise", simulation=simulation,
                                               config=config, command="test")
    assert 0.0 <= card.metrics["held_out_jaccard_classical"] <= 1.0
    _gate_follows_the_numbers(card, "held_out_jaccard")
    assert "ThunderSTORM-like Poisson-MLE fitter" in card.gate.classical_method
    assert "tuned on these held-out frames" in card.gate.classical_method
    assert ModelCard.load(folder / CARD_FILE).gate == card.gate


def test_the_classical_fitter_finds_most_bright_sparse_emitters_in_the_held_out_camera_frames():
    """Its score is worth comparing with: the frames reach it in photo-electrons (ADU less the
    baseline, times e-/ADU), so it finds most bright emitters (not those within its fitting radius
    of the edge, nor those that overlap)."""
    simulation = LocaliseSimulation(frame_shape_px=(64, 64), density_per_um2=(0.1, 0.1), photons=(5000.0, 5000.0),
                                    background_photons_per_px=(10.0, 10.0), psf_sigma_px=(1.2, 1.2),
                                    pixel_size_nm=(100.0, 100.0))
    held_out = simulate_batch(simulation, 16, np.random.default_rng(4))
    jaccard, method = classical_held_out_jaccard(held_out, three_d=False)
    assert jaccard > 0.7
    assert "laterally" not in method


def test_for_a_3d_model_the_2d_fitter_is_scored_laterally_and_says_so():
    simulation = LocaliseSimulation(psf="astigmatic", frame_shape_px=(24, 24))
    held_out = simulate_batch(simulation, 8, np.random.default_rng(4))
    jaccard, method = classical_held_out_jaccard(held_out, three_d=True)
    assert 0.0 <= jaccard <= 1.0 and "scored laterally only" in method


# -- refocus ---------------------------------------------------------------------------------------


def test_a_refocuser_is_gated_against_the_unchanged_input_at_each_delta_z(tmp_path):
    spec = VirtualRefocusData(specimens=("cells",), fields_per_specimen=2, sensor_shape_px=(32, 32),
                              z_range_um=(-1.0, 1.0), z_step_um=0.5, signal_photons_per_ms=(10.0,))
    train, held = split_stacks(virtual_stacks(spec), 0.5, np.random.default_rng(0))
    config = RefocusTrainConfig(steps=2, batch_size=2, base_channels=4, depth=2, patch_px=16,
                                validate_every_steps=1, dz_max_um=1.0)
    _, card = train_and_publish_refocuser(tmp_path, name="refocus", stacks=train, held_out=held, config=config,
                                          baseline_adu=100.0, data_description="two virtual fields", command="test")
    for dz in ("0.5", "1"):
        assert card.metrics[f"psnr_db_refocused_at_{dz}_um_classical"] == card.metrics[f"psnr_db_unchanged_at_{dz}_um"]
    _gate_follows_the_numbers(card, "psnr_db_refocused_at_1_um")  # the larger delta-z decides
    assert card.gate.classical_method == "the input frame unchanged (no classical refocusing)"


# -- restore ---------------------------------------------------------------------------------------


def test_a_restorer_is_gated_against_richardson_lucy_or_the_unchanged_input_whichever_is_better(tmp_path):
    pairs = virtual_pairs(VirtualRestoreData(specimens=("filaments",), fields_per_specimen=3,
                                             sensor_shape_px=(48, 48), signal_photons_per_ms=(10.0,)))
    train, held = split_fields(pairs, 1 / 3, np.random.default_rng(0))
    config = RestoreTrainConfig(steps=2, batch_size=2, base_channels=4, patch_px=32, validate_every_steps=1)
    _, card = train_and_publish_restorer(tmp_path, name="restore", pairs=train, held_out=held, config=config,
                                         baseline_adu=100.0, data_description="three virtual fields",
                                         command="test", pixel_size_um=0.03)
    classical = card.metrics["psnr_db_restored_classical"]
    assert classical >= card.metrics["psnr_db_unchanged"]
    _gate_follows_the_numbers(card, "psnr_db_restored")
    # confocal -> STED at 30 nm pixels: deconvolving the confocal blur (~2.5 px) beats leaving it
    assert classical > card.metrics["psnr_db_unchanged"] + 1
    assert card.gate.classical_method.startswith("Richardson-Lucy deconvolution, Gaussian PSF sigma")
    assert "against these held-out targets" in card.gate.classical_method


@pytest.mark.parametrize("metric", ["held_out_jaccard", "psnr_db_refocused_at_1_um", "psnr_db_restored"])
def test_the_classical_scores_use_the_suffix_the_gate_reads(metric):
    from livescope.models.compare import CLASSICAL_SUFFIX, DECIDING_METRICS

    assert CLASSICAL_SUFFIX == "_classical"
    assert any(metric == m for deciding in DECIDING_METRICS.values() for m, _ in deciding)

"""bench/psf_learning.py's scores: a perfect reader scores zero, the best constant scores the
constant's own error, and a reader stuck at the trained range's mean shows as a bias over +-1 µm."""

from __future__ import annotations

import numpy as np
import pytest

from livescope.models.psf.estimate_data import PsfSimulation, simulate
from tests.bench_scripts import load_bench_script

psf_learning = load_bench_script("psf_learning.py")


@pytest.fixture(scope="module")
def batch():
    return simulate(PsfSimulation(), 64, np.random.default_rng(0))


def test_a_perfect_reader_scores_zero(batch) -> None:
    s = psf_learning.scores(np.abs(batch.defocus_um), batch)
    assert s["rms_nm"] == 0 and s["within_1um_rms_nm"] == 0 and s["within_1um_bias_nm"] == 0
    assert all(v == 0 for v in s["rms_over_constant_by_texture"].values())


def test_the_best_constant_scores_the_constant_floor(batch) -> None:
    z = np.abs(batch.defocus_um)
    s = psf_learning.scores(np.full_like(z, z.mean()), batch)
    assert s["rms_nm"] == s["constant_rms_nm"]


def test_a_reader_stuck_at_the_trained_mean_is_biased_within_1um(batch) -> None:
    s = psf_learning.scores(np.full(len(batch.defocus_um), 0.75, np.float32), batch)
    assert s["within_1um_bias_nm"] > 150
    assert s["within_1um_rms_nm"] > s["within_1um_constant_rms_nm"]


def test_fresh_patches_are_batches_of_inputs_and_abs_defocus() -> None:
    x, z = next(iter(psf_learning.FreshPatches(PsfSimulation(), 4, seed=0)))
    assert tuple(x.shape) == (4, 5, 64, 64) and tuple(z.shape) == (4,) and bool((z >= 0).all())

"""Localisation scores (the 2016 SMLM challenge's) and the Cramér-Rao lower bound."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy.integrate import quad

from livescope.emitters import EmitterTable
from livescope.models.localise.metrics import (
    AstigmaticCalibration,
    crlb_astigmatic,
    crlb_gaussian_2d,
    efficiency_percent,
    match_emitters,
    score_localisations,
)


def table(frame, x, y, z=0.0) -> EmitterTable:
    return EmitterTable.from_columns(frame=np.asarray(frame), x_nm=np.asarray(x, float),
                                     y_nm=np.asarray(y, float), z_nm=np.asarray(z, float))


def random_truth(n: int = 200, frames: int = 20, seed: int = 0) -> EmitterTable:
    rng = np.random.default_rng(seed)
    return table(rng.integers(1, frames + 1, n), rng.uniform(0, 6400, n), rng.uniform(0, 6400, n),
                 rng.uniform(-400, 400, n))


# -- scores ----------------------------------------------------------------------------------------


def test_perfect_localisations_score_jaccard_1_rmse_0_and_efficiency_100():
    truth = random_truth()
    s = score_localisations(truth, truth, three_d=True)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (len(truth), 0, 0)
    assert s.jaccard == s.recall == s.precision == 1.0
    assert s.rmse_lateral_nm == s.rmse_axial_nm == 0.0
    assert s.efficiency_percent == 100.0


def test_a_known_shift_gives_that_rmse_and_bias():
    truth = random_truth()
    r = truth.rows
    found = table(r["frame"], r["x_nm"] + 30.0, r["y_nm"] - 40.0, r["z_nm"] + 20.0)
    s = score_localisations(found, truth, three_d=True)
    assert s.jaccard == 1.0
    assert s.rmse_lateral_nm == pytest.approx(50.0, abs=1e-3)  # sqrt(30^2 + 40^2)
    assert s.rmse_axial_nm == pytest.approx(20.0, abs=1e-3)
    assert (s.bias_x_nm, s.bias_y_nm, s.bias_z_nm) == pytest.approx((30.0, -40.0, 20.0), abs=1e-3)
    # E = 100 - sqrt(0^2 + (alpha RMSE)^2): 100 - 50 lateral, 100 - 0.5 * 20 axial, and their mean
    assert s.efficiency_lateral_percent == pytest.approx(50.0, abs=1e-3)
    assert s.efficiency_axial_percent == pytest.approx(90.0, abs=1e-3)
    assert s.efficiency_percent == pytest.approx(70.0, abs=1e-3)


def test_efficiency_combines_jaccard_and_rmse_as_the_challenge_does():
    assert efficiency_percent(0.7, 40.0, 1.0) == pytest.approx(100.0 - 50.0)  # hypot(30, 40)
    assert efficiency_percent(1.0, 0.0, 1.0) == 100.0


def test_emitters_beyond_the_lateral_tolerance_are_a_false_positive_and_a_false_negative():
    truth = table([1, 1], [1000.0, 3000.0], [1000.0, 1000.0])
    found = table([1, 1], [1000.0 + 249.0, 3000.0 + 251.0], [1000.0, 1000.0])
    s = score_localisations(found, truth)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (1, 1, 1)
    assert s.jaccard == pytest.approx(1 / 3)
    assert s.rmse_lateral_nm == pytest.approx(249.0)


def test_in_3d_an_emitter_beyond_the_axial_tolerance_is_not_paired():
    truth = table([1], [1000.0], [1000.0], [0.0])
    found = table([1], [1000.0], [1000.0], [600.0])
    assert score_localisations(found, truth, three_d=True).true_positives == 0
    assert score_localisations(found, truth, three_d=False).true_positives == 1  # 2-D ignores z


def test_pairing_is_one_to_one_two_found_near_one_truth_are_one_tp_and_one_fp():
    truth = table([1], [1000.0], [1000.0])
    found = table([1, 1], [1050.0, 1010.0], [1000.0, 1000.0])
    s = score_localisations(found, truth)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (1, 1, 0)
    assert s.rmse_lateral_nm == pytest.approx(10.0)  # the nearer one is paired


def test_the_assignment_maximises_pairs_rather_than_greedily_taking_the_nearest():
    # f0 is nearest to t1, but taking that pair would leave t0 without a partner.
    truth = table([1, 1], [0.0, 200.0], [0.0, 0.0])
    found = table([1, 1], [150.0, 400.0], [0.0, 0.0])
    m = match_emitters(found, truth)
    assert m.found_index.tolist() == [0, 1] and m.truth_index.tolist() == [0, 1]


def test_frames_are_kept_separate():
    truth = table([1, 2], [1000.0, 5000.0], [1000.0, 1000.0])
    found = table([2, 1], [1000.0, 5000.0], [1000.0, 1000.0])  # right places, swapped frames
    s = score_localisations(found, truth)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (0, 2, 2)


def test_empty_tables_give_zeros_without_errors():
    truth = random_truth(10)
    for found, true in [(EmitterTable.empty(), EmitterTable.empty()), (EmitterTable.empty(), truth),
                        (truth, EmitterTable.empty())]:
        s = score_localisations(found, true, three_d=True)
        assert s.true_positives == 0
        assert s.false_positives == len(found) and s.false_negatives == len(true)
        assert s.jaccard == s.recall == s.precision == s.rmse_lateral_nm == s.rmse_axial_nm == 0.0
        assert s.efficiency_percent == 0.0


def test_a_non_finite_localisation_is_a_false_positive():
    truth = table([1], [1000.0], [1000.0])
    found = table([1, 1], [np.nan, 1000.0], [1000.0, 1000.0])
    s = score_localisations(found, truth)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (1, 1, 0)


def test_jittered_localisations_give_the_rmse_of_their_jitter():
    rng = np.random.default_rng(1)
    truth = random_truth(4000, frames=100)
    r = truth.rows
    n = len(truth)
    found = table(r["frame"], r["x_nm"] + rng.normal(0, 20, n), r["y_nm"] + rng.normal(0, 20, n))
    s = score_localisations(found, truth)
    assert s.rmse_lateral_nm == pytest.approx(20.0 * math.sqrt(2), rel=0.05)
    assert s.jaccard > 0.99


def test_ten_thousand_frames_of_a_hundred_thousand_emitters_score_in_seconds():
    rng = np.random.default_rng(2)
    truth = random_truth(100_000, frames=10_000, seed=3)
    r = truth.rows
    keep = rng.random(len(truth)) < 0.9
    found = table(r["frame"][keep], r["x_nm"][keep] + rng.normal(0, 20, keep.sum()),
                  r["y_nm"][keep] + rng.normal(0, 20, keep.sum()))
    start = time.perf_counter()
    s = score_localisations(found, truth)
    assert time.perf_counter() - start < 5.0
    assert s.recall == pytest.approx(0.9, abs=0.01) and s.precision > 0.99


# -- the Cramér-Rao lower bound ----------------------------------------------------------------------


def mortensen_mle_sd_nm(photons: float, background: float, sigma_nm: float, pixel_nm: float) -> float:
    """Mortensen et al. 2010, eq. 6: the MLE's variance for a pixelated 2-D Gaussian, with
    sigma_a^2 = sigma^2 + a^2 / 12 and the background in photons per pixel."""
    sa2 = sigma_nm**2 + pixel_nm**2 / 12.0
    tau = 2.0 * math.pi * sa2 * background / (photons * pixel_nm**2)
    integral = quad(lambda t: math.log(t) / (1.0 + t / tau), 0.0, 1.0)[0]
    return math.sqrt(sa2 / photons / (1.0 + integral))


@pytest.mark.parametrize(("photons", "background"), [(200, 5), (1000, 10), (2000, 2), (5000, 50), (500, 20)])
def test_the_2d_bound_agrees_with_mortensens_formula(photons, background):
    bound = crlb_gaussian_2d(photons=photons, background_photons=background, sigma_nm=130.0, pixel_nm=100.0)
    expected = mortensen_mle_sd_nm(photons, background, 130.0, 100.0)
    assert bound.x_nm == pytest.approx(expected, rel=0.03)
    assert bound.y_nm == pytest.approx(bound.x_nm, rel=1e-9)


def test_without_background_the_2d_bound_tends_to_sigma_a_over_root_n():
    for photons in (100, 1000, 10_000):
        bound = crlb_gaussian_2d(photons=photons, background_photons=1e-9, sigma_nm=130.0, pixel_nm=100.0)
        assert bound.x_nm == pytest.approx(math.sqrt((130.0**2 + 100.0**2 / 12) / photons), rel=0.01)


def test_emccd_excess_noise_and_read_noise_cost_precision():
    kw = dict(photons=1000, background_photons=10, sigma_nm=130.0, pixel_nm=100.0)
    plain = crlb_gaussian_2d(**kw).x_nm
    assert crlb_gaussian_2d(**kw, excess_noise=2.0).x_nm == pytest.approx(math.sqrt(2) * plain)
    assert crlb_gaussian_2d(**kw, read_noise_photons=2.0).x_nm > plain * 1.05


ASTIGMATISM = AstigmaticCalibration(sigma0_x_nm=120.0, sigma0_y_nm=120.0, focus_x_nm=-250.0,
                                    focus_y_nm=250.0, depth_x_nm=400.0, depth_y_nm=400.0)


def test_the_astigmatic_widths_follow_the_defocus_model():
    assert ASTIGMATISM.sigma_x_nm(-250.0) == 120.0
    assert ASTIGMATISM.sigma_y_nm(650.0) == pytest.approx(120.0 * math.sqrt(2.0))


def test_where_the_astigmatic_psf_is_round_its_lateral_bound_is_the_2d_one():
    kw = dict(photons=2000, background_photons=10, pixel_nm=100.0)
    astig = crlb_astigmatic(z_nm=0.0, psf=ASTIGMATISM, **kw)
    round_ = crlb_gaussian_2d(sigma_nm=ASTIGMATISM.sigma_x_nm(0.0), **kw)
    # by symmetry, z is uncorrelated with x and y at the centre of a pixel
    assert astig.x_nm == pytest.approx(round_.x_nm, rel=1e-6)
    assert astig.y_nm == pytest.approx(round_.y_nm, rel=1e-6)
    assert astig.x_nm < astig.z_nm < 5 * astig.x_nm


def test_the_astigmatic_bound_is_symmetric_about_the_middle_and_worsens_far_from_focus():
    kw = dict(photons=2000, background_photons=10, pixel_nm=100.0, psf=ASTIGMATISM)
    below, above = crlb_astigmatic(z_nm=-400.0, **kw), crlb_astigmatic(z_nm=400.0, **kw)
    assert (below.x_nm, below.z_nm) == pytest.approx((above.y_nm, above.z_nm), rel=1e-6)
    assert crlb_astigmatic(z_nm=1200.0, **kw).z_nm > 2 * crlb_astigmatic(z_nm=0.0, **kw).z_nm


def test_a_psf_that_does_not_change_with_z_says_nothing_about_z():
    bound = crlb_astigmatic(z_nm=0.0, photons=2000, background_photons=10, pixel_nm=100.0,
                            psf=(lambda z: 130.0, lambda z: 130.0))
    assert bound.z_nm == math.inf
    assert bound.x_nm == pytest.approx(
        crlb_gaussian_2d(photons=2000, background_photons=10, sigma_nm=130.0, pixel_nm=100.0).x_nm)

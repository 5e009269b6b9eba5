"""The 3-D (astigmatic) part of bench/localise_quality.py: PSF widths, the z-averaged bound, 3-D
scores and the z-agreement diagnostic, on synthetic tables (no model, no training). One test reads
the public NAIRR 3DAS set and is skipped without it."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import tifffile
from scipy.optimize import least_squares
from scipy.spatial import cKDTree
from scipy.special import erf

from livescope.emitters import EmitterTable
from livescope.models.localise.data import LocaliseSimulation
from livescope.models.localise.metrics import crlb_astigmatic
from tests.bench_scripts import BENCH, load_bench_script

NAIRR_3DAS_LD = BENCH.parent.parent / "shared" / "data" / "nairr_smlm" / "3DAS_LD"


lq = load_bench_script("localise_quality.py")


@pytest.fixture(scope="module")
def widths():
    # pure astigmatism (the rig's spherical aberration would shift the two foci unequally)
    optics = {k: getattr(LocaliseSimulation(spherical_waves=0.0), k) for k in lq.OPTICS_FIELDS}
    return lq.measure_astigmatic_widths(lq.simulation_3d(1.0, 1.0, 1.0, optics, (-600.0, 600.0)))


def _movie(truth: EmitterTable, frames: int = 4) -> object:
    stack = np.zeros((frames, lq.FRAME_PX, lq.FRAME_PX), np.float32)
    return lq.Movie(name="synthetic", frames=stack, windows=None, truth=truth, pixel_nm=lq.PIXEL_NM,
                    sigma_nm=100.0, photons_e=1000.0)


def _truth(rng: np.random.Generator, n: int = 200, frames: int = 4) -> EmitterTable:
    side = lq.FRAME_PX * lq.PIXEL_NM
    return EmitterTable.from_columns(frame=rng.integers(1, frames + 1, n), x_nm=rng.uniform(0, side, n),
                                     y_nm=rng.uniform(0, side, n), z_nm=rng.uniform(-600, 600, n))


def _jitter(truth: EmitterTable, rng: np.random.Generator, lateral_nm: float, axial_nm: float,
            z_sign: float = 1.0) -> EmitterTable:
    n = len(truth)
    return EmitterTable.from_columns(frame=truth["frame"], x_nm=truth["x_nm"] + rng.normal(0, lateral_nm, n),
                                     y_nm=truth["y_nm"] + rng.normal(0, lateral_nm, n),
                                     z_nm=z_sign * truth["z_nm"] + rng.normal(0, axial_nm, n))


def test_rig_psf_has_its_x_focus_below_and_y_focus_above_the_focal_plane(widths) -> None:
    s = widths.summary()
    assert s["x_focus_z_nm"] < -50 and s["y_focus_z_nm"] == -s["x_focus_z_nm"]
    # Z(2,2) astigmatism alone: sigma_x(z) = sigma_y(-z), the in-focus width ~0.21 lambda / NA (78 nm).
    np.testing.assert_allclose(widths.sigma_x_nm, widths.sigma_y_nm[::-1], rtol=1e-3)
    assert 60 < min(widths.sigma_x_nm) < 90
    assert np.all((widths.light > 0.6) & (widths.light <= 1.0))


def test_z_averaged_bound_lies_between_the_best_and_worst_z(widths) -> None:
    of_z = widths.of_z()
    bound = lq.crlb_3d_nm(of_z, (-600.0, 600.0), 2400.0, 16.0, 1.5, widths.light_of_z())
    assert bound["z_nm_min_max"][0] < bound["z_nm"] < bound["z_nm_min_max"][1]
    assert bound["lateral_nm_min_max"][0] < bound["lateral_nm"] < bound["lateral_nm_min_max"][1]
    # A single-z "range" is crlb_astigmatic at that z.
    one = lq.crlb_3d_nm(of_z, (200.0, 200.0), 2400.0, 16.0, 1.5)
    direct = crlb_astigmatic(z_nm=200.0, photons=2400.0, background_photons=16.0, pixel_nm=lq.PIXEL_NM, psf=of_z,
                             read_noise_photons=1.5)
    assert one["z_nm"] == pytest.approx(direct.z_nm, abs=0.01)
    assert one["lateral_nm"] == pytest.approx(math.hypot(direct.x_nm, direct.y_nm), abs=0.01)


def test_scores_3d_on_jittered_truth() -> None:
    rng = np.random.default_rng(0)
    truth = _truth(rng)
    movie = _movie(truth)
    out = lq.scores_3d(_jitter(truth, rng, 10.0, 30.0), movie)
    inner = out["interior"]
    assert inner["jaccard"] == pytest.approx(1.0)
    assert inner["rmse_axial_nm"] == pytest.approx(30.0, rel=0.2)
    assert inner["rmse_lateral_nm"] == pytest.approx(10.0 * math.sqrt(2), rel=0.2)
    assert inner["isolated_pairs"] > 0 and inner["rmse_axial_isolated_nm"] == pytest.approx(30.0, rel=0.3)
    assert out["z_agreement"]["slope"] == pytest.approx(1.0, abs=0.05)
    assert out["interior_lateral_only"]["jaccard"] == pytest.approx(1.0)
    bound = {"lateral_nm": 5.0, "z_nm": 10.0}
    ratios = lq.rmse_over_3d(out, bound)
    assert ratios["axial"]["all_pairs"] == pytest.approx(inner["rmse_axial_nm"] / 10.0, abs=1e-3)


def test_mirrored_z_shows_in_the_slope_and_the_axial_jaccard() -> None:
    rng = np.random.default_rng(1)
    truth = _truth(rng)
    out = lq.scores_3d(_jitter(truth, rng, 10.0, 30.0, z_sign=-1.0), _movie(truth))
    assert out["z_agreement"]["slope"] == pytest.approx(-1.0, abs=0.05)
    # Lateral pairs all found; 3-D pairs only where |2 z| <= 500 nm.
    assert out["interior_lateral_only"]["jaccard"] == pytest.approx(1.0)
    assert out["interior"]["jaccard"] < 0.6


def test_nairr_psf_reproduces_the_csv_widths_at_focus() -> None:
    # The 3DAS CSVs' sigmax_z0 and sigmay_z0 columns.
    assert lq.NAIRR_3DAS_PSF.sigma_x_nm(0.0) == pytest.approx(172.879068, abs=1e-3)
    assert lq.NAIRR_3DAS_PSF.sigma_y_nm(0.0) == pytest.approx(165.793476, abs=1e-3)


def test_trained_simulation_from_a_card_provenance() -> None:
    sim = LocaliseSimulation(psf="astigmatic", z_range_nm=(-500.0, 500.0), astigmatism_waves=0.1)

    class Card:  # only what trained_simulation reads
        class provenance:  # noqa: N801
            data = f"simulated on the fly: {sim.model_dump_json()}"

    assert lq.trained_simulation(Card) == sim
    Card.provenance.data = "a folder of tiffs"
    assert lq.trained_simulation(Card) is None


@pytest.mark.skipif(not NAIRR_3DAS_LD.is_dir(), reason="NAIRR-SMLM 3DAS_LD not in ../shared/data")
def test_nairr_3das_spots_follow_its_calibration_in_our_axes() -> None:
    """Elliptical Gaussian fits to isolated 3DAS_LD emitters: sigma along columns (x) and rows (y)
    follow NAIRR_3DAS_PSF at the CSV's z, not at -z (the sign convention the bench relies on)."""
    frames = tifffile.imread(next(NAIRR_3DAS_LD.glob("*_Validate_Frame.tif"))).astype(np.float64) - 500.0
    with open(next(NAIRR_3DAS_LD.glob("*_Validate_xyz.csv")), newline="") as f:
        rows = list(csv.DictReader(f))
    col = lambda key: np.array([float(r[key]) for r in rows])  # noqa: E731
    frame, x, y, z = col("Frame").astype(int), col("x (nm)"), col("y (nm)"), col("z (nm)")
    points = np.column_stack([x, y, frame * 1e5])
    nearest = cKDTree(points).query(points, k=2)[0][:, 1]
    chosen = np.flatnonzero((nearest > 1200) & (x > 600) & (x < 2600) & (y > 600) & (y < 2600))[:40]
    assert chosen.size >= 20
    r = 5
    fitted = []
    for i in chosen:
        cx, cy = int(x[i] // 100), int(y[i] // 100)
        roi = frames[frame[i] - 1, cy - r:cy + r + 1, cx - r:cx + r + 1]
        ex, ey = np.arange(cx - r, cx + r + 2) * 100.0, np.arange(cy - r, cy + r + 2) * 100.0

        def residual(p, roi=roi, ex=ex, ey=ey):
            ox, oy, sx, sy, n, b = p
            gx = np.diff(0.5 * erf((ex - ox) / (math.sqrt(2) * sx)))
            gy = np.diff(0.5 * erf((ey - oy) / (math.sqrt(2) * sy)))
            return (n * np.outer(gy, gx) + b - roi).ravel()

        fitted.append(least_squares(residual, [x[i], y[i], 150, 150, 2400, 30]).x[2:4])
    sx, sy = np.array(fitted).T
    cal = lq.NAIRR_3DAS_PSF
    as_is = np.median(np.abs(sx / [cal.sigma_x_nm(v) for v in z[chosen]] - 1))
    mirrored = np.median(np.abs(sx / [cal.sigma_x_nm(-v) for v in z[chosen]] - 1))
    assert as_is < 0.06 < 0.3 < mirrored
    assert np.median(np.abs(sy / [cal.sigma_y_nm(v) for v in z[chosen]] - 1)) < 0.06

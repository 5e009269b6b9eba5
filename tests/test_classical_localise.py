"""The classical (ThunderSTORM-like) localisation baseline, models/localise/classical.py.

Spots are simulated as integrated Gaussians with Poisson noise, in photons, with positions in the
pixel-corner convention of ``EmitterTable`` (pixel column i spans [i, i + 1) px).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, special

from livescope.emitters import EmitterTable
from livescope.models.localise import classical

PIXEL_NM = 100.0
SIGMA_PX = 1.3
PHOTONS = 2000.0
BACKGROUND = 20.0
SIZE = 64


def _pixel_integrals(centres_px: np.ndarray, n: int) -> np.ndarray:
    """(K, n): the fraction of a 1-D Gaussian centred at each centre falling in each pixel."""
    edges = np.arange(n + 1, dtype=np.float64)
    cdf = 0.5 * special.erf((edges[None, :] - centres_px[:, None]) / (math.sqrt(2.0) * SIGMA_PX))
    return np.diff(cdf, axis=1)


def _frame(rng: np.random.Generator, x_px: np.ndarray, y_px: np.ndarray) -> np.ndarray:
    expected = BACKGROUND + PHOTONS * np.einsum("ki,kj->ij", _pixel_integrals(y_px, SIZE),
                                                _pixel_integrals(x_px, SIZE))
    return rng.poisson(expected).astype(np.float64)


def _isolated_spots(rng: np.random.Generator, n_frames: int, jitter: float = 0.5
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Frames with a 4 x 4 grid of spots 12 px apart, each displaced at random within a pixel;
    returns the frames and the truth (frame, x_px, y_px)."""
    grid = np.arange(14, SIZE - 8, 12, dtype=np.float64) + 0.5
    gx, gy = (g.ravel() for g in np.meshgrid(grid, grid))
    frames, truth = [], []
    for t in range(n_frames):
        x = gx + rng.uniform(-jitter, jitter, gx.size)
        y = gy + rng.uniform(-jitter, jitter, gy.size)
        frames.append(_frame(rng, x, y))
        truth.append(np.stack([np.full(x.size, t + 1.0), x, y], axis=1))
    return np.stack(frames), np.concatenate(truth)


def _match(table: EmitterTable, truth: np.ndarray, radius_nm: float = 200.0) -> np.ndarray:
    """(found x - true x, found y - true y) in nm for each true spot, NaN where none is near."""
    errors = np.full((len(truth), 2), np.nan)
    for i, (frame, x_px, y_px) in enumerate(truth):
        here = table.in_frame(int(frame))
        d = np.hypot(here["x_nm"] - x_px * PIXEL_NM, here["y_nm"] - y_px * PIXEL_NM)
        if d.size and d.min() < radius_nm:
            j = int(np.argmin(d))
            errors[i] = here["x_nm"][j] - x_px * PIXEL_NM, here["y_nm"][j] - y_px * PIXEL_NM
    return errors


def _mortensen_mle_sd_nm() -> float:
    """Mortensen et al. (Nat Methods 2010) eq. 6: the MLE precision of one coordinate,
    sigma_a^2 / N * (1 + int_0^1 ln t / (1 + N a^2 t / (2 pi sigma_a^2 b)) dt)^-1."""
    a, s = PIXEL_NM, SIGMA_PX * PIXEL_NM
    sa2 = s * s + a * a / 12.0
    tau = PHOTONS * a * a / (2.0 * math.pi * sa2 * BACKGROUND)
    integral, _ = integrate.quad(lambda t: math.log(t) / (1.0 + tau * t), 0.0, 1.0)
    return math.sqrt(sa2 / PHOTONS / (1.0 + integral))


def _localise(frames: np.ndarray) -> EmitterTable:
    return classical.localise_classical(frames, PIXEL_NM, SIGMA_PX * PIXEL_NM)


def test_isolated_spots_are_all_found_at_the_mortensen_precision() -> None:
    frames, truth = _isolated_spots(np.random.default_rng(0), n_frames=40)
    table = _localise(frames)
    errors = _match(table, truth)
    assert not np.isnan(errors).any(), f"{np.isnan(errors[:, 0]).sum()} of {len(truth)} spots missed"
    assert len(table) == len(truth), "one localisation per spot, no extras"
    rmse = float(np.sqrt(np.mean(errors**2)))
    bound = _mortensen_mle_sd_nm()  # about 3.6 nm here
    assert rmse <= 1.5 * bound, f"RMSE {rmse:.2f} nm > 1.5 x Mortensen bound {bound:.2f} nm"
    assert np.abs(errors.mean(axis=0)).max() < 1.0, "no systematic offset (nm)"
    # The reported uncertainty (inverse Fisher information) is honest: close to the RMSE.
    reported = float(np.sqrt(np.mean(table.lateral_uncertainty_nm**2)))
    assert 0.8 < reported / rmse < 1.25
    assert np.median(table["photons"]) == pytest.approx(PHOTONS, rel=0.03)
    assert np.median(table["background_photons"]) == pytest.approx(BACKGROUND, rel=0.05)
    assert np.median(table["sigma_nm"]) == pytest.approx(SIGMA_PX * PIXEL_NM, rel=0.03)
    assert np.all(table["probability"] == 1.0)
    assert set(np.unique(table["frame"])) == set(range(1, 41))


def test_a_spot_at_a_pixel_centre_is_localised_at_i_plus_half_a_pixel() -> None:
    rng = np.random.default_rng(1)
    frames = np.stack([_frame(rng, np.array([20.5]), np.array([31.5])) for _ in range(60)])
    table = _localise(frames)
    assert len(table) == 60
    # Pixel-corner convention: the centre of column 20 is at 20.5 px = 2050 nm, not 2000 nm.
    assert float(np.mean(table["x_nm"])) == pytest.approx(2050.0, abs=2.0)
    assert float(np.mean(table["y_nm"])) == pytest.approx(3150.0, abs=2.0)


def test_first_frame_numbers_the_output() -> None:
    rng = np.random.default_rng(2)
    frames = np.stack([_frame(rng, np.array([30.2]), np.array([30.7])) for _ in range(3)])
    table = classical.localise_classical(frames, PIXEL_NM, SIGMA_PX * PIXEL_NM, first_frame=11)
    assert list(table["frame"]) == [11, 12, 13]


def test_pure_background_gives_almost_no_localisations() -> None:
    # At the default threshold (1 x std of the first wavelet level, about 4.4 standard deviations
    # of the filtered image's noise) a 64 x 64 frame of uniform Poisson background at 20 photons/px
    # gives about 0.04 candidates and 0.02 accepted localisations per frame (measured over 5000
    # frames, i.e. 5e-6 per pixel): about 4 expected here; allow up to 0.05 per frame.
    frames = np.random.default_rng(3).poisson(BACKGROUND, (200, SIZE, SIZE)).astype(np.float64)
    assert len(_localise(frames)) <= 10


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_flat_and_empty_input_give_empty_tables(value: float) -> None:
    flat = np.full((3, 32, 32), value)
    assert len(_localise(flat)) == 0
    assert len(_localise(np.zeros((0, 32, 32)))) == 0
    assert len(_localise(np.zeros((2, 5, 5)))) == 0  # smaller than one fitting ROI


def test_spots_whose_roi_leaves_the_frame_are_skipped_like_thunderstorm() -> None:
    rng = np.random.default_rng(4)
    frame = _frame(rng, np.array([1.5, 32.5]), np.array([32.5, 32.5]))
    table = _localise(frame)  # a single (H, W) frame is accepted too
    assert len(table) == 1
    assert float(table["x_nm"][0]) == pytest.approx(3250.0, abs=30.0)


def test_command_line_converts_camera_counts_and_writes_a_thunderstorm_csv(tmp_path: Path) -> None:
    import tifffile

    rng = np.random.default_rng(5)
    photons = np.stack([_frame(rng, np.array([20.5, 40.25]), np.array([20.5, 44.75]))
                        for _ in range(4)])
    baseline, e_per_adu = 100.0, 0.5
    tifffile.imwrite(tmp_path / "stack.tif", (photons / e_per_adu + baseline).astype(np.uint16),
                     photometric="minisblack")
    out = tmp_path / "locs.csv"
    assert classical.main([str(tmp_path / "stack.tif"), str(out), "--pixel-size", "100",
                           "--baseline", "100", "--e-per-adu", "0.5", "--sigma-px", "1.3"]) == 0
    table = EmitterTable.read_csv(out)
    direct = _localise(photons)
    assert len(table) == len(direct) == 8
    np.testing.assert_allclose(table["x_nm"], direct["x_nm"], atol=0.01)
    np.testing.assert_allclose(table["photons"], direct["photons"], rtol=1e-4)


def test_the_bench_script_is_the_same_command_line():
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "bench" / "classical_localise.py"
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "ThunderSTORM-like localisation" in done.stdout and "--pixel-size" in done.stdout

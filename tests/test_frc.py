"""Fourier ring correlation reads the resolution two independent images of a field support: where
the signal's power falls to a sixth of the noise's (FRC = 1/7), and nowhere for identical images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from livescope.emitters import EmitterTable
from livescope.frc import FRC_THRESHOLD, frc_curve, split_halves, table_frc

PIXEL_NM = 10.0


def gaussian_spectrum_pattern(rng: np.random.Generator, n: int, fc: float) -> np.ndarray:
    """A random pattern whose power spectrum is exp(-q^2 / 2 fc^2) (q, fc in cycles/px), unit peak."""
    fy, fx = np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :]
    power = np.exp(-(fy**2 + fx**2) / (2 * fc**2))
    return np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, n))) * np.sqrt(power)).real


@pytest.mark.parametrize("noise_power", [1e-3, 1e-2, 1e-1])
def test_two_noisy_realisations_cross_where_signal_falls_to_a_sixth_of_the_noise(noise_power):
    """FRC = S / (S + N) for signal S and white noise N: it is 1/7 where S = N / 6, i.e. at
    q = fc sqrt(2 ln(6 / N)); the resolution is 1 / q."""
    rng = np.random.default_rng(1)
    fc = 0.05
    pattern = gaussian_spectrum_pattern(rng, 256, fc)
    a, b = (pattern + math.sqrt(noise_power) * rng.normal(size=pattern.shape) for _ in range(2))
    expected_nm = PIXEL_NM / (fc * math.sqrt(2 * math.log(6 / noise_power)))
    curve = frc_curve(a, b, PIXEL_NM)
    assert curve.resolution_nm == pytest.approx(expected_nm, rel=0.08)
    assert curve.threshold == FRC_THRESHOLD and curve.correlation[0] > 0.9  # the coarsest ring: S / (S + N) near 1


def test_identical_images_agree_at_every_frequency_and_have_no_crossing():
    pattern = gaussian_spectrum_pattern(np.random.default_rng(2), 128, 0.05)
    curve = frc_curve(pattern, pattern, PIXEL_NM)
    assert curve.resolution_nm is None
    assert min(curve.correlation) == pytest.approx(1.0)
    assert curve.frequency_per_nm[-1] == pytest.approx(0.5 / PIXEL_NM)  # up to Nyquist


def test_independent_noise_crosses_at_the_lowest_frequencies():
    rng = np.random.default_rng(3)
    curve = frc_curve(rng.normal(size=(128, 128)), rng.normal(size=(128, 128)), PIXEL_NM)
    assert curve.resolution_nm is not None and curve.resolution_nm > 128 * PIXEL_NM / 4


def test_images_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        frc_curve(np.zeros((8, 8)), np.zeros((8, 9)), PIXEL_NM)


def test_a_table_is_split_by_alternate_blocks_of_frames():
    table = EmitterTable.from_columns(frame=np.arange(1, 41), x_nm=np.zeros(40), y_nm=np.zeros(40))
    first, second = split_halves(table, block_frames=10)
    assert sorted(first["frame"]) == [*range(1, 11), *range(21, 31)]
    assert sorted(second["frame"]) == [*range(11, 21), *range(31, 41)]


def blinking_sites(rng: np.random.Generator, precision_nm: float, frames: int = 400) -> EmitterTable:
    """Fixed molecules (4000 in a 6.4 µm field), each on in 2% of the frames, localised to ``precision_nm``."""
    sites = rng.uniform(0, 6400, (4000, 2))
    on = rng.random((frames, len(sites))) < 0.02
    f, s = np.nonzero(on)
    xy = sites[s] + rng.normal(0, precision_nm, (s.size, 2))
    return EmitterTable.from_columns(frame=f + 1, x_nm=xy[:, 0], y_nm=xy[:, 1])


def test_a_tables_resolution_follows_its_localisation_precision():
    rng = np.random.default_rng(4)
    sharp, blurred = (table_frc(blinking_sites(rng, p), 6400, 6400) for p in (8.0, 25.0))
    assert sharp.resolution_nm < blurred.resolution_nm
    assert 15 < sharp.resolution_nm < 50 and 40 < blurred.resolution_nm < 120


def test_a_table_with_an_empty_half_has_no_frc():
    table = EmitterTable.from_columns(frame=np.ones(5), x_nm=np.arange(5.0), y_nm=np.arange(5.0))
    assert table_frc(table, 1000, 1000) is None

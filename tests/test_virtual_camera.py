"""The virtual camera against detector physics: the photon-transfer curve recovers the configured
gain and read noise; EMCCD excess noise; sCMOS fixed pattern; saturation."""

from __future__ import annotations

import numpy as np
import pytest

from livescope.acquire.virtual.camera import CameraModel, expected_adu, pixel_maps, read_out

SCMOS = CameraModel(qe=0.8, e_per_adu=0.5, read_noise_e=1.5, baseline_adu=100.0, bit_depth=16)
SHAPE = (256, 256)
LEVELS_PHOTONS = (0.0, 5.0, 20.0, 50.0, 100.0, 200.0, 400.0)


def photon_transfer(camera: CameraModel, levels=LEVELS_PHOTONS, seed: int = 0) -> tuple[float, float]:
    """(slope in ADU per ADU, intercept in ADU^2) of temporal variance against mean signal, from
    pairs of flat frames (their difference cancels any fixed pattern), as on a real camera."""
    rng = np.random.default_rng(seed)
    means, variances = [], []
    for photons in levels:
        flat = np.full(SHAPE, photons, np.float32)
        a = read_out(flat, rng, camera).astype(np.float64)
        b = read_out(flat, rng, camera).astype(np.float64)
        means.append((a.mean() + b.mean()) / 2 - camera.baseline_adu)
        variances.append((a - b).var() / 2 - 1 / 12)  # minus rounding to whole ADU
    slope, intercept = np.polyfit(means, variances, 1)
    return float(slope), float(intercept)


def test_the_photon_transfer_curve_recovers_the_conversion_gain_and_the_read_noise():
    slope, intercept = photon_transfer(SCMOS)
    e_per_adu = 1 / slope  # shot noise: variance_e = mean_e, so var_ADU = mean_ADU / g
    read_noise_e = np.sqrt(intercept) * e_per_adu
    assert e_per_adu == pytest.approx(SCMOS.e_per_adu, rel=0.05)
    assert read_noise_e == pytest.approx(SCMOS.read_noise_e, rel=0.05)


def test_the_photon_transfer_curve_of_an_emccd_shows_its_gain_and_excess_noise_factor_of_2():
    emccd = CameraModel(qe=0.9, e_per_adu=20.0, read_noise_e=50.0, baseline_adu=500.0, bit_depth=16,
                        em_gain=100.0)
    slope, _ = photon_transfer(emccd, levels=(0.0, 1.0, 3.0, 10.0, 20.0))
    # var_ADU = F^2 G mean_ADU / g with F^2 = 2 for a high-gain register.
    assert slope * emccd.e_per_adu / 2 == pytest.approx(emccd.em_gain, rel=0.05)
    flat = np.full(SHAPE, 10.0, np.float32)
    frame = read_out(flat, np.random.default_rng(1), emccd).astype(np.float64)
    assert frame.mean() == pytest.approx(expected_adu(flat, emccd).mean(), rel=0.01)


def test_an_scmos_has_a_fixed_per_pixel_offset_and_gain_the_same_in_every_frame():
    camera = SCMOS.model_copy(update={"offset_rms_adu": 3.0, "gain_rms": 0.05, "read_noise_spread": 0.3})
    maps = pixel_maps(camera, SHAPE)
    assert maps.offset_adu.std() == pytest.approx(3.0, rel=0.05)
    assert (maps.e_per_adu / camera.e_per_adu).std() == pytest.approx(0.05, rel=0.05)
    assert maps.read_noise_e.mean() == pytest.approx(camera.read_noise_e, rel=0.02)

    rng = np.random.default_rng(2)
    dark = np.zeros(SHAPE, np.float32)
    darks = np.stack([read_out(dark, rng, camera) for _ in range(32)]).astype(np.float64)
    # The mean dark frame is the offset map (to within the read noise averaged over 32 frames).
    residual = darks.mean(axis=0) - maps.offset_adu
    assert np.abs(residual).mean() < 0.6
    assert np.corrcoef(darks.mean(axis=0).ravel(), maps.offset_adu.ravel())[0, 1] > 0.9
    # Each pixel's noise is its own: noisy pixels stay noisy.
    noisy = maps.read_noise_e > np.percentile(maps.read_noise_e, 90)
    quiet = maps.read_noise_e < np.percentile(maps.read_noise_e, 10)
    assert darks.std(axis=0)[noisy].mean() > 1.5 * darks.std(axis=0)[quiet].mean()
    # The expectation knows the maps too.
    flat = np.full(SHAPE, 100.0, np.float32)
    bright = np.stack([read_out(flat, rng, camera) for _ in range(32)]).astype(np.float64).mean(axis=0)
    expected = expected_adu(flat, camera)
    assert (bright - expected).mean() == pytest.approx(0.0, abs=0.1)
    assert np.corrcoef(bright.ravel(), expected.ravel())[0, 1] > 0.8  # shot noise / 32 frames aside


def test_a_pixel_saturates_at_its_full_well_and_the_adc_at_its_bit_depth():
    camera = SCMOS.model_copy(update={"full_well_e": 10_000.0, "read_noise_e": 0.0})
    flooded = np.full((16, 16), 1e6, np.float32)
    frame = read_out(flooded, np.random.default_rng(3), camera)
    assert np.all(frame == 100 + 10_000 / 0.5)
    eight_bit = read_out(flooded, np.random.default_rng(3), camera.model_copy(update={"bit_depth": 8}))
    assert np.all(eight_bit == 255)

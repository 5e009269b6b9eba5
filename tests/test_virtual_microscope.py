"""The virtual microscope: its physics (specimen, optics, camera) and its Micro-Manager devices,
driven through a real pymmcore-plus core."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from livescope.acquire.microscope import open_microscope
from livescope.acquire.virtual import VirtualRigConfig, VirtualScene
from livescope.acquire.virtual.camera import read_out
from livescope.acquire.virtual.optics import WidefieldOptics
from livescope.acquire.virtual.specimen import make_specimen

# Small rigs keep the tests fast; a non-square sensor catches rows and columns swapped.
RIG = VirtualRigConfig(sensor_shape_px=(192, 256), field_um=60.0, signal_photons_per_ms=5.0)


@pytest.fixture
def microscope():
    core = open_microscope(rig=RIG)
    yield core
    core.unloadAllDevices()


def snap_with_truth(core) -> tuple[np.ndarray, np.ndarray]:
    frame = core.snap()
    return frame, core.virtual_camera.last_ground_truth


# -- frames ---------------------------------------------------------------------------------------


def test_a_frame_is_uint16_of_the_sensor_shape_noisy_around_a_structured_clean_image(microscope):
    frame, truth = snap_with_truth(microscope)
    assert frame.dtype == np.uint16 and frame.shape == RIG.sensor_shape_px
    assert truth.dtype == np.float32 and truth.shape == RIG.sensor_shape_px

    # Structured: the specimen stands far above the background.
    background = np.median(truth)
    assert np.percentile(truth, 99.5) - background > 10 * RIG.read_noise_e / RIG.e_per_adu
    # Noisy: the frame scatters around its clean expectation, by about the camera's noise.
    residual = frame - truth
    assert abs(residual.mean()) < 0.5
    dark_pixels = truth < background + 1
    read_noise_adu = RIG.read_noise_e / RIG.e_per_adu
    assert read_noise_adu < residual[dark_pixels].std() < 2 * read_noise_adu


def test_a_run_is_reproducible_from_the_seed_and_every_frame_draws_new_noise():
    def two_frames(rig: VirtualRigConfig) -> list[np.ndarray]:
        core = open_microscope(rig=rig)
        frames = [core.snap(), core.snap()]
        core.unloadAllDevices()
        return frames

    first, again = two_frames(RIG), two_frames(RIG)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], first[1])
    other_seed = two_frames(RIG.model_copy(update={"seed": 1}))
    assert not np.array_equal(first[0], other_seed[0])


def test_moving_the_xy_stage_moves_the_image_the_other_way_by_the_distance_in_pixels(microscope):
    p = microscope.getPixelSizeUm()
    _, before = snap_with_truth(microscope)
    microscope.setXYPosition(12 * p, -5 * p)  # 12 px right, 5 px up
    _, after = snap_with_truth(microscope)
    # The field of view went right and up, so the specimen moved left and down.
    np.testing.assert_allclose(after[5:, :-12], before[:-5, 12:], atol=1e-3 * np.ptp(before))
    assert not np.allclose(after, before, atol=1e-3 * np.ptp(before))


@pytest.mark.parametrize("spherical_waves", [0.0, RIG.spherical_waves])
def test_defocus_blurs_the_image_but_keeps_every_photon_and_only_aberrations_tell_above_from_below(
        spherical_waves):
    # The whole specimen (20 µm) inside the field of view (~35 µm), so no light leaves it.
    rig = VirtualRigConfig(sensor_shape_px=(320, 320), field_um=20.0, background_photons_per_ms=0.0,
                           spherical_waves=spherical_waves)
    core = open_microscope(rig=rig)
    signals, high_frequency = [], []
    for z_um in (0.0, 1.0, -1.0):
        core.setPosition(z_um)
        _, truth = snap_with_truth(core)
        signal = truth - rig.baseline_adu
        signals.append(signal.sum())
        spectrum = np.abs(np.fft.rfft2(signal)) ** 2
        fy, fx = np.meshgrid(np.fft.fftfreq(320), np.fft.rfftfreq(320), indexing="ij")
        high_frequency.append(spectrum[np.hypot(fy, fx) > 0.2].sum())
    core.unloadAllDevices()

    np.testing.assert_allclose(signals[1:], signals[0], rtol=1e-3)
    assert high_frequency[1] < high_frequency[0] / 10
    if spherical_waves == 0:  # a perfect objective images 1 µm above focus as 1 µm below
        assert high_frequency[2] == pytest.approx(high_frequency[1], rel=1e-3)
    else:  # the default rig's objective (spherical aberration, as real ones) does not
        assert abs(high_frequency[2] / high_frequency[1] - 1) > 0.2


def test_with_the_shutter_closed_a_frame_is_baseline_plus_read_noise(microscope):
    microscope.setShutterOpen(False)
    frame, truth = snap_with_truth(microscope)
    assert np.all(truth == RIG.baseline_adu)
    assert frame.mean() == pytest.approx(RIG.baseline_adu, abs=0.1)
    assert frame.std() == pytest.approx(RIG.read_noise_e / RIG.e_per_adu, rel=0.05)


def test_a_flat_field_has_the_mean_and_variance_of_the_camera_model():
    rig = VirtualRigConfig(sensor_shape_px=(256, 256), field_um=20.0, background_photons_per_ms=20.0)
    core = open_microscope(rig=rig)
    core.setXYPosition(1000.0, 0.0)  # far off the specimen: background only
    core.setExposure(50.0)
    frame = core.snap().astype(np.float64)
    core.unloadAllDevices()

    electrons = rig.qe * rig.background_photons_per_ms * 50.0  # 800 e-
    mean_adu = rig.baseline_adu + electrons / rig.e_per_adu
    # Shot noise (variance = mean e-) + read noise, in ADU^2, + rounding to whole ADU.
    variance_adu = (electrons + rig.read_noise_e**2) / rig.e_per_adu**2 + 1 / 12
    assert frame.mean() == pytest.approx(mean_adu, rel=2e-3)
    assert frame.var() == pytest.approx(variance_adu, rel=0.03)


def test_bright_pixels_clip_at_the_bit_depth(microscope):
    microscope.setProperty("Camera", "BitDepth", 8)
    microscope.setExposure(50.0)
    frame = microscope.snap()
    assert frame.max() == 255


# -- physics, without the devices -----------------------------------------------------------------


def test_the_psf_sums_to_one_and_is_0_21_lambda_over_na_wide_in_focus_widening_with_defocus():
    optics = WidefieldOptics(na=1.4, emission_nm=520.0, immersion_index=1.515)
    assert optics.sigma_um(0.0) == pytest.approx(0.21 * 0.520 / 1.4)
    widths = [optics.sigma_um(z) for z in (0.0, 0.5, 1.0, 2.0)]
    assert widths == sorted(widths) and widths[-1] > 5 * widths[0]
    assert optics.sigma_um(-1.0) == optics.sigma_um(1.0)
    for z_um in (0.0, 0.5, 2.0):
        assert optics.psf((96, 96), 0.108, z_um).sum() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("kind", ["filaments", "cells", "beads"])
def test_a_specimen_renders_the_same_pixels_whatever_window_they_are_rendered_in(kind):
    specimen = make_specimen(kind, field_um=40.0, seed=3)
    p = 0.1
    whole = specimen.render(-20.0, -20.0, (400, 400), p)
    part = specimen.render(-20.0 + 120 * p, -20.0 + 100 * p, (200, 250), p)
    assert part.sum() > 0
    np.testing.assert_allclose(part, whole[100:300, 120:370], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(make_specimen(kind, 40.0, seed=3).render(-20.0, -20.0, (400, 400), p), whole)


@pytest.mark.parametrize("kind", ["filaments", "cells", "beads"])
def test_the_signal_level_sets_the_photons_at_the_peaks_of_an_in_focus_specimen(kind):
    rig = VirtualRigConfig(specimen=kind, sensor_shape_px=(256, 256), field_um=60.0,
                           signal_photons_per_ms=3.0, background_photons_per_ms=0.0)
    photons = VirtualScene(rig).expected_photons(0.0, 0.0, 0.0, exposure_ms=10.0)
    neighbourhood_max = sliding_window_view(np.pad(photons, 1), (3, 3)).max(axis=(2, 3))
    peaks = photons[(photons == neighbourhood_max) & (photons > 0.2 * 30.0)]
    assert 0.6 * 30.0 < np.median(peaks) < 1.2 * 30.0


def test_the_camera_draws_the_same_noise_from_the_same_generator_state():
    photons = np.full((64, 48), 10.0, np.float32)
    camera = RIG.camera
    a = read_out(photons, np.random.default_rng(7), camera)
    b = read_out(photons, np.random.default_rng(7), camera)
    assert a.dtype == np.uint16 and np.array_equal(a, b)


def test_a_rig_with_na_above_the_immersion_index_is_refused():
    with pytest.raises(ValueError, match="immersion index"):
        VirtualRigConfig(na=1.6)


def test_a_frames_ground_truth_is_found_from_its_pixels_with_the_roi_applied(microscope):
    microscope.setROI(10, 20, 64, 32)
    frames = [microscope.snap() for _ in range(3)]
    truths = [microscope.virtual_camera.truth_of(frame) for frame in frames]
    assert [t.frame_number for t in truths] == [0, 1, 2]
    for frame, truth in zip(frames, truths):
        assert frame.shape == truth.clean_adu.shape == (32, 64)
        assert abs((frame - truth.clean_adu).mean()) < 1.0
    assert microscope.virtual_camera.truth_of(np.zeros((32, 64), np.uint16)) is None

"""Simulated localisation training data: what the frames and their ground truth promise."""

from __future__ import annotations

import numpy as np
import pytest

from livescope.acquire.virtual.camera import expected_adu
from livescope.acquire.virtual.scene import VirtualRigConfig
from livescope.acquire.virtual.specimen import EmitterKinetics
from livescope.emitters import EMITTER_DTYPE
from livescope.models.localise.data import (
    EMCCD,
    SCMOS,
    LocaliseSimulation,
    adu_to_photons,
    photons_to_adu,
    render_emitters,
    simulate_batch,
)

PSFS = ("gaussian", "airy", "astigmatic")


def centroid_px(image: np.ndarray) -> tuple[float, float]:
    """(column, row) of the image's centre of mass, in pixel-index coordinates (pixel i's centre at i)."""
    rows, cols = np.indices(image.shape)
    total = image.sum()
    return float((image * cols).sum() / total), float((image * rows).sum() / total)


def second_moments_px(image: np.ndarray) -> tuple[float, float]:
    cx, cy = centroid_px(image)
    rows, cols = np.indices(image.shape)
    total = image.sum()
    return (float(np.sqrt((image * (cols - cx) ** 2).sum() / total)),
            float(np.sqrt((image * (rows - cy) ** 2).sum() / total)))


# -- what a batch holds ---------------------------------------------------------------------------


@pytest.mark.parametrize("psf", PSFS)
def test_a_batch_is_camera_frames_with_per_sample_parameters_and_truth_per_context_frame(psf):
    batch = simulate_batch(LocaliseSimulation(psf=psf), 6, np.random.default_rng(0))
    assert batch.frames_adu.shape == (6, 3, 40, 40) and batch.frames_adu.dtype == np.uint16
    assert batch.expected_photons.shape == (6, 3, 40, 40) and batch.expected_photons.dtype == np.float32
    for name in ("baseline_adu", "e_per_adu", "em_gain", "qe", "read_noise_e", "pixel_size_nm", "psf_sigma_px",
                 "density_per_um2", "background_photons"):
        assert getattr(batch, name).shape == (6,), name
    assert len(batch.truth_frames) == len(batch.inside_frames) == 3
    assert batch.truth is batch.truth_frames[-1]  # the last frame: the one a causal window localises
    for table, inside in zip(batch.truth_frames, batch.inside_frames):
        assert table.rows.dtype == EMITTER_DTYPE and inside.shape == (len(table),) and inside.dtype == bool
        assert set(np.unique(table["frame"])) <= set(range(1, 7))  # sample i is frame i + 1
        s = table["frame"].astype(int) - 1
        p = batch.pixel_size_nm[s]
        assert np.array_equal(inside, (table["x_nm"] >= 0) & (table["x_nm"] < 40 * p)
                              & (table["y_nm"] >= 0) & (table["y_nm"] < 40 * p))
        assert np.allclose(table["sigma_nm"], batch.psf_sigma_px[s] * p, rtol=1e-5)
        assert np.allclose(table["background_photons"], batch.background_photons[s])
        assert np.all(table["probability"] == 1)
    if psf != "astigmatic":
        assert np.all(batch.truth["z_nm"] == 0)


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    config = LocaliseSimulation(cameras=(SCMOS, EMCCD))
    a, b = (simulate_batch(config, 8, np.random.default_rng(7)) for _ in range(2))
    c = simulate_batch(config, 8, np.random.default_rng(8))
    assert np.array_equal(a.frames_adu, b.frames_adu)
    assert all(np.array_equal(x.rows, y.rows) for x, y in zip(a.truth_frames, b.truth_frames))
    assert np.array_equal(a.e_per_adu, b.e_per_adu)
    assert not np.array_equal(a.frames_adu, c.frames_adu)


def test_every_drawn_parameter_stays_within_its_range():
    config = LocaliseSimulation(density_per_um2=(0.5, 2.0), photons=(500.0, 2000.0),
                                background_photons_per_px=(10.0, 20.0), pixel_size_nm=(90.0, 120.0),
                                psf_sigma_px=(1.0, 1.2), cameras=(SCMOS, EMCCD), outside_margin_px=1.0)
    batch = simulate_batch(config, 200, np.random.default_rng(1))
    assert np.all((batch.density_per_um2 >= 0.5) & (batch.density_per_um2 <= 2.0))
    assert np.all((batch.background_photons >= 10) & (batch.background_photons <= 20))
    assert np.all((batch.pixel_size_nm >= 90) & (batch.pixel_size_nm <= 120))
    assert np.all((batch.psf_sigma_px >= 1.0) & (batch.psf_sigma_px <= 1.2))
    assert set(batch.em_gain) == {1.0, 100.0}  # both cameras drawn, each with its own parameters
    assert np.all(batch.qe == np.where(batch.em_gain > 1, EMCCD.qe, SCMOS.qe).astype(np.float32))
    for table in batch.truth_frames:
        assert np.all((table["photons"] >= 500 - 1e-3) & (table["photons"] <= 2000 + 1e-3))
        p = batch.pixel_size_nm[table["frame"].astype(int) - 1]
        for v in (table["x_nm"], table["y_nm"]):  # inside, or within 1 px of the frame
            assert np.all((v >= -1.0001 * p) & (v <= 41.0001 * p))


def test_astigmatic_z_is_drawn_over_its_range_and_the_width_follows_the_optics():
    config = LocaliseSimulation(psf="astigmatic", z_range_nm=(-400.0, 300.0), pixel_size_nm=(100.0, 100.0))
    batch = simulate_batch(config, 20, np.random.default_rng(2))
    z = batch.truth["z_nm"]
    assert z.min() >= -400 and z.max() <= 300 and z.max() - z.min() > 500
    assert np.allclose(batch.psf_sigma_px, 0.21 * config.emission_nm / config.na / 100.0)


# -- geometry: the pixel-corner convention ------------------------------------------------------------


@pytest.mark.parametrize("psf", PSFS)
@pytest.mark.parametrize("x_nm, y_nm", [(2005.0, 2095.0), (1937.0, 2262.5), (2050.0, 2050.0)])
def test_a_rendered_emitter_is_centred_where_the_truth_says_in_the_pixel_corner_convention(psf, x_nm, y_nm):
    # Pixel column i spans [i p, (i + 1) p) nm, its centre at (i + 0.5) p: in pixel-index coordinates
    # an emitter at x nm is at x / p - 0.5 (x = 2005 nm, p = 100 nm: 19.55, left of pixel 20's centre).
    config = LocaliseSimulation(psf=psf)
    image = render_emitters(config, (41, 41), [x_nm], [y_nm], [1000.0], pixel_size_nm=100.0, psf_sigma_px=1.3,
                            z_nm=[250.0])
    cx, cy = centroid_px(image)
    assert cx == pytest.approx(x_nm / 100 - 0.5, abs=0.01)
    assert cy == pytest.approx(y_nm / 100 - 0.5, abs=0.01)


def test_x_runs_along_columns_and_y_along_rows():
    image = render_emitters(LocaliseSimulation(), (20, 30), [2550.0], [650.0], [1000.0], 100.0, 1.0)
    row, col = np.unravel_index(image.argmax(), image.shape)
    assert (row, col) == (6, 25)


@pytest.mark.parametrize("sigma_px", [0.8, 1.6])
def test_the_gaussian_psf_has_the_drawn_sigma_plus_pixel_integration(sigma_px):
    image = render_emitters(LocaliseSimulation(), (41, 41), [2050.0], [2050.0], [1.0], 100.0, sigma_px)
    sx, sy = second_moments_px(image)
    expected = np.sqrt(sigma_px**2 + 1 / 12)  # a pixel box adds 1/12 px^2
    assert sx == pytest.approx(expected, rel=2e-3) and sy == pytest.approx(expected, rel=2e-3)


def test_the_airy_psf_is_scaled_to_the_drawn_sigma():
    # The Airy pattern's core has the width of its Gaussian fit, sigma = 0.21 lambda/NA: doubling
    # sigma doubles the image (pixels well below sigma).
    config = LocaliseSimulation(psf="airy")
    narrow = render_emitters(config, (161, 161), [805.0], [805.0], [1.0], 10.0, 4.0)
    wide = render_emitters(config, (161, 161), [805.0], [805.0], [1.0], 10.0, 8.0)
    half = lambda img: int((img[80] > img[80].max() / 2).sum())  # noqa: E731 - FWHM in px
    assert half(wide) == pytest.approx(2 * half(narrow), abs=1)
    assert 2.2 <= half(narrow) / 4.0 <= 2.7  # the Airy disc's FWHM: 0.51 lambda/NA = 2.45 sigma


@pytest.mark.parametrize("z_nm", [-400.0, -250.0])
def test_the_astigmatic_spot_is_wider_in_x_than_y_on_one_side_of_focus_and_the_opposite_on_the_other(z_nm):
    config = LocaliseSimulation(psf="astigmatic", spherical_waves=0.0)  # pure astigmatism: mirror images
    below = render_emitters(config, (41, 41), [2050.0], [2050.0], [1.0], 100.0, z_nm=[z_nm])
    above = render_emitters(config, (41, 41), [2050.0], [2050.0], [1.0], 100.0, z_nm=[-z_nm])
    focus = render_emitters(config, (41, 41), [2050.0], [2050.0], [1.0], 100.0, z_nm=[0.0])
    (bx, by), (ax, ay), (fx, fy) = map(second_moments_px, (below, above, focus))
    # Below the focal plane (z < 0, the virtual microscope's defocus > 0) the spot stretches along y.
    assert by > 1.2 * bx and ax > 1.2 * ay
    assert fx == pytest.approx(fy, rel=1e-3)
    assert bx == pytest.approx(ay, rel=1e-2) and by == pytest.approx(ax, rel=1e-2)  # mirror images


def test_the_astigmatic_psf_is_the_virtual_microscopes():
    rig = VirtualRigConfig(astigmatism_waves=0.08)
    config = LocaliseSimulation.for_rig(rig)
    assert config.psf == "astigmatic" and config.cameras == (rig.camera,)
    rig_background = rig.background_photons_per_ms * rig.exposure_ms  # 2 photons/px: below the default 5
    assert config.background_photons_per_px[0] <= rig_background <= config.background_photons_per_px[1]
    p_nm = rig.pixel_size_um * 1000
    for z_nm in (-450.0, 0.0, 330.0):
        # An emitter 0.3 px right of and 0.2 px above the centre of pixel (20, 20).
        image = render_emitters(config, (41, 41), [20.8 * p_nm], [20.3 * p_nm], [1.0], p_nm, z_nm=[z_nm])
        reference = rig.optics.psf((41, 41), rig.pixel_size_um, -z_nm / 1000, offset_px=(-0.2, 0.3))
        # Optics.psf itself varies by a few % of its peak between sampling grids, hence the tolerance.
        assert np.abs(image - reference).max() < 0.05 * reference.max()


# -- photometry and the camera --------------------------------------------------------------------


@pytest.mark.parametrize("psf, held", [("gaussian", (0.999, 1.0)), ("airy", (0.95, 0.97)),
                                       ("astigmatic", (0.95, 0.98))])
def test_an_emitters_image_holds_its_detected_photons(psf, held):
    # ``photons`` are detected photons (arriving at the camera): the noise-free frame above the
    # background holds them, converted by the camera into QE x photons photo-electrons. The pupil
    # PSFs leave out their faint far halo (beyond ``psf_energy_fraction``, 95 %).
    config = LocaliseSimulation(psf=psf, density_per_um2=(0.05, 0.05), frame_shape_px=(64, 64),
                                outside_margin_px=0.0, psf_sigma_px=(1.0, 1.0), pixel_size_nm=(100.0, 100.0),
                                z_range_nm=(-300.0, 300.0))
    batch = simulate_batch(config, 60, np.random.default_rng(3))
    adu = batch.expected_adu()
    electrons = (adu - batch.baseline_adu[:, None, None, None]) * (batch.e_per_adu / batch.em_gain)[:, None, None, None]
    above = electrons - (batch.qe * batch.background_photons)[:, None, None, None]
    checked = 0
    for k, table in enumerate(batch.truth_frames):
        s = table["frame"].astype(int) - 1
        far = (np.minimum(table["x_nm"], 6400 - table["x_nm"]) > 1500) & (
            np.minimum(table["y_nm"], 6400 - table["y_nm"]) > 1500)
        for i in np.unique(s):
            mine = s == i
            if not np.all(far[mine]):  # frames whose every emitter lies well inside the frame
                continue
            expected = float(batch.qe[i] * table["photons"][mine].sum())
            assert held[0] * expected <= above[i, k].sum() <= held[1] * expected * (1 + 1e-4)  # float32 sums
            checked += 1
    assert checked > 10


def test_the_noise_free_frames_are_the_camera_models_mean_and_adu_to_photons_inverts_it():
    batch = simulate_batch(LocaliseSimulation(cameras=(SCMOS, EMCCD)), 8, np.random.default_rng(4))
    for i in range(8):
        camera = SCMOS if batch.em_gain[i] == 1 else EMCCD
        assert np.allclose(batch.expected_adu()[i, 1], expected_adu(batch.expected_photons[i, 1], camera), rtol=1e-5)
    photons = adu_to_photons(batch.expected_adu(), batch.baseline_adu, batch.e_per_adu, batch.em_gain, batch.qe)
    assert np.allclose(photons, batch.expected_photons, rtol=1e-4, atol=1e-3)
    assert np.allclose(photons_to_adu(photons, 100.0, 0.5, 1.0, 0.8), expected_adu(photons, SCMOS), rtol=1e-6)


@pytest.mark.parametrize("camera, excess", [(SCMOS, 1.0), (EMCCD, 2.0)])
def test_noisy_frames_scatter_about_the_noise_free_ones_as_the_camera_model_says(camera, excess):
    config = LocaliseSimulation(cameras=(camera,), background_photons_per_px=(5.0, 50.0))
    batch = simulate_batch(config, 150, np.random.default_rng(5))
    mean = batch.expected_adu().astype(np.float64)
    signal_e = batch.expected_photons.astype(np.float64) * camera.qe * camera.em_gain
    variance = (excess * camera.em_gain * signal_e + camera.read_noise_e**2) / camera.e_per_adu**2 + 1 / 12
    z = (batch.frames_adu - mean) / np.sqrt(variance)
    assert abs(z.mean()) < 0.01  # 720k pixels: the mean matches to ~1 % of the noise
    assert z.var() == pytest.approx(1.0, abs=0.03)
    assert abs(batch.photons().mean() / batch.expected_photons.mean() - 1) < 0.01


# -- density and blinking -------------------------------------------------------------------------


def test_each_frame_holds_density_times_area_emitters_on_average():
    config = LocaliseSimulation(density_per_um2=(0.5, 4.0))
    batch = simulate_batch(config, 400, np.random.default_rng(6))
    area_um2 = (40 * batch.pixel_size_nm.astype(np.float64) / 1000) ** 2
    expected = float((batch.density_per_um2 * area_um2).sum())
    for table, inside in zip(batch.truth_frames, batch.inside_frames):  # every frame, not only the centre
        assert abs(int(inside.sum()) - expected) < 4 * np.sqrt(expected)
    per_sample = np.bincount(batch.truth["frame"][batch.inside] - 1, minlength=400)
    dense = batch.density_per_um2 > 2.0
    assert per_sample[dense].mean() > 2 * per_sample[~dense].mean()


def test_an_emitter_on_in_the_centre_frame_stays_on_in_the_next_with_the_configured_probability():
    config = LocaliseSimulation.from_kinetics(EmitterKinetics(), exposure_ms=10.0, density_per_um2=(2.0, 2.0))
    p_on, p_off, p_bleach = EmitterKinetics().probabilities(10.0)
    assert config.stay_on_probability == pytest.approx((1 - p_off) * (1 - p_bleach))
    batch = simulate_batch(config, 300, np.random.default_rng(7))
    key = lambda t: set(zip(t["frame"].tolist(), t["x_nm"].tolist(), t["y_nm"].tolist()))  # noqa: E731
    before, centre, after = (key(t) for t in batch.truth_frames)
    for neighbour in (before, after):
        stayed = len(centre & neighbour) / len(centre)
        assert stayed == pytest.approx(config.stay_on_probability, abs=4 * np.sqrt(0.25 / len(centre)))
    # The same emitter's photons vary from frame to frame.
    photons = [{(f, x): n for f, x, n in zip(t["frame"].tolist(), t["x_nm"].tolist(), t["photons"].tolist())}
               for t in batch.truth_frames[1:]]
    both = photons[0].keys() & photons[1].keys()
    assert np.mean([photons[0][k] != photons[1][k] for k in both]) > 0.9


def test_configs_are_frozen_and_reject_unknown_fields_and_bad_ranges():
    config = LocaliseSimulation()
    with pytest.raises(Exception):
        config.psf = "airy"  # type: ignore[misc]
    with pytest.raises(ValueError):
        LocaliseSimulation(photon_count=(1, 2))
    with pytest.raises(ValueError):
        LocaliseSimulation(photons=(1000.0, 10.0))
    with pytest.raises(ValueError):
        LocaliseSimulation(context_frames=4)


def test_photo_electrons_are_what_a_calibrated_camera_gives():
    """(ADU - baseline) x e-/ADU / EM gain: the network's input, ThunderSTORM's 'photons'."""
    batch = simulate_batch(LocaliseSimulation(), 4, np.random.default_rng(9))
    expected = (batch.frames_adu.astype(np.float64) - batch.baseline_adu[:, None, None, None]) * (
        batch.e_per_adu / batch.em_gain)[:, None, None, None]
    np.testing.assert_allclose(batch.photo_electrons(), expected, rtol=1e-5, atol=1e-3)

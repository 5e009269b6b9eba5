"""The single-molecule specimen: blinking and bleaching kinetics, photon counts, and the ground
truth emitter list that comes with every frame."""

from __future__ import annotations

import numpy as np
import pytest

from livescope.acquire.microscope import open_microscope
from livescope.acquire.virtual import VirtualRigConfig, VirtualScene
from livescope.acquire.virtual.specimen import EmitterKinetics, make_specimen

FAST = EmitterKinetics(per_um=10.0, on_rate_per_s=20.0, off_rate_per_s=60.0, bleach_rate_per_s=0.0,
                       photons_mean=1500.0, photons_cv=0.4)
EXPOSURE_MS = 10.0


def test_molecules_blink_with_the_duty_cycle_the_rates_set():
    molecules = make_specimen("smlm", field_um=40.0, seed=1, kinetics=FAST)
    on = []
    for _ in range(300):
        molecules.step(EXPOSURE_MS)
        on.append(np.mean(molecules.state == molecules.ON))
    p_on, p_off = 1 - np.exp(-0.2), 1 - np.exp(-0.6)
    assert FAST.duty_cycle(EXPOSURE_MS) == pytest.approx(p_on / (p_on + p_off))
    assert np.mean(on) == pytest.approx(p_on / (p_on + p_off), rel=0.05)


def test_molecules_bleach_after_a_geometric_number_of_on_frames():
    kinetics = FAST.model_copy(update={"bleach_rate_per_s": 20.0})
    molecules = make_specimen("smlm", field_um=40.0, seed=2, kinetics=kinetics)
    on_frames = np.zeros(molecules.state.size)
    for _ in range(400):
        molecules.step(EXPOSURE_MS)
        on_frames += molecules.state == molecules.ON
    bleached = molecules.state == molecules.BLEACHED
    assert bleached.mean() > 0.99
    p_bleach = 1 - np.exp(-20.0 * EXPOSURE_MS / 1000)
    assert on_frames[bleached].mean() == pytest.approx(1 / p_bleach, rel=0.05)


def test_an_active_molecule_emits_gamma_distributed_photons_with_the_configured_mean_and_spread():
    molecules = make_specimen("smlm", field_um=40.0, seed=3, kinetics=FAST)
    photons = []
    for _ in range(100):
        molecules.step(EXPOSURE_MS)
        photons.append(molecules.photons[molecules.active()])
    photons = np.concatenate(photons)
    assert photons.size > 5000 and photons.min() > 0
    assert photons.mean() == pytest.approx(FAST.photons_mean, rel=0.03)
    assert photons.std() / photons.mean() == pytest.approx(FAST.photons_cv, rel=0.05)


def test_a_frame_holds_exactly_the_photons_of_its_active_emitters_which_are_its_ground_truth():
    # The whole specimen (12 µm) well inside the field of view (~17 µm), no background.
    rig = VirtualRigConfig(specimen="smlm", sensor_shape_px=(160, 160), field_um=12.0,
                           background_photons_per_ms=0.0, kinetics=FAST)
    scene = VirtualScene(rig)
    counts = []
    for z_um in (0.0, 0.0, 0.6):
        photons = scene.expected_photons(0.0, 0.0, z_um, EXPOSURE_MS)
        emitters = scene.last_emitters
        counts.append(len(emitters))
        assert photons.sum() == pytest.approx(emitters["photons"].sum(), rel=3e-3)  # Airy tails leave
    assert min(counts) > 5 and counts[0] != counts[1]  # every call is a new frame


def test_the_ground_truth_emitters_sit_where_the_frame_shows_them():
    rig = VirtualRigConfig(specimen="smlm", sensor_shape_px=(96, 128), field_um=16.0,
                           background_photons_per_ms=0.0, kinetics=FAST.model_copy(update={"per_um": 1.0}))
    core = open_microscope(rig=rig)
    core.setXYPosition(1.3, -0.7)
    core.snap()
    truth, emitters = core.virtual_camera.last_ground_truth, core.virtual_camera.last_emitters
    core.unloadAllDevices()
    p = rig.pixel_size_um
    h, w = rig.sensor_shape_px
    assert len(emitters) > 0
    checked = 0
    for x_nm, y_nm, photons in zip(emitters["x_nm"], emitters["y_nm"], emitters["photons"]):
        col = x_nm / 1000 / p - 0.5  # from the frame's corner, in nm; pixel centres at integers
        row = y_nm / 1000 / p - 0.5
        assert 0 <= col < w and 0 <= row < h
        r, c = int(round(row)), int(round(col))
        if 3 <= r < h - 3 and 3 <= c < w - 3 and photons > 500:
            window = truth[r - 3:r + 4, c - 3:c + 4]
            peak = np.unravel_index(np.argmax(window), window.shape)
            assert abs(peak[0] - 3) <= 1 and abs(peak[1] - 3) <= 1
            checked += 1
    assert checked >= 3


def test_a_3d_specimens_beads_are_sharpest_with_the_focus_at_their_own_height():
    rig = VirtualRigConfig(specimen="beads", sensor_shape_px=(256, 256), field_um=27.0,
                           specimen_depth_um=2.0, background_photons_per_ms=0.0)
    scene = VirtualScene(rig)
    beads = scene.specimen
    assert beads.z_um.min() >= 0.0 and beads.z_um.max() <= 2.0 and beads.z_um.std() > 0.3
    p = rig.pixel_size_um
    focus = np.arange(-0.2, 2.21, 0.1)
    stack = np.stack([scene.expected_photons(0.0, 0.0, z, 10.0) for z in focus])
    checked = 0
    for x_um, y_um, z_um in zip(beads.x_um, beads.y_um, beads.z_um):
        r, c = int(y_um / p + 128), int(x_um / p + 128)  # the pixel the bead is in
        others = np.hypot(beads.x_um - x_um, beads.y_um - y_um)
        if not (4 <= r < 252 and 4 <= c < 252) or np.sort(others)[1] < 2.0:
            continue  # near the edge, or a neighbour close enough to mix in
        best = focus[np.argmax(stack[:, r - 1:r + 2, c - 1:c + 2].max(axis=(1, 2)))]
        assert best == pytest.approx(z_um, abs=0.1 + 1e-9)
        checked += 1
    assert checked >= 3


def test_the_specimen_can_be_swapped_through_the_camera_property():
    core = open_microscope(rig=VirtualRigConfig(sensor_shape_px=(64, 64), field_um=20.0))
    assert core.getProperty("Camera", "Specimen") == "filaments"
    core.setProperty("Camera", "Specimen", "smlm")
    assert core.scene.config.specimen == "smlm" and core.rig.specimen == "smlm"
    core.snap()
    assert core.virtual_camera.last_emitters is not None
    core.unloadAllDevices()


ALWAYS_ON = EmitterKinetics(on_rate_per_s=1e9, off_rate_per_s=0.0, bleach_rate_per_s=0.0, photons_mean=5000.0,
                            photons_cv=0.1)


def one_molecule_image(row_px: float, col_px: float, psf_model: str) -> tuple[np.ndarray, VirtualRigConfig]:
    """The noise-free frame (80 x 80, no background: all of the PSF's light falls in it) of one
    molecule at (row_px, col_px) of the frame, pixel centres at integers, in focus; normalised to
    sum 1."""
    rig = VirtualRigConfig(specimen="smlm", sensor_shape_px=(80, 80), field_um=10.0, psf_model=psf_model,
                           background_photons_per_ms=0.0, kinetics=ALWAYS_ON)
    scene = VirtualScene(rig)
    molecules, p = scene.specimen, rig.pixel_size_um
    # Replace the specimen's molecules by one, placed relative to the frame centred on the stage at 0, 0.
    molecules.x_um, molecules.y_um = np.array([(col_px + 0.5 - 40) * p]), np.array([(row_px + 0.5 - 40) * p])
    molecules.z_um, molecules.state, molecules.photons = np.zeros(1), np.zeros(1, np.int8), np.zeros(1, np.float32)
    image = scene.expected_photons(0.0, 0.0, 0.0, EXPOSURE_MS).astype(np.float64)
    assert len(scene.last_emitters) == 1
    return image / image.sum(), rig


def moments(image: np.ndarray) -> tuple[float, float, float, float]:
    """Centroid (row, col) and variance (rows, cols) of an image, px."""
    rows, cols = np.arange(image.shape[0]), np.arange(image.shape[1])
    pr, pc = image.sum(axis=1), image.sum(axis=0)
    r, c = pr @ rows, pc @ cols
    return r, c, pr @ (rows - r) ** 2, pc @ (cols - c) ** 2


OFFSETS = [(0.0, 0.0), (0.5, 0.5), (0.25, 0.8), (0.93, 0.11), (0.437, 0.0625)]


@pytest.mark.parametrize("offset", OFFSETS)
def test_a_single_molecule_images_as_the_optics_psf_centred_on_its_true_position(offset):
    row, col = 39.0 + offset[0], 40.0 + offset[1]
    image, rig = one_molecule_image(row, col, "gaussian")
    r, c, var_r, var_c = moments(image)
    assert (r, c) == (pytest.approx(row, abs=0.005), pytest.approx(col, abs=0.005))
    # A Gaussian integrated over pixels: its variance plus a pixel's, 1/12 px^2.
    sigma_px = rig.optics.sigma0_um / rig.pixel_size_um
    for var in (var_r, var_c):
        assert np.sqrt(var - 1 / 12) == pytest.approx(sigma_px, rel=0.02)


@pytest.mark.parametrize("offset", OFFSETS)
def test_with_the_default_psf_a_single_molecule_images_as_the_optics_psf_at_its_position(offset):
    row, col = 39.0 + offset[0], 40.0 + offset[1]
    image, rig = one_molecule_image(row, col, "pupil")  # the default, Airy-like PSF
    psf = rig.optics.psf(image.shape, rig.pixel_size_um, 0.0, (row - 40, col - 40))  # centred on (row, col)
    assert np.abs(image - psf).max() < 0.01 * psf.max()
    r, c, _, _ = moments(image)
    # The pupil PSF's own centroid is within 0.015 px of its centre (its grid's Airy tails).
    assert (r, c) == (pytest.approx(row, abs=0.02), pytest.approx(col, abs=0.02))

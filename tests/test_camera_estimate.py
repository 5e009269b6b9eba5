"""The camera estimated from a movie's own noise: gain and baseline where the data can tell them,
a noise-consistent calibration where it cannot, and localisation that needs no camera flags."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from livescope.camera import CameraCalibration
from livescope.camera_estimate import PRIOR_ADU_PER_E, complete_camera, estimate_camera
from livescope.models.localise.data import EMCCD, SCMOS, LocaliseSimulation, simulate_batch
from livescope.models.localise.metrics import score_localisations
from livescope.repository import ModelRepository, shipped_models_root
from livescope.server.models import LoadedModel, RuntimeOptions
from livescope.server.offline_localise import localise_frames

OTHER_SCMOS = SCMOS.model_copy(update={"e_per_adu": 0.24, "baseline_adu": 400.0, "read_noise_e": 1.0})


def movie(camera, background=(40.0, 40.0), density=0.5, n=60, seed=3, psf_sigma_px=1.1):
    config = LocaliseSimulation(psf="gaussian", frame_shape_px=(64, 64), density_per_um2=(density, density),
                                photons=(1500.0, 1500.0), background_photons_per_px=background,
                                pixel_size_nm=(100.0, 100.0), psf_sigma_px=(psf_sigma_px, psf_sigma_px),
                                cameras=(camera,))
    return simulate_batch(config, n, np.random.default_rng(seed))


@pytest.mark.parametrize("camera", [SCMOS, OTHER_SCMOS], ids=["training sCMOS", "other sCMOS"])
def test_frames_of_many_brightnesses_give_the_gain_and_baseline_by_photon_transfer(camera):
    frames = movie(camera, background=(5.0, 200.0)).frames_adu[:, -1]
    estimate = estimate_camera(frames)
    assert estimate.gain_source == "data"
    assert estimate.e_per_adu == pytest.approx(camera.e_per_adu, rel=0.1)
    # Read noise is folded into the baseline: it sits a x read variance below the true offset.
    folded = camera.baseline_adu - camera.read_noise_e**2 / camera.e_per_adu
    assert abs(estimate.baseline_adu - folded) < max(3 * estimate.baseline_se_adu, 0.02 * camera.baseline_adu)
    assert "±" in estimate.describe() and "assumed" not in estimate.describe()


def test_a_flat_background_cannot_tell_the_gain_so_the_calibration_keeps_its_noise_poisson_and_says_so():
    frames = movie(OTHER_SCMOS).frames_adu[:, -1]
    estimate = estimate_camera(frames)
    assert estimate.gain_source == "prior" and estimate.e_per_adu == pytest.approx(1 / PRIOR_ADU_PER_E)
    background_e = (estimate.background_adu - estimate.baseline_adu) * estimate.e_per_adu
    noise_e2 = estimate.background_variance_adu2 * estimate.e_per_adu**2
    assert noise_e2 == pytest.approx(background_e, rel=1e-6)  # Poisson: variance = mean, in photo-electrons
    truth_adu = OTHER_SCMOS.baseline_adu + 40.0 * OTHER_SCMOS.qe / OTHER_SCMOS.e_per_adu
    assert estimate.background_adu == pytest.approx(truth_adu, rel=0.03)
    assert "assumed" in estimate.describe() and "--e-per-adu" in estimate.describe()


def test_a_background_crowded_with_emitters_is_said_to_be_so_with_what_to_give_instead():
    sparse = estimate_camera(movie(SCMOS, density=0.5).frames_adu[:, -1])
    assert not sparse.crowded and "crowded" not in sparse.describe()
    dense_frames = movie(SCMOS, density=3.0).frames_adu[:, -1]
    dense = estimate_camera(dense_frames)  # every tile holds emitters: their light lowers the baseline
    assert dense.crowded and "crowded" in dense.describe() and "--baseline" in dense.describe()
    _, given = complete_camera(dense_frames, baseline_adu=SCMOS.baseline_adu)
    assert "crowded" not in given.describe()  # nothing to warn of: the user said


@pytest.mark.parametrize("density", [2.0, 4.0])
def test_broad_overlapping_spots_are_light_not_noise_so_the_baseline_holds(density):
    # Spots of 2.5 px sigma at 2-4 /um^2 (wide astigmatic SMLM is like this) overlap into a haze of
    # varying level: the spread of a tile's values counts the haze's slopes as noise, which put the
    # baseline 70-90 ADU above the truth; each pixel's difference from its neighbours cancels them.
    frames = movie(SCMOS, density=density, psf_sigma_px=2.5).frames_adu[:, -1]
    estimate = estimate_camera(frames)
    folded = SCMOS.baseline_adu - SCMOS.read_noise_e**2 / SCMOS.e_per_adu
    assert abs(estimate.baseline_adu - folded) < 0.15 * (estimate.background_adu - folded)
    photons = (estimate.background_adu - folded) * SCMOS.e_per_adu / SCMOS.qe
    noise_adu2 = (photons * SCMOS.qe + SCMOS.read_noise_e**2) / SCMOS.e_per_adu**2
    assert estimate.background_variance_adu2 == pytest.approx(noise_adu2, rel=0.2)


def test_a_value_the_user_gives_is_kept_and_the_other_follows_from_the_noise():
    frames = movie(SCMOS).frames_adu[:, -1]
    camera, estimate = complete_camera(frames, e_per_adu=SCMOS.e_per_adu)
    assert camera.e_per_adu == SCMOS.e_per_adu and estimate.gain_source == "user"
    assert camera.baseline_adu == pytest.approx(SCMOS.baseline_adu, abs=6.0)  # 1.5 e- read noise folds in 4.5 ADU
    camera, estimate = complete_camera(frames, baseline_adu=SCMOS.baseline_adu)
    assert camera.baseline_adu == SCMOS.baseline_adu and estimate.baseline_source == "user"
    assert camera.e_per_adu == pytest.approx(SCMOS.e_per_adu, rel=0.15)
    both = CameraCalibration(baseline_adu=100, e_per_adu=0.5)
    assert complete_camera(frames, baseline_adu=100, e_per_adu=0.5) == (both, None)


def test_frames_without_noise_are_refused_saying_why():
    with pytest.raises(ValueError, match="no pixel noise"):
        estimate_camera(np.full((4, 32, 32), 100, np.uint16))
    with pytest.raises(ValueError, match="too small"):
        estimate_camera(np.zeros((4, 4, 4), np.uint16))


@pytest.mark.parametrize("camera", [SCMOS, OTHER_SCMOS, EMCCD], ids=["training sCMOS", "other sCMOS", "EMCCD"])
def test_localisation_with_the_estimated_camera_is_as_good_as_with_the_right_flags(camera):
    repo = ModelRepository([shipped_models_root()])
    model = LoadedModel.load(repo.resolve("localise"), RuntimeOptions(provider="cpu", intra_op_threads=1))
    batch = movie(camera, density=1.0)
    truth = batch.truth_frames[-1].select(batch.inside_frames[-1])
    frames = batch.frames_adu[:, -1]
    right = CameraCalibration(baseline_adu=camera.baseline_adu, e_per_adu=camera.e_per_adu, em_gain=camera.em_gain)
    estimated, _ = complete_camera(frames, em_gain=camera.em_gain)
    jaccard = {name: score_localisations(localise_frames(model, cal.photons(frames), 100.0), truth).jaccard
               for name, cal in (("right", right), ("estimated", estimated))}
    assert jaccard["right"] > 0.6
    assert jaccard["estimated"] >= jaccard["right"] - 0.05, jaccard


def test_the_cli_localises_without_camera_flags_and_reports_the_estimate(tmp_path):
    path = tmp_path / "movie.ome.tif"
    tifffile.imwrite(path, movie(OTHER_SCMOS, n=12).frames_adu[:, -1], ome=True, metadata={
        "axes": "TYX", "PhysicalSizeX": 0.1, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.1,
        "PhysicalSizeYUnit": "µm"})
    r = subprocess.run([sys.executable, "-m", "livescope.cli", "localise", str(path), str(tmp_path / "out.csv")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stdout.split())
    assert "camera estimated from" in said and "baseline" in said and "e-/ADU" in said
    assert len((tmp_path / "out.csv").read_text().splitlines()) > 10


def test_the_cli_refuses_a_noiseless_movie_without_flags_in_one_line(tmp_path):
    tifffile.imwrite(tmp_path / "flat.tif", np.full((3, 32, 32), 100, np.uint16), photometric="minisblack")
    r = subprocess.run([sys.executable, "-m", "livescope.cli", "localise", str(tmp_path / "flat.tif"),
                        str(tmp_path / "out.csv"), "--pixel-size", "100"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    said = " ".join((r.stdout + r.stderr).split())
    assert "cannot estimate the camera" in said and "--baseline" in said
    assert not (tmp_path / "out.csv").exists()

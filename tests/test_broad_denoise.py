"""The camera-agnostic denoiser (issue 17): trained once on a wide simulator, it takes noise-equivalent
photons, which the server and the offline command obtain from each frame's camera, given or
estimated from the data, so that one shipped model serves any camera without flags."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from livescope.camera import CameraCalibration
from livescope.camera_estimate import FALLBACK_SCALE, noise_equivalent, photon_scale
from livescope.client import Result, StreamClient
from livescope.models.denoise.broad import BroadDenoiseConfig, train_and_publish_broad
from livescope.models.denoise.broad_data import (
    CAMERAS,
    STRUCTURES,
    BroadDenoiseData,
    broad_batch,
    noisy_pair,
    structure,
)
from livescope.models.metrics import psnr_db
from livescope.repository import ModelRepository, shipped_models_root
from livescope.server.models import LoadedModel
from livescope.server.offline import restore_stack, run_offline
from livescope.stackio import read_stack, write_stack

TINY = BroadDenoiseConfig(steps=5, depth=1, base_channels=4, batch_size=4, patch_px=32, validate_every_steps=5)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    """A repository holding a 5-step camera-agnostic denoiser (denoise@1)."""
    repo = tmp_path_factory.mktemp("broad")
    folder, card = train_and_publish_broad(repo, config=TINY)
    return repo, card


def test_the_simulator_draws_every_structure_and_camera_in_noise_equivalent_photons():
    rng = np.random.default_rng(0)
    for kind in STRUCTURES:
        density = structure(kind, (48, 48), rng)
        assert density.shape == (48, 48) and np.isfinite(density).all() and density.min() >= 0 and density.max() > 0
    flat = np.full((1, 1, 256, 256), 50.0)
    for camera in CAMERAS:
        spec = BroadDenoiseData(cameras=(camera,), gain_error=1.0)
        noisy, target = noisy_pair(spec, flat[0, 0], rng)
        # variance equals the mean (within sampling error): the units the served model takes
        assert abs(noisy.var() / target.mean() - 1) < 0.1, camera
        assert abs(noisy.mean() / target.mean() - 1) < 0.02, camera
    noisy, target = broad_batch(BroadDenoiseData(), 6, 32, rng)
    assert noisy.shape == target.shape == (6, 1, 32, 32) and noisy.dtype == np.float32 and target.min() >= 0


def test_a_five_step_training_is_written_but_never_becomes_the_default(tiny_repo):
    repo, card = tiny_repo
    assert card.normalisation.kind == "photons"
    assert card.inputs[0].dtype == "float32" and card.outputs[0].dtype == "float32"
    assert card.trained_for.psf_sigma_px == (0.7, 4.0) and card.trained_for.peak_photons == (1.0, 1000.0)
    assert {"psnr_db_denoised_mean", "psnr_db_denoised_mean_classical", "psnr_denoised_db_at_1_photons",
            "psnr_gaussian_db_at_1000_photons"} <= set(card.metrics)
    assert card.gate is not None and not card.gate.passed and not card.serves_by_default
    assert "Gaussian" in card.gate.reason


def test_a_known_camera_converts_to_noise_equivalent_photons():
    scmos = noise_equivalent(CameraCalibration(baseline_adu=100, e_per_adu=0.5, read_noise_e=2.0))
    assert scmos.e_per_adu == 0.5 and scmos.baseline_adu == pytest.approx(100 - 4 / 0.5)
    emccd = noise_equivalent(CameraCalibration(baseline_adu=200, e_per_adu=10.0, em_gain=100))
    assert emccd.e_per_adu == pytest.approx(10.0 / 100 / 2)  # excess noise factor F^2 = 2
    adu = np.array([[100.0, 300.0]], np.float32)
    assert np.allclose(scmos.to_adu(scmos.to_photons(adu)), adu)


def test_frames_without_noise_get_the_fallback_scale_which_says_so():
    scale = photon_scale(np.full((1, 64, 64), 7, np.uint16))
    assert scale is FALLBACK_SCALE and "no noise" in scale.source


def _scene(peak_photons: float, seed: int) -> np.ndarray:
    """Noise-free photons/px: filaments and puncta not from the training simulator's code."""
    rng = np.random.default_rng(seed)
    image = np.zeros((128, 128))
    for _ in range(8):
        y0, x0, angle = rng.uniform(0, 128), rng.uniform(0, 128), rng.uniform(0, np.pi)
        t = np.linspace(-80, 80, 800)
        ys, xs = np.round(y0 + t * np.sin(angle)).astype(int), np.round(x0 + t * np.cos(angle)).astype(int)
        keep = (ys >= 0) & (ys < 128) & (xs >= 0) & (xs < 128)
        image[ys[keep], xs[keep]] = 1.0
    image[rng.integers(0, 128, 60), rng.integers(0, 128, 60)] += 3.0
    image = ndimage.gaussian_filter(image, 1.8)
    return peak_photons * image / image.max() + 0.1 * peak_photons


CAMERAS_OF_OTHER_RIGS = {
    "sCMOS 0.5 e-/ADU, 100 ADU": lambda p, rng: np.round(rng.poisson(p) / 0.5 + 100 + rng.normal(0, 3, p.shape)),
    "sCMOS 0.24 e-/ADU, 400 ADU": lambda p, rng: np.round(rng.poisson(p) / 0.24 + 400 + rng.normal(0, 6, p.shape)),
    "8-bit, 1.5 e- per level, 5 ADU": lambda p, rng: np.clip(np.round(rng.poisson(p) / 1.5 + 5), 0, 255),
}


TRUE_E_PER_ADU = {"sCMOS 0.5 e-/ADU, 100 ADU": 0.5, "sCMOS 0.24 e-/ADU, 400 ADU": 0.24,
                  "8-bit, 1.5 e- per level, 5 ADU": 1.5}


@pytest.mark.parametrize("peak", [10.0, 100.0])
def test_one_frame_with_structure_tells_the_cameras_gain_within_20_percent(peak):
    for name, camera in CAMERAS_OF_OTHER_RIGS.items():
        frame = camera(_scene(peak, 0), np.random.default_rng(1)).astype(np.uint16)
        scale = photon_scale(frame)
        assert "noise at each intensity" in scale.source
        assert abs(scale.e_per_adu / TRUE_E_PER_ADU[name] - 1) < 0.2, (name, scale.source)


def test_the_shipped_model_serves_cameras_it_never_saw_without_flags():
    """The same scenes through three cameras: the shipped denoiser, run as `livescope denoise` runs it
    (camera estimated from the stack), beats the best Gaussian filter on each by at least 1 dB."""
    version = ModelRepository([shipped_models_root()]).resolve("denoise")
    assert version.card.normalisation.kind == "photons"
    model = LoadedModel.load(version)
    for peak in (10.0, 100.0):
        clean = np.stack([_scene(peak, seed) for seed in range(4)])
        for name, camera in CAMERAS_OF_OTHER_RIGS.items():
            rng = np.random.default_rng(1)
            frames = np.stack([camera(c, rng) for c in clean]).astype(np.uint16)
            scale = photon_scale(frames)
            denoised = scale.to_photons(restore_stack(model, frames))
            noisy = scale.to_photons(frames)
            # scored in photons against the truth, after an affine fit (the units are noise-equivalent)
            fitted = _affine_to(denoised, clean)
            gaussian = max(psnr_db(_affine_to(ndimage.gaussian_filter(noisy, (0, s, s)), clean), clean)
                           for s in (0.7, 1.0, 1.5, 2.0, 3.0))
            assert psnr_db(fitted, clean) > gaussian + 1.0, (name, peak, psnr_db(fitted, clean), gaussian)


def _affine_to(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    a, b = np.polyfit(image.ravel(), reference.ravel(), 1)
    return a * image + b


def test_offline_denoise_estimates_the_camera_and_says_so(tiny_repo, tmp_path):
    repo, card = tiny_repo
    rng = np.random.default_rng(2)
    frames = (rng.poisson(np.stack([_scene(30.0, s) for s in range(2)])) / 0.5 + 100).astype(np.uint16)
    write_stack(tmp_path / "in.ome.tiff", frames.astype(np.float32))
    summary = run_offline(card.ref, tmp_path / "in.ome.tiff", tmp_path / "out.ome.tiff", model_dirs=[repo])
    assert summary.camera is not None and "camera estimated from" in summary.camera
    assert "photons from camera estimated" in summary.line()
    out = read_stack(tmp_path / "out.ome.tiff").frames
    assert out.dtype == np.float32 and out.shape == frames.shape
    # the 5-step model is near the identity: the result is the input, in its own ADU
    assert abs(float(out.mean()) - float(frames.mean())) < 0.05 * float(frames.mean())
    given = run_offline(card.ref, tmp_path / "in.ome.tiff", tmp_path / "given.ome.tiff", model_dirs=[repo],
                        baseline_adu=100.0, e_per_adu=0.5)
    assert "the camera's calibration" in given.camera


def test_live_frames_are_converted_with_their_stream_camera(own_server, tiny_repo):
    repo, card = tiny_repo
    srv = own_server("--models", str(repo))
    with StreamClient(srv.frames) as control:  # the 5-step model failed the gate: serve it on purpose
        control.connect()
        control.control("activate", model=card.ref, force=True, timeout_s=60)
    rng = np.random.default_rng(3)
    frames = [(rng.poisson(_scene(30.0, s)) / 0.5 + 100).astype(np.uint16) for s in range(3)]
    with StreamClient(srv.frames, stream="cam1", pipeline=[card.ref]) as client:
        client.connect()
        for frame in frames:
            client.submit(frame)
        outcomes = sorted(client.outcomes(timeout_s=60), key=lambda o: o.seq)
    assert all(isinstance(o, Result) for o in outcomes), outcomes
    for frame, result in zip(frames, outcomes):
        assert result.data.dtype == np.float32
        assert abs(float(result.data.mean()) - float(frame.mean())) < 0.05 * float(frame.mean())
    with StreamClient(srv.frames, stream="flat", pipeline=[card.ref]) as client:
        client.connect()
        client.submit(np.full((64, 64), 9, np.uint16))
        (flat,) = list(client.outcomes(timeout_s=60))
    assert isinstance(flat, Result)
    assert any("could not be estimated" in w for w in flat.header.warnings)
    known_camera = CameraCalibration(baseline_adu=100, e_per_adu=0.5)
    with StreamClient(srv.frames, stream="known", pipeline=[card.ref], camera=known_camera) as client:
        client.connect()
        client.submit(frames[0])
        (known,) = list(client.outcomes(timeout_s=60))
    assert isinstance(known, Result) and not any("could not be estimated" in w for w in known.header.warnings)


def test_frames_far_brighter_than_any_training_peak_are_warned_about(tiny_repo):
    from livescope.server.domain import domain_warnings

    repo, card = tiny_repo
    rng = np.random.default_rng(4)
    ordinary = (rng.poisson(np.full((64, 64), 50.0)) / 0.5 + 100).astype(np.uint16)
    assert domain_warnings(card, ordinary, "in.tif", "advice") == ()
    photons = np.full((64, 64), 50.0)
    photons[16:48, 16:48] = 8000.0
    (warning,) = domain_warnings(card, (rng.poisson(photons) / 0.5 + 100).astype(np.uint16), "in.tif", "advice")
    assert "brightest 0.1% of in.tif" in warning and "trained on peaks up to 1000" in warning


@pytest.mark.parametrize("extra, words", [
    (("--data", "stack.tif"), "--broad trains on its own simulator"),
    (("--context-frames", "3"), "--broad trains on its own simulator"),
    (("--patch", "36"), "--patch 36 must be at least 16 and a multiple of 8"),
])
def test_broad_training_mistakes_are_refused_in_one_line_before_any_work(tmp_path, extra, words):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "livescope.cli", "train", "denoise", "--broad", "--steps", "1",
                        "--models", str(tmp_path / "repo"), *extra], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    error = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(error) == 1 and words in error[0], r.stderr
    assert not (tmp_path / "repo" / "denoise").exists()


def test_the_brightness_warning_uses_the_camera_the_frames_are_converted_with(tiny_repo, tmp_path):
    """Given a camera, the check counts photons with it, not with a second estimate from the data."""
    repo, card = tiny_repo
    frames = (np.random.default_rng(5).poisson(np.stack([_scene(500.0, s) for s in range(2)])) / 0.5 + 100)
    write_stack(tmp_path / "in.ome.tiff", frames.astype(np.float32))
    estimated = run_offline(card.ref, tmp_path / "in.ome.tiff", tmp_path / "a.ome.tiff", model_dirs=[repo])
    assert not any("brightest" in w for w in estimated.warnings)
    # the same frames from a camera of 10 e-/ADU: 20x as many photons, far above the 1,000 trained for
    given = run_offline(card.ref, tmp_path / "in.ome.tiff", tmp_path / "b.ome.tiff", model_dirs=[repo],
                        baseline_adu=100.0, e_per_adu=10.0)
    assert any("brightest 0.1%" in w for w in given.warnings), given.warnings

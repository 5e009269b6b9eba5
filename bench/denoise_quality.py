"""Denoising quality: livescope's denoisers against the noisy input and classical baselines.

Virtual microscope (known clean images): held-out stacks (filaments and cells, seed 20000; the
shipped model trained on seed 0 and was checked on seed 10000) at several signal levels. Per
level, PSNR and SSIM against the clean frames of: the noisy input; a Gaussian filter (sigma
chosen from a small grid on a separate validation stack, seed 30000); non-local means
(scikit-image, when importable); the shipped ``denoise`` model (``--shipped NAME@V`` for another,
``--models DIR`` to find it) through ``restore_stack``, as ``livescope denoise`` runs it: a
camera-agnostic model gets photons by a camera estimated from the stack, no flags; and livescope
trained on the test stack itself (Noise2Void, noisy frames only) within ``--budget-minutes``,
exported to ONNX and run with onnxruntime. PSNR as
``models.metrics.psnr_db`` (peak = the clean frames' range, MSE pooled over the stack), in ADU
(every method's output is in the camera's units, baseline included); SSIM per frame with the same
data range, averaged. Also onnxruntime ms per 512x512 frame.

Real data: FMD Confocal_BPAE_B (Zhang et al., CVPR 2019, "A Poisson-Gaussian Denoising Dataset
with Real Fluorescence Microscopy Images"): trained on the raw frames of fov1 and fov2, scored on
fov3's raw frames against fov3_gt (the 50-frame mean); the Gaussian sigma is chosen on fov2.

Foreign data (``--foreign-levels``, ``--no-foreign``): a second simulator written here, sharing no
code with livescope's virtual microscope, so the shipped model never saw its structures, PSF or
camera: scikit-image's binary blobs as textured nuclei, a Voronoi membrane network with puncta,
and crops of the Hubble deep field, blurred by a Gaussian PSF (sigma 1.5 px), scaled to a peak
of 10 / 40 / 150 photons/px on a background of 5 % of the peak, drifting between frames (a short
time series per scene), through an sCMOS of QE 0.9, 0.5 e-/ADU, 100 ADU baseline, 1.6 e- read
noise (Poisson, then Gaussian, rounded to uint16). Scored as the virtual levels: noisy, Gaussian
(sigma chosen on a validation series of another seed), NL-means, BM3D, the shipped model (on the ADU
frames, as above) and livescope self-trained on the test series for
``--foreign-budget-minutes`` (short; careamics is not run here).

On the time series (FMD, foreign), also ``self_fine_tuned``: the shipped camera-agnostic model
fine-tuned on them within the same budget, as ``livescope train denoise --from denoise@3 --data
SERIES`` does (Noise2Noise on registered neighbouring frames; when that does not beat the start on
its held-out pairs, nothing is written and the start is what is scored); and ``self_fine_tuned_ensemble``:
the same model run as ``livescope denoise --ensemble`` runs it (each frame the mean over its 8 flips and
quarter turns).

BM3D, the classical anchor (the ``bm3d`` package, Makinen, Azzari & Foi; profile 'np', both
stages), on every data set but only on a fixed subset, being seconds per frame: the first
``--bm3d-frames`` frames of each condition (virtual: modality x specimen; foreign: scene; FMD:
of fov3). Its noise level is chosen against the truth, the best pooled PSNR over a small grid
(an oracle: better than a user could tune it), over two ways of applying it to Poisson-Gaussian
data: (a) after the generalized Anscombe transform with the camera's gain, offset and read noise
(known for the simulators; for FMD fitted by photon transfer on fov2's 50 repeats), at sigma
``--bm3d-factors`` x the transform's unit noise, inverted by Makitalo & Foi's closed-form unbiased
approximation; (b) on the ADU at sigma ``--bm3d-direct-factors`` x each frame's true rms noise.
(a) wins almost everywhere; (b) only ties or edges it at the lowest counts, where the transform
is least accurate. Each table's ``on_bm3d_subset`` block scores BM3D and every other method on
those same frames (the whole-stack scores above it are unchanged); it reports the chosen way,
factor and the PSNR at every grid point.

Prints JSON; writes a figure (noisy / baselines / ours / reference) to ``--figure``. ``--quick``
runs every part at its smallest (about 3 min on 2 cores); ``--no-virtual`` / ``--no-fmd`` /
``--no-foreign`` / ``--no-bm3d`` skip parts.

    python bench/denoise_quality.py [--quick] [--budget-minutes M] [--fmd-budget-minutes M]
        [--levels 0.5 2 8] [--size 256] [--frames N] [--foreign-levels 10 40 150]
        [--foreign-budget-minutes M] [--bm3d-frames N] [--figure PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tifffile
import torch
from _common import median
from scipy import ndimage

from livescope.camera_estimate import noise_sigma
from livescope.context import causal_windows
from livescope.models import export
from livescope.models.denoise.data import VirtualDenoiseData, virtual_frames
from livescope.models.denoise.train import DenoiseTrainConfig, train_denoise
from livescope.models.metrics import psnr_db
from livescope.repository import ModelRepository, shipped_models_root
from livescope.protocol import split_stage
from livescope.server.models import LoadedModel
from livescope.server.offline import restore_stack
from livescope.server.providers import RuntimeOptions

try:  # scikit-image is not a livescope dependency: used when present, for SSIM and NL-means
    from skimage.metrics import structural_similarity
    from skimage.restoration import denoise_nl_means
except ImportError:
    structural_similarity = denoise_nl_means = None

try:  # the bench extra's BM3D (Makinen, Azzari & Foi's own package): the classical anchor when present
    import bm3d
except ImportError:
    bm3d = None

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_SEED, VALIDATION_SEED, TRAIN_SEED = 20_000, 30_000, 1
SPECIMENS = ("filaments", "cells")
GAUSSIAN_SIGMAS_PX = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
SSIM_SIGMA_PX = 1.5  # Wang et al. 2004: Gaussian window, sigma 1.5 px, K1 0.01, K2 0.03
CAREAMICS_SCRIPT = REPO_ROOT / "bench" / "careamics_n2v2.py"

Denoiser = Callable[[np.ndarray], np.ndarray]  # (N, H, W) -> (N, H, W) float32, same units


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- metrics ---------------------------------------------------------------------------------------

def _own_ssim(image: np.ndarray, reference: np.ndarray, data_range: float) -> float:
    """SSIM with a Gaussian window (sigma 1.5 px), population statistics, mean over the frame."""
    x, y = image.astype(np.float64), reference.astype(np.float64)
    blur = lambda a: ndimage.gaussian_filter(a, SSIM_SIGMA_PX, truncate=3.5)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def ssim(images: np.ndarray, clean: np.ndarray) -> float:
    """Mean per-frame SSIM; data range = the clean stack's range (the PSNR peak)."""
    data_range = float(clean.max() - clean.min())
    values = []
    for image, reference in zip(images, clean):
        if structural_similarity is not None:
            values.append(structural_similarity(
                image.astype(np.float64), reference.astype(np.float64), data_range=data_range,
                gaussian_weights=True, sigma=SSIM_SIGMA_PX, use_sample_covariance=False))
        else:
            values.append(_own_ssim(image, reference, data_range))
    return float(np.mean(values))


def scores(images: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    return {"psnr_db": round(psnr_db(images, clean), 3), "ssim": round(ssim(images, clean), 4)}


# -- classical baselines ---------------------------------------------------------------------------

def gaussian(frames: np.ndarray, sigma_px: float) -> np.ndarray:
    return np.stack([ndimage.gaussian_filter(f.astype(np.float32), sigma_px) for f in frames])


def best_gaussian_sigma(noisy: np.ndarray, clean: np.ndarray) -> float:
    """The grid's sigma with the highest PSNR on a validation stack (never the test stack)."""
    return max(GAUSSIAN_SIGMAS_PX, key=lambda s: psnr_db(gaussian(noisy, s), clean))


def nl_means(frames: np.ndarray) -> np.ndarray:
    """scikit-image's recipe: h = 0.8 sigma, 5x5 patches, 13x13 search, fast mode."""
    out = []
    for f in frames:
        sigma = noise_sigma(f)
        out.append(denoise_nl_means(f.astype(np.float32), h=0.8 * sigma, sigma=sigma,
                                    fast_mode=True, patch_size=5, patch_distance=6))
    return np.stack(out).astype(np.float32)


# -- BM3D, the classical anchor --------------------------------------------------------------------

BM3D_NOTE = ("bm3d {version} (profile 'np', both stages) on the first {frames} frame(s) of each condition, "
             "best of a grid chosen against the truth (an oracle, better than a user could tune): in the "
             "generalized Anscombe domain of the data's Poisson-Gaussian camera model at sigma {anscombe} "
             "(x the unit noise), back by Makitalo & Foi's closed-form unbiased inverse; and on the ADU at "
             "sigma {direct} x each frame's true rms noise. Every method is scored on the same frames "
             "under on_bm3d_subset")


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class PoissonGaussian:
    """Camera noise in ADU: z = alpha * Poisson(y) + N(mu, sigma^2), with alpha ADU per
    photo-electron, mu the offset (ADU) and sigma the read noise (ADU rms, rounding's 1/12 included)."""

    alpha: float
    mu: float
    sigma: float

    @classmethod
    def of_camera(cls, e_per_adu: float, baseline_adu: float, read_noise_e: float) -> PoissonGaussian:
        return cls(1.0 / e_per_adu, baseline_adu, math.sqrt((read_noise_e / e_per_adu) ** 2 + 1.0 / 12.0))

    @classmethod
    def fit(cls, frames: np.ndarray) -> PoissonGaussian:
        """Photon transfer on repeated frames of one still scene: the per-pixel variance against the
        per-pixel mean, averaged in 50 equally populated bins of the mean, fitted by a line
        var = alpha * mean + b. Only b = sigma^2 - alpha * mu enters the transform, so b >= 0 is
        put in sigma (mu = 0) and b < 0 in mu (sigma = 0)."""
        x = frames.astype(np.float64)
        mean, var = x.mean(axis=0).ravel(), x.var(axis=0, ddof=1).ravel()
        order = np.argsort(mean)
        bins = np.array_split(order, 50)
        m = np.array([mean[b].mean() for b in bins])
        v = np.array([var[b].mean() for b in bins])
        alpha, b = np.polyfit(m, v, 1)
        if b >= 0:
            return cls(float(alpha), 0.0, math.sqrt(b))
        return cls(float(alpha), float(-b / alpha), 0.0)

    def describe(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in asdict(self).items()}


def anscombe(z: np.ndarray, noise: PoissonGaussian) -> np.ndarray:
    """Generalized Anscombe transform: Poisson-Gaussian counts to noise of about unit variance."""
    x = (z.astype(np.float64) - noise.mu) / noise.alpha
    s = noise.sigma / noise.alpha
    return 2.0 * np.sqrt(np.maximum(x + 0.375 + s * s, 0.0))


def inverse_anscombe(d: np.ndarray, noise: PoissonGaussian) -> np.ndarray:
    """Makitalo & Foi's closed-form approximation of the exact unbiased inverse (IEEE TIP 22, 2013).

    It diverges as d -> 0 but is <= 0 (clipped to 0 counts) for 1 <= d < about 1.22 and increasing
    above, so d is floored at 1: a denoised value below 1 means no signal."""
    d = np.maximum(d, 1.0)
    s = noise.sigma / noise.alpha
    r = math.sqrt(1.5)
    y = 0.25 * d**2 + 0.25 * r / d - 1.375 / d**2 + 0.625 * r / d**3 - 0.125 - s * s
    return np.maximum(y, 0.0) * noise.alpha + noise.mu


def bm3d_frame(frame: np.ndarray, noise: PoissonGaussian | None, factor: float,
               clean: np.ndarray | None = None) -> np.ndarray:
    """BM3D (profile 'np', both stages) of one frame. With ``noise``: in the generalized Anscombe
    domain at sigma = ``factor`` (1 is the transform's nominal unit noise), back to ADU by the
    unbiased inverse. Without: on the ADU directly, at sigma = ``factor`` x the frame's rms error
    against ``clean`` (the noise level read off the truth)."""
    if noise is None:
        if clean is None:
            raise ValueError("BM3D on the ADU needs the clean frame to set its sigma")
        sigma = factor * float(np.sqrt(np.mean((frame.astype(np.float64) - clean) ** 2)))
        out = bm3d.bm3d(frame.astype(np.float64), sigma_psd=sigma, stage_arg=bm3d.BM3DStages.ALL_STAGES)
        return np.asarray(out, dtype=np.float32).reshape(frame.shape)
    d = anscombe(frame, noise)
    out = bm3d.bm3d(d, sigma_psd=factor, stage_arg=bm3d.BM3DStages.ALL_STAGES)
    return inverse_anscombe(np.asarray(out).reshape(frame.shape), noise).astype(np.float32)


def bm3d_best(noisy: np.ndarray, clean: np.ndarray, noise: PoissonGaussian,
              anscombe_factors: Sequence[float], direct_factors: Sequence[float]
              ) -> tuple[np.ndarray, dict]:
    """BM3D of every frame at each point of the grid: in the Anscombe domain at sigma = factor,
    and on the ADU at sigma = factor x each frame's true rms noise. Returns the output whose
    pooled PSNR against the truth is best (an oracle choice, better than a user could tune), and
    what was chosen with the PSNR at every grid point."""
    grid = [("anscombe", f) for f in anscombe_factors] + [("direct", f) for f in direct_factors]
    best: tuple[float, str, float, np.ndarray] | None = None
    psnrs: dict[str, float] = {}
    for domain, factor in grid:
        out = np.stack([bm3d_frame(f, noise if domain == "anscombe" else None, factor, c)
                        for f, c in zip(noisy, clean)])
        value = psnr_db(out, clean)
        psnrs[f"{domain} x{factor:g}"] = round(value, 3)
        if best is None or value > best[0]:
            best = (value, domain, factor, out)
    if best is None:
        raise ValueError("empty BM3D grid")
    factors = anscombe_factors if best[1] == "anscombe" else direct_factors
    # a best factor at the grid's end may leave a little on the table: say so
    at_edge = len(factors) > 1 and best[2] in (min(factors), max(factors))
    return best[3], {"domain": best[1], "factor": best[2], "factor_at_grid_edge": at_edge,
                     "grid_psnr_db": psnrs, "noise_model_adu": noise.describe()}


@dataclass(frozen=True)
class Bm3dPlan:
    """Where and how BM3D runs on one data set: the frames (indices into the scored stack), the
    camera's noise model for the Anscombe transform, and the grid searched against the truth."""

    subset: np.ndarray
    noise: PoissonGaussian
    anscombe_factors: tuple[float, ...]
    direct_factors: tuple[float, ...]


def first_of_each(labels: Sequence[object], k: int) -> np.ndarray:
    """Indices of the first ``k`` frames of each condition (labels in stack order)."""
    seen: dict[object, int] = {}
    keep = []
    for i, label in enumerate(labels):
        if seen.get(label, 0) < k:
            keep.append(i)
            seen[label] = seen.get(label, 0) + 1
    return np.asarray(keep, dtype=np.intp)


def last_of_each(labels: Sequence[object], k: int) -> np.ndarray:
    """Indices of the last ``k`` frames of each condition (labels in stack order): in a time series,
    frames that have the frames before them (a model with context frames sees them)."""
    reversed_pick = first_of_each(list(labels)[::-1], k)
    return np.sort(len(labels) - 1 - reversed_pick)


def groups_of(labels: Sequence[object]) -> list[slice]:
    """The runs of equal consecutive labels: the time series of a stack of several."""
    runs, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            runs.append(slice(start, i))
            start = i
    return runs


# -- livescope -------------------------------------------------------------------------------------

def shipped_denoiser(stage: str = "denoise", models: Path | None = None) -> tuple[Denoiser, LoadedModel]:
    """The shipped (or ``stage`` in ``models``) denoiser as ``livescope denoise`` runs it: a
    camera-agnostic model gets photons by a camera estimated from the stack it is given, no flags."""
    name, version_number = split_stage(stage)
    version = ModelRepository([shipped_models_root(), *([models] if models else [])]).resolve(name, version_number)
    model = LoadedModel.load(version, RuntimeOptions(provider="cpu"))
    # one frame per call, as a live server would; restore_stack copies each result out
    return (lambda frames: restore_stack(model, frames, batch=1)), model


def warm_up_torch() -> None:
    """A few throwaway training steps, so that torch's one-time start-up is not charged to the first
    level's time budget."""
    frames = np.random.default_rng(0).poisson(100, (2, 64, 64)).astype(np.uint16)
    train_denoise(frames, DenoiseTrainConfig(steps=3, seed=TRAIN_SEED))


def self_trained(frames: np.ndarray, budget_s: float, args: argparse.Namespace, context_frames: int = 1,
                 series: Sequence[object] | None = None) -> tuple[Denoiser, dict, ort.InferenceSession]:
    """Noise2Void on ``frames`` themselves for ``budget_s`` (what ``livescope train denoise
    --data STACK --budget-minutes M [--context-frames K]`` does: a seeded tenth of the frames held
    out for early stopping, or with context frames the last tenth, in order), exported, run with
    onnxruntime. With ``context_frames`` > 1 each frame is run with the frames before it in its own
    time series (``series``: one label per frame of the stacks it is run on; None: one series)."""
    if context_frames > 1:
        n = max(context_frames, len(frames) // 10)
        train, held_out = frames[: len(frames) - n], frames[len(frames) - n:]
    else:
        held = np.random.default_rng(TRAIN_SEED).permutation(len(frames))[: max(1, len(frames) // 10)]
        train = np.delete(frames, held, axis=0) if len(frames) > 1 else frames
        held_out = frames[held]
    config = DenoiseTrainConfig(budget_seconds=budget_s, seed=TRAIN_SEED, intensity=args.intensity,
                                context_frames=context_frames)
    trained = train_denoise(train, config, held_out=held_out)
    proto = export.to_onnx(trained.served(), trained.net.config.size_multiple_px, channels=context_frames)
    session = export.cpu_session(proto)

    def run(stack: np.ndarray) -> np.ndarray:
        out = []
        for group in groups_of(series if series is not None else [0] * len(stack)):
            part = stack[group]
            windows = causal_windows(part, context_frames, 0, len(part))
            out += [session.run([export.OUTPUT_NAME], {export.INPUT_NAME: w[None]})[0][:, 0] for w in windows]
        return np.concatenate(out)

    info = {"steps": trained.steps, "train_seconds": round(trained.train_seconds, 1),
            "stopped_because": trained.stopped_because, "best_step": trained.best_step,
            "budget_seconds": budget_s, "seed": TRAIN_SEED, "context_frames": context_frames,
            "config": config.model_dump(exclude_none=True)}
    return run, info, session


def fine_tuned(series: Sequence[np.ndarray], budget_s: float, args: argparse.Namespace
               ) -> tuple[Denoiser, Denoiser, dict]:
    """The shipped camera-agnostic model fine-tuned on ``series`` (time series, noisy only) for
    ``budget_s``, as ``livescope train denoise --from denoise@3 --data SERIES... --budget-minutes M``
    does it (each series saved as a TIFF and read back by the command's loader; the last tenth held
    out), run as ``livescope denoise`` runs it. When fine-tuning does not beat the start on the held-out
    pairs the command writes nothing and the start stays: so it is scored here. Returned run once and
    run as ``livescope denoise --ensemble`` runs it."""
    from livescope.models.denoise.finetune import FineTuneConfig, NoImprovement, fine_tune_and_publish
    from livescope.models.denoise.user_data import load_training_stacks

    name, number = split_stage(args.shipped)
    start = ModelRepository([shipped_models_root(), *([args.models] if args.models else [])]).resolve(name, number)
    config = FineTuneConfig(budget_seconds=budget_s, seed=TRAIN_SEED)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, frames in enumerate(series):
            paths.append(Path(tmp) / f"series{i}.tif")
            tifffile.imwrite(paths[-1], frames)
        data = load_training_stacks(paths, config.patch_px, TRAIN_SEED, context_frames=2)
        info: dict = {"from": start.ref, "budget_seconds": budget_s, "config": config.model_dump(exclude_none=True)}
        try:
            folder, card = fine_tune_and_publish(Path(tmp) / "models", data, start, config=config,
                                                 compare_with=start)
            version = ModelRepository([Path(tmp) / "models"]).resolve(name, card.version)
            info |= {"version": card.description, "metrics": card.metrics,
                     "gate": card.gate.reason if card.gate else None}
        except NoImprovement as e:
            version, info["version"] = start, f"the start, unchanged: {e}"
        model = LoadedModel.load(version, RuntimeOptions(provider="cpu"))
    return ((lambda frames: restore_stack(model, frames, batch=1)),
            (lambda frames: restore_stack(model, frames, batch=1, ensemble=True)), info)


def careamics(train: np.ndarray, test: np.ndarray, budget_s: float,
              args: argparse.Namespace) -> tuple[np.ndarray | None, dict]:
    """careamics' N2V2 trained on ``train`` for ``budget_s`` and run on ``test``, in its own
    virtual environment (``--careamics-python``) by bench/careamics_n2v2.py."""
    if args.careamics_python is None:
        return None, {"skipped": "no --careamics-python given (careamics lives in its own venv)"}
    with tempfile.TemporaryDirectory() as folder:
        d = Path(folder)
        np.save(d / "train.npy", train)
        np.save(d / "test.npy", test)
        command = [str(args.careamics_python), str(CAREAMICS_SCRIPT), "--train", str(d / "train.npy"),
                   "--predict", str(d / "test.npy"), "--out", str(d / "out.npy"),
                   "--report", str(d / "report.json"), "--budget-seconds", str(budget_s),
                   "--seed", str(TRAIN_SEED), "--timing-size", "512"]
        log(f"careamics: training for {budget_s / 60:g} min")
        done = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr)
        if done.returncode != 0:
            return None, {"failed": f"exit {done.returncode}: {' '.join(command)}"}
        return np.load(d / "out.npy"), json.loads((d / "report.json").read_text())


def ort_ms_at_512(session: ort.InferenceSession, repeats: int) -> float:
    """Median ms of one 512x512 uint16 frame through ``session`` (after 2 warm-up runs)."""
    frame = virtual_frames(VirtualDenoiseData(modalities=("widefield",), specimens=("filaments",),
                                              signal_photons_per_ms=(2.0,), frames_per_condition=1,
                                              sensor_shape_px=(512, 512), seed=TEST_SEED)).noisy_adu
    feed = {export.INPUT_NAME: frame[None]}
    for _ in range(2):
        session.run([export.OUTPUT_NAME], feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run([export.OUTPUT_NAME], feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return round(median(times), 2)


def ort_ms_per_frame(model: LoadedModel, repeats: int) -> dict:
    frame = virtual_frames(VirtualDenoiseData(specimens=("filaments",), signal_photons_per_ms=(2.0,),
                                              frames_per_condition=1, sensor_shape_px=(512, 512),
                                              seed=TEST_SEED)).noisy_adu.astype(model.card.inputs[0].dtype)
    for _ in range(2):
        model.run_frames(frame)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.run_frames(frame)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"frame": "512x512 uint16", "repeats": repeats, "median_ms": round(median(times), 2),
            "min_ms": round(min(times), 2), "provider": model.provider,
            "threads": "onnxruntime default (all cores)"}


# -- foreign data: a second simulator, not livescope's ---------------------------------------------

FOREIGN_SCENES = ("nuclei", "membranes_puncta", "deep_field")
FOREIGN_PSF_SIGMA_PX = 1.5
FOREIGN_BACKGROUND_FRACTION = 0.05  # uniform background, photons/px, as a fraction of the peak
FOREIGN_MARGIN_PX = 16  # the scene is drawn this much larger on each side, so drift never shows an edge
FOREIGN_TEST_SEED, FOREIGN_VALIDATION_SEED = 40_000, 50_000


@dataclass(frozen=True)
class ForeignCamera:
    """A plain sCMOS written here, sharing no code with livescope's virtual camera: Poisson
    photo-electrons (QE x photons), Gaussian read noise (e- rms), conversion gain (e-/ADU) and
    baseline, rounded and clipped to uint16."""

    qe: float = 0.9
    e_per_adu: float = 0.5
    baseline_adu: float = 100.0
    read_noise_e: float = 1.6

    def read_out(self, photons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        electrons = rng.poisson(photons * self.qe).astype(np.float64)
        electrons += rng.normal(0.0, self.read_noise_e, photons.shape)
        return np.clip(np.rint(self.baseline_adu + electrons / self.e_per_adu), 0, 65535).astype(np.uint16)

    def expected_adu(self, photons: np.ndarray) -> np.ndarray:
        return (self.baseline_adu + photons * (self.qe / self.e_per_adu)).astype(np.float32)

    @property
    def noise(self) -> PoissonGaussian:
        return PoissonGaussian.of_camera(self.e_per_adu, self.baseline_adu, self.read_noise_e)


FOREIGN_CAMERA = ForeignCamera()


@dataclass(frozen=True)
class ForeignStack:
    noisy_adu: np.ndarray  # (T, H, W) uint16
    clean_adu: np.ndarray  # (T, H, W) float32, the noise-free expectation, baseline included
    scene: tuple[str, ...]  # (T,) which scene each frame shows (a short drifting series per scene)


def _unit_range(a: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.5) -> np.ndarray:
    lo, hi = np.percentile(a, [low_pct, high_pct])
    return np.clip((a - lo) / max(float(hi - lo), 1e-12), 0.0, 1.0).astype(np.float32)


def foreign_structure(scene: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Fluorophore density in [0, 1] before the PSF. ``nuclei``: scikit-image's binary blobs
    with a smooth chromatin-like texture; ``membranes_puncta``: the boundaries of a random Voronoi
    tessellation (about 2 px wide, a brightness per cell) with puncta; ``deep_field``: a
    random crop of scikit-image's Hubble deep field (point sources and diffuse objects on black),
    a real image of nothing biological. scikit-image's microscopy images (cells3d,
    human_mitosis) need a download, so they are not used."""
    from scipy.spatial import cKDTree
    from skimage import color, data

    h, w = shape
    if scene == "nuclei":
        blobs = data.binary_blobs(max(h, w), blob_size_fraction=0.12, volume_fraction=0.2,
                                  rng=int(rng.integers(2**31)))[:h, :w]
        body = ndimage.gaussian_filter(blobs.astype(np.float32), 1.0)
        texture = _unit_range(ndimage.gaussian_filter(rng.standard_normal(shape), 2.0), 0.0, 100.0)
        return (body * (0.45 + 0.55 * texture)).astype(np.float32)
    if scene == "membranes_puncta":
        n_cells = max(4, h * w // 45**2)
        seeds = rng.uniform(0, [h, w], (n_cells, 2))
        yy, xx = np.mgrid[:h, :w]
        dist, nearest = cKDTree(seeds).query(np.column_stack([yy.ravel(), xx.ravel()]), k=2)
        # distance to the bisector of the two nearest seeds = to the boundary between their cells
        apart = np.linalg.norm(seeds[nearest[:, 1]] - seeds[nearest[:, 0]], axis=1)
        edge = ((dist[:, 1] ** 2 - dist[:, 0] ** 2) / (2.0 * apart)).reshape(h, w)
        brightness = rng.uniform(0.35, 1.0, n_cells)[nearest[:, 0]].reshape(h, w)
        membranes = brightness * np.exp(-0.5 * (edge / 0.8) ** 2)
        puncta = np.zeros(shape, np.float64)
        n_puncta = h * w // 300
        rows, cols = rng.integers(0, h, n_puncta), rng.integers(0, w, n_puncta)
        np.add.at(puncta, (rows, cols), rng.lognormal(0.0, 0.4, n_puncta))
        puncta = ndimage.gaussian_filter(puncta, 0.8) * (2 * np.pi * 0.8**2)  # unit peak per punctum
        return np.clip(np.maximum(membranes, puncta), 0.0, 1.0).astype(np.float32)
    if scene == "deep_field":
        sky = color.rgb2gray(data.hubble_deep_field())
        if h > sky.shape[0] or w > sky.shape[1]:
            raise ValueError(f"the deep field ({sky.shape}) is smaller than {shape}")
        y0, x0 = rng.integers(0, sky.shape[0] - h + 1), rng.integers(0, sky.shape[1] - w + 1)
        return _unit_range(sky[y0 : y0 + h, x0 : x0 + w], 5.0, 99.8)
    raise ValueError(f"unknown foreign scene {scene!r}")


def foreign_frames(peak_photons: float, size: int, frames: int, seed: int,
                   scenes: Sequence[str] = FOREIGN_SCENES, camera: ForeignCamera = FOREIGN_CAMERA,
                   background_fraction: float = FOREIGN_BACKGROUND_FRACTION) -> ForeignStack:
    """``frames`` frames of each scene: the density blurred by a Gaussian PSF (sigma 1.5 px),
    scaled so its brightest pixel gets ``peak_photons`` photons, plus a uniform background of
    ``background_fraction`` x peak photons/px, drifting between frames (a random velocity of up to
    0.6 px/frame per axis plus 0.2 px rms jitter, cubic-spline shifted), through ``camera``; seeded."""
    rng = np.random.default_rng(seed)
    m = FOREIGN_MARGIN_PX
    noisy, clean, names = [], [], []
    for scene in scenes:
        density = foreign_structure(scene, (size + 2 * m, size + 2 * m), rng)
        blurred = ndimage.gaussian_filter(density.astype(np.float64), FOREIGN_PSF_SIGMA_PX)
        photons = blurred * (peak_photons / blurred.max())
        velocity = rng.uniform(-0.6, 0.6, 2)
        offset = np.zeros(2)
        for _ in range(frames):
            moved = ndimage.shift(photons, offset, order=3, mode="nearest")[m : m + size, m : m + size]
            expected = np.maximum(moved, 0.0) + background_fraction * peak_photons
            noisy.append(camera.read_out(expected, rng))
            clean.append(camera.expected_adu(expected))
            names.append(scene)
            offset = np.clip(offset + velocity + rng.normal(0.0, 0.2, 2), -m + 1, m - 1)
    return ForeignStack(np.stack(noisy), np.stack(clean), tuple(names))


# -- one comparison --------------------------------------------------------------------------------

def compare(noisy: np.ndarray, clean: np.ndarray, sigma_px: float, shipped: Denoiser,
            ours: Denoiser, theirs: np.ndarray | None, plan: Bm3dPlan | None = None,
            ours_with_context: Denoiser | None = None, ours_fine_tuned: Denoiser | None = None,
            ours_fine_tuned_ensemble: Denoiser | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Scores of every method on one test stack, and each method's first output frame. With a
    ``plan`` (and bm3d importable), also ``on_bm3d_subset``: BM3D and every other method scored on
    the plan's frames only (BM3D is too slow for whole stacks)."""
    outputs: dict[str, np.ndarray] = {"noisy": noisy.astype(np.float32),
                                      "gaussian": gaussian(noisy, sigma_px)}
    if denoise_nl_means is not None:
        outputs["nl_means"] = nl_means(noisy)
    outputs["shipped"] = shipped(noisy)
    outputs["self_trained"] = ours(noisy)
    if ours_with_context is not None:
        outputs["self_trained_context"] = ours_with_context(noisy)
    if ours_fine_tuned is not None:
        outputs["self_fine_tuned"] = ours_fine_tuned(noisy)
    if ours_fine_tuned_ensemble is not None:
        outputs["self_fine_tuned_ensemble"] = ours_fine_tuned_ensemble(noisy)
    if theirs is not None:
        outputs["careamics_n2v2"] = theirs
    table = {name: scores(images, clean) for name, images in outputs.items()}
    table["gaussian"]["sigma_px"] = sigma_px
    classical = [k for k in ("gaussian", "nl_means") if k in table]
    best = max(classical, key=lambda k: table[k]["psnr_db"])
    table["self_trained_minus_best_classical_psnr_db"] = round(
        table["self_trained"]["psnr_db"] - table[best]["psnr_db"], 3)
    table["best_classical"] = best
    if theirs is not None:
        table["self_trained_minus_careamics_psnr_db"] = round(
            table["self_trained"]["psnr_db"] - table["careamics_n2v2"]["psnr_db"], 3)
    panels = {k: v[0] for k, v in outputs.items()}
    if plan is None:
        table["on_bm3d_subset"] = {"skipped": "--no-bm3d"}
    elif bm3d is None:
        table["on_bm3d_subset"] = {"skipped": "bm3d not importable (pip install -e '.[bench]')"}
    else:
        table["on_bm3d_subset"], first = bm3d_subset(outputs, noisy, clean, plan)
        if first is not None:
            panels["bm3d"] = first
    return table, panels


def bm3d_subset(outputs: dict[str, np.ndarray], noisy: np.ndarray, clean: np.ndarray, plan: Bm3dPlan
                ) -> tuple[dict, np.ndarray | None]:
    """BM3D (best grid point against the truth) and every method of ``outputs`` scored on the
    plan's frames; BM3D's output of frame 0 when it is one of them."""
    idx = plan.subset
    truth = np.ascontiguousarray(clean[idx], dtype=np.float32)
    t0 = time.monotonic()
    out, choice = bm3d_best(noisy[idx], truth, plan.noise, plan.anscombe_factors, plan.direct_factors)
    log(f"BM3D: {len(idx)} frames x {len(choice['grid_psnr_db'])} grid points in "
        f"{time.monotonic() - t0:.0f} s, best {choice['domain']} x{choice['factor']:g}")
    block: dict = {"frames": idx.tolist()}
    block.update({name: scores(images[idx], truth) for name, images in outputs.items()})
    block["bm3d"] = scores(out, truth) | choice | {"seconds": round(time.monotonic() - t0, 1)}
    for name in ("shipped", "self_trained", "self_trained_context", "self_fine_tuned", "self_fine_tuned_ensemble",
                 "careamics_n2v2"):
        if name in block:
            block[f"{name}_minus_bm3d_psnr_db"] = round(block[name]["psnr_db"] - block["bm3d"]["psnr_db"], 3)
    return block, (out[0] if idx.size and idx[0] == 0 else None)


def bm3d_plan(subset: np.ndarray, noise: PoissonGaussian, args: argparse.Namespace) -> Bm3dPlan | None:
    if not args.bm3d:
        return None
    return Bm3dPlan(subset, noise, tuple(args.bm3d_factors), tuple(args.bm3d_direct_factors))


def virtual_noise() -> PoissonGaussian:
    """The virtual rig's default camera (what VirtualDenoiseData frames are read out with)."""
    from livescope.acquire.virtual import VirtualRigConfig

    camera = VirtualRigConfig().camera
    return PoissonGaussian.of_camera(camera.e_per_adu, camera.baseline_adu, camera.read_noise_e)


def virtual_level(level: float, args: argparse.Namespace, shipped: Denoiser) -> tuple[dict, dict]:
    spec = VirtualDenoiseData(specimens=SPECIMENS, signal_photons_per_ms=(level,),
                              frames_per_condition=args.frames, sensor_shape_px=(args.size, args.size),
                              seed=TEST_SEED)
    validation = spec.model_copy(update={"frames_per_condition": 2, "seed": VALIDATION_SEED})
    test, val = virtual_frames(spec), virtual_frames(validation)
    sigma = best_gaussian_sigma(val.noisy_adu, val.clean_adu)
    log(f"level {level:g} photons/ms: training on the test stack for {args.budget_minutes:g} min")
    ours, info, session = self_trained(test.noisy_adu, args.budget_minutes * 60.0, args)
    theirs, their_info = careamics(test.noisy_adu, test.noisy_adu, args.budget_minutes * 60.0, args)
    plan = bm3d_plan(first_of_each(list(zip(test.modality, test.specimen)), args.bm3d_frames),
                     virtual_noise(), args)
    table, panels = compare(test.noisy_adu, test.clean_adu, sigma, shipped, ours, theirs, plan)
    table["self_trained"].update(info)
    table.setdefault("careamics_n2v2", {}).update(their_info)
    table["self_trained_onnxruntime_ms_at_512"] = ort_ms_at_512(session, args.timing_repeats)
    table["peak_photons"] = level * spec.exposure_ms
    panels["reference"] = test.clean_adu[0]
    return table, panels


def real_data(args: argparse.Namespace, shipped: Denoiser) -> tuple[dict, dict | None]:
    folder = args.fmd_dir if args.fmd_dir.is_absolute() else REPO_ROOT / args.fmd_dir
    names = [f"fov{i}_{k}.tif" for i in (1, 2, 3) for k in ("raw", "gt")]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        return {"skipped": f"FMD data not found in {folder} (missing {', '.join(missing)})"}, None
    read = lambda name: tifffile.imread(folder / name).astype(np.uint16)  # noqa: E731 (uint8 values kept)
    train = np.concatenate([read("fov1_raw.tif"), read("fov2_raw.tif")])
    test = read("fov3_raw.tif")[: args.fmd_test_frames]
    gt = read("fov3_gt.tif").astype(np.float32)
    fov2_all = read("fov2_raw.tif")
    fov2 = fov2_all[:4]
    sigma = best_gaussian_sigma(fov2, np.broadcast_to(read("fov2_gt.tif").astype(np.float32), fov2.shape))
    noise = PoissonGaussian.fit(fov2_all)  # photon transfer on fov2's 50 repeats, not on the test fov
    log(f"FMD: training on fov1+fov2 raw ({len(train)} frames) for {args.fmd_budget_minutes:g} min")
    ours, info, _ = self_trained(train, args.fmd_budget_minutes * 60.0, args)
    ours_context, context_info = None, None
    if args.context_frames > 1:
        log(f"FMD: training with {args.context_frames} context frames for {args.fmd_budget_minutes:g} min")
        ours_context, context_info, _ = self_trained(train, args.fmd_budget_minutes * 60.0, args, args.context_frames)
    tuned, tuned_mean, tuned_info = None, None, None
    if args.fine_tune:
        log(f"FMD: fine-tuning {args.shipped} on fov1 and fov2 for {args.fmd_budget_minutes:g} min")
        tuned, tuned_mean, tuned_info = fine_tuned([read("fov1_raw.tif"), fov2_all], args.fmd_budget_minutes * 60.0,
                                                   args)
    theirs = None
    if args.fmd_careamics:
        theirs, their_info = careamics(train, test, args.fmd_budget_minutes * 60.0, args)
    # The last frames of the test series: those with frames before them (a context model sees them).
    plan = bm3d_plan(last_of_each([0] * len(test), args.bm3d_frames), noise, args)
    table, panels = compare(test, np.broadcast_to(gt, test.shape), sigma, shipped, ours, theirs, plan, ours_context,
                            tuned, tuned_mean)
    table["self_trained"].update(info)
    if tuned_info is not None:
        table["self_fine_tuned"].update(tuned_info)
    if context_info is not None:
        table["self_trained_context"].update(context_info)
    if args.fmd_careamics:
        table.setdefault("careamics_n2v2", {}).update(their_info)
    table["data"] = (f"FMD Confocal_BPAE_B (Zhang et al., CVPR 2019): train fov1+fov2 raw "
                     f"({len(train)} frames 512x512, uint8 values as uint16); test fov3 raw, first "
                     f"{len(test)} of 50 frames, against fov3_gt (50-frame mean); Gaussian sigma "
                     f"chosen on fov2 (4 frames) against fov2_gt")
    table["shipped_note"] = ("the shipped model was trained on virtual widefield and confocal sCMOS "
                             "frames (offset ~100 ADU, 5-500 photons); FMD (uint8 camera values, "
                             "offset ~0) is out of its domain, shown for context")
    table["bm3d_noise_model"] = ("Poisson-Gaussian fitted by photon transfer on fov2's 50 raw frames "
                                 "(variance against mean per pixel, 50 bins, a line)")
    panels["reference"] = gt
    return table, panels


def foreign_level(peak: float, args: argparse.Namespace, shipped: Denoiser) -> tuple[dict, dict]:
    """The foreign simulator at one peak: the Gaussian's sigma chosen on a validation series
    (another seed, one frame per scene), livescope self-trained on the test series itself."""
    test = foreign_frames(peak, args.foreign_size, args.foreign_frames, FOREIGN_TEST_SEED)
    val = foreign_frames(peak, args.foreign_size, 1, FOREIGN_VALIDATION_SEED)
    sigma = best_gaussian_sigma(val.noisy_adu, val.clean_adu)
    log(f"foreign {peak:g} photons: training on the test series for {args.foreign_budget_minutes:g} min")
    ours, info, _ = self_trained(test.noisy_adu, args.foreign_budget_minutes * 60.0, args)
    ours_context, context_info = None, None
    if args.context_frames > 1:
        log(f"foreign {peak:g} photons: training with {args.context_frames} context frames")
        ours_context, context_info, _ = self_trained(test.noisy_adu, args.foreign_budget_minutes * 60.0, args,
                                                     args.context_frames, series=test.scene)
    tuned, tuned_mean, tuned_info = None, None, None
    if args.fine_tune:
        log(f"foreign {peak:g} photons: fine-tuning {args.shipped} on the test series")
        tuned, tuned_mean, tuned_info = fine_tuned([test.noisy_adu[g] for g in groups_of(test.scene)],
                                                   args.foreign_budget_minutes * 60.0, args)
    # The last frames of each scene's series: those with frames before them (a context model sees them).
    plan = bm3d_plan(last_of_each(test.scene, args.bm3d_frames), FOREIGN_CAMERA.noise, args)
    table, panels = compare(test.noisy_adu, test.clean_adu, sigma, shipped, ours, None, plan, ours_context, tuned,
                            tuned_mean)
    table["self_trained"].update(info)
    if tuned_info is not None:
        table["self_fine_tuned"].update(tuned_info)
    if context_info is not None:
        table["self_trained_context"].update(context_info)
    table["peak_photons"] = peak
    table["background_photons"] = round(FOREIGN_BACKGROUND_FRACTION * peak, 4)
    panels["reference"] = test.clean_adu[0]
    return table, panels


def foreign_data(args: argparse.Namespace, shipped: Denoiser) -> tuple[dict, list[tuple[str, dict]]]:
    camera = FOREIGN_CAMERA
    report: dict = {
        "data": (f"a second simulator (bench/denoise_quality.py, not livescope's): scenes "
                 f"{', '.join(FOREIGN_SCENES)}, {args.foreign_frames} drifting frames each of "
                 f"{args.foreign_size}x{args.foreign_size} px, Gaussian PSF sigma {FOREIGN_PSF_SIGMA_PX:g} px, "
                 f"brightest pixel = the level's peak photons, uniform background "
                 f"{FOREIGN_BACKGROUND_FRACTION:g} x peak; test seed {FOREIGN_TEST_SEED}, validation seed "
                 f"{FOREIGN_VALIDATION_SEED} (one frame per scene, for the Gaussian's sigma)"),
        "camera": asdict(camera) | {"noise": "Poisson(QE x photons) e- + Gaussian read noise, / gain, "
                                             "+ baseline, rounded to uint16"},
        "self_trained": (f"trained per level on that level's test series (noisy only) for "
                         f"{args.foreign_budget_minutes:g} min"),
        "shipped_note": "the shipped model never saw these structures, this PSF or this camera",
        "levels": {}}
    rows = []
    for peak in args.foreign_levels:
        table, panels = foreign_level(peak, args, shipped)
        report["levels"][f"{peak:g}_photons_peak"] = table
        rows.append((f"foreign {peak:g} ph", panels))
    return report, rows


def inference_speed(levels: dict) -> dict:
    """onnxruntime (livescope) against careamics' own predict() (untiled: its faster mode at this
    size), both on a 512x512 frame on this CPU, medians over the levels' models; careamics' bare
    torch forward pass is shown too (what its network costs without predict()'s machinery)."""
    ours = [t["self_trained_onnxruntime_ms_at_512"] for t in levels.values()]
    theirs = [t["careamics_n2v2"].get("predict_ms_at_timing_size_untiled_median") for t in levels.values()]
    bare = [t["careamics_n2v2"].get("forward_only_ms_at_timing_size_median") for t in levels.values()]
    result = {"livescope_onnxruntime_ms": round(median(ours), 2)}
    if all(v is not None for v in theirs + bare):
        result["careamics_predict_ms"] = round(median(theirs), 2)
        result["careamics_forward_only_ms"] = round(median(bare), 2)
        result["speedup_vs_careamics_predict"] = round(
            result["careamics_predict_ms"] / result["livescope_onnxruntime_ms"], 2)
    return result


# -- figure ----------------------------------------------------------------------------------------

COLUMNS = ("noisy", "gaussian", "nl_means", "bm3d", "shipped", "careamics_n2v2", "self_trained", "self_trained_context",
           "reference")


def _crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[y : y + size, x : x + size]


def figure(rows: list[tuple[str, dict]], path: Path, size: int) -> dict:
    """One row per test set; columns as COLUMNS (those any row has; a row without one leaves its
    cell blank), each row scaled to its reference's range."""
    columns = [c for c in COLUMNS if any(c in panels for _, panels in rows)]
    grid: list[list[np.ndarray | None]] = []
    for _, panels in rows:
        ref = _crop(panels["reference"], size)
        lo, hi = np.percentile(ref, [0.5, 99.5])
        grid.append([np.clip((_crop(panels[c], size) - lo) / max(hi - lo, 1e-6), 0, 1) if c in panels
                     else None for c in columns])
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        gap = 4
        mosaic = np.ones((len(grid) * (size + gap) - gap, len(columns) * (size + gap) - gap), np.float32)
        for r, row in enumerate(grid):
            for c, panel in enumerate(row):
                if panel is None:
                    continue
                h, w = panel.shape
                mosaic[r * (size + gap) : r * (size + gap) + h, c * (size + gap) : c * (size + gap) + w] = panel
        tif = path.with_suffix(".tif")
        tifffile.imwrite(tif, (mosaic * 255).round().astype(np.uint8))
        return {"figure": str(tif), "figure_note": "matplotlib not installed: a plain uint8 mosaic "
                "saved as TIFF instead of PNG", "figure_rows": [name for name, _ in rows],
                "figure_columns": columns}
    fig, axes = plt.subplots(len(grid), len(columns), figsize=(2.2 * len(columns), 2.2 * len(grid)),
                             squeeze=False)
    for r, row in enumerate(grid):
        for c, panel in enumerate(row):
            if panel is not None:
                axes[r][c].imshow(panel, cmap="gray", vmin=0, vmax=1)
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
            if r == 0:
                axes[r][c].set_title(columns[c], fontsize=9)
        axes[r][0].set_ylabel(rows[r][0], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"figure": str(path), "figure_rows": [name for name, _ in rows], "figure_columns": columns}


# -- main ------------------------------------------------------------------------------------------

# --quick: every part at its smallest (about 2-3 min on 2 cores); flags given explicitly still win
QUICK = {"levels": [2.0], "size": 128, "frames": 1, "budget_minutes": 0.25, "fmd_budget_minutes": 0.25,
         "fmd_test_frames": 2, "timing_repeats": 3, "bm3d_frames": 1, "bm3d_factors": [1.2],
         "bm3d_direct_factors": [1.3], "foreign_levels": [10.0, 150.0], "foreign_size": 128,
         "foreign_frames": 2, "foreign_budget_minutes": 0.25,
         "figure": REPO_ROOT / "bench/results/denoise_quality_quick.png"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"smallest settings: {QUICK}")
    ap.add_argument("--shipped", default="denoise", help="the model of the 'shipped' column: NAME[@VERSION]")
    ap.add_argument("--models", type=Path, default=None, help="a repository searched after the shipped models")
    ap.add_argument("--budget-minutes", type=float, default=5.0,
                    help="self-supervised training budget per photon level")
    ap.add_argument("--fmd-budget-minutes", type=float, default=5.0, help="training budget on FMD")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.5, 2.0, 8.0],
                    help="signal, photons/px/ms (10 ms exposure)")
    ap.add_argument("--size", type=int, default=256, help="virtual frame side, px")
    ap.add_argument("--frames", type=int, default=4, help="test frames per specimen and level")
    ap.add_argument("--virtual", action=argparse.BooleanOptionalAction, default=True,
                    help="score livescope's virtual microscope levels")
    ap.add_argument("--fmd", action=argparse.BooleanOptionalAction, default=True, help="score FMD")
    ap.add_argument("--fmd-dir", type=Path, default=Path("../shared/data/fmd_confocal_bpae"),
                    help="relative to the repository root unless absolute")
    ap.add_argument("--fmd-test-frames", type=int, default=10, help="fov3 raw frames scored")
    ap.add_argument("--foreign", action=argparse.BooleanOptionalAction, default=True,
                    help="score the foreign simulator (not livescope's)")
    ap.add_argument("--foreign-levels", type=float, nargs="+", default=[10.0, 40.0, 150.0],
                    help="foreign simulator: peak photons/px")
    ap.add_argument("--foreign-size", type=int, default=256, help="foreign frame side, px")
    ap.add_argument("--foreign-frames", type=int, default=3, help="drifting frames per foreign scene")
    ap.add_argument("--foreign-budget-minutes", type=float, default=1.0,
                    help="self-supervised training budget per foreign level")
    ap.add_argument("--bm3d", action=argparse.BooleanOptionalAction, default=True,
                    help="run BM3D (the bench extra's bm3d) on a subset of every data set")
    ap.add_argument("--bm3d-frames", type=int, default=2,
                    help="BM3D subset: the first N frames of each condition (virtual modality x "
                         "specimen, foreign scene; FMD: of fov3)")
    ap.add_argument("--bm3d-factors", type=float, nargs="*", default=[1.0, 1.2, 1.4],
                    help="BM3D grid in the Anscombe domain: sigma (1 = the transform's unit noise)")
    ap.add_argument("--bm3d-direct-factors", type=float, nargs="*", default=[1.1, 1.4],
                    help="BM3D grid on the ADU: sigma = factor x each frame's true rms noise")
    ap.add_argument("--timing-repeats", type=int, default=10)
    ap.add_argument("--careamics-python", type=Path, default=None,
                    help="python of a venv with careamics (e.g. /work/careamics-venv/bin/python)")
    ap.add_argument("--fmd-careamics", action=argparse.BooleanOptionalAction, default=True,
                    help="also train careamics on FMD (with --careamics-python)")
    ap.add_argument("--context-frames", type=int, default=1,
                    help="also self-train with this many context frames on the time series (FMD, foreign): "
                         "'self_trained_context'")
    ap.add_argument("--fine-tune", action=argparse.BooleanOptionalAction, default=True,
                    help="also fine-tune the shipped camera-agnostic model on the time series (FMD, foreign), "
                         "within the same budget: 'self_fine_tuned'")
    ap.add_argument("--intensity", choices=("sqrt", "linear"), default="sqrt",
                    help="livescope's intensity transform for the self-trained runs")
    ap.add_argument("--figure", type=Path, default=REPO_ROOT / "bench/results/denoise_quality.png")
    if ap.parse_known_args(argv)[0].quick:
        ap.set_defaults(**QUICK)
    args = ap.parse_args(argv)
    if min(args.budget_minutes, args.fmd_budget_minutes, args.foreign_budget_minutes) <= 0:
        ap.error("budgets must be positive minutes")
    if any(level <= 0 for level in args.levels + args.foreign_levels):
        ap.error("--levels and --foreign-levels must be positive")
    if args.size < 64 or args.size % 32:
        ap.error("--size must be a multiple of 32 px, at least 64")
    if not 64 <= args.foreign_size <= 512 or args.foreign_size % 32:
        ap.error("--foreign-size must be a multiple of 32 px, 64..512")
    if args.frames < 1 or args.foreign_frames < 1 or not 1 <= args.fmd_test_frames <= 50:
        ap.error("--frames and --foreign-frames must be >= 1 and --fmd-test-frames 1..50")
    if args.bm3d and (args.bm3d_frames < 1 or not args.bm3d_factors + args.bm3d_direct_factors
                      or min(args.bm3d_factors + args.bm3d_direct_factors) <= 0):
        ap.error("--bm3d-frames must be >= 1 and the BM3D grid non-empty and positive")
    return args


def main() -> None:
    args = parse_args()
    t_start = time.monotonic()
    shipped, model = shipped_denoiser(args.shipped, args.models)
    warm_up_torch()
    report: dict = {
        "benchmark": "denoise_quality",
        "settings": "quick" if args.quick else "full",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "onnxruntime": ort.__version__,
        "shipped_model": model.ref,
        "psnr": "dB, peak = clean (reference) range, MSE pooled over the stack (models.metrics.psnr_db)",
        "ssim": ("skimage.metrics.structural_similarity" if structural_similarity is not None
                 else "own implementation") + " (Gaussian window sigma 1.5 px, K1 0.01, K2 0.03, "
                 "data range = clean range), mean over frames",
        "nl_means": ("skimage.restoration.denoise_nl_means (h = 0.8 sigma, patch 5, distance 6, fast); "
                     "sigma from the median of diagonal Haar coefficients (skimage's estimate_sigma "
                     "recipe, own code: it needs PyWavelets, not a dependency)") if denoise_nl_means is not None
                    else "not run: scikit-image not importable",
        "gaussian": f"sigma (px) chosen from {list(GAUSSIAN_SIGMAS_PX)} on a validation stack",
        "bm3d": BM3D_NOTE.format(version=_version("bm3d"), frames=args.bm3d_frames,
                                 anscombe=args.bm3d_factors, direct=args.bm3d_direct_factors)
                if bm3d is not None and args.bm3d else "not run: " + ("--no-bm3d" if not args.bm3d
                                                                      else "bm3d not importable"),
        "careamics": ("careamics N2V2 (its defaults) trained on the same frames for the same "
                      "wall-clock budget in its own venv by bench/careamics_n2v2.py; versions in "
                      "each run's report"),
    }
    rows = []
    if args.virtual:
        base = VirtualDenoiseData(specimens=SPECIMENS, signal_photons_per_ms=tuple(args.levels),
                                  frames_per_condition=args.frames, sensor_shape_px=(args.size, args.size),
                                  seed=TEST_SEED)
        report["virtual"] = {"test": base.describe(),
                             "validation": base.model_copy(update={"frames_per_condition": 2,
                                                                   "seed": VALIDATION_SEED}).describe(),
                             "self_trained": "trained per level on that level's test stack (noisy only)",
                             "bm3d_noise_model": "the virtual rig's default camera (known)",
                             "levels": {}}
        for level in args.levels:
            table, panels = virtual_level(level, args, shipped)
            report["virtual"]["levels"][f"{level:g}_photons_per_ms"] = table
            rows.append((f"{level:g} ph/ms", panels))
    log("timing the shipped model on 512x512")
    report["shipped_onnxruntime_inference"] = ort_ms_per_frame(model, args.timing_repeats)
    if args.virtual:
        report["inference_speed_at_512"] = inference_speed(report["virtual"]["levels"])
    if args.fmd:
        fmd, panels = real_data(args, shipped)
        report["real_data_fmd"] = fmd
        if panels is not None:
            rows.append(("FMD fov3", panels))
    if args.foreign:
        report["foreign"], foreign_rows = foreign_data(args, shipped)
        rows += foreign_rows
    if rows:
        report.update(figure(rows, args.figure, args.size))
    report["elapsed_s"] = round(time.monotonic() - t_start, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

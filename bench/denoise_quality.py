"""Denoising quality: livescope's denoisers against the noisy input and classical baselines.

Virtual microscope (known clean images): held-out stacks (filaments and cells, seed 20000; the
shipped model trained on seed 0 and was checked on seed 10000) at several signal levels. Per
level, PSNR and SSIM against the clean frames of: the noisy input; a Gaussian filter (sigma
chosen from a small grid on a separate validation stack, seed 30000); non-local means
(scikit-image, when importable); the shipped ``denoise`` model through ``LoadedModel.run_frames``
(onnxruntime); and livescope trained on the test stack itself (Noise2Void, noisy frames only)
within ``--budget-minutes``, exported to ONNX and run with onnxruntime. PSNR as
``models.metrics.psnr_db`` (peak = the clean frames' range, MSE pooled over the stack);
SSIM per frame with the same data range, averaged. Also onnxruntime ms per 512x512 frame.

Real data: FMD Confocal_BPAE_B (Zhang et al., CVPR 2019, "A Poisson-Gaussian Denoising Dataset
with Real Fluorescence Microscopy Images"): trained on the raw frames of fov1 and fov2, scored on
fov3's raw frames against fov3_gt (the 50-frame mean); the Gaussian sigma is chosen on fov2.

Prints JSON; writes a figure (noisy / baselines / ours / reference) to ``--figure``.

    python bench/denoise_quality.py [--budget-minutes M] [--fmd-budget-minutes M]
        [--levels 0.5 2 8] [--size 256] [--frames N] [--figure PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tifffile
import torch
from _common import median
from scipy import ndimage

from livescope.models import export
from livescope.models.denoise.data import VirtualDenoiseData, virtual_frames
from livescope.models.denoise.train import DenoiseTrainConfig, train_denoise
from livescope.models.metrics import psnr_db
from livescope.repository import ModelRepository, shipped_models_root
from livescope.server.models import LoadedModel
from livescope.server.providers import RuntimeOptions

try:  # scikit-image is not a livescope dependency: used when present, for SSIM and NL-means
    from skimage.metrics import structural_similarity
    from skimage.restoration import denoise_nl_means
except ImportError:
    structural_similarity = denoise_nl_means = None

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


def noise_sigma(frame: np.ndarray) -> float:
    """Gaussian noise sigma from the finest diagonal Haar coefficients (median / 0.6745), the
    estimator of skimage's estimate_sigma (which needs PyWavelets, absent here) with Haar for db2."""
    x = frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2].astype(np.float64)
    hh = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2.0
    return float(np.median(np.abs(hh)) / 0.6745)


def nl_means(frames: np.ndarray) -> np.ndarray:
    """scikit-image's recipe: h = 0.8 sigma, 5x5 patches, 13x13 search, fast mode."""
    out = []
    for f in frames:
        sigma = noise_sigma(f)
        out.append(denoise_nl_means(f.astype(np.float32), h=0.8 * sigma, sigma=sigma,
                                    fast_mode=True, patch_size=5, patch_distance=6))
    return np.stack(out).astype(np.float32)


# -- livescope -------------------------------------------------------------------------------------

def shipped_denoiser() -> tuple[Denoiser, LoadedModel]:
    version = ModelRepository([shipped_models_root()]).resolve("denoise")
    model = LoadedModel.load(version, RuntimeOptions(provider="cpu"))
    # run_frames may return a recycled output buffer: copy each result out
    return (lambda frames: np.stack([model.run_frames(f[None])[0].copy() for f in frames])), model


def warm_up_torch() -> None:
    """A few throwaway training steps, so that torch's one-time start-up is not charged to the first
    level's time budget."""
    frames = np.random.default_rng(0).poisson(100, (2, 64, 64)).astype(np.uint16)
    train_denoise(frames, DenoiseTrainConfig(steps=3, seed=TRAIN_SEED))


def self_trained(frames: np.ndarray, budget_s: float, args: argparse.Namespace
                 ) -> tuple[Denoiser, dict, ort.InferenceSession]:
    """Noise2Void on ``frames`` themselves for ``budget_s`` (what ``livescope train denoise
    --data STACK --budget-minutes M`` does: a seeded tenth of the frames held out for early
    stopping), exported, run with onnxruntime."""
    held = np.random.default_rng(TRAIN_SEED).permutation(len(frames))[: max(1, len(frames) // 10)]
    train = np.delete(frames, held, axis=0) if len(frames) > 1 else frames
    config = DenoiseTrainConfig(budget_seconds=budget_s, seed=TRAIN_SEED, intensity=args.intensity)
    trained = train_denoise(train, config, held_out=frames[held])
    proto = export.to_onnx(trained.served(), trained.net.config.size_multiple_px)
    session = export.cpu_session(proto)

    def run(stack: np.ndarray) -> np.ndarray:
        return np.concatenate([session.run([export.OUTPUT_NAME], {export.INPUT_NAME: f[None, None]})[0][:, 0]
                               for f in stack])

    info = {"steps": trained.steps, "train_seconds": round(trained.train_seconds, 1),
            "stopped_because": trained.stopped_because, "best_step": trained.best_step,
            "budget_seconds": budget_s, "seed": TRAIN_SEED, "config": config.model_dump(exclude_none=True)}
    return run, info, session


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
                                              seed=TEST_SEED)).noisy_adu
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


# -- one comparison --------------------------------------------------------------------------------

def compare(noisy: np.ndarray, clean: np.ndarray, sigma_px: float, shipped: Denoiser,
            ours: Denoiser, theirs: np.ndarray | None) -> tuple[dict, dict[str, np.ndarray]]:
    """Scores of every method on one test stack, and each method's first output frame."""
    outputs: dict[str, np.ndarray] = {"noisy": noisy.astype(np.float32),
                                      "gaussian": gaussian(noisy, sigma_px)}
    if denoise_nl_means is not None:
        outputs["nl_means"] = nl_means(noisy)
    outputs["shipped"] = shipped(noisy)
    outputs["self_trained"] = ours(noisy)
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
    return table, {k: v[0] for k, v in outputs.items()}


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
    table, panels = compare(test.noisy_adu, test.clean_adu, sigma, shipped, ours, theirs)
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
    fov2 = read("fov2_raw.tif")[:4]
    sigma = best_gaussian_sigma(fov2, np.broadcast_to(read("fov2_gt.tif").astype(np.float32), fov2.shape))
    log(f"FMD: training on fov1+fov2 raw ({len(train)} frames) for {args.fmd_budget_minutes:g} min")
    ours, info, _ = self_trained(train, args.fmd_budget_minutes * 60.0, args)
    theirs = None
    if args.fmd_careamics:
        theirs, their_info = careamics(train, test, args.fmd_budget_minutes * 60.0, args)
    table, panels = compare(test, np.broadcast_to(gt, test.shape), sigma, shipped, ours, theirs)
    table["self_trained"].update(info)
    if args.fmd_careamics:
        table.setdefault("careamics_n2v2", {}).update(their_info)
    table["data"] = (f"FMD Confocal_BPAE_B (Zhang et al., CVPR 2019): train fov1+fov2 raw "
                     f"({len(train)} frames 512x512, uint8 values as uint16); test fov3 raw, first "
                     f"{len(test)} of 50 frames, against fov3_gt (50-frame mean); Gaussian sigma "
                     f"chosen on fov2 (4 frames) against fov2_gt")
    table["shipped_note"] = ("the shipped model was trained on virtual widefield and confocal sCMOS "
                             "frames (offset ~100 ADU, 5-500 photons); FMD (uint8 camera values, "
                             "offset ~0) is out of its domain, shown for context")
    panels["reference"] = gt
    return table, panels


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

COLUMNS = ("noisy", "gaussian", "nl_means", "shipped", "careamics_n2v2", "self_trained", "reference")


def _crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[y : y + size, x : x + size]


def figure(rows: list[tuple[str, dict]], path: Path, size: int) -> dict:
    """One row per test set; columns as COLUMNS, each row scaled to its reference's range."""
    columns = [c for c in COLUMNS if c in rows[0][1]]
    grid = []
    for _, panels in rows:
        ref = _crop(panels["reference"], size)
        lo, hi = np.percentile(ref, [0.5, 99.5])
        grid.append([np.clip((_crop(panels[c], size) - lo) / max(hi - lo, 1e-6), 0, 1)
                     for c in columns])
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

def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-minutes", type=float, default=5.0,
                    help="self-supervised training budget per photon level")
    ap.add_argument("--fmd-budget-minutes", type=float, default=5.0, help="training budget on FMD")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.5, 2.0, 8.0],
                    help="signal, photons/px/ms (10 ms exposure)")
    ap.add_argument("--size", type=int, default=256, help="virtual frame side, px")
    ap.add_argument("--frames", type=int, default=4, help="test frames per specimen and level")
    ap.add_argument("--fmd-dir", type=Path, default=Path("../shared/data/fmd_confocal_bpae"),
                    help="relative to the repository root unless absolute")
    ap.add_argument("--fmd-test-frames", type=int, default=10, help="fov3 raw frames scored")
    ap.add_argument("--timing-repeats", type=int, default=10)
    ap.add_argument("--careamics-python", type=Path, default=None,
                    help="python of a venv with careamics (e.g. /work/careamics-venv/bin/python)")
    ap.add_argument("--fmd-careamics", action=argparse.BooleanOptionalAction, default=True,
                    help="also train careamics on FMD (with --careamics-python)")
    ap.add_argument("--intensity", choices=("sqrt", "linear"), default="sqrt",
                    help="livescope's intensity transform for the self-trained runs")
    ap.add_argument("--figure", type=Path, default=REPO_ROOT / "bench/results/denoise_quality.png")
    args = ap.parse_args()
    if args.budget_minutes <= 0 or args.fmd_budget_minutes <= 0:
        ap.error("budgets must be positive minutes")
    if any(level <= 0 for level in args.levels):
        ap.error("--levels must be positive photons/px/ms")
    if args.size < 64 or args.size % 32:
        ap.error("--size must be a multiple of 32 px, at least 64")
    if args.frames < 1 or not 1 <= args.fmd_test_frames <= 50:
        ap.error("--frames must be >= 1 and --fmd-test-frames 1..50")
    return args


def main() -> None:
    args = parse_args()
    t_start = time.monotonic()
    shipped, model = shipped_denoiser()
    warm_up_torch()
    report: dict = {
        "benchmark": "denoise_quality",
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
                     "needs PyWavelets, not installed)") if denoise_nl_means is not None
                    else "not run: scikit-image not importable",
        "gaussian": f"sigma (px) chosen from {list(GAUSSIAN_SIGMAS_PX)} on a validation stack",
        "careamics": ("careamics N2V2 (its defaults) trained on the same frames for the same "
                      "wall-clock budget in its own venv by bench/careamics_n2v2.py; versions in "
                      "each run's report"),
    }
    base = VirtualDenoiseData(specimens=SPECIMENS, signal_photons_per_ms=tuple(args.levels),
                              frames_per_condition=args.frames, sensor_shape_px=(args.size, args.size),
                              seed=TEST_SEED)
    report["virtual"] = {"test": base.describe(),
                         "validation": base.model_copy(update={"frames_per_condition": 2,
                                                               "seed": VALIDATION_SEED}).describe(),
                         "self_trained": "trained per level on that level's test stack (noisy only)",
                         "levels": {}}
    rows = []
    for level in args.levels:
        table, panels = virtual_level(level, args, shipped)
        report["virtual"]["levels"][f"{level:g}_photons_per_ms"] = table
        rows.append((f"{level:g} ph/ms", panels))
    log("timing the shipped model on 512x512")
    report["shipped_onnxruntime_inference"] = ort_ms_per_frame(model, args.timing_repeats)
    report["inference_speed_at_512"] = inference_speed(report["virtual"]["levels"])
    fmd, panels = real_data(args, shipped)
    report["real_data_fmd"] = fmd
    if panels is not None:
        rows.append(("FMD fov3", panels))
    report.update(figure(rows, args.figure, args.size))
    report["elapsed_s"] = round(time.monotonic() - t_start, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

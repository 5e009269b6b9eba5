"""Localisation quality: livescope's deep localiser against a classical fitter and Picasso.

Scores follow the 2016 SMLM challenge (``models.localise_metrics.score_localisations``): per frame,
found and true emitters are paired one-to-one inside a 250 nm lateral tolerance disc; Jaccard
= TP / (TP + FP + FN), recall, precision, lateral RMSE sqrt(mean(dx^2 + dy^2)) over the pairs, and
the efficiency 100 - sqrt((100 - 100 J)^2 + (1/nm RMSE)^2). Every score is given twice: over the
whole frame ("full") and over the interior ("interior": found and true emitters more than
``INTERIOR_MARGIN_PX`` px from the frame's edge), because the classical fitter and Picasso skip
candidates whose fitting box would leave the frame; the targets use the interior.

Virtual microscope (``models.localise_data.simulate_batch``, the training simulator): for each
density in 0.2, 1, 3 emitters/um^2 x two SNRs (bright: 3000 photons per emitter on 20 photons/px
background; dim: 800 on 60), ``--samples`` independent 3-frame windows of 64x64 px, 100 nm pixels,
Gaussian PSF sigma 1.1 px, the training camera (sCMOS, QE 0.8, 1.5 e- read noise), photons fixed
per condition (no frame-to-frame variation), blinking as in training. Test seeds 50000 + condition
index, tuning seeds 60000 + index (training uses 0, 10000, 20000). Frames go to every method as
photo-electrons ((ADU - baseline) x e-/ADU, what ``models.train_localise.network_input`` gives).
livescope localises the LAST frame of each window from the whole window (its causal context):
``LoadedModel.run_frames`` on the (N, 3, H, W) windows, then ``server.localise.maps_to_emitters``
with the card's thresholds; the classical fitter and Picasso see only that last frame. Truth: the
last frame's emitters inside the frame.

  * classical: ``bench/classical_localise.py`` (ThunderSTORM-like wavelet detection + Poisson MLE
    Gaussian fit), initial sigma = the true PSF sigma, detection threshold (multiple of std(F1))
    chosen per condition from CLASSICAL_THRESHOLDS for the best Jaccard on the tuning movies;
  * picasso (``--picasso-python``): ``bench/picasso_localise.py`` (identify + gaussmle, box 7,
    ``--serial``), min net gradient chosen per condition from PICASSO_GRADIENT_FRACTIONS x the
    expected photo-electrons per emitter, tuned once per SNR on a 1 /um^2 tuning movie (seed
    60100 + SNR index) and, on NAIRR, once per family (2DGauss_MD, 3DAS_LD Train frames);
  * livescope: the model of ``--models``/``--model`` (default: the newest ``localise`` model in
    the shipped repository and ``--models``), onnxruntime on the CPU.

Cramér-Rao bound (``crlb_gaussian_2d``: pixel-integrated Gaussian, emitter at a pixel centre,
Poisson + read noise) at the condition's photo-electrons, background and sigma; the lateral RMSE
is compared with sqrt(CRLB_x^2 + CRLB_y^2), the bound on the same quantity (RMSE / CRLB >= 1), both
the challenge RMSE over all pairs and the RMSE of isolated emitters (no other true emitter within
500 nm in the frame): unresolved close pairs, paired within 250 nm, dominate the former.

Speed: frames/s of each method on the test frames of the condition (median of ``--repeats`` runs
for livescope and classical; Picasso: one run after a warm-up, identification + fit, from its
report), all single-threaded (``--threads`` for onnxruntime; Picasso ``--serial``).

NAIRR-SMLM (../shared/data/nairr_smlm; 32x32 px, 100 nm pixels): the Validate frames and CSVs of
2DGauss LD/MD/HD and 3DAS LD/HD, ADU - 500 as photons (gain 1, as the README states); all-zero
frames (the sets' empty-frame quirk) are dropped from the stack and the scoring. Thresholds are
tuned on the first NAIRR_TUNE_FRAMES Train frames of the same set. The frames are independent
random fields, but livescope needs 3 frames of context: they are passed as one stack in order
(``server.offline_localise.localise_frames``: frame i with i-2, i-1), so its context is unrelated
frames. No method here estimates z: 3DAS is scored laterally only (``lateral_only``).

Prints JSON on stdout, a log on stderr; ``--figure`` writes Gaussian renders (``livescope.render``)
of the truth and each method for the dim high-density condition (first 9 fields as a 3x3 mosaic)
and for NAIRR 2DGauss_HD (first 9 frames as a mosaic).

    python bench/localise_quality.py [--models DIR] [--model localise@N] [--picasso-python PY]
        [--samples N] [--figure PATH] [--no-nairr] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import scipy
import tifffile
from scipy.spatial import cKDTree

from _common import median
from livescope.emitters import EmitterTable
from livescope.models.localise_data import SCMOS, LocaliseBatch, LocaliseSimulation, simulate_batch
from livescope.models.localise_metrics import crlb_gaussian_2d, match_emitters, score_localisations
from livescope.protocol import split_stage
from livescope.render import RenderGrid, gaussian
from livescope.server.localise import maps_to_emitters
from livescope.server.models import LoadedModel
from livescope.server.offline_localise import localise_frames
from livescope.server.providers import RuntimeOptions
from livescope.server.repository import ModelRepository, shipped_models_root

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_SEED, TUNE_SEED = 50_000, 60_000  # training uses 0 (+10000, +20000 held out)
PIXEL_NM = 100.0
SIGMA_PX = 1.1
FRAME_PX = 64
DENSITIES = (0.2, 1.0, 3.0)  # emitters on per frame per um^2
SNRS = {"bright": (3000.0, 20.0), "dim": (800.0, 60.0)}  # photons per emitter, background photons/px
ISOLATION_NM = 500.0  # 2 x the pairing tolerance: no neighbour can be confused with the emitter
INTERIOR_MARGIN_PX = 4  # > the fitters' 3 px half box: both skip candidates nearer the edge
CLASSICAL_THRESHOLDS = (1.0, 1.5, 2.0, 3.0)
PICASSO_GRADIENT_FRACTIONS = (0.05, 0.1, 0.2, 0.4)
NAIRR_SETS = ("2DGauss_LD", "2DGauss_MD", "2DGauss_HD", "3DAS_LD", "3DAS_HD")
NAIRR_OFFSET_ADU = 500.0
NAIRR_TUNE_FRAMES = 200
NAIRR_PICASSO_TUNING = {"2DGauss": "2DGauss_MD", "3DAS": "3DAS_LD"}  # Train frames of these sets
RENDER_PX_NM = 10.0
MOSAIC = 3  # fields per side in the figure's mosaics

Localiser = Callable[[], EmitterTable]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _load_bench_module(name: str) -> ModuleType:
    """bench/ is not a package: load a sibling script by path."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


classical = _load_bench_module("classical_localise")


# -- data --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Movie:
    """What every method sees and what they are scored against. ``windows`` (N, 3, H, W) for
    livescope on virtual data, or None (NAIRR: ``frames`` is the stack, localised causally)."""

    name: str
    frames: np.ndarray  # (N, H, W) photo-electrons: the frames to localise, numbered 1..N
    windows: np.ndarray | None
    truth: EmitterTable
    pixel_nm: float
    sigma_nm: float
    photons_e: float  # expected photo-electrons per emitter (threshold scaling)


def simulation(density: float, photons: float, background: float) -> LocaliseSimulation:
    # Single-valued ranges fix the condition; photons_frame_cv 0 keeps every emitter at `photons`.
    return LocaliseSimulation(psf="gaussian", frame_shape_px=(FRAME_PX, FRAME_PX), density_per_um2=(density, density),
                              photons=(photons, photons), photons_frame_cv=0.0,
                              background_photons_per_px=(background, background),
                              pixel_size_nm=(PIXEL_NM, PIXEL_NM), psf_sigma_px=(SIGMA_PX, SIGMA_PX), cameras=(SCMOS,))


def photo_electrons(batch: LocaliseBatch) -> np.ndarray:
    """(ADU - baseline) x e-/ADU: what the network was trained on, as a calibration gives."""
    return np.ascontiguousarray(batch.photo_electrons())


def virtual_movie(name: str, config: LocaliseSimulation, n: int, seed: int) -> Movie:
    batch = simulate_batch(config, n, np.random.default_rng(seed))
    windows = photo_electrons(batch)
    truth = batch.truth_frames[-1].select(batch.inside_frames[-1])  # sample i is frame i + 1
    return Movie(name=name, frames=np.ascontiguousarray(windows[:, -1]), windows=windows, truth=truth,
                 pixel_nm=PIXEL_NM, sigma_nm=SIGMA_PX * PIXEL_NM, photons_e=config.photons[0] * SCMOS.qe)


def read_nairr(folder: Path, split: str, max_frames: int | None) -> tuple[Movie, dict]:
    """A NAIRR set's frames (ADU - offset) and truth; all-zero frames dropped, the rest renumbered
    1..N in order (the truth with them)."""
    name = folder.name
    adu = tifffile.imread(next(folder.glob(f"*_{split}_Frame.tif"))).astype(np.float32)
    with open(next(folder.glob(f"*_{split}_xy*.csv")), newline="") as f:
        rows = list(csv.DictReader(f))
    column = lambda key: np.array([float(r[key]) for r in rows])  # noqa: E731
    frame = column("Frame").astype(np.int64)
    z = column("z (nm)") if "z (nm)" in rows[0] else np.zeros(len(rows))
    sigma_nm = (float(np.sqrt(column("sigmax_z0 (nm)")[0] * column("sigmay_z0 (nm)")[0])) if "z (nm)" in rows[0]
                else float(column("sigma (nm)")[0]))
    photons = float(np.median(column("Intensity (photons)")))
    if max_frames is not None:
        adu = adu[:max_frames]
    empty = adu.reshape(len(adu), -1).max(axis=1) == 0
    kept = np.flatnonzero(~empty) + 1  # original 1-based frame numbers
    renumber = np.zeros(len(adu) + 1, np.int64)
    renumber[kept] = np.arange(1, kept.size + 1)
    keep_rows = (frame <= len(adu)) & np.isin(frame, kept)
    truth = EmitterTable.from_columns(frame=renumber[frame[keep_rows]], x_nm=column("x (nm)")[keep_rows],
                                      y_nm=column("y (nm)")[keep_rows], z_nm=z[keep_rows],
                                      photons=column("Intensity (photons)")[keep_rows])
    movie = Movie(name=name, frames=np.ascontiguousarray(adu[~empty] - NAIRR_OFFSET_ADU), windows=None,
                  truth=truth, pixel_nm=PIXEL_NM, sigma_nm=sigma_nm, photons_e=photons)
    info = {"split": split, "frames": int(len(adu)), "all_zero_frames_dropped": (np.flatnonzero(empty) + 1).tolist(),
            "emitters": len(truth), "psf_sigma_nm": round(sigma_nm, 1), "photons": photons,
            "background_photons_per_px_median": round(float(np.median(movie.frames)), 1),
            "three_d": "z (nm)" in rows[0]}
    return movie, info


# -- methods -----------------------------------------------------------------------------------------

def livescope_localiser(model: LoadedModel, movie: Movie, batch: int = 16) -> Localiser:
    spec = model.card.localise

    def run() -> EmitterTable:
        if movie.windows is None:  # a stack: causal windows inside localise_frames
            return localise_frames(model, movie.frames, movie.pixel_nm, batch=batch)
        tables = []
        for start in range(0, len(movie.windows), batch):
            maps = model.run_frames(movie.windows[start:start + batch])
            tables += [maps_to_emitters(maps[k], movie.pixel_nm, start + k + 1, spec) for k in range(len(maps))]
        return EmitterTable.concatenate(tables)

    return run


def classical_localiser(movie: Movie, threshold: float) -> Localiser:
    return lambda: classical.localise_classical(movie.frames, movie.pixel_nm, movie.sigma_nm, threshold=threshold)


def run_picasso(python: Path, movie: Movie, min_net_gradient: float, workdir: Path) -> tuple[EmitterTable, dict]:
    """bench/picasso_localise.py in Picasso's own venv on the movie's frames (photons, .npy)."""
    frames, out, report = workdir / "frames.npy", workdir / "picasso.csv", workdir / "report.json"
    np.save(frames, movie.frames.astype(np.float32))
    cmd = [str(python), str(REPO_ROOT / "bench" / "picasso_localise.py"), str(frames), str(out),
           "--pixel-size", f"{movie.pixel_nm:g}", "--min-net-gradient", f"{min_net_gradient:g}", "--serial",
           "--overwrite", "--report", str(report)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NUMBA_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"picasso failed: {done.stderr.strip().splitlines()[-1] if done.stderr else done.returncode}")
    return EmitterTable.read_csv(out), json.loads(report.read_text())


def timed(localise: Localiser, repeats: int) -> tuple[EmitterTable, float]:
    """The localisations and the median seconds of ``repeats`` runs."""
    seconds, table = [], EmitterTable.empty()
    for _ in range(repeats):
        t0 = time.perf_counter()
        table = localise()
        seconds.append(time.perf_counter() - t0)
    return table, median(seconds)


# -- scoring -----------------------------------------------------------------------------------------

def interior(table: EmitterTable, movie: Movie) -> EmitterTable:
    h, w = movie.frames.shape[1:]
    m = INTERIOR_MARGIN_PX * movie.pixel_nm
    x, y = table["x_nm"], table["y_nm"]
    return table.select((x >= m) & (x < w * movie.pixel_nm - m) & (y >= m) & (y < h * movie.pixel_nm - m))


def isolated_rmse_nm(found: EmitterTable, truth: EmitterTable) -> tuple[float | None, int]:
    """Lateral RMSE over the pairs whose true emitter has no other true emitter within
    ISOLATION_NM in its frame, and their number. The challenge RMSE pools every pair inside the
    250 nm disc, so two unresolved emitters fitted as one add ~100 nm errors that dominate it even
    at low density; the Cramér-Rao bound is a single-emitter bound, met only by isolated ones."""
    pairs = match_emitters(found, truth)
    if len(truth) < 1 or pairs.truth_index.size == 0:
        return None, 0
    # Frames 10 * ISOLATION_NM apart in a third coordinate: neighbours only within a frame.
    points = np.column_stack([truth["x_nm"], truth["y_nm"], truth["frame"] * 10.0 * ISOLATION_NM]).astype(np.float64)
    nearest = cKDTree(points).query(points, k=2)[0][:, 1] if len(truth) > 1 else np.full(1, np.inf)
    alone = nearest[pairs.truth_index] > ISOLATION_NM
    dx = found["x_nm"][pairs.found_index][alone].astype(np.float64) - truth["x_nm"][pairs.truth_index][alone]
    dy = found["y_nm"][pairs.found_index][alone].astype(np.float64) - truth["y_nm"][pairs.truth_index][alone]
    n = int(alone.sum())
    return (round(float(np.sqrt(np.mean(dx * dx + dy * dy))), 3) if n else None), n


def scores(found: EmitterTable, movie: Movie) -> dict:
    """Challenge scores over the full frame and over the interior (lateral: no method gives z), and
    the interior RMSE of isolated emitters."""
    keys = ("jaccard", "recall", "precision", "rmse_lateral_nm", "efficiency_percent", "bias_x_nm", "bias_y_nm",
            "true_positives", "false_positives", "false_negatives")

    def pick(s) -> dict:
        d = s.model_dump()
        return {k: round(d[k], 4) if isinstance(d[k], float) else d[k] for k in keys}

    inner_found, inner_truth = interior(found, movie), interior(movie.truth, movie)
    rmse, n = isolated_rmse_nm(inner_found, inner_truth)
    return {"full": pick(score_localisations(found, movie.truth)),
            "interior": {**pick(score_localisations(inner_found, inner_truth)),
                         "rmse_lateral_isolated_nm": rmse, "isolated_pairs": n}}


def crlb_lateral_nm(photons_e: float, background_e: float, sigma_nm: float, read_noise_e: float,
                    excess_noise: float = 1.0) -> dict:
    b = crlb_gaussian_2d(photons=photons_e, background_photons=background_e, sigma_nm=sigma_nm, pixel_nm=PIXEL_NM,
                         read_noise_photons=read_noise_e, excess_noise=excess_noise)
    return {"x_nm": round(b.x_nm, 2), "y_nm": round(b.y_nm, 2), "lateral_nm": round(float(np.hypot(b.x_nm, b.y_nm)), 2)}


def rmse_over(method: dict, bound: dict) -> dict:
    """Interior lateral RMSE (all pairs; isolated emitters) / the lateral bound; None without pairs
    (the RMSE is then a placeholder)."""
    s = method["interior"]
    iso = s["rmse_lateral_isolated_nm"]
    return {"all_pairs": round(s["rmse_lateral_nm"] / bound["lateral_nm"], 3) if s["true_positives"] else None,
            "isolated": round(iso / bound["lateral_nm"], 3) if iso is not None else None}


def tune(candidates: tuple[float, ...], jaccard_of: Callable[[float], float]) -> tuple[float, dict]:
    """The candidate with the best interior Jaccard on the tuning movie."""
    tried = {f"{c:g}": round(jaccard_of(c), 4) for c in candidates}
    best = max(candidates, key=lambda c: tried[f"{c:g}"])
    return best, tried


def tune_picasso(args: argparse.Namespace, tune_movie: Movie, workdir: Path) -> tuple[float, dict]:
    """The min-net-gradient fraction (of the expected photo-electrons per emitter) with the best
    interior Jaccard on ``tune_movie``; one Picasso process per candidate (~10 s each: numba), so
    it is tuned once per family of conditions, not per condition."""
    fractions = PICASSO_GRADIENT_FRACTIONS[1:2] if args.quick else PICASSO_GRADIENT_FRACTIONS
    truth = interior(tune_movie.truth, tune_movie)

    def jaccard(fraction: float) -> float:
        found = run_picasso(args.picasso_python, tune_movie, fraction * tune_movie.photons_e, workdir)[0]
        return score_localisations(interior(found, tune_movie), truth).jaccard

    fraction, tried = tune(fractions, jaccard)
    log(f"  picasso tuned on {tune_movie.name}: fraction {fraction:g} ({tried})")
    return fraction, {"tuned_on": tune_movie.name, "fraction_of_photo_electrons": fraction,
                      "tuning_jaccard_by_fraction": tried}


def evaluate(movie: Movie, tune_movie: Movie, model: LoadedModel | None, args: argparse.Namespace,
             workdir: Path, picasso: tuple[float, dict] | None) -> tuple[dict, dict[str, EmitterTable]]:
    """Every method on ``movie`` (classical threshold tuned on ``tune_movie``; Picasso's from
    ``picasso``, a tuned fraction): scores, speed, settings."""
    out: dict = {"frames": int(len(movie.frames)), "truth_emitters": len(movie.truth), "methods": {}}
    found: dict[str, EmitterTable] = {}
    n = len(movie.frames)
    jac = lambda table: score_localisations(interior(table, tune_movie), interior(tune_movie.truth, tune_movie)).jaccard  # noqa: E731
    if model is not None:
        table, s = timed(livescope_localiser(model, movie), args.repeats)
        found["livescope"] = table
        out["methods"]["livescope"] = {**scores(table, movie), "frames_per_s": round(n / s, 1),
                                       "settings": {"threshold": model.card.localise.threshold,
                                                    "candidate_p": model.card.localise.candidate_p}}
    threshold, tried = tune(CLASSICAL_THRESHOLDS, lambda c: jac(classical_localiser(tune_movie, c)()))
    table, s = timed(classical_localiser(movie, threshold), args.repeats)
    found["classical"] = table
    out["methods"]["classical"] = {**scores(table, movie), "frames_per_s": round(n / s, 1),
                                   "settings": {"threshold": threshold, "sigma_nm": round(movie.sigma_nm, 1),
                                                "tuning_jaccard": tried}}
    if picasso is not None:
        fraction, tuning = picasso
        gradient = fraction * movie.photons_e
        table, report = run_picasso(args.picasso_python, movie, gradient, workdir)
        found["picasso"] = table
        out["methods"]["picasso"] = {**scores(table, movie), "frames_per_s": round(report["frames_per_s"], 1),
                                     "settings": {"min_net_gradient": round(gradient, 1), **tuning,
                                                  "method": report["method"], "box": report["box"],
                                                  "picasso": report["picasso"]}}
    for name, m in out["methods"].items():
        log(f"  {movie.name} {name}: J {m['interior']['jaccard']:.3f} (full {m['full']['jaccard']:.3f}), "
            f"RMSE {m['interior']['rmse_lateral_nm']:.1f} nm, {m['frames_per_s']:.0f} frames/s")
    return out, found


# -- figure ------------------------------------------------------------------------------------------

def mosaic(table: EmitterTable, movie: Movie) -> EmitterTable:
    """The first MOSAIC^2 frames side by side (frame k at tile k - 1), as one frame."""
    h, w = movie.frames.shape[1:]
    k = table["frame"].astype(np.int64) - 1
    keep = k < MOSAIC * MOSAIC
    rows = table.rows[keep].copy()
    rows["x_nm"] += (k[keep] % MOSAIC) * w * movie.pixel_nm
    rows["y_nm"] += (k[keep] // MOSAIC) * h * movie.pixel_nm
    rows["frame"] = 1
    return EmitterTable(rows)


def figure(panels: list[tuple[str, Movie, dict[str, EmitterTable]]], path: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["truth", "livescope", "classical", "picasso"]
    fig, axes = plt.subplots(len(panels), len(columns), figsize=(4 * len(columns), 4 * len(panels)), squeeze=False)
    for r, (title, movie, found) in enumerate(panels):
        h, w = movie.frames.shape[1:]
        grid = RenderGrid(width_nm=MOSAIC * w * movie.pixel_nm, height_nm=MOSAIC * h * movie.pixel_nm,
                          pixel_nm=RENDER_PX_NM)
        for c, name in enumerate(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            table = movie.truth if name == "truth" else found.get(name)
            if table is None:
                ax.set_title(f"{name}: not run")
                continue
            # Truth has no uncertainty: give it the 20 nm floor every method's render also gets.
            image = gaussian(mosaic(table, movie), grid, min_sigma_nm=20.0).image
            ax.imshow(image, cmap="magma", vmax=max(float(np.percentile(image, 99.9)), 1e-9))
            ax.set_title(f"{title}: {name}" if c == 0 else name, fontsize=9)
    fig.suptitle(f"Gaussian renders (10 nm pixels, sigma = max(uncertainty, 20 nm)), first {MOSAIC * MOSAIC} "
                 f"fields as a {MOSAIC}x{MOSAIC} mosaic")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"figure": str(path)}


# -- main --------------------------------------------------------------------------------------------

def load_model(args: argparse.Namespace) -> LoadedModel | None:
    name, version = split_stage(args.model)
    roots = [shipped_models_root(), *([args.models] if args.models else [])]
    repo = ModelRepository(roots)
    if name not in repo.names():
        log(f"no {name!r} model in {', '.join(map(str, roots))}: livescope is not scored")
        return None
    return LoadedModel.load(repo.resolve(name, version), RuntimeOptions(provider="cpu", intra_op_threads=args.threads))


def virtual(args: argparse.Namespace, model: LoadedModel | None, workdir: Path) -> tuple[dict, list]:
    results: dict = {}
    panels = []
    index = 0
    for s, (snr, (photons, background)) in enumerate(SNRS.items()):
        picasso = None
        if args.picasso_python is not None:  # tuned on this SNR's 1 /um^2 condition
            config = simulation(1.0, photons, background)
            picasso = tune_picasso(args, virtual_movie(f"{snr}_1_per_um2 tuning", config,
                                                       max(args.samples // 3, 4), TUNE_SEED + 100 + s), workdir)
        for density in DENSITIES:
            name = f"{snr}_{density:g}_per_um2"
            config = simulation(density, photons, background)
            log(f"virtual {name}: simulating {args.samples} windows")
            movie = virtual_movie(name, config, args.samples, TEST_SEED + index)
            tune_movie = virtual_movie(name, config, max(args.samples // 3, 4), TUNE_SEED + index)
            index += 1
            result, found = evaluate(movie, tune_movie, model, args, workdir, picasso)
            result["condition"] = {"density_per_um2": density, "photons": photons, "background_photons_per_px": background,
                                   "photo_electrons": photons * SCMOS.qe, "background_e_per_px": background * SCMOS.qe,
                                   "test_seed": TEST_SEED + index - 1, "tuning_seed": TUNE_SEED + index - 1}
            result["crlb"] = crlb_lateral_nm(photons * SCMOS.qe, background * SCMOS.qe, SIGMA_PX * PIXEL_NM,
                                             SCMOS.read_noise_e)
            for m in result["methods"].values():
                m["rmse_over_crlb"] = rmse_over(m, result["crlb"])
            results[name] = result
            if snr == "dim" and density == max(DENSITIES):
                panels.append((f"virtual {name}", movie, found))
    return results, panels


def nairr(args: argparse.Namespace, model: LoadedModel | None, workdir: Path) -> tuple[dict, list]:
    results: dict = {}
    panels = []
    root = args.nairr_dir
    sets = NAIRR_SETS[:1] + NAIRR_SETS[2:4] if args.quick else NAIRR_SETS
    picasso: dict[str, tuple[float, dict]] = {}
    for name in sets:
        folder = root / name
        if not folder.is_dir():
            results[name] = {"skipped": f"{folder} not found"}
            continue
        movie, info = read_nairr(folder, "Validate", 40 if args.quick else None)
        tune_movie, _ = read_nairr(folder, "Train", 20 if args.quick else NAIRR_TUNE_FRAMES)
        log(f"NAIRR {name}: {len(movie.frames)} frames, {len(movie.truth)} emitters")
        family = name.split("_")[0]
        if args.picasso_python is not None and family not in picasso:
            tuning_set = NAIRR_PICASSO_TUNING[family]
            picasso[family] = tune_picasso(args, read_nairr(root / tuning_set, "Train", 20 if args.quick
                                                            else NAIRR_TUNE_FRAMES)[0], workdir)
        result, found = evaluate(movie, tune_movie, model, args, workdir, picasso.get(family))
        result["set"] = info
        if info["three_d"]:
            result["lateral_only"] = "3-D set scored laterally: no method here estimates z"
        else:  # 2-D sets: indicative only (frame median as background, no EM excess noise)
            bound = crlb_lateral_nm(info["photons"], info["background_photons_per_px_median"], movie.sigma_nm, 0.0)
            result["crlb"] = bound
            for m in result["methods"].values():
                m["rmse_over_crlb"] = rmse_over(m, bound)
        results[name] = result
        if name == "2DGauss_HD":
            panels.append((f"NAIRR {name}", movie, found))
    return results, panels


def targets(virtual_results: dict) -> dict:
    """The issue's targets, on the interior scores of livescope."""
    out: dict = {}
    low, high = min(DENSITIES), max(DENSITIES)
    for snr in SNRS:
        lo = virtual_results.get(f"{snr}_{low:g}_per_um2", {})
        hi = virtual_results.get(f"{snr}_{high:g}_per_um2", {})
        ours_lo, ours_hi = lo.get("methods", {}).get("livescope"), hi.get("methods", {}).get("livescope")
        if ours_lo is None or ours_hi is None:
            continue
        ratio, jac = ours_lo["rmse_over_crlb"], ours_lo["interior"]["jaccard"]
        gain = ours_hi["interior"]["jaccard"] - hi["methods"]["classical"]["interior"]["jaccard"]
        out[snr] = {
            "low_density_rmse_within_1.3x_crlb": {
                "met": ratio["all_pairs"] is not None and ratio["all_pairs"] <= 1.3,
                "met_on_isolated_emitters": ratio["isolated"] is not None and ratio["isolated"] <= 1.3,
                "rmse_over_crlb": ratio},
            "low_density_jaccard_at_least_0.9": {"met": bool(jac >= 0.9), "jaccard": jac},
            "high_density_jaccard_0.3_above_classical": {"met": bool(gain >= 0.3), "jaccard_gain": round(gain, 4)},
        }
    out["all_met"] = bool(out) and all(t["met"] for snr in SNRS if snr in out for t in out[snr].values())
    out["note"] = ("'met' uses the challenge RMSE over all pairs; 'met_on_isolated_emitters' the RMSE of "
                   f"emitters with no other within {ISOLATION_NM:g} nm, the case the single-emitter bound describes")
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=None, help="a model repository folder (besides the shipped one)")
    ap.add_argument("--model", default="localise", help="name or name@version (default: newest 'localise')")
    ap.add_argument("--picasso-python", type=Path, default=None, help="python of Picasso's venv (else not run)")
    ap.add_argument("--samples", type=int, default=150, help="test windows per virtual condition")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--nairr-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "nairr_smlm")
    ap.add_argument("--no-nairr", action="store_true", help="skip the NAIRR-SMLM sets")
    ap.add_argument("--figure", type=Path, default=None, help="PNG of renders")
    ap.add_argument("--quick", action="store_true", help="tiny run for smoke testing")
    args = ap.parse_args()
    if args.quick:
        args.samples, args.repeats = min(args.samples, 8), 1
    return args


def main() -> None:
    args = parse_args()
    t_start = time.monotonic()
    model = load_model(args)
    report: dict = {
        "benchmark": "localise_quality",
        "quick": args.quick,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
        "python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
        "onnxruntime": ort.__version__,
        "threads": {"livescope_onnxruntime": args.threads, "classical": "1 (numpy)", "picasso": "--serial"},
        "model": model.ref if model else None,
        "model_trained_for": model.card.trained_for.model_dump() if model else None,
        "scoring": "2016 SMLM challenge, 250 nm lateral disc, per-frame optimal pairing "
                   "(models.localise_metrics); 'interior' excludes emitters within "
                   f"{INTERIOR_MARGIN_PX} px of the edge (targets use it)",
        "virtual_setup": {"frame_px": FRAME_PX, "pixel_nm": PIXEL_NM, "psf_sigma_px": SIGMA_PX,
                          "camera": SCMOS.model_dump(), "samples": args.samples,
                          "snrs": {k: {"photons": p, "background_photons_per_px": b} for k, (p, b) in SNRS.items()},
                          "livescope_input": "3-frame windows, localises the last frame",
                          "others_input": "the last frame of each window"},
    }
    with tempfile.TemporaryDirectory(prefix="localise_quality.") as tmp:
        workdir = Path(tmp)
        report["virtual"], panels = virtual(args, model, workdir)
        report["targets"] = targets(report["virtual"])
        if not args.no_nairr:
            report["nairr"], more = nairr(args, model, workdir)
            report["nairr_notes"] = (
                "Validate sets; ADU - 500 as photons; frames are independent random fields passed to "
                "livescope as one stack in order (its 3-frame context is unrelated frames); "
                "3DAS scored laterally only; the 2-D sets' CRLB is indicative: background = the frames' "
                "median (at MD/HD it includes emitter light) and Poisson noise only, though their "
                "background variance is about twice its mean (EMCCD-like excess noise)")
            panels += more
    if args.figure is not None:
        report.update(figure(panels, args.figure))
    report["elapsed_s"] = round(time.monotonic() - t_start, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

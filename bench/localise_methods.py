"""The localisers of bench/localise_quality.py (livescope, the classical fitter, Picasso in its own
venv), their timing and threshold tuning, and ``evaluate`` / ``evaluate_3d``: every method on a movie."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import log, median
from localise_movies import Movie
from localise_scoring import AXIAL_TOLERANCE_NM, interior, scores, scores_3d

from livescope.emitters import EmitterTable
from livescope.localise_maps import maps_to_emitters
from livescope.models.localise import classical
from livescope.models.localise.metrics import score_localisations
from livescope.server.models import LoadedModel
from livescope.server.offline_localise import localise_frames

REPO_ROOT = Path(__file__).resolve().parent.parent
CLASSICAL_THRESHOLDS = (1.0, 1.5, 2.0, 3.0)
PICASSO_GRADIENT_FRACTIONS = (0.05, 0.1, 0.2, 0.4)

Localiser = Callable[[], EmitterTable]


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
    extra = {} if movie.sigma_range is None else {"sigma_range": movie.sigma_range}
    return lambda: classical.localise_classical(movie.frames, movie.pixel_nm, movie.sigma_nm, threshold=threshold,
                                                **extra)


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


def evaluate_3d(movie: Movie, tune_movie: Movie | None, model: LoadedModel, args: argparse.Namespace
                ) -> tuple[dict, dict[str, EmitterTable]]:
    """The 3-D model on ``movie``, scored in 3-D; with a ``tune_movie``, also the classical fitter
    (threshold tuned on it), scored laterally: it is a 2-D fitter and gives no z."""
    out: dict = {"frames": int(len(movie.frames)), "truth_emitters": len(movie.truth), "methods": {}}
    found: dict[str, EmitterTable] = {}
    n = len(movie.frames)
    table, s = timed(livescope_localiser(model, movie), args.repeats)
    found["livescope3d"] = table
    out["methods"]["livescope3d"] = {
        "scoring": f"3-D: pairs within 250 nm laterally and {AXIAL_TOLERANCE_NM:g} nm in z",
        **scores_3d(table, movie), "frames_per_s": round(n / s, 1),
        "settings": {"threshold": model.card.localise.threshold, "candidate_p": model.card.localise.candidate_p}}
    if tune_movie is not None:
        tune_truth = interior(tune_movie.truth, tune_movie)

        def jaccard(c: float) -> float:
            return score_localisations(interior(classical_localiser(tune_movie, c)(), tune_movie), tune_truth).jaccard

        threshold, tried = tune(CLASSICAL_THRESHOLDS, jaccard)
        table, s = timed(classical_localiser(movie, threshold), args.repeats)
        found["classical"] = table
        out["methods"]["classical"] = {
            "scoring": "lateral only (a 2-D fitter: no z); pairs within 250 nm laterally, any z",
            **scores(table, movie), "frames_per_s": round(n / s, 1),
            "settings": {"threshold": threshold, "sigma_nm": round(movie.sigma_nm, 1),
                         "sigma_range": list(movie.sigma_range) if movie.sigma_range else None,
                         "tuning_jaccard": tried}}
    for name, m in out["methods"].items():
        i = m["interior"]
        axial = f", axial {i['rmse_axial_nm']:.1f} nm" if i.get("rmse_axial_nm") is not None else " (lateral only)"
        log(f"  {movie.name} {name}: J {i['jaccard']:.3f} (full {m['full']['jaccard']:.3f}), "
            f"RMSE lateral {i['rmse_lateral_nm']:.1f} nm{axial}, {m['frames_per_s']:.0f} frames/s")
    return out, found

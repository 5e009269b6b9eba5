"""Localisation without camera flags: the Jaccard with the camera estimated from the movie
(``livescope.camera_estimate``) against the Jaccard with the right flags, side by side.

Data: the NAIRR-SMLM Validate sets in ../shared/data (flags: baseline 500 ADU, 1 e-/ADU, as
bench/localise_quality.py reads them) and virtual movies of cameras the localiser was and was not
trained with (the training sCMOS; an EMCCD; an sCMOS with other gain and offset), at two
densities, each with a flat background and with one that differs from frame to frame (5-200
photons/px: a photon-transfer range). Scoring: 2016 challenge Jaccard over the interior
(bench/localise_scoring.py). The estimate sees the movie's frames only (ADU, as the camera gave
them); livescope's stage gets photo-electrons from each calibration.

    python bench/camera_estimate.py [--quick] > docs/figures/camera_estimate.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import log
from localise_methods import livescope_localiser
from localise_movies import NAIRR_OFFSET_ADU, PIXEL_NM, SIGMA_PX, Movie, read_nairr
from localise_quality import NAIRR_SETS, load_model
from localise_scoring import scores

from livescope.camera import CameraCalibration
from livescope.camera_estimate import estimate_camera
from livescope.models.localise.data import EMCCD, SCMOS, LocaliseSimulation, simulate_batch
from livescope.server.models import LoadedModel

REPO_ROOT = Path(__file__).resolve().parent.parent
OTHER_SCMOS = SCMOS.model_copy(update={"e_per_adu": 0.24, "baseline_adu": 400.0, "read_noise_e": 1.0})
CAMERAS = {"training_scmos": SCMOS, "other_scmos": OTHER_SCMOS, "emccd": EMCCD}
BACKGROUNDS = {"flat_20": (20.0, 20.0), "flat_60": (60.0, 60.0), "varying_5_200": (5.0, 200.0)}
DENSITIES = (0.3, 1.5)
TEST_SEED = 70000


def jaccard(model: LoadedModel, movie: Movie) -> float:
    return scores(livescope_localiser(model, movie)(), movie)["interior"]["jaccard"]


def side_by_side(model: LoadedModel, movie: Movie, adu: np.ndarray, right: CameraCalibration,
                 frames_adu: np.ndarray) -> dict:
    """Jaccard with ``right`` and with the camera estimated from ``frames_adu``; ``adu`` is what is
    converted (the movie's frames, or its windows)."""
    t0 = time.perf_counter()
    estimate = estimate_camera(frames_adu)
    estimate_s = time.perf_counter() - t0
    out = {"right": right.model_dump(), "estimate": estimate.model_dump(), "estimate_s": round(estimate_s, 3)}
    for key, camera in (("jaccard_right_flags", right), ("jaccard_estimated", estimate.calibration)):
        photons = np.ascontiguousarray(camera.photons(adu))
        converted = Movie(name=movie.name, frames=photons if movie.windows is None else photons[:, -1],
                          windows=None if movie.windows is None else photons, truth=movie.truth,
                          pixel_nm=movie.pixel_nm, sigma_nm=movie.sigma_nm, photons_e=movie.photons_e)
        out[key] = round(jaccard(model, converted), 4)
    out["difference"] = round(out["jaccard_estimated"] - out["jaccard_right_flags"], 4)
    log(f"  {movie.name}: J right {out['jaccard_right_flags']:.3f}, estimated {out['jaccard_estimated']:.3f} "
        f"({estimate.describe()})")
    return out


def nairr(model: LoadedModel, root: Path, quick: bool) -> dict:
    results = {}
    right = CameraCalibration(baseline_adu=NAIRR_OFFSET_ADU, e_per_adu=1.0)
    for name in NAIRR_SETS:
        if not (root / name).is_dir():
            results[name] = {"skipped": f"{root / name} not found"}
            continue
        movie, _ = read_nairr(root / name, "Validate", 60 if quick else None)
        adu = movie.frames + NAIRR_OFFSET_ADU
        results[name] = side_by_side(model, movie, adu, right, adu)
    return results


def virtual(model: LoadedModel, samples: int) -> dict:
    results = {}
    index = 0
    for cam_name, camera in CAMERAS.items():
        for bg_name, background in BACKGROUNDS.items():
            for density in DENSITIES:
                name = f"{cam_name}_{bg_name}_{density:g}_per_um2"
                config = LocaliseSimulation(psf="gaussian", frame_shape_px=(64, 64), density_per_um2=(density, density),
                                            photons=(1500.0, 1500.0), photons_frame_cv=0.0,
                                            background_photons_per_px=background, pixel_size_nm=(PIXEL_NM, PIXEL_NM),
                                            psf_sigma_px=(SIGMA_PX, SIGMA_PX), cameras=(camera,))
                batch = simulate_batch(config, samples, np.random.default_rng(TEST_SEED + index))
                index += 1
                truth = batch.truth_frames[-1].select(batch.inside_frames[-1])
                windows_adu = batch.frames_adu.astype(np.float32)
                movie = Movie(name=name, frames=windows_adu[:, -1], windows=windows_adu, truth=truth,
                              pixel_nm=PIXEL_NM, sigma_nm=SIGMA_PX * PIXEL_NM, photons_e=1500.0 * camera.qe)
                right = CameraCalibration(baseline_adu=camera.baseline_adu, e_per_adu=camera.e_per_adu,
                                          em_gain=camera.em_gain)
                results[name] = side_by_side(model, movie, windows_adu, right, batch.frames_adu[:, -1])
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--model", default="localise")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=120, help="windows per virtual condition")
    ap.add_argument("--nairr-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "nairr_smlm")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.samples = 16
    t0 = time.monotonic()
    model = load_model(args)
    if model is None:
        raise SystemExit("no localise model")
    report = {"benchmark": "camera_estimate", "quick": args.quick, "model": model.ref,
              "scoring": "2016 challenge Jaccard, interior (bench/localise_scoring.py)",
              "nairr": nairr(model, args.nairr_dir, args.quick), "virtual": virtual(model, args.samples)}
    rows = [r for part in ("nairr", "virtual") for r in report[part].values() if "difference" in r]
    report["summary"] = {"conditions": len(rows),
                         "worst_difference": min(r["difference"] for r in rows),
                         "median_difference": float(np.median([r["difference"] for r in rows])),
                         "within_0.05": sum(r["difference"] >= -0.05 for r in rows)}
    report["elapsed_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

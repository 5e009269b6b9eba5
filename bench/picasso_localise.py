"""Picasso's own localisation (picassosr), side by side with models/localise/classical.py.

Not part of livescope and never imported by it: run with the python of picasso's own virtual
environment, made once outside the repository (picassosr 0.11.3 from PyPI with its pinned
dependencies; it pulled numba 0.68.1, numpy 2.4.6, pandas 2.3.3, dask 2026.8.0 on Python 3.11.7):

    python -m venv /work/picasso-venv
    /work/picasso-venv/bin/pip install picassosr==0.11.3

    /work/picasso-venv/bin/python bench/picasso_localise.py frames.npy out.csv --pixel-size 100
    /work/picasso-venv/bin/python bench/picasso_localise.py stack.tif out.csv --pixel-size 100 \
        --baseline 100 --e-per-adu 0.5 [--em-gain 1]

Input: a ``.npy`` stack (T, H, W) already in photons (baseline 0, 1 e-/ADU, as
models/localise/classical.py takes it), or a TIFF in camera counts with its baseline and
conversion gain.
Picasso then runs unmodified:
  * ``picasso.localize.identify``: local maxima in a ``--box`` window (Picasso's default 7 px)
    whose net gradient exceeds ``--min-net-gradient``, in the input's units (ADU for a TIFF,
    photons for a .npy; Picasso's GUI default 5000 is meant for ADU of typical EMCCD data, far too
    high for photon-scaled frames: tune it. 300 finds every 2000-photon spot on 20 photons/px
    background, sigma 1.3 px, in the tests' simulation);
  * ``picasso.localize.fit``: its Gaussian fit (``--method``, default ``gaussmle``: Poisson
    maximum likelihood of an elliptical Gaussian; ``gausslq`` is least squares, Picasso's API
    default), with camera_info {Baseline, Sensitivity (e-/ADU), Gain (EM gain), Pixelsize}. Picasso
    converts the cut spots to photons itself; the CRLB doubles for EM gain > 1.

Conventions. Picasso's x, y are in pixels with the origin at the centre of the top-left pixel
(its models put pixel index i at coordinate i: ``dx = i - cx`` in picasso.fitting.gaussfit, and
``x = theta_x + x_id - box // 2`` in localize.locs_from_fits_gauss), frames from 0. livescope's
(ThunderSTORM's) origin is the top-left pixel's corner, frames from 1, so
x_nm = (x_picasso + 0.5) * pixel_nm and frame = frame_picasso + 1.

Output: a ThunderSTORM CSV with livescope's columns: sigma [nm] = sqrt(sx * sy) * pixel,
intensity = photons, offset = bg (photons/px), bkgstd = sqrt(bg), uncertainty = the rms of
Picasso's lpx and lpy (its CRLB for MLE fits; Mortensen's formula for least squares), z = 0.
Timings (identification, fit) go to stderr and, with ``--report``, to a JSON file.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

COLUMNS = ("id", "frame", "x [nm]", "y [nm]", "z [nm]", "sigma [nm]", "intensity [photon]",
           "offset [photon]", "bkgstd [photon]", "uncertainty [nm]")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Picasso identify + Gaussian fit -> ThunderSTORM CSV")
    ap.add_argument("frames", type=Path, help=".npy in photons, or .tif/.tiff in camera counts")
    ap.add_argument("csv", type=Path)
    ap.add_argument("--pixel-size", type=float, required=True, help="back-projected pixel, nm")
    ap.add_argument("--baseline", type=float, default=0.0, help="camera offset, ADU (TIFF)")
    ap.add_argument("--e-per-adu", type=float, default=1.0, help="photoelectrons per ADU (TIFF)")
    ap.add_argument("--em-gain", type=float, default=1.0, help="EM gain (1: sCMOS/CCD)")
    ap.add_argument("--box", type=int, default=7, help="Picasso's box, odd (default 7, Picasso's)")
    ap.add_argument("--min-net-gradient", type=float, required=True,
                    help="Picasso's identification threshold, in the input's units")
    ap.add_argument("--method", default="gaussmle",
                    help="picasso.localize.fit method (gaussmle, gausslq, gaussmle-spherical, ...)")
    ap.add_argument("--serial", action="store_true",
                    help="one thread / process (Picasso's defaults are threaded identification "
                         "and multiprocess fitting)")
    ap.add_argument("--first-frame", type=int, default=1, help="number of the first frame")
    ap.add_argument("--report", type=Path, help="JSON with versions, settings and timings")
    ap.add_argument("--overwrite", action="store_true")
    return ap.parse_args(argv)


def _movie(path: Path, workdir: Path) -> np.memmap:
    """The frames as a memory map: ``picasso.localize.fit`` accepts a loaded Picasso movie or an
    ``np.memmap``; a TIFF is copied to a temporary .npy first (its values unchanged)."""
    if path.suffix.lower() == ".npy":
        movie = np.load(path, mmap_mode="r")
    else:
        import tifffile

        copy = workdir / "frames.npy"
        np.save(copy, np.asarray(tifffile.imread(path)))
        movie = np.load(copy, mmap_mode="r")
    if movie.ndim == 2:
        raise SystemExit(f"{path}: a single frame; save it as (1, H, W)")
    # Picasso's numba kernels want float32 (identify_in_frame converts, the spot cutter does not).
    if movie.dtype != np.float32:
        converted = workdir / "frames32.npy"
        np.save(converted, np.asarray(movie, dtype=np.float32))
        movie = np.load(converted, mmap_mode="r")
    return movie


def _rows(locs, pixel_nm: float, first_frame: int) -> list[list]:
    x = (locs["x"].to_numpy(np.float64) + 0.5) * pixel_nm
    y = (locs["y"].to_numpy(np.float64) + 0.5) * pixel_nm
    sigma = np.sqrt(locs["sx"].to_numpy(np.float64) * locs["sy"].to_numpy(np.float64)) * pixel_nm
    photons = locs["photons"].to_numpy(np.float64)
    bg = locs["bg"].to_numpy(np.float64)
    lpx, lpy = locs["lpx"].to_numpy(np.float64), locs["lpy"].to_numpy(np.float64)
    uncertainty = np.sqrt((lpx**2 + lpy**2) / 2.0) * pixel_nm
    frame = locs["frame"].to_numpy(np.int64) + first_frame
    keep = np.isfinite(x) & np.isfinite(y)
    rows = []
    for i, k in enumerate(np.flatnonzero(keep)):
        values = (x[k], y[k], 0.0, sigma[k], photons[k], bg[k], math.sqrt(max(bg[k], 0.0)),
                  uncertainty[k])
        rows.append([i + 1, int(frame[k]), *(_number(v) for v in values)])
    return rows


def _number(v: float) -> float | str:
    return round(float(v), 3) if math.isfinite(v) else "NaN"


def _write_csv(path: Path, rows: list[list], overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise SystemExit(f"{path} exists; pass --overwrite to replace it")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
            writer.writerow(COLUMNS)
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _localise(localize, movie: np.memmap, args: argparse.Namespace, camera_info: dict):
    """Picasso's identification then its fit; returns (identifications, localisations or None,
    the perf_counter time between the two)."""
    ids, _ = localize.identify(movie, args.min_net_gradient, args.box, threaded=not args.serial)
    identified = time.perf_counter()
    if len(ids) == 0:
        return ids, None, identified
    locs, _ = localize.fit(movie, camera_info=dict(camera_info), identifications=ids, box=args.box,
                           fitting_method=args.method, multiprocess=not args.serial)
    return ids, locs, identified


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from picasso import localize
    from picasso.version import __version__

    is_npy = args.frames.suffix.lower() == ".npy"
    camera_info = {"Baseline": 0.0 if is_npy else args.baseline,
                   "Sensitivity": 1.0 if is_npy else args.e_per_adu,
                   "Gain": args.em_gain, "Pixelsize": args.pixel_size}
    with tempfile.TemporaryDirectory() as tmp:
        movie = _movie(args.frames, Path(tmp))
        n_frames = int(movie.shape[0])
        # numba compiles Picasso's kernels on first use (cache=False): warm up on a few frames so
        # the timings below are of the localisation, not of the compiler.
        _localise(localize, movie[: min(n_frames, 4)], args, camera_info)
        started = time.perf_counter()
        ids, locs, identified = _localise(localize, movie, args, camera_info)
        fitted = time.perf_counter()
    rows = _rows(locs, args.pixel_size, args.first_frame) if locs is not None else []
    _write_csv(args.csv, rows, args.overwrite)
    report = {"picasso": __version__, "numpy": np.__version__, "method": args.method,
              "box": args.box, "min_net_gradient": args.min_net_gradient, "serial": args.serial,
              "camera_info": camera_info, "frames": n_frames, "candidates": int(len(ids)),
              "localisations": len(rows), "identify_s": identified - started,
              "fit_s": fitted - identified,
              "frames_per_s": n_frames / max(fitted - started, 1e-9)}
    print(json.dumps(report), file=sys.stderr)
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

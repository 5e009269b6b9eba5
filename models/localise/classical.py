"""Classical single-molecule localisation: the ThunderSTORM-like baseline for our deep localiser.

The trainer scores it on its held-out frames for the quality gate (``models.localise.train``:
``held_out_jaccard_classical``); bench/localise_quality.py compares it with the network and Picasso.

Pipeline (ThunderSTORM's defaults, Ovesny et al., Bioinformatics 2014, unless said otherwise):

  (a) filtering: B-spline wavelet filter, order 3, scale 2 (the "a trous" undecimated transform
      with kernels k1 = [1, 4, 6, 4, 1] / 16 and k2 = k1 with a zero between taps, Izeddin et al.
      2012). V1 = I * k1, V2 = V1 * k2 (separable, edges replicated); the filtered image is
      F = V1 - V2 (ThunderSTORM's ``Wave.F``) and the first wavelet level is F1 = I - V1
      (``Wave.F1``).
  (b) detection: local maxima of F in the 8-neighbourhood above ``threshold * std(F1)`` per frame
      (ThunderSTORM's default threshold expression is ``std(Wave.F1)``, i.e. threshold = 1.0).
      Deviation: a maximum must exceed the threshold strictly (ThunderSTORM: >=), so that a flat
      frame (F = 0, std(F1) = 0) yields no candidates instead of every pixel.
  (c) fitting: integrated symmetric 2-D Gaussian (x, y, N, b, sigma) on the (2r+1)^2 ROI around
      each candidate (ThunderSTORM: fitting radius r = 3 px, initial sigma 1.6 px, method
      "Maximum likelihood"), Poisson likelihood. ThunderSTORM maximises it with Nelder-Mead; here
      all candidates are fitted at once by batched Newton steps (Fisher-scoring Hessian,
      Levenberg-Marquardt damping, step limits and parameter bounds) in numpy, as Smith et al.
      (Nat Methods 2010) do on the GPU. Candidates whose ROI would leave the image are skipped
      (as ThunderSTORM does).
  (d) rejection: fits that did not converge within ``max_iterations``, whose centre left the ROI
      (|dx| or |dy| > r from the candidate pixel, ThunderSTORM's own rule), or whose sigma is
      outside ``sigma_range`` times the initial sigma (ThunderSTORM keeps those; a baseline that
      reports a 5-px-wide "molecule" would be unfair to it).
  (e) uncertainty: the Cramer-Rao bound at the fit, sqrt of the diagonal of the inverse Fisher
      information of the Poisson model (all five parameters free), not ThunderSTORM's
      Thompson/Mortensen formula; for shot-noise-limited data (sCMOS/CCD in photons, no EM
      excess noise) it is the precision an efficient estimator reaches.
  (f) output: an ``EmitterTable`` (probability 1, sigma, photons, background photons per pixel).

Input frames must already be in photons: the caller subtracts the camera baseline (offset, ADU)
and multiplies by the conversion gain (e-/ADU; divide by the EM gain too for an EMCCD), i.e.
``photons = (adu - baseline) * e_per_adu``. Negative values are allowed (read noise around zero).

Command line: ``python bench/classical_localise.py stack.tif out.csv --pixel-size 100
--baseline 100 --e-per-adu 0.5 [--sigma-nm 160] [--threshold 1.0] [--roi 3]`` (or ``python -m
livescope.models.localise.classical ...``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage, special

from livescope.emitters import EmitterTable

# B-spline order 3, scale 2 sampled at 5 points: ThunderSTORM's default, identical to Izeddin's.
_K1 = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
_K2 = np.array([1.0, 0.0, 4.0, 0.0, 6.0, 0.0, 4.0, 0.0, 1.0]) / 16.0
_FIT_BATCH = 16384  # candidates fitted together: about 30 MB of Jacobian for r = 3
_N_PARAMS = 5  # x, y, N, b, sigma (positions in px from the candidate pixel's centre)
_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Candidates:
    """Local maxima: frame index in the chunk, row and column of the pixel."""

    t: np.ndarray
    row: np.ndarray
    col: np.ndarray


@dataclass(frozen=True)
class Fits:
    """Per-candidate fit results, positions in px relative to the candidate pixel's centre."""

    params: np.ndarray  # (M, 5): x, y, N, b, sigma
    crlb: np.ndarray  # (M, 5): standard deviations from the inverse Fisher information
    converged: np.ndarray  # (M,) bool


# -- (a) filtering -------------------------------------------------------------------------------


def _separable(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    out = ndimage.correlate1d(image, kernel, axis=-1, mode="nearest")
    return ndimage.correlate1d(out, kernel, axis=-2, mode="nearest")


def wavelet_filter(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F, F1) for a (T, H, W) stack: F = V1 - V2 is the detection image, F1 = I - V1 the first
    wavelet level whose std sets the threshold."""
    v1 = _separable(frames, _K1)
    v2 = _separable(v1, _K2)
    return v1 - v2, frames - v1


# -- (b) detection -------------------------------------------------------------------------------


def detect(frames: np.ndarray, threshold: float, roi_px: int) -> Candidates:
    """Local maxima (8-neighbourhood) of the filtered image above threshold * std(F1), keeping only
    those whose (2r+1)^2 ROI lies inside the frame."""
    filtered, first_level = wavelet_filter(frames)
    level = threshold * first_level.std(axis=(1, 2))
    # A pixel equal to its 3x3 maximum is a local maximum (ties all count, as in ThunderSTORM).
    is_max = filtered >= ndimage.maximum_filter(filtered, size=(1, 3, 3), mode="nearest")
    is_max &= filtered > level[:, None, None]
    _, h, w = frames.shape
    is_max[:, :roi_px, :] = False
    is_max[:, h - roi_px:, :] = False
    is_max[:, :, :roi_px] = False
    is_max[:, :, w - roi_px:] = False
    t, row, col = np.nonzero(is_max)
    return Candidates(t=t, row=row, col=col)


def extract_rois(frames: np.ndarray, cand: Candidates, roi_px: int) -> np.ndarray:
    """(M, 2r+1, 2r+1) windows centred on the candidates."""
    offsets = np.arange(-roi_px, roi_px + 1)
    rows = cand.row[:, None, None] + offsets[None, :, None]
    cols = cand.col[:, None, None] + offsets[None, None, :]
    return frames[cand.t[:, None, None], rows, cols]


# -- (c) maximum-likelihood fit ------------------------------------------------------------------


def _axis_terms(centre: np.ndarray, sigma: np.ndarray, grid: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integrated 1-D Gaussian over pixels at ``grid`` and its derivatives in centre and sigma.

    Pixel k spans [grid_k - 0.5, grid_k + 0.5); returns (E, dE/dcentre, dE/dsigma), each (M, n)."""
    hi = grid[None, :] - centre[:, None] + 0.5
    lo = hi - 1.0
    s = sigma[:, None]
    e = 0.5 * (special.erf(hi / (_SQRT2 * s)) - special.erf(lo / (_SQRT2 * s)))
    g_hi = np.exp(-hi * hi / (2.0 * s * s))
    g_lo = np.exp(-lo * lo / (2.0 * s * s))
    d_centre = -(g_hi - g_lo) / (_SQRT2PI * s)
    d_sigma = -(hi * g_hi - lo * g_lo) / (_SQRT2PI * s * s)
    return e, d_centre, d_sigma


def _model(params: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected photons (M, P) and their Jacobian (M, 5, P), P = (2r+1)^2 (rows = y, cols = x)."""
    x, y, n, b, s = params.T
    ex, dex, dsx = _axis_terms(x, s, grid)
    ey, dey, dsy = _axis_terms(y, s, grid)
    m = len(params)
    shape = (m, grid.size * grid.size)
    psf = (ey[:, :, None] * ex[:, None, :]).reshape(shape)
    jac = np.empty((m, _N_PARAMS, shape[1]))
    jac[:, 0] = n[:, None] * (ey[:, :, None] * dex[:, None, :]).reshape(shape)
    jac[:, 1] = n[:, None] * (dey[:, :, None] * ex[:, None, :]).reshape(shape)
    jac[:, 2] = psf
    jac[:, 3] = 1.0
    jac[:, 4] = n[:, None] * (dsy[:, :, None] * ex[:, None, :]
                              + ey[:, :, None] * dsx[:, None, :]).reshape(shape)
    return b[:, None] + n[:, None] * psf, jac


@dataclass
class _State:
    """What one model evaluation gives the Newton iteration."""

    nll: np.ndarray  # (M,) negative Poisson log-likelihood, up to a data-only constant
    grad: np.ndarray  # (M, 5)
    # (M, 5, 5) Gauss-Newton Hessian sum d / mu^2 J J^T: the exact one less the terms in the second
    # derivatives of mu, which vanish in expectation; positive semi-definite, so steps go downhill.
    hess: np.ndarray


def _evaluate(params: np.ndarray, data: np.ndarray, grid: np.ndarray) -> _State:
    mu, jac = _model(params, grid)
    mu = np.maximum(mu, 1e-9)
    # Negative photon counts (read noise) would make the likelihood unbounded: clip at 0.
    d = np.maximum(data, 0.0)
    nll = np.sum(mu - d * np.log(mu), axis=1)
    grad = np.einsum("mkp,mp->mk", jac, 1.0 - d / mu)
    hess = np.einsum("mkp,mlp->mkl", jac * (d / (mu * mu))[:, None, :], jac)
    return _State(nll=nll, grad=grad, hess=hess)


def _initial(rois: np.ndarray, sigma_px: float) -> np.ndarray:
    """Start values: background from the ROI's rim, photons from the excess, centroid position."""
    m, n, _ = rois.shape
    r = (n - 1) // 2
    rim = np.concatenate([rois[:, 0, :], rois[:, -1, :], rois[:, 1:-1, 0], rois[:, 1:-1, -1]], axis=1)
    b = np.maximum(rim.mean(axis=1), 1e-3)
    excess = np.maximum(rois - b[:, None, None], 0.0)
    total = excess.sum(axis=(1, 2))
    grid = np.arange(-r, r + 1, dtype=np.float64)
    safe = np.maximum(total, 1e-9)
    x = np.clip((excess.sum(axis=1) * grid).sum(axis=1) / safe, -1.0, 1.0)
    y = np.clip((excess.sum(axis=2) * grid).sum(axis=1) / safe, -1.0, 1.0)
    return np.stack([x, y, np.maximum(total, 1.0), b, np.full(m, sigma_px)], axis=1)


def _bounded(params: np.ndarray, r: int, sigma_px: float) -> np.ndarray:
    """Clip to the region where the model is meaningful (mu > 0, sigma not degenerate)."""
    out = params.copy()
    out[:, 0:2] = np.clip(out[:, 0:2], -r - 1.0, r + 1.0)
    out[:, 2] = np.maximum(out[:, 2], 1e-3)
    out[:, 3] = np.maximum(out[:, 3], 1e-3)
    out[:, 4] = np.clip(out[:, 4], 0.25 * sigma_px, 4.0 * sigma_px)
    return out


def _newton_step(state: _State, params: np.ndarray, damping: np.ndarray) -> np.ndarray:
    """Levenberg-Marquardt-damped Newton step, limited per iteration to 1 px in position and to
    halving or tripling N, b and sigma (Smith et al. limit their steps too)."""
    diag = np.diagonal(state.hess, axis1=1, axis2=2)
    lhs = state.hess + (damping[:, None] * diag + 1e-12)[:, :, None] * np.eye(_N_PARAMS)
    ok = np.all(np.isfinite(lhs), axis=(1, 2)) & np.all(np.isfinite(state.grad), axis=1)
    lhs[~ok] = np.eye(_N_PARAMS)
    step = -np.linalg.solve(lhs, np.where(ok[:, None], state.grad, 0.0)[:, :, None])[:, :, 0]
    step[:, 0:2] = np.clip(step[:, 0:2], -1.0, 1.0)
    for k in (2, 3, 4):
        limit = 0.5 * params[:, k]
        step[:, k] = np.clip(step[:, k], -limit, 2.0 * params[:, k] + 1.0)
    return step


def fit_rois(rois: np.ndarray, sigma_px: float, max_iterations: int = 20,
             tolerance_px: float = 1e-3) -> Fits:
    """Poisson maximum-likelihood fit of an integrated Gaussian to every ROI at once.

    Converged: an accepted, nearly undamped step moved x, y and sigma by less than
    ``tolerance_px`` and N by less than ``tolerance_px`` relative (a heavily damped step is small
    because it is damped, not because the fit is at the optimum). Only the not-yet-converged fits
    are iterated."""
    m, n, _ = rois.shape
    r = (n - 1) // 2
    grid = np.arange(-r, r + 1, dtype=np.float64)
    data = rois.reshape(m, n * n).astype(np.float64)
    params = _bounded(_initial(rois.astype(np.float64), sigma_px), r, sigma_px)
    state = _evaluate(params, data, grid)
    damping = np.full(m, 1e-3)
    converged = np.zeros(m, bool)
    active = np.arange(m)
    for _ in range(max_iterations):
        if active.size == 0:
            break
        sub = _State(state.nll[active], state.grad[active], state.hess[active])
        p = params[active]
        step = _newton_step(sub, p, damping[active])
        proposal = _bounded(p + step, r, sigma_px)
        trial = _evaluate(proposal, data[active], grid)
        better = np.isfinite(trial.nll) & (trial.nll <= sub.nll + 1e-9 * np.abs(sub.nll))
        moved = np.abs(proposal - p)
        small = ((np.max(moved[:, [0, 1, 4]], axis=1) < tolerance_px)
                 & (moved[:, 2] < tolerance_px * p[:, 2]) & (damping[active] <= 0.1))
        accepted = active[better]
        params[accepted] = proposal[better]
        state.nll[accepted] = trial.nll[better]
        state.grad[accepted] = trial.grad[better]
        state.hess[accepted] = trial.hess[better]
        damping[active] = np.where(better, np.maximum(damping[active] * 0.1, 1e-7),
                                   np.minimum(damping[active] * 10.0, 1e7))
        converged[active[better & small]] = True
        active = active[~(better & small)]
    return Fits(params=params, crlb=_crlb(params, grid), converged=converged)


def _crlb(params: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """sqrt(diag(I^-1)), I = sum J J^T / mu: the Poisson Fisher information at the fit."""
    if len(params) == 0:
        return np.zeros((0, _N_PARAMS))
    mu, jac = _model(params, grid)
    fisher = np.einsum("mkp,mlp->mkl", jac / np.maximum(mu, 1e-9)[:, None, :], jac)
    ok = np.all(np.isfinite(fisher), axis=(1, 2)) & (np.linalg.det(fisher) > 0)
    fisher[~ok] = np.eye(_N_PARAMS)
    variances = np.diagonal(np.linalg.inv(fisher), axis1=1, axis2=2)
    out = np.sqrt(np.maximum(variances, 0.0))
    out[~ok] = np.nan
    return out


# -- (d)-(f) rejection and the table -------------------------------------------------------------


def accept(fits: Fits, roi_px: int, sigma_px: float, sigma_range: tuple[float, float]) -> np.ndarray:
    """The fits a baseline should report: converged, centre inside the ROI, sigma plausible."""
    p = fits.params
    inside = (np.abs(p[:, 0]) <= roi_px) & (np.abs(p[:, 1]) <= roi_px)
    sigma_ok = (p[:, 4] >= sigma_range[0] * sigma_px) & (p[:, 4] <= sigma_range[1] * sigma_px)
    finite = np.all(np.isfinite(p), axis=1) & np.all(np.isfinite(fits.crlb[:, :2]), axis=1)
    return fits.converged & inside & sigma_ok & finite


def localise_classical(frames_photons: np.ndarray, pixel_size_nm: float, sigma_nm: float,
                       threshold: float = 1.0, roi_px: int = 3, first_frame: int = 1, *,
                       max_iterations: int = 20, sigma_range: tuple[float, float] = (0.5, 2.0),
                       chunk_frames: int = 256) -> EmitterTable:
    """Localise every frame of a (T, H, W) (or (H, W)) stack already in photons.

    ``sigma_nm`` is the initial PSF sigma (ThunderSTORM's default is 1.6 px); ``threshold`` the
    multiple of std(F1) (ThunderSTORM's default 1.0); ``roi_px`` the fitting radius r. Frames are
    numbered from ``first_frame``. Positions follow the pixel-corner convention of
    ``EmitterTable``: the centre of pixel column i is at (i + 0.5) * pixel_size_nm."""
    frames = np.asarray(frames_photons)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3:
        raise ValueError(f"frames must be (T, H, W) or (H, W), got shape {frames.shape}")
    sigma_px = sigma_nm / pixel_size_nm
    tables = []
    for start in range(0, frames.shape[0], chunk_frames):
        chunk = frames[start:start + chunk_frames].astype(np.float64)
        tables.append(_localise_chunk(chunk, pixel_size_nm, sigma_px, threshold, roi_px,
                                      first_frame + start, max_iterations, sigma_range))
    return EmitterTable.concatenate(tables)


def _localise_chunk(frames: np.ndarray, pixel_size_nm: float, sigma_px: float, threshold: float,
                    roi_px: int, first_frame: int, max_iterations: int,
                    sigma_range: tuple[float, float]) -> EmitterTable:
    if min(frames.shape[1:]) < 2 * roi_px + 1:
        return EmitterTable.empty()
    cand = detect(frames, threshold, roi_px)
    if cand.t.size == 0:
        return EmitterTable.empty()
    rois = extract_rois(frames, cand, roi_px)
    # Batches bound the memory of the (M, 5, P) Jacobians on crowded or large frames.
    batches = [fit_rois(rois[i:i + _FIT_BATCH], sigma_px, max_iterations)
               for i in range(0, len(rois), _FIT_BATCH)]
    fits = Fits(params=np.concatenate([f.params for f in batches]),
                crlb=np.concatenate([f.crlb for f in batches]),
                converged=np.concatenate([f.converged for f in batches]))
    keep = accept(fits, roi_px, sigma_px, sigma_range)
    p, u = fits.params[keep], fits.crlb[keep]
    # Fit offsets are from the candidate pixel's centre, which lies at (index + 0.5) px.
    return EmitterTable.from_columns(
        frame=cand.t[keep] + first_frame,
        x_nm=(cand.col[keep] + 0.5 + p[:, 0]) * pixel_size_nm,
        y_nm=(cand.row[keep] + 0.5 + p[:, 1]) * pixel_size_nm,
        photons=p[:, 2], background_photons=p[:, 3], sigma_nm=p[:, 4] * pixel_size_nm,
        x_uncertainty_nm=u[:, 0] * pixel_size_nm, y_uncertainty_nm=u[:, 1] * pixel_size_nm,
        probability=np.ones(int(keep.sum())))


# -- command line --------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="ThunderSTORM-like localisation of a TIFF stack into a "
                                             "ThunderSTORM CSV.")
    ap.add_argument("tiff", type=Path, help="stack (T, H, W) in camera counts (ADU)")
    ap.add_argument("csv", type=Path, help="output ThunderSTORM CSV")
    ap.add_argument("--pixel-size", type=float, required=True, help="back-projected pixel, nm")
    ap.add_argument("--baseline", type=float, default=0.0, help="camera offset, ADU")
    ap.add_argument("--e-per-adu", type=float, default=1.0,
                    help="photoelectrons per ADU (divided by the EM gain for an EMCCD)")
    sigma = ap.add_mutually_exclusive_group()
    sigma.add_argument("--sigma-nm", type=float, help="initial PSF sigma, nm")
    sigma.add_argument("--sigma-px", type=float, default=1.6,
                       help="initial PSF sigma, px (default 1.6, ThunderSTORM's)")
    ap.add_argument("--threshold", type=float, default=1.0, help="multiple of std(Wave.F1)")
    ap.add_argument("--roi", type=int, default=3, help="fitting radius r, px")
    ap.add_argument("--overwrite", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import tifffile

    args = _parse(argv)
    adu = tifffile.imread(args.tiff)
    photons = (np.asarray(adu, dtype=np.float64) - args.baseline) * args.e_per_adu
    sigma_nm = args.sigma_nm if args.sigma_nm is not None else args.sigma_px * args.pixel_size
    started = time.perf_counter()
    table = localise_classical(photons, args.pixel_size, sigma_nm, threshold=args.threshold,
                               roi_px=args.roi)
    seconds = time.perf_counter() - started
    table.write_csv(args.csv, overwrite=args.overwrite)
    n_frames = 1 if photons.ndim == 2 else photons.shape[0]
    print(f"{len(table)} localisations in {n_frames} frames, {seconds:.2f} s "
          f"({n_frames / max(seconds, 1e-9):.0f} frames/s) -> {args.csv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

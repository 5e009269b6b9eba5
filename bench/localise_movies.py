"""The movies of bench/localise_quality.py: virtual ones from the training simulator (2-D and
astigmatic 3-D, with the astigmatic PSF's measured widths) and the NAIRR-SMLM sets read from disk."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy.interpolate import CubicSpline
from scipy.optimize import least_squares
from scipy.special import erf

from livescope.emitters import EmitterTable
from livescope.modelcard import ModelCard
from livescope.models.localise.data import SCMOS, LocaliseBatch, LocaliseSimulation, render_emitters, simulate_batch
from livescope.models.localise.metrics import SigmaOfZ

PIXEL_NM = 100.0
SIGMA_PX = 1.1
FRAME_PX = 64
NAIRR_OFFSET_ADU = 500.0
Z_STEP_NM = 20.0  # z grid of the PSF widths and of the bound's average (the simulator's plane spacing)
PSF_FIT_HALF_PX = 25  # the calibration ROI's half-width: > 4 sigma at the widest (~550 nm at 700 nm)


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
    sigma_range: tuple[float, float] | None = None  # the classical fitter's accepted sigmas / sigma_nm (None: its own)


def simulation(density: float, photons: float, background: float) -> LocaliseSimulation:
    # Single-valued ranges fix the condition; photons_frame_cv 0 keeps every emitter at `photons`.
    return LocaliseSimulation(psf="gaussian", frame_shape_px=(FRAME_PX, FRAME_PX), density_per_um2=(density, density),
                              photons=(photons, photons), photons_frame_cv=0.0,
                              background_photons_per_px=(background, background),
                              pixel_size_nm=(PIXEL_NM, PIXEL_NM), psf_sigma_px=(SIGMA_PX, SIGMA_PX), cameras=(SCMOS,))


def photo_electrons(batch: LocaliseBatch) -> np.ndarray:
    """(ADU - baseline) x e-/ADU: what the network was trained on, as a calibration gives."""
    return np.ascontiguousarray(batch.photo_electrons())


def virtual_movie(name: str, config: LocaliseSimulation, n: int, seed: int,
                  sigma_nm: float = SIGMA_PX * PIXEL_NM, sigma_range: tuple[float, float] | None = None) -> Movie:
    batch = simulate_batch(config, n, np.random.default_rng(seed))
    windows = photo_electrons(batch)
    truth = batch.truth_frames[-1].select(batch.inside_frames[-1])  # sample i is frame i + 1
    return Movie(name=name, frames=np.ascontiguousarray(windows[:, -1]), windows=windows, truth=truth,
                 pixel_nm=PIXEL_NM, sigma_nm=sigma_nm, photons_e=config.photons[0] * SCMOS.qe,
                 sigma_range=sigma_range)


def trained_simulation(card: ModelCard) -> LocaliseSimulation | None:
    """The simulation a model was trained on, from its card's provenance ("simulated on the fly:
    {json}", models/localise/train.py); None if the card does not record one."""
    try:
        return LocaliseSimulation.model_validate_json(card.provenance.data.split(":", 1)[-1])
    except ValueError:  # pydantic's ValidationError is one
        return None


def simulation_3d(density: float, photons: float, background: float, optics: dict,
                  z_range_nm: tuple[float, float]) -> LocaliseSimulation:
    """As ``simulation``, with the astigmatic PSF of ``optics`` and z uniform over ``z_range_nm``."""
    return LocaliseSimulation(psf="astigmatic", frame_shape_px=(FRAME_PX, FRAME_PX), density_per_um2=(density, density),
                              photons=(photons, photons), photons_frame_cv=0.0,
                              background_photons_per_px=(background, background),
                              pixel_size_nm=(PIXEL_NM, PIXEL_NM), z_range_nm=z_range_nm, cameras=(SCMOS,), **optics)


@dataclass(frozen=True)
class AstigmaticWidths:
    """Gaussian-equivalent widths of the simulated astigmatic PSF against z, measured as a bead
    calibration measures them: a pixel-integrated elliptical Gaussian (sigma_x, sigma_y, photons;
    centred, no background) least-squares fitted to the noise-free PSF, rendered by the training
    simulator on the bench's 100 nm pixels, the emitter at a pixel centre, one fit per Z_STEP_NM."""

    z_nm: np.ndarray
    sigma_x_nm: np.ndarray
    sigma_y_nm: np.ndarray
    light: np.ndarray  # the fitted Gaussian's photons per emitter photon (< 1: the halo beyond the kernel is cut)

    def of_z(self) -> tuple[SigmaOfZ, SigmaOfZ]:
        # Cubic splines: smooth, so the bound's central difference d sigma / dz is meaningful.
        sx, sy = CubicSpline(self.z_nm, self.sigma_x_nm), CubicSpline(self.z_nm, self.sigma_y_nm)
        return (lambda z: float(sx(z))), (lambda z: float(sy(z)))

    def light_of_z(self) -> Callable[[float], float]:
        return lambda z: float(np.interp(z, self.z_nm, self.light))

    def summary(self, step_nm: float = 100.0) -> dict:
        every = max(int(round(step_nm / Z_STEP_NM)), 1)
        pick = slice(2, len(self.z_nm) - 2, every)  # the z range itself (2 extra planes each side)
        fx, fy = np.argmin(self.sigma_x_nm), np.argmin(self.sigma_y_nm)
        return {"x_focus_z_nm": round(float(self.z_nm[fx]), 1), "y_focus_z_nm": round(float(self.z_nm[fy]), 1),
                "z_nm": [round(float(v), 1) for v in self.z_nm[pick]],
                "sigma_x_nm": [round(float(v), 1) for v in self.sigma_x_nm[pick]],
                "sigma_y_nm": [round(float(v), 1) for v in self.sigma_y_nm[pick]],
                "gaussian_photons_fraction": [round(float(v), 3) for v in self.light[pick]],
                "method": "pixel-integrated elliptical Gaussian least-squares fit to the simulator's noise-free "
                          f"PSF, {PIXEL_NM:g} nm pixels, emitter at a pixel centre"}


def _pixel_gaussian(half: int, sigma_px: float) -> np.ndarray:
    """A unit Gaussian integrated over the 2 half + 1 pixels centred on its mean."""
    edges = (np.arange(-half, half + 2) - 0.5) / (np.sqrt(2.0) * sigma_px)
    return np.diff(0.5 * erf(edges))


def measure_astigmatic_widths(config: LocaliseSimulation) -> AstigmaticWidths:
    """``config``'s PSF widths every Z_STEP_NM over its z range and 2 planes beyond (for splines)."""
    lo, hi = config.z_range_nm
    z = np.arange(lo - 2 * Z_STEP_NM, hi + 2.5 * Z_STEP_NM, Z_STEP_NM)
    half = PSF_FIT_HALF_PX
    centre = (half + 0.5) * PIXEL_NM
    out = np.zeros((z.size, 3))
    for i, zi in enumerate(z):
        image = render_emitters(config, (2 * half + 1, 2 * half + 1), np.array([centre]), np.array([centre]),
                                np.array([1.0]), PIXEL_NM, z_nm=np.array([zi])).astype(np.float64)

        def residual(p: np.ndarray, image: np.ndarray = image) -> np.ndarray:
            n, sx, sy = p
            return (n * np.outer(_pixel_gaussian(half, sy), _pixel_gaussian(half, sx)) - image).ravel()

        out[i] = least_squares(residual, [image.sum(), 1.0, 1.0], bounds=([0.0, 0.1, 0.1], [2.0, 20.0, 20.0])).x
    return AstigmaticWidths(z_nm=z, sigma_x_nm=out[:, 1] * PIXEL_NM, sigma_y_nm=out[:, 2] * PIXEL_NM, light=out[:, 0])


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


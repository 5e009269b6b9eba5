"""Lateral drift of an SMLM acquisition, estimated from its own localisations (numpy only).

Redundant cross-correlation (RCC; Wang et al., Opt Express 2014, as Picasso and ThunderSTORM do):
the frames are cut into ``segments`` time segments of equal length; each segment's emitters are
rendered (Gaussians of their uncertainties); every pair of segments (i < j) is cross-correlated
by FFT and the correlation peak, fitted to sub-pixel by a Gaussian through its 3 x 3 neighbourhood,
measures d_j - d_i. The n (n - 1) / 2 measurements over-determine the n - 1 unknown drifts (the
first segment's is 0): least squares, then the pairs whose residual is far beyond the others'
(a peak on a wrong repeat of the structure) are dropped and it is solved again. The segments'
drifts, at their mean frames, are interpolated linearly per frame (extrapolated linearly before
the first and after the last segment's centre) and referred to the first frame: the corrected
positions are where the emitters were at the start of the acquisition.

Positions carry the sample's drift: an emitter localised at x in frame f was at x - d(f) at the
start, so the correction subtracts d(f) (``DriftEstimate.corrected``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from livescope.emitters import EmitterTable
from livescope.render import RenderGrid, finest_render_pixel_nm, gaussian

DRIFT_MAX_PIXELS = 2**21
"""The largest segment render correlated (about 1450 px square): a larger field is correlated at
coarser pixels (the sub-pixel fit keeps the estimate to a fraction of one)."""


@dataclass(frozen=True)
class DriftEstimate:
    """Per-frame lateral drift (nm) relative to the first frame, for frames ``first_frame``.. on."""

    first_frame: int
    x_nm: np.ndarray  # (frames,) drift of frame first_frame + k
    y_nm: np.ndarray
    segments: int
    pairs_used: int

    def at(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The drift (x, y, nm) of each of ``frames`` (frames outside the estimate: its end's)."""
        k = np.clip(np.asarray(frames, np.int64) - self.first_frame, 0, self.x_nm.size - 1)
        return self.x_nm[k], self.y_nm[k]

    def corrected(self, table: EmitterTable) -> EmitterTable:
        """The table with each emitter moved back by its frame's drift."""
        dx, dy = self.at(table["frame"])
        rows = table.rows.copy()
        rows["x_nm"] = rows["x_nm"] - dx
        rows["y_nm"] = rows["y_nm"] - dy
        return EmitterTable(rows)

    @property
    def final_nm(self) -> tuple[float, float]:
        """The drift (x, y) of the last frame estimated."""
        return float(self.x_nm[-1]), float(self.y_nm[-1])

    @property
    def max_nm(self) -> float:
        """The largest lateral drift of any frame from the first."""
        return float(np.max(np.hypot(self.x_nm, self.y_nm)))


def estimate_drift(table: EmitterTable, width_nm: float, height_nm: float, *, segments: int = 10,
                   pixel_nm: float = 20.0, max_shift_nm: float = 1000.0, min_emitters_per_segment: int = 50,
                   max_pixels: int = DRIFT_MAX_PIXELS) -> DriftEstimate | None:
    """RCC drift of ``table``'s field (``width_nm`` x ``height_nm``); None where the table is too
    small to tell (fewer than 2 segments of 2 frames and ``min_emitters_per_segment`` emitters each:
    ``segments`` is the most it is cut into).
    ``max_shift_nm``: the largest drift between two segments looked for."""
    frames = table["frame"].astype(np.int64)
    if not frames.size:
        return None
    first, last = int(frames.min()), int(frames.max())
    n_frames = last - first + 1
    # fewer segments for a short or sparse table: each needs frames and emitters to correlate
    segments = min(segments, n_frames // 2, frames.size // min_emitters_per_segment)
    if segments < 2:
        return None
    edges = first + np.round(np.linspace(0, n_frames, segments + 1)).astype(np.int64)
    which = np.searchsorted(edges, frames, side="right") - 1
    counts = np.bincount(which, minlength=segments)
    if counts.min() < min_emitters_per_segment // 2:  # a gap in the localisations: nothing to correlate
        return None
    pixel_nm = max(pixel_nm, finest_render_pixel_nm(width_nm, height_nm, max_pixels))
    grid = RenderGrid(width_nm=width_nm, height_nm=height_nm, pixel_nm=pixel_nm)
    spectra = []
    for s in range(segments):
        # Gaussians at least a pixel wide: a smooth correlation peak, fitted to sub-pixel
        image = gaussian(table.select(which == s), grid, min_sigma_nm=pixel_nm).image.astype(np.float64)
        spectra.append(np.fft.rfft2(image - image.mean()))
    shape = grid.shape
    reach = max(1, int(np.ceil(max_shift_nm / pixel_nm)))
    pairs, shifts = [], []
    for i in range(segments):
        for j in range(i + 1, segments):
            pairs.append((i, j))
            shifts.append(_peak_shift_px(np.fft.irfft2(spectra[j] * np.conj(spectra[i]), shape), reach))
    d = _solve(np.array(pairs), np.array(shifts) * pixel_nm, segments)
    if d is None:
        return None
    drift, used = d
    centres = np.array([frames[which == s].mean() for s in range(segments)])
    all_frames = np.arange(first, last + 1)
    x, y = (_interpolate(all_frames, centres, drift[:, k]) for k in (0, 1))
    return DriftEstimate(first_frame=first, x_nm=x - x[0], y_nm=y - y[0], segments=segments, pairs_used=used)


def _peak_shift_px(corr: np.ndarray, reach: int) -> tuple[float, float]:
    """(x, y) of the correlation's highest peak within ``reach`` px of no shift, to sub-pixel."""
    corr = np.fft.fftshift(corr)
    cy, cx = corr.shape[0] // 2, corr.shape[1] // 2
    r0, c0 = max(1, cy - reach), max(1, cx - reach)
    window = corr[r0:min(corr.shape[0] - 1, cy + reach + 1), c0:min(corr.shape[1] - 1, cx + reach + 1)]
    r, c = np.unravel_index(int(np.argmax(window)), window.shape)
    r, c = r + r0, c + c0
    dy = _vertex(corr[r - 1, c], corr[r, c], corr[r + 1, c])
    dx = _vertex(corr[r, c - 1], corr[r, c], corr[r, c + 1])
    return c + dx - cx, r + dy - cy


def _vertex(left: float, centre: float, right: float) -> float:
    """Sub-pixel offset of a peak from its 3 samples: a Gaussian's (a parabola through their logs),
    a parabola's where a sample is not positive."""
    if min(left, centre, right) > 0:
        left, centre, right = np.log(left), np.log(centre), np.log(right)
    denom = left - 2 * centre + right
    return float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5)) if denom < 0 else 0.0


def _solve(pairs: np.ndarray, measured: np.ndarray, n: int) -> tuple[np.ndarray, int] | None:
    """Per-segment drift (n, 2) from pairwise differences d_j - d_i (first segment 0), least
    squares; pairs with outlying residuals dropped and solved again (RCC's rejection)."""
    a = np.zeros((len(pairs), n))
    a[np.arange(len(pairs)), pairs[:, 1]] = 1.0
    a[np.arange(len(pairs)), pairs[:, 0]] -= 1.0
    a = a[:, 1:]
    keep = np.ones(len(pairs), bool)
    sol, *_ = np.linalg.lstsq(a, measured, rcond=None)
    residual = np.hypot(*(a @ sol - measured).T)
    ok = residual <= max(3.0 * float(np.median(residual)), 1.0)
    # solved again without the outliers, if every segment is still tied to the first
    if not ok.all() and np.linalg.matrix_rank(a[ok]) == n - 1:
        keep = ok
        sol, *_ = np.linalg.lstsq(a[keep], measured[keep], rcond=None)
    return np.vstack([np.zeros((1, 2)), sol]), int(keep.sum())


def _interpolate(frames: np.ndarray, centres: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Linear through the segments' centres, and linear beyond them (the end segments' slope)."""
    out = np.interp(frames, centres, values)
    before, after = frames < centres[0], frames > centres[-1]
    out[before] = values[0] + (frames[before] - centres[0]) * (values[1] - values[0]) / (centres[1] - centres[0])
    out[after] = values[-1] + (frames[after] - centres[-1]) * (values[-1] - values[-2]) / (centres[-1] - centres[-2])
    return out

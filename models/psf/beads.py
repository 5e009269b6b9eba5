"""Beads in bead z-stacks for the PSF calibration: found in each stack's max projection, rejected
with a reason where their ROI would be unusable, cropped, and measured by their second moments
(the fit's starting values: each bead's focus and the split between its x and y foci)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage
from skimage.feature import peak_local_max


class BeadRejection(BaseModel):
    """A bead candidate left out of the fit, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stack: int = Field(ge=0, description="index of the stack it was found in")
    x_nm: float
    y_nm: float
    reason: str


@dataclass(frozen=True)
class BeadCandidate:
    """A bead found in a stack: its peak (row, col) in the max projection."""

    stack: int
    row: int
    col: int


def default_roi_half_px(pixel_size_nm: float, emission_nm: float, na: float) -> int:
    """Half-width of a bead's ROI: 3 lambda / NA, which holds most of the astigmatic PSF over +-0.8 um."""
    return max(4, math.ceil(3 * emission_nm / na / pixel_size_nm))


def detect_beads(stacks: Sequence[np.ndarray], *, roi_half_px: int, baseline_adu: float, pixel_size_nm: float,
                 saturation_adu: float | None = None, min_snr: float = 10.0,
                 ) -> tuple[list[BeadCandidate], list[BeadRejection]]:
    """Beads in (Z, H, W) ADU stacks: peaks of each stack's (lightly smoothed) max projection that
    stand ``min_snr`` noise sigmas above its background; then those whose ROI would cross the
    image's edge, overlap another bead's ROI, or hold a pixel at ``saturation_adu`` are rejected,
    each with its reason."""
    kept: list[BeadCandidate] = []
    rejected: list[BeadRejection] = []
    for index, stack in enumerate(stacks):
        projection = ndimage.gaussian_filter(stack.max(axis=0).astype(np.float64) - baseline_adu, 1.0)
        background = float(np.median(projection))
        noise = 1.4826 * float(np.median(np.abs(projection - background))) or 1.0
        peaks = peak_local_max(projection, min_distance=max(2, roi_half_px // 2), exclude_border=False,
                               threshold_abs=background + min_snr * noise)
        h, w = stack.shape[1:]
        for row, col in peaks:
            reason = None
            if row < roi_half_px or col < roi_half_px or row >= h - roi_half_px or col >= w - roi_half_px:
                reason = "too close to the image edge for its ROI"
            else:
                near = [(r, c) for r, c in peaks if (r, c) != (row, col)
                        and max(abs(r - row), abs(c - col)) <= 2 * roi_half_px]
                if near:
                    reason = f"overlaps the bead at row {near[0][0]}, col {near[0][1]}"
                elif saturation_adu is not None and stack[:, row - roi_half_px:row + roi_half_px + 1,
                                                         col - roi_half_px:col + roi_half_px + 1].max() >= saturation_adu:
                    reason = f"saturated (a pixel at {saturation_adu:g} ADU)"
            if reason is None:
                kept.append(BeadCandidate(index, int(row), int(col)))
            else:
                rejected.append(BeadRejection(stack=index, x_nm=(col + 0.5) * pixel_size_nm,
                                              y_nm=(row + 0.5) * pixel_size_nm, reason=reason))
    return kept, rejected


def crop_rois(stacks: Sequence[np.ndarray], beads: Sequence[BeadCandidate], roi_half_px: int) -> np.ndarray:
    """(N, Z, R, R) float64 ADU: each bead's stack around its peak, R = 2 roi_half_px + 1."""
    r = roi_half_px
    return np.stack([stacks[b.stack][:, b.row - r:b.row + r + 1, b.col - r:b.col + r + 1].astype(np.float64)
                     for b in beads])


# -- starting values ------------------------------------------------------------------------------


def second_moments(rois: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image (..., R, R) above its border's median: variance along x (cols) and y (rows), px^2,
    within the ROI's inscribed disc."""
    r = rois.shape[-1] // 2
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    disc = (yy**2 + xx**2) <= r * r
    border = np.concatenate([rois[..., 0, :], rois[..., -1, :], rois[..., :, 0], rois[..., :, -1]], axis=-1)
    signal = np.clip(rois - np.median(border, axis=-1)[..., None, None], 0, None) * disc
    total = signal.sum(axis=(-2, -1)) + 1e-12
    cy = (signal * yy).sum(axis=(-2, -1)) / total
    cx = (signal * xx).sum(axis=(-2, -1)) / total
    vy = (signal * yy**2).sum(axis=(-2, -1)) / total - cy**2
    vx = (signal * xx**2).sum(axis=(-2, -1)) / total - cx**2
    return vx, vy


def focus_of(curve: np.ndarray, z_um: np.ndarray) -> float:
    """z of a width curve's minimum (parabola through its 5 nearest points)."""
    i = int(np.argmin(ndimage.uniform_filter1d(curve, 3, mode="nearest")))
    lo, hi = max(0, i - 2), min(len(z_um), i + 3)
    if hi - lo >= 3:
        a, b, _ = np.polyfit(z_um[lo:hi], curve[lo:hi], 2)
        if a > 0 and z_um[lo] <= -b / (2 * a) <= z_um[hi - 1]:
            return float(-b / (2 * a))
    return float(z_um[i])

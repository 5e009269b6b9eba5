"""Registration of a z-stack's planes: the lateral drift between them, measured (normalised
cross-correlation of plane pairs, a smooth drift fitted robustly) and removed; implausible stacks
are refused (`register_stack`, `register_stacks`).

Measured on the virtual microscope's stacks, aligned by construction, and on its frames with
known stage offsets; why this is not "phase correlation of adjacent planes, accumulated":
(1) skimage's phase correlation (with or without phase normalisation, windowing, band-pass)
shrank known 1-3 px offsets of same-plane frames to about half or less: large structures cut by
the frame edge correlate best unshifted; normalised cross-correlation over the frames' overlap
(`_ncc_shift`) recovered them to ~0.2 px (median) where the field has structure. (2) Chaining
adjacent planes adds their errors up as a random walk: 1-16 px of spurious drift over 25
planes. So the drift is a smooth model (a line in plane index by default), fitted robustly to
the shifts between every pair of planes 1 to 4 apart whose correlation shows structure: every
pair constrains the slope, and errors do not accumulate.

Limits, inherent in the data: a field with too little structure (empty, or one blob cut by the
frame edge) cannot be registered to better than ~1 px; and in a thick specimen, a structure
inclined in z (a filament rising through the stack) has its in-focus part slide along it from
plane to plane -- real apparent motion, which registration cannot tell from drift. Virtual
stacks are aligned by construction: do not register them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from livescope.models.refocus.data import UINT16_MAX, ZStack

TRUST_CORRELATION = 0.5
"""Plane pairs whose normalised correlation is below this carry too little structure to measure
a shift (noise-dominated, e.g. far from focus in a sparse field)."""
MAX_BASELINE = 4  # planes apart: further, defocus changes the image too much to compare


@dataclass(frozen=True)
class RegistrationReport:
    """What `register_stack` measured and did. Shifts are (dy, dx) in pixels: the shift that,
    applied to a plane, aligns it with the middle plane."""

    source: str
    shifts_px: np.ndarray  # (Z, 2): the drift model, per plane (applied when ``applied``)
    pairs_measured: int  # plane pairs compared
    pairs_used: int  # of those: with structure, and consistent with the model
    residual_px: float  # largest misfit of a used pair's shift to the model
    applied: bool  # False: drift below `min_shift_px` (nothing to correct), or refused
    crop_px: int  # border cut off every side after shifting (no data came from there)
    ok: bool
    problem: str | None = None

    def summary(self) -> str:
        largest = float(np.abs(self.shifts_px).max()) if self.shifts_px.size else 0.0
        what = (f"shifted (drift up to {largest:.2f} px), cropped {self.crop_px} px" if self.applied
                else f"drift up to {largest:.2f} px, left as is")
        verdict = "" if self.ok else f"; REFUSED: {self.problem}"
        return (f"{self.source}: {what}, {self.pairs_used}/{self.pairs_measured} plane pairs used, "
                f"residual {self.residual_px:.2f} px{verdict}")


def _ncc_shift(reference: np.ndarray, moving: np.ndarray,
               radius_px: int) -> tuple[np.ndarray, float, np.ndarray] | None:
    """(shift, correlation, sharpness): the (dy, dx) that, applied to ``moving``, aligns it with
    ``reference`` (|shift| < ``radius_px``), to sub-pixel by a parabola through the peak; the
    normalised correlation there; and the peak's curvature along y and x (how well it locates the
    shift along each). None when the peak lies on the edge of the search.

    Normalised cross-correlation over the two frames' overlap at every shift (means and
    variances over the overlap only: Padfield 2012), so structures leaving or entering the frame
    as it shifts do not pull the peak, and an offset or gain between planes does not matter.
    """
    h, w = reference.shape
    size = (2 * h, 2 * w)  # zero-padded: linear, not circular, correlation

    def spectrum(x: np.ndarray) -> np.ndarray:
        return np.fft.rfft2(x, size)

    def corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:  # sum_r x(r) y(r - s)
        return np.fft.irfft2(x * np.conj(y), size)

    a, b = reference.astype(np.float64), moving.astype(np.float64)
    a, b = a - a.mean(), b - b.mean()  # keeps the sums below well conditioned
    ones = spectrum(np.ones((h, w)))
    fa, fb = spectrum(a), spectrum(b)
    n = np.maximum(np.rint(corr(ones, ones)), 1.0)
    sum_a, sum_b = corr(fa, ones), corr(ones, fb)
    covariance = corr(fa, fb) - sum_a * sum_b / n
    variances = (corr(spectrum(a * a), ones) - sum_a**2 / n) * (corr(ones, spectrum(b * b)) - sum_b**2 / n)
    floor = 1e-9 * float(variances.max()) if variances.max() > 0 else 1.0
    ncc = np.fft.fftshift(np.where(variances > floor, covariance / np.sqrt(np.maximum(variances, floor)), 0.0))
    r = radius_px
    window = ncc[h - r:h + r + 1, w - r:w + r + 1]  # zero shift at (r, r)
    iy, ix = np.unravel_index(int(np.argmax(window)), window.shape)
    if not (0 < iy < 2 * r and 0 < ix < 2 * r):
        return None

    def vertex(m: float, c: float, p: float) -> tuple[float, float]:
        curvature = m - 2 * c + p
        return (float(np.clip(0.5 * (m - p) / curvature, -0.5, 0.5)), -curvature) if curvature < 0 else (0.0, 0.0)

    (oy, cy), (ox, cx) = vertex(*window[iy - 1:iy + 2, ix]), vertex(*window[iy, ix - 1:ix + 2])
    return np.array([iy - r + oy, ix - r + ox]), float(window[iy, ix]), np.array([cy, cx])


def _smoothed(planes: np.ndarray) -> np.ndarray:
    """Planes with the pixel noise smoothed out (sigma 1 px: below the PSF's ~0.8 px sigma)."""
    from scipy.ndimage import gaussian_filter

    return np.stack([gaussian_filter(p.astype(np.float64), 1.0) for p in planes])


def _fit_drift(pairs: list[tuple[int, int, np.ndarray, np.ndarray]], n_planes: int,
               degree: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The drift D(i) = sum_d c_d i^d (d = 1..degree), per axis, whose differences D(j) - D(i)
    fit the pairs' (i, j, shift, weight) shifts, refitted without outliers (more than 3 robust
    sigmas, and 0.5 px, off); returns D for every plane, the pairs that were inliers on both
    axes and the largest inlier misfit."""
    degree = max(1, min(degree, n_planes - 2))
    powers = np.arange(1, degree + 1)
    scale = float(n_planes - 1) ** powers  # keeps the columns comparable
    design = np.array([(float(j) ** powers - float(i) ** powers) / scale for i, j, _, _ in pairs])
    shifts = np.array([s for _, _, s, _ in pairs])
    weights = np.array([wt for _, _, _, wt in pairs])
    index = np.arange(n_planes, dtype=np.float64)[:, None] ** powers / scale
    drift, both, worst = np.zeros((n_planes, 2)), np.ones(len(pairs), bool), 0.0
    for axis in range(2):
        root = np.sqrt(weights[:, axis])
        inliers = root > 0
        while inliers.sum() >= 3:
            coeffs = np.linalg.lstsq(design[inliers] * root[inliers, None], shifts[inliers, axis] * root[inliers],
                                     rcond=None)[0]
            misfit = np.abs(shifts[:, axis] - design @ coeffs)
            keep = (misfit <= max(3 * 1.4826 * float(np.median(misfit[inliers])), 0.5)) & (root > 0)
            if np.array_equal(keep, inliers) or keep.sum() < 3:
                break
            inliers = keep
        if inliers.sum() < 3:  # this axis is not measured (e.g. structures all along it)
            both[:] = False
            continue
        drift[:, axis] = index @ coeffs
        both &= inliers
        worst = max(worst, float(misfit[inliers].max()))
    return drift, both, worst


def _fourier_shift(image: np.ndarray, shift_px: np.ndarray, pad: int) -> np.ndarray:
    """``image`` shifted by ``shift_px`` in Fourier space (exact for band-limited images, with
    no interpolation blur to vary from plane to plane like defocus), over a reflected border so
    that the periodic wrap does not ring into the frame."""
    from scipy.ndimage import fourier_shift

    padded = np.pad(image.astype(np.float64), pad, mode="reflect")
    moved = np.fft.ifft2(fourier_shift(np.fft.fft2(padded), shift_px)).real
    return moved[pad:-pad, pad:-pad]


def register_stack(stack: ZStack, *, min_shift_px: float = 0.5, max_shift_fraction: float = 0.1,
                   drift_degree: int = 1) -> tuple[ZStack, RegistrationReport]:
    """Align every plane laterally with the middle plane.

    Every pair of planes 1 to `MAX_BASELINE` apart is compared (`_ncc_shift`, planes smoothed by
    1 px); pairs that correlate below `TRUST_CORRELATION`, or whose peak lies at the edge of the
    search, are not used. The drift, a polynomial of ``drift_degree`` (1: linear) in plane
    index, is fitted robustly to the rest, each pair weighted by how sharply it locates the
    shift. Planes are shifted (Fourier shift) only when the drift reaches ``min_shift_px``
    somewhere: below that, shifting would only resample the noise (0.5 px is a quarter of the
    in-focus PSF's FWHM on the default rig). After shifting, the border that some plane lacks
    is cut off.

    Refused (returned as it was, ``ok`` False, with the problem, for the caller to drop rather
    than use unregistered): drift over ``max_shift_fraction`` of the frame (not one field's
    z-stack?), or fewer than 3 plane pairs with structure to measure.
    """
    z, h, w = stack.planes_adu.shape
    limit = max_shift_fraction * min(h, w)
    smooth = _smoothed(stack.planes_adu)
    pairs, measured = [], 0
    for k in range(1, min(MAX_BASELINE, z - 1) + 1):
        # Far enough to see a drift twice the plausible one, spread over the stack.
        radius = min(math.ceil(2 * limit * k / (z - 1)) + 2, min(h, w) // 4)
        for i in range(z - k):
            found = _ncc_shift(smooth[i], smooth[i + k], radius)
            measured += 1
            if found is None or found[1] < TRUST_CORRELATION:
                continue
            # ``shift`` aligns plane i + k with plane i: D(i + k) - D(i), where D(j) aligns j with
            # plane 0. Weight: the peak's sharpness squared over the uncorrelated part, ~ the
            # inverse variance of the shift -- a blurred plane's broad peak locates little, and a
            # filament locates nothing along itself.
            shift, rho, sharpness = found
            pairs.append((i, i + k, shift, sharpness**2 / max(1.0 - rho, 1e-3)))
    if len(pairs) < 3:
        problem = f"only {len(pairs)} of {measured} plane pairs have structure to register (an empty field?)"
        return stack, RegistrationReport(stack.source, np.zeros((z, 2)), measured, len(pairs), 0.0, False,
                                         0, False, problem)
    drift, inliers, residual = _fit_drift(pairs, z, drift_degree)
    if not inliers.any():
        problem = f"the {len(pairs)} plane pairs with structure do not locate a shift along both axes"
        return stack, RegistrationReport(stack.source, np.zeros((z, 2)), measured, 0, 0.0, False, 0, False,
                                         problem)
    shifts = drift - drift[z // 2]
    largest = float(np.abs(shifts).max())

    def report(applied: bool, crop: int, problem: str | None = None) -> RegistrationReport:
        return RegistrationReport(stack.source, shifts, measured, int(inliers.sum()), residual, applied,
                                  crop, problem is None, problem)

    if largest > limit:
        return stack, report(False, 0, f"drift up to {largest:.1f} px is over {max_shift_fraction:.0%} of "
                                       f"the {h}x{w} px frame: not one field's z-stack?")
    if largest < min_shift_px:
        return stack, report(False, 0)
    crop = math.ceil(largest)
    pad = crop + 8
    keep = (slice(crop, h - crop), slice(crop, w - crop))
    planes = np.stack([_fourier_shift(p, s, pad)[keep] for p, s in zip(stack.planes_adu, shifts)])
    planes = np.clip(np.rint(planes), 0, UINT16_MAX).astype(np.uint16)
    clean = None
    if stack.clean_adu is not None:
        clean = np.stack([_fourier_shift(p, s, pad)[keep] for p, s in zip(stack.clean_adu, shifts)])
        clean = clean.astype(np.float32)
    registered = ZStack(planes, clean, stack.z_um, stack.pixel_size_um, stack.source, stack.field_id)
    return registered, report(True, crop)


def register_stacks(stacks: Sequence[ZStack], **kwargs) -> tuple[list[ZStack], list[RegistrationReport]]:
    """`register_stack` on each; returns the registered stacks that passed, and every report
    (print the refused ones: they are left out, not used unregistered)."""
    kept, reports = [], []
    for stack in stacks:
        registered, report = register_stack(stack, **kwargs)
        reports.append(report)
        if report.ok:
            kept.append(registered)
    return kept, reports

"""Fourier ring correlation (FRC): the resolution a super-resolution image supports (numpy only).

Two images of the same field made from independent halves of the data (an SMLM table split by
blocks of frames) agree at the spatial frequencies where signal dominates and decorrelate where
noise does. Per ring of spatial frequency q (Saxton & Baumeister 1982; for SMLM Nieuwenhuizen et
al., Nat Methods 2013; Banterle et al., J Struct Biol 2013):

    FRC(q) = Re sum_{|k| in ring q} F1(k) F2*(k) / sqrt(sum |F1(k)|^2 sum |F2(k)|^2)

Before the transforms both images are multiplied by a Tukey window (flat in the middle, a cosine
taper over ``taper`` of each edge), so that the field's edges (a step, for the FFT's periodic
image) add no spurious correlation at high frequencies. The curve is smoothed by a short moving
average over rings (the raw curve of a sparse render is noisy ring to ring), and the resolution is
1 / q where the smoothed curve first drops below 1/7 (the fixed threshold the SMLM literature
uses), interpolated linearly between rings. A curve that never drops below it has no resolution
(``None``): the halves agree up to the render pixel's Nyquist frequency.

Written here, not taken from a library: the maintained implementations (NanoPyx, miplib) bring
compiled extensions and their own image stack, the PyPI ``frc`` package its own dependencies;
the core of livescope stays numpy-only and this is a screenful.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from livescope.emitters import EmitterTable
from livescope.protocol import TableField, table_dtype
from livescope.render import RenderGrid, finest_render_pixel_nm, histogram

FRC_THRESHOLD = 1.0 / 7.0
FRC_MAX_PIXELS = 2**22
"""The largest render the FRC transforms (2048 px square: about 0.3 s per image): a finer render
of a larger field gets coarser pixels (a resolution below twice the pixel cannot be seen then)."""


class FrcCurve(BaseModel):
    """An FRC curve and the resolution read from it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frequency_per_nm: tuple[float, ...] = Field(description="ring centres, cycles/nm")
    correlation: tuple[float, ...] = Field(description="FRC per ring, as measured (-1..1)")
    smoothed: tuple[float, ...] = Field(description="the moving average the threshold is read on")
    pixel_nm: float = Field(gt=0, description="the renders' pixel")
    threshold: float = FRC_THRESHOLD
    resolution_nm: float | None = Field(description="1 / frequency of the first crossing; None: no crossing")


def tukey_window(shape: tuple[int, int], taper: float = 0.125) -> np.ndarray:
    """A separable 2-D Tukey window: 1 inside, a raised cosine over ``taper`` of each edge."""

    def axis(n: int) -> np.ndarray:
        w = np.ones(n)
        k = int(round(taper * n))
        if k > 0:
            ramp = 0.5 * (1 - np.cos(np.pi * (np.arange(k) + 0.5) / k))
            w[:k], w[n - k:] = ramp, ramp[::-1]
        return w

    return axis(shape[0])[:, None] * axis(shape[1])[None, :]


def frc_curve(a: np.ndarray, b: np.ndarray, pixel_nm: float, *, threshold: float = FRC_THRESHOLD,
              smooth_rings: int = 5, taper: float = 0.125) -> FrcCurve:
    """The FRC of two renders of the same field (same shape, ``pixel_nm`` pixels)."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"FRC needs two 2-D images of one shape, got {a.shape} and {b.shape}")
    window = tukey_window(a.shape, taper)
    fa = np.fft.rfft2(a.astype(np.float64) * window)
    fb = np.fft.rfft2(b.astype(np.float64) * window)
    rows, cols = a.shape
    # radius in cycles/px; rings one frequency step of the shorter side wide, up to Nyquist
    fy, fx = np.fft.fftfreq(rows)[:, None], np.fft.rfftfreq(cols)[None, :]
    step = 1.0 / min(rows, cols)
    ring = np.floor(np.hypot(fy, fx) / step + 0.5).astype(np.int64)
    n_rings = int(0.5 / step) + 1
    keep = ring < n_rings
    # rfft2 holds half the spectrum; its omitted half is the conjugate, so each sum is just halved
    # (the same for numerator and denominators): the ratio is unchanged.
    idx = ring[keep]
    cross = np.bincount(idx, (fa * np.conj(fb)).real[keep], n_rings)
    pa = np.bincount(idx, (np.abs(fa) ** 2)[keep], n_rings)
    pb = np.bincount(idx, (np.abs(fb) ** 2)[keep], n_rings)
    with np.errstate(invalid="ignore", divide="ignore"):
        frc = np.where((pa > 0) & (pb > 0), cross / np.sqrt(pa * pb), 0.0)
    frc, freq = frc[1:], np.arange(1, n_rings) * step  # ring 0 is the mean: always correlated
    smoothed = _moving_average(frc, smooth_rings)
    res = _first_crossing(freq, smoothed, threshold)
    return FrcCurve(frequency_per_nm=tuple(float(f) for f in freq / pixel_nm),
                    correlation=tuple(float(v) for v in frc), smoothed=tuple(float(v) for v in smoothed),
                    pixel_nm=pixel_nm, threshold=threshold,
                    resolution_nm=None if res is None else float(pixel_nm / res))


def _moving_average(values: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average; near the ends, over the rings that exist."""
    if width <= 1 or values.size < 2:
        return values.copy()
    kernel = np.ones(width)
    total = np.convolve(values, kernel, mode="same")
    count = np.convolve(np.ones_like(values), kernel, mode="same")
    return total / count


def _first_crossing(freq: np.ndarray, curve: np.ndarray, threshold: float) -> float | None:
    """The frequency where ``curve`` first drops below ``threshold`` (linear between rings)."""
    below = np.flatnonzero(curve < threshold)
    if not below.size:
        return None
    i = int(below[0])
    if i == 0:
        return float(freq[0])
    f0, f1, c0, c1 = freq[i - 1], freq[i], curve[i - 1], curve[i]
    return float(f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0))


def split_halves(table: EmitterTable, block_frames: int = 10) -> tuple[EmitterTable, EmitterTable]:
    """The table's emitters in two halves by alternate blocks of ``block_frames`` frames: a molecule
    that stays on for a few frames then falls mostly in one half, so its repeated localisations do
    not correlate the halves (odd/even single frames would)."""
    block = (table["frame"].astype(np.int64) - 1) // max(1, block_frames)
    even = block % 2 == 0
    return table.select(even), table.select(~even)


def table_frc(table: EmitterTable, width_nm: float, height_nm: float, *, pixel_nm: float = 10.0,
              block_frames: int = 10, max_pixels: int = FRC_MAX_PIXELS) -> FrcCurve | None:
    """The FRC of an emitter table's two halves (``split_halves``), rendered as histograms of the
    field at ``pixel_nm`` (coarser where the field would exceed ``max_pixels``); None when a half
    is empty."""
    first, second = split_halves(table, block_frames)
    if not len(first) or not len(second):
        return None
    pixel_nm = max(pixel_nm, finest_render_pixel_nm(width_nm, height_nm, max_pixels))
    grid = RenderGrid(width_nm=width_nm, height_nm=height_nm, pixel_nm=pixel_nm)
    return frc_curve(histogram(first, grid).image, histogram(second, grid).image, pixel_nm)


FRC_FIELDS = (TableField(name="frequency_per_nm", dtype="float32", unit="1/nm"),
              TableField(name="correlation", dtype="float32"),
              TableField(name="smoothed", dtype="float32"),
              TableField(name="threshold", dtype="float32"))
"""An FRC curve as a table (published beside a stream's render): one row per ring."""


def frc_table(curve: FrcCurve) -> np.ndarray:
    """``curve`` as records of `FRC_FIELDS`."""
    rows = np.zeros(len(curve.frequency_per_nm), table_dtype(FRC_FIELDS))
    rows["frequency_per_nm"], rows["correlation"], rows["smoothed"] = (curve.frequency_per_nm, curve.correlation,
                                                                         curve.smoothed)
    rows["threshold"] = curve.threshold
    return rows

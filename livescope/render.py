"""Super-resolution images of an emitter table (numpy only: the server renders a live stream's).

A render covers a field of ``width_nm`` x ``height_nm`` in square render pixels of ``pixel_nm``:
render pixel (row r, column c) covers [c p, (c + 1) p) in x and [r p, (r + 1) p) in y, the same
convention as the camera's pixels in ``livescope.emitters``. An emitter belongs to the field when
0 <= x < width_nm and 0 <= y < height_nm; the others are ignored and counted.

``histogram``: each emitter adds 1 to the render pixel it lies in.
``gaussian``: each emitter adds a 2-D Gaussian of unit integral with its x and y uncertainties as
standard deviations (clipped below at ``min_sigma_nm``, by default half a render pixel, so that an
exact or over-confident localisation still covers about a pixel). The Gaussian is sampled at the
render pixels' centres over +-3 sigma and normalised, so an emitter adds exactly 1 to the image
unless part of it falls off the field's edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from livescope.emitters import EmitterTable

RenderMethod = Literal["histogram", "gaussian"]

_KERNEL_SIGMAS = 3.0
# A kernel wider than this (radius, render px) is truncated: such an emitter is too uncertain to
# show structure, and without a cap one bad fit could cost as much as the whole table.
_MAX_RADIUS_PX = 48
# Kernel values per vectorised batch: bounds the temporary memory (about 40 bytes per value);
# small batches stay in cache (measured fastest at 2^19 for 10^5 emitters into 2048x2048).
_BATCH_VALUES = 1 << 19


MAX_RENDER_PIXELS = 2**27
"""The largest render drawn (about 11,600 px square: 1 GB while it accumulates in float64). A finer
one would take the memory of the process holding it (a 512 µm field at 10 nm is 10 GB), so it is
refused with the coarsest render pixel that fits, rather than killing the acquisition or server."""


class RenderGrid(BaseModel):
    """The field of view and render pixel of a super-resolution render."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    width_nm: float = Field(gt=0)
    height_nm: float = Field(gt=0)
    pixel_nm: float = Field(default=10.0, gt=0, description="render pixel size")

    @model_validator(mode="after")
    def _fits_in_memory(self) -> RenderGrid:
        rows, cols = self.shape
        if rows * cols > MAX_RENDER_PIXELS:
            raise ValueError(
                f"a render of the {self.width_nm / 1000:g} x {self.height_nm / 1000:g} µm field at "
                f"{self.pixel_nm:g} nm would be {cols} x {rows} px ({rows * cols * 8 / 1e9:.1f} GB); "
                f"use render pixels of at least {finest_render_pixel_nm(self.width_nm, self.height_nm):g} nm")
        return self

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns): enough render pixels to cover the field (the last may overhang)."""
        return (_cover(self.height_nm, self.pixel_nm), _cover(self.width_nm, self.pixel_nm))


def finest_render_pixel_nm(width_nm: float, height_nm: float, max_pixels: int = MAX_RENDER_PIXELS) -> float:
    """The finest whole-nm render pixel whose render of the field has at most ``max_pixels``."""
    pixel = max(1.0, math.floor(math.sqrt(width_nm * height_nm / max_pixels)))
    while _cover(width_nm, pixel) * _cover(height_nm, pixel) > max_pixels:
        pixel += 1.0
    return pixel


def _cover(length_nm: float, pixel_nm: float) -> int:
    return max(1, math.ceil(length_nm / pixel_nm - 1e-9))


@dataclass(frozen=True)
class Render:
    """A float32 render (rows, columns) with the counts of emitters drawn and ignored (outside)."""

    image: np.ndarray
    emitters_inside: int
    emitters_outside: int


def histogram(table: EmitterTable, grid: RenderGrid) -> Render:
    """Emitters per render pixel."""
    acc = np.zeros(grid.shape, np.float64)
    inside = _draw_histogram(acc.reshape(-1), table, grid)
    return Render(acc.astype(np.float32), inside, len(table) - inside)


def gaussian(table: EmitterTable, grid: RenderGrid, *, min_sigma_nm: float | None = None) -> Render:
    """Each emitter a unit-integral Gaussian of its x, y uncertainties (at least ``min_sigma_nm``,
    by default half a render pixel)."""
    acc = np.zeros(grid.shape, np.float64)
    inside = _draw_gaussian(acc.reshape(-1), table, grid, min_sigma_nm)
    return Render(acc.astype(np.float32), inside, len(table) - inside)


def render(table: EmitterTable, grid: RenderGrid, method: RenderMethod = "gaussian", *,
           min_sigma_nm: float | None = None) -> Render:
    if method == "histogram":
        return histogram(table, grid)
    if method == "gaussian":
        return gaussian(table, grid, min_sigma_nm=min_sigma_nm)
    raise ValueError(f"unknown render method {method!r}")


class RunningRender:
    """A render that grows as tables arrive (a live stream's): ``add`` draws only the new
    emitters; ``image`` is a float32 copy. Accumulates in float64, so many small additions equal
    one render of them all. Not thread-safe: the caller locks."""

    def __init__(self, grid: RenderGrid, method: RenderMethod = "gaussian", *,
                 min_sigma_nm: float | None = None) -> None:
        if method not in ("histogram", "gaussian"):
            raise ValueError(f"unknown render method {method!r}")
        if min_sigma_nm is not None and not min_sigma_nm > 0:
            raise ValueError(f"min_sigma_nm must be positive, got {min_sigma_nm}")
        self.grid = grid
        self.method: RenderMethod = method
        self.min_sigma_nm = min_sigma_nm
        self._acc = np.zeros(grid.shape, np.float64)
        self.emitters_inside = 0
        self.emitters_outside = 0

    @property
    def emitters_added(self) -> int:
        """All emitters given to ``add``, inside the field or not."""
        return self.emitters_inside + self.emitters_outside

    def add(self, table: EmitterTable) -> None:
        """Draws the table's emitters: costs about as much as the table, not the image."""
        flat = self._acc.reshape(-1)
        if self.method == "histogram":
            inside = _draw_histogram(flat, table, self.grid)
        else:
            inside = _draw_gaussian(flat, table, self.grid, self.min_sigma_nm)
        self.emitters_inside += inside
        self.emitters_outside += len(table) - inside

    def image(self) -> np.ndarray:
        return self._acc.astype(np.float32)

    def reset(self) -> None:
        self._acc[:] = 0.0
        self.emitters_inside = self.emitters_outside = 0


# -- the drawing ---------------------------------------------------------------------------------


def _positions_px(table: EmitterTable, grid: RenderGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inside mask, x, y in render pixels) -- continuous coordinates, pixel c spans [c, c + 1)."""
    x = table.rows["x_nm"].astype(np.float64)
    y = table.rows["y_nm"].astype(np.float64)
    # NaN compares false, so a non-finite position is outside.
    inside = (x >= 0) & (x < grid.width_nm) & (y >= 0) & (y < grid.height_nm)
    return inside, x[inside] / grid.pixel_nm, y[inside] / grid.pixel_nm


def _draw_histogram(acc: np.ndarray, table: EmitterTable, grid: RenderGrid) -> int:
    """Adds 1 per emitter to the flat float64 ``acc``; the number inside the field."""
    rows, cols = grid.shape
    inside, u, v = _positions_px(table, grid)
    # min() guards the rounding of x / p just below a column edge onto the edge.
    c = np.minimum(u.astype(np.int64), cols - 1)
    r = np.minimum(v.astype(np.int64), rows - 1)
    _accumulate(acc, r * cols + c, None)
    return int(inside.sum())


def _draw_gaussian(acc: np.ndarray, table: EmitterTable, grid: RenderGrid, min_sigma_nm: float | None) -> int:
    """Adds a unit Gaussian per emitter to the flat float64 ``acc``; the number inside the field."""
    rows, cols = grid.shape
    floor_nm = grid.pixel_nm / 2.0 if min_sigma_nm is None else float(min_sigma_nm)
    if not floor_nm > 0:
        raise ValueError(f"min_sigma_nm must be positive, got {min_sigma_nm}")
    inside, u, v = _positions_px(table, grid)
    if not u.size:
        return 0

    def sigma_px(name: str) -> np.ndarray:
        s = table.rows[name][inside].astype(np.float64)
        s = np.where(np.isfinite(s), s, 0.0)  # an unknown uncertainty renders as the floor
        return np.maximum(s, floor_nm) / grid.pixel_nm

    sx, sy = sigma_px("x_uncertainty_nm"), sigma_px("y_uncertainty_nm")
    radius = np.minimum(np.ceil(_KERNEL_SIGMAS * np.maximum(sx, sy)), _MAX_RADIUS_PX).astype(np.int64)
    # Emitters with the same kernel radius are drawn together, in batches of bounded memory;
    # within a group, sorted by row, so that a batch touches only a band of the image.
    order = np.lexsort((v, radius))
    bounds = np.flatnonzero(np.diff(radius[order])) + 1
    for group in np.split(order, bounds):
        r = int(radius[group[0]])
        per = max(1, _BATCH_VALUES // (2 * r + 1) ** 2)
        for start in range(0, group.size, per):
            idx = group[start : start + per]
            _splat(acc, u[idx], v[idx], sx[idx], sy[idx], r, rows, cols)
    return int(u.size)


def _accumulate(acc: np.ndarray, flat: np.ndarray, weight: np.ndarray | None) -> None:
    """acc[flat] += weight (1 where None), repeated indices adding up. A bincount over the span the
    indices touch when they fill it densely (a big table, or a band of rows); otherwise over their
    unique values, so that a few emitters cost little however large the image."""
    if not flat.size:
        return
    lo, hi = int(flat.min()), int(flat.max()) + 1
    if hi - lo <= 4 * flat.size:
        acc[lo:hi] += np.bincount(flat - lo, weights=weight, minlength=hi - lo)
    else:
        where, slot = np.unique(flat, return_inverse=True)
        acc[where] += np.bincount(slot.reshape(-1), weights=weight, minlength=where.size)


def _splat(acc: np.ndarray, u: np.ndarray, v: np.ndarray, sx: np.ndarray, sy: np.ndarray, r: int,
           rows: int, cols: int) -> None:
    """Add separable kernels of radius ``r`` centred on the emitters' pixels into the flat ``acc``."""
    offsets = np.arange(-r, r + 1)

    def axis(pos: np.ndarray, s: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        index = np.floor(pos).astype(np.int64)[:, None] + offsets  # (emitters, 2r + 1)
        w = np.exp(-0.5 * (((index + 0.5) - pos[:, None]) / s[:, None]) ** 2)
        w /= w.sum(axis=1, keepdims=True)  # unit sum before the edge: what falls off is lost
        off_field = (index < 0) | (index >= n)
        w[off_field] = 0.0
        np.clip(index, 0, n - 1, out=index)  # a valid index near the emitter; its weight is 0
        return index, w

    ci, wx = axis(u, sx, cols)
    ri, wy = axis(v, sy, rows)
    flat = (ri[:, :, None] * cols + ci[:, None, :]).ravel()
    _accumulate(acc, flat, (wy[:, :, None] * wx[:, None, :]).ravel())

"""Fluorescent specimens, seeded, in sample coordinates (µm).

A specimen fills the square [-field/2, field/2]^2 around the origin; x runs along camera
columns, y along rows, z up from the coverslip (z = 0) into the sample. Filaments, beads and
single molecules spread over 0 <= z <= ``depth_um`` (0: all on the coverslip; above 0,
filaments rise and fall smoothly along their length); nuclei lie flat at z = 0. `render` gives
the amount of fluorophore in each pixel of any window, the same for the same seed whatever the
window, so a scene can render the field tile by tile as the stage explores it. Amounts are in each specimen's own unit
(per µm of filament, per bead, per µm^2 of nucleus); `in_focus_peak` says how bright one such
unit looks through the optics, so a scene can set the signal level in photons.

Point-like fluorophores are spread over the 4 nearest pixels (bilinear), which keeps filaments
smooth at any pixel size but widens the image slightly (~0.4 px in quadrature). Single molecules,
whose image is what a localiser measures, are not drawn through this raster: the scene images
each as the PSF at its exact position (`spots.SpotImager`; their `render` is the raster, kept
for the `Specimen` protocol).

Single molecules (``"smlm"``) are the one dynamic specimen: dye molecules on filaments that
blink (off <-> on) and bleach, frame by frame, each emitting a random number of photons while
on. The scene steps them once per frame and keeps the active emitters, as a
`livescope.emitters.EmitterTable` in the frame's own coordinates, as the frame's ground truth.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SpecimenKind = Literal["filaments", "cells", "beads", "smlm"]

_SPECIMEN_STREAM = 0x5bec  # keeps the specimen's random stream apart from the camera's


class Specimen(Protocol):
    def render(self, x0_um: float, y0_um: float, shape: tuple[int, int], pixel_size_um: float,
               z_range_um: tuple[float, float] | None = None) -> np.ndarray:
        """Fluorophore amount per pixel of the window whose top-left pixel corner is at
        (x0_um, y0_um); float32 of ``shape`` = (rows, cols). With ``z_range_um`` = (lo, hi):
        only the fluorophores at lo <= z < hi."""
        ...

    def in_focus_peak(self, psf_sigma_um: float, pixel_size_um: float) -> float:
        """Peak pixel value of one isolated unit structure, rendered and blurred in focus."""
        ...


def make_specimen(kind: SpecimenKind, field_um: float, seed: int,
                  kinetics: EmitterKinetics | None = None, depth_um: float = 0.0) -> Specimen:
    rng = np.random.default_rng([_SPECIMEN_STREAM, seed])
    # Depth draws come from their own stream: a flat specimen is the same with or without them.
    z_rng = np.random.default_rng([_SPECIMEN_STREAM, seed, 3])
    if depth_um < 0:
        raise ValueError(f"specimen depth must not be negative, got {depth_um} µm")
    if kind == "smlm":
        return SingleMolecules(field_um, rng, kinetics or EmitterKinetics(), depth_um, z_rng)
    if kind == "filaments":
        return Filaments(field_um, rng, depth_um, z_rng)
    if kind == "cells":
        return Nuclei(field_um, rng)
    if kind == "beads":
        return Beads(field_um, rng, depth_um, z_rng)
    raise ValueError(f"unknown specimen {kind!r}; choose filaments, cells, beads or smlm")


def _centre_fraction(psf_sigma_um: float, pixel_size_um: float) -> float:
    """Fraction of a 1-D Gaussian's energy that falls in the pixel centred on its peak."""
    return math.erf(pixel_size_um / (2.0 * math.sqrt(2.0) * psf_sigma_um))


# -- filaments ------------------------------------------------------------------------------------


class Filaments:
    """Microtubule-like filaments: worm-like chains of random length, start and direction.

    Unit: one per µm of filament (a brightness factor per filament varies it, as bundling
    and labelling do).
    """

    PER_UM2 = 0.003  # 480 filaments over a 400 µm field
    LENGTH_UM = (10.0, 60.0)
    PERSISTENCE_UM = 15.0  # bends like microtubules in a cell, not like isolated ones (mm)
    STEP_UM = 0.02  # spacing of the fluorophores drawn along a filament

    def __init__(self, field_um: float, rng: np.random.Generator, depth_um: float = 0.0,
                 z_rng: np.random.Generator | None = None) -> None:
        n = max(1, round(self.PER_UM2 * field_um**2))
        half = field_um / 2
        lengths = rng.uniform(*self.LENGTH_UM, n)
        start = rng.uniform(-half, half, (n, 2))
        heading = rng.uniform(0.0, 2 * np.pi, n)
        brightness = rng.lognormal(0.0, 0.25, n)
        steps = math.ceil(self.LENGTH_UM[1] / self.STEP_UM)
        # Worm-like chain: the heading diffuses with variance step / persistence length.
        turns = rng.normal(0.0, math.sqrt(self.STEP_UM / self.PERSISTENCE_UM), (n, steps))
        angle = heading[:, None] + np.cumsum(turns, axis=1)
        x = start[:, :1] + np.cumsum(self.STEP_UM * np.cos(angle), axis=1)
        y = start[:, 1:] + np.cumsum(self.STEP_UM * np.sin(angle), axis=1)
        keep = np.arange(steps)[None, :] * self.STEP_UM < lengths[:, None]
        keep &= (np.abs(x) <= half) & (np.abs(y) <= half)
        self.x_um, self.y_um = x[keep], y[keep]
        self.amount = np.broadcast_to(self.STEP_UM * brightness[:, None], keep.shape)[keep]
        self.z_um = np.zeros_like(self.x_um)
        if depth_um > 0:  # each filament rises and falls between 0 and depth, smoothly
            z_rng = z_rng or rng
            phase = z_rng.uniform(0.0, 2 * np.pi, (n, 1))
            period = z_rng.uniform(20.0, 60.0, (n, 1))
            s = np.arange(steps)[None, :] * self.STEP_UM
            z = depth_um / 2 * (1 + np.sin(phase + 2 * np.pi * s / period))
            self.z_um = z[keep]

    def render(self, x0_um: float, y0_um: float, shape: tuple[int, int], pixel_size_um: float,
               z_range_um: tuple[float, float] | None = None) -> np.ndarray:
        return _splat(self.x_um, self.y_um, self.amount, x0_um, y0_um, shape, pixel_size_um,
                      _in_range(self.z_um, z_range_um))

    def in_focus_peak(self, psf_sigma_um: float, pixel_size_um: float) -> float:
        # A filament along a pixel row: each pixel holds one pixel-length of it.
        return pixel_size_um * _centre_fraction(psf_sigma_um, pixel_size_um)


# -- beads ----------------------------------------------------------------------------------------


class Beads:
    """Sub-diffraction fluorescent beads scattered on the coverslip. Unit: one per bead."""

    PER_UM2 = 0.01  # 1600 beads over a 400 µm field, ~30 in a 55 µm field of view

    def __init__(self, field_um: float, rng: np.random.Generator, depth_um: float = 0.0,
                 z_rng: np.random.Generator | None = None) -> None:
        n = max(1, round(self.PER_UM2 * field_um**2))
        self.x_um, self.y_um = rng.uniform(-field_um / 2, field_um / 2, (2, n))
        self.amount = rng.lognormal(0.0, 0.15, n)  # bead-to-bead dye load varies
        self.z_um = (z_rng or rng).uniform(0.0, depth_um, n) if depth_um > 0 else np.zeros(n)

    def render(self, x0_um: float, y0_um: float, shape: tuple[int, int], pixel_size_um: float,
               z_range_um: tuple[float, float] | None = None) -> np.ndarray:
        return _splat(self.x_um, self.y_um, self.amount, x0_um, y0_um, shape, pixel_size_um,
                      _in_range(self.z_um, z_range_um))

    def in_focus_peak(self, psf_sigma_um: float, pixel_size_um: float) -> float:
        return _centre_fraction(psf_sigma_um, pixel_size_um) ** 2


# -- cells ----------------------------------------------------------------------------------------


class Nuclei:
    """Cell nuclei (as in a DNA stain): elliptical blobs with chromatin-like texture and a few
    bright chromocentres, on a jittered grid so that they rarely touch.

    Unit: one per µm^2 at full concentration (the texture stays between ~0.3 and ~1.2).
    """

    SPACING_UM = 20.0
    OCCUPANCY = 0.85
    SEMI_AXIS_UM = (4.0, 6.0)
    WAVES = 6  # plane waves summed into the chromatin texture
    SPOTS = (3, 8)  # chromocentres per nucleus

    def __init__(self, field_um: float, rng: np.random.Generator) -> None:
        half = field_um / 2
        grid = np.arange(-half + self.SPACING_UM / 2, half, self.SPACING_UM)
        cx, cy = (g.ravel() for g in np.meshgrid(grid, grid))
        occupied = rng.random(cx.size) < self.OCCUPANCY
        jitter = rng.uniform(-3.5, 3.5, (2, cx.size))
        self.cx, self.cy = (cx + jitter[0])[occupied], (cy + jitter[1])[occupied]
        n = self.cx.size
        self.a = rng.uniform(*self.SEMI_AXIS_UM, n)
        self.b = self.a * rng.uniform(0.65, 1.0, n)
        self.angle = rng.uniform(0.0, np.pi, n)
        wavelength = rng.uniform(1.0, 3.0, (n, self.WAVES))
        direction = rng.uniform(0.0, 2 * np.pi, (n, self.WAVES))
        self.kx = 2 * np.pi / wavelength * np.cos(direction)
        self.ky = 2 * np.pi / wavelength * np.sin(direction)
        self.phase = rng.uniform(0.0, 2 * np.pi, (n, self.WAVES))
        self.spots = [self._spots(rng, a, b) for a, b in zip(self.a, self.b)]

    def _spots(self, rng: np.random.Generator, a: float, b: float) -> np.ndarray:
        """(k, 4) rows of x, y (in the nucleus' own frame), sigma, amplitude."""
        k = rng.integers(self.SPOTS[0], self.SPOTS[1] + 1)
        r = 0.7 * np.sqrt(rng.random(k))
        t = rng.uniform(0.0, 2 * np.pi, k)
        return np.column_stack([a * r * np.cos(t), b * r * np.sin(t),
                                rng.uniform(0.25, 0.5, k), rng.uniform(0.3, 0.7, k)])

    def render(self, x0_um: float, y0_um: float, shape: tuple[int, int], pixel_size_um: float,
               z_range_um: tuple[float, float] | None = None) -> np.ndarray:
        h, w = shape
        out = np.zeros(shape, np.float32)
        if z_range_um is not None and not z_range_um[0] <= 0.0 < z_range_um[1]:
            return out  # nuclei lie flat on the coverslip
        xs = x0_um + (np.arange(w) + 0.5) * pixel_size_um  # pixel centres
        ys = y0_um + (np.arange(h) + 0.5) * pixel_size_um
        hits = ((self.cx + self.a > xs[0]) & (self.cx - self.a < xs[-1])
                & (self.cy + self.a > ys[0]) & (self.cy - self.a < ys[-1]))
        for i in np.flatnonzero(hits):
            cols = slice(*np.searchsorted(xs, [self.cx[i] - self.a[i], self.cx[i] + self.a[i]]))
            rows = slice(*np.searchsorted(ys, [self.cy[i] - self.a[i], self.cy[i] + self.a[i]]))
            dx = xs[cols][None, :] - self.cx[i]
            dy = ys[rows][:, None] - self.cy[i]
            out[rows, cols] += self._concentration(i, dx, dy)
        out *= pixel_size_um**2
        return out

    def _concentration(self, i: int, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        cos, sin = math.cos(self.angle[i]), math.sin(self.angle[i])
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # the nucleus' own axes
        r = np.sqrt((u / self.a[i]) ** 2 + (v / self.b[i]) ** 2)
        edge = np.clip((1.0 - r) / 0.1, 0.0, 1.0)  # soft rim, 10% of the radius
        texture = sum(np.cos(self.kx[i, j] * dx + self.ky[i, j] * dy + self.phase[i, j])
                      for j in range(self.WAVES)) / self.WAVES
        spots = sum(amp * np.exp(-((u - sx) ** 2 + (v - sy) ** 2) / (2 * s * s))
                    for sx, sy, s, amp in self.spots[i])
        return edge * (0.6 + 0.6 * texture + spots)

    def in_focus_peak(self, psf_sigma_um: float, pixel_size_um: float) -> float:
        # Nuclei are far wider than the PSF: blurring leaves a full-concentration pixel as is.
        return pixel_size_um**2


# -- single molecules -----------------------------------------------------------------------------


class EmitterKinetics(BaseModel):
    """Photophysics of the single-molecule specimen, as rates (the frame's exposure sets the
    per-frame probabilities: p = 1 - exp(-rate x exposure))."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_um: float = Field(default=40.0, gt=0, description="labelled molecules per µm of filament "
                          "(dense, dSTORM-like labelling: ~0.1 molecules on per µm² at a time)")
    on_rate_per_s: float = Field(default=1.0, ge=0, description="off -> on (activation), 1/s")
    off_rate_per_s: float = Field(default=50.0, ge=0, description="on -> off (blinking), 1/s")
    bleach_rate_per_s: float = Field(default=2.0, ge=0, description="on -> bleached, 1/s of on-time")
    photons_mean: float = Field(default=2000.0, gt=0, description="photons per frame of an active molecule")
    photons_cv: float = Field(default=0.5, gt=0, description="coefficient of variation of the photons (Gamma)")

    def probabilities(self, exposure_ms: float) -> tuple[float, float, float]:
        """Per-frame probabilities (switch on, switch off, bleach) for ``exposure_ms`` frames."""
        t = exposure_ms / 1000.0
        return tuple(-math.expm1(-rate * t) for rate in (self.on_rate_per_s, self.off_rate_per_s,
                                                        self.bleach_rate_per_s))

    def duty_cycle(self, exposure_ms: float) -> float:
        """Steady-state fraction of frames a molecule (not yet bleached) is on."""
        p_on, p_off, _ = self.probabilities(exposure_ms)
        return p_on / (p_on + p_off) if p_on + p_off > 0 else 0.0


class SingleMolecules:
    """Dye molecules along filaments, blinking and bleaching frame by frame.

    Each molecule is off, on or bleached. Every `step` (one frame of ``exposure_ms``), an on
    molecule bleaches with p_bleach, else switches off with p_off; an off one switches on with
    p_on. They start in the steady state (on with the duty cycle). An on molecule emits a
    Gamma-distributed number of photons in the frame (mean ``photons_mean``).

    A molecule's index into ``x_um``, ``y_um``, ``z_um`` (µm, sample coordinates), ``state`` and
    ``photons`` (this frame's) is its id; ``frame`` is the current frame's number (from 1; 0 before
    the first `step`).
    """

    dynamic = True
    OFF, ON, BLEACHED = 0, 1, 2

    def __init__(self, field_um: float, rng: np.random.Generator, kinetics: EmitterKinetics,
                 depth_um: float = 0.0, z_rng: np.random.Generator | None = None) -> None:
        filaments = Filaments(field_um, rng, depth_um, z_rng)
        keep = rng.random(filaments.x_um.size) < kinetics.per_um * Filaments.STEP_UM
        self.x_um, self.y_um, self.z_um = filaments.x_um[keep], filaments.y_um[keep], filaments.z_um[keep]
        self.kinetics = kinetics
        self._rng = rng
        self.state = np.full(self.x_um.size, self.OFF, np.int8)
        self.frame = 0
        self.photons = np.zeros(self.x_um.size, np.float32)

    def step(self, exposure_ms: float) -> None:
        """Advance the molecules by one frame of ``exposure_ms`` and draw their photons."""
        k = self.kinetics
        p_on, p_off, p_bleach = k.probabilities(exposure_ms)
        n = self.state.size
        if self.frame == 0:
            self.state[self._rng.random(n) < k.duty_cycle(exposure_ms)] = self.ON
        else:
            u = self._rng.random(n)
            on, off = self.state == self.ON, self.state == self.OFF
            self.state[on & (u < p_bleach)] = self.BLEACHED
            self.state[on & (u >= p_bleach) & (u < p_bleach + (1 - p_bleach) * p_off)] = self.OFF
            self.state[off & (u < p_on)] = self.ON
        self.photons[:] = 0.0
        on = np.flatnonzero(self.state == self.ON)
        shape = 1.0 / k.photons_cv**2
        self.photons[on] = self._rng.gamma(shape, k.photons_mean / shape, on.size)
        self.frame += 1

    def active(self) -> np.ndarray:
        """The ids of the molecules on in this frame, increasing."""
        return np.flatnonzero(self.state == self.ON)

    def render(self, x0_um: float, y0_um: float, shape: tuple[int, int], pixel_size_um: float,
               z_range_um: tuple[float, float] | None = None) -> np.ndarray:
        """Photons emitted in this frame per pixel (the active molecules)."""
        on = self.active()
        return _splat(self.x_um[on], self.y_um[on], self.photons[on], x0_um, y0_um, shape, pixel_size_um,
                      _in_range(self.z_um[on], z_range_um))

    def in_focus_peak(self, psf_sigma_um: float, pixel_size_um: float) -> float:
        return 1.0  # amounts are photons already


# -- rendering points -----------------------------------------------------------------------------


def _in_range(z_um: np.ndarray, z_range_um: tuple[float, float] | None) -> np.ndarray | None:
    if z_range_um is None:
        return None
    return (z_um >= z_range_um[0]) & (z_um < z_range_um[1])


def _splat(x_um: np.ndarray, y_um: np.ndarray, amount: np.ndarray, x0_um: float, y0_um: float,
           shape: tuple[int, int], pixel_size_um: float, select: np.ndarray | None = None) -> np.ndarray:
    """Sum point amounts into pixels, each point shared bilinearly among its 4 nearest pixels
    (only the points where ``select`` is true, if given)."""
    h, w = shape
    col = (x_um - x0_um) / pixel_size_um - 0.5  # pixel centres at integer coordinates
    row = (y_um - y0_um) / pixel_size_um - 0.5
    near = (col > -1) & (col < w) & (row > -1) & (row < h)
    if select is not None:
        near &= select
    col, row, amount = col[near], row[near], amount[near]
    c0, r0 = np.floor(col), np.floor(row)
    fc, fr = col - c0, row - r0
    # Index into a grid padded by one pixel on every side, so no neighbour falls outside it.
    index = (r0.astype(np.int64) + 1) * (w + 2) + (c0.astype(np.int64) + 1)
    index = np.concatenate([index, index + 1, index + w + 2, index + w + 3])
    weight = np.concatenate([amount * (1 - fr) * (1 - fc), amount * (1 - fr) * fc,
                             amount * fr * (1 - fc), amount * fr * fc])
    padded = np.bincount(index, weight, minlength=(h + 2) * (w + 2)).reshape(h + 2, w + 2)
    return padded[1:-1, 1:-1].astype(np.float32)

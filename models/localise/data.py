"""Training data for single-molecule localisation: short stacks of blinking emitters, simulated on
the fly with the virtual microscope's optics and camera.

A sample is ``context_frames`` (3) consecutive camera frames of one small field; the network sees
frames t-2, t-1, t and localises the last one (a causal window: live, it is the frame that just
arrived; see models/localise/net.py). Per sample, everything a rig varies is drawn
afresh: pixel size and PSF width (uniform), emitter density and background (log-uniform: they
span 1.5-2 decades and matter on a ratio scale, so every decade gets equal weight), and per
emitter its brightness (log-uniform, same reason), position and, for 3-D, z (uniform).

Units and conventions are `livescope.emitters`': x, y nm from the top-left corner of the top-left
pixel, z nm from the focal plane (positive in the focus drive's direction, so an emitter at z is
imaged with the virtual microscope's PSF at defocus -z), frames from 1. ``photons`` are DETECTED
photons: those reaching the camera in the frame (before its QE), as the virtual microscope's
single-molecule specimen counts them; a camera turns them into QE x photons photo-electrons on
average. Background: photons per pixel, uniform over the sample.

PSFs (``psf``):

- ``"gaussian"``: a 2-D Gaussian of sigma ``psf_sigma_px``, integrated over each pixel exactly
  (erf differences), so placement is exact.
- ``"airy"``: the virtual microscope's scalar pupil PSF in focus (`Optics.psf`: an Airy pattern),
  scaled so that its Gaussian-equivalent sigma 0.21 lambda/NA is ``psf_sigma_px``.
- ``"astigmatic"``: the virtual microscope's pupil PSF with the Zernike astigmatism Z(2,2) of a
  cylindrical lens (`Optics` with ``astigmatism_waves``), for the objective and wavelength given
  here; z uniform over ``z_range_nm``. This is the very model `VirtualScene` images an
  astigmatic rig's molecules with (an elliptical Gaussian with a fitted defocus curve would be an
  approximation of it, and a network would learn the approximation's errors), so a network trained
  here sees the same PSF on ``livescope acquire --specimen smlm`` frames of such a rig. Its width
  is set by the optics: ``psf_sigma_px`` does not apply; a sample's sigma is 0.21 lambda/NA / pixel.
  (The virtual microscope images each molecule as that PSF at its exact sub-pixel position:
  acquire/virtual/spots.py.)

Rendering the pupil PSFs: `Optics.psf` is computed once per z plane (every 20 nm; cached) on a
fine grid of cells (lambda/NA / 25 for the Airy pattern, 20 nm for the astigmatic one) and turned
into a summed-area table; an emitter's pixel is then the table's difference at the pixel's four
corners, bilinearly interpolated, so a pixel holds exactly the light of the PSF (binned into the
fine cells) that falls on it, for any pixel size and sub-pixel position; between z planes the
tables are blended linearly. The table's PSF is centred on a cell and cut symmetrically about the
emitter, so the centroid of a rendered emitter is the emitter's position (to < 0.001 px, see the
tests); binning into cells widens it by cell^2 / 12 in variance, < 0.3 % of its width. The cut
keeps ``psf_energy_fraction`` of the light (default 95 %: out to ~2 lambda/NA in focus); the faint
halo beyond, which a localiser cannot tell from background, is left out, and ``photons`` still
counts it -- so an emitter's image holds 95-97 % of its photons (a Gaussian one's: all).

Blinking: each molecule is a two-state (on / off) Markov chain over the window's frames, on
staying on with ``stay_on_probability`` (the product of not blinking off and not bleaching, as
`EmitterKinetics` gives them per frame: `LocaliseSimulation.from_kinetics`) and off switching on
with ``switch_on_probability``, started in its steady state. The molecules on in at least one
frame of the window are drawn directly (a Poisson number per on/off pattern), with the density of
molecules on in any one frame the sample's ``density_per_um2``. An on molecule emits a brightness
of its own (log-uniform over ``photons``) varied per frame (lognormal, ``photons_frame_cv``;
clipped to the range). Emitters lie over the frame and ``outside_margin_px`` around it, so light
from just outside spills in; the truth says which are inside.

The camera is the virtual microscope's (`camera.CameraModel`): each sample draws one of
``cameras`` (by default the virtual rig's sCMOS; `EMCCD` is an EM-gain camera).

Speed on one core (pinned, the other core busy), default ranges (~88 emitter-frames per sample),
batches of 128: ~1300 samples/s of 3x40x40 for the Gaussian PSF, ~270 astigmatic, ~220 Airy (the
pupil PSFs read 4 interpolated table values per pixel corner, and the Airy kernel reaches far).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.special import erf

from livescope import camera as camera_model  # ADU <-> photons: the core's camera model
# `_read_band` is the camera's noise model on an array of any shape: one call reads a whole batch
# (`read_out` takes one 2-D frame at a time, too slow for thousands of 40x40 frames a second).
from livescope.acquire.virtual.camera import CameraModel, _read_band, pixel_maps
from livescope.acquire.virtual.optics import Optics
from livescope.acquire.virtual.scene import VirtualRigConfig
from livescope.acquire.virtual.specimen import EmitterKinetics
from livescope.emitters import EmitterTable

LocalisePsf = Literal["gaussian", "airy", "astigmatic"]

_RIG = VirtualRigConfig()
SCMOS: CameraModel = _RIG.camera
"""The virtual rig's default camera: sCMOS, QE 0.8, 0.5 e-/ADU, 1.5 e- read noise, 100 ADU baseline."""

EMCCD: CameraModel = CameraModel(qe=0.95, e_per_adu=10.0, read_noise_e=50.0, baseline_adu=100.0, bit_depth=16,
                                 em_gain=100.0)
"""An EMCCD at EM gain 100: ~10 ADU per photo-electron, read noise 0.5 e- referred to the input."""

SIGMA_PER_LAMBDA_OVER_NA = 0.21  # the Gaussian fit to the Airy disc (`Optics.sigma0_um`)
_AIRY_CELLS_PER_LAMBDA_OVER_NA = 25
_ASTIG_CELL_NM = 20.0
_ASTIG_PLANE_NM = 20.0
_GAUSS_REACH_SIGMA = 4.0  # a Gaussian kernel's half-width: > 99.99 % of the light in 2-D


class LocaliseSimulation(BaseModel):
    """What to simulate: the ranges a trained network must cover (each sample draws within them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    psf: LocalisePsf = "gaussian"
    frame_shape_px: tuple[int, int] = Field(default=(40, 40), description="(height, width)")
    context_frames: int = Field(default=3, ge=1, le=7, description="frames per window; the last is localised")
    density_per_um2: tuple[float, float] = Field(default=(0.1, 5.0), description="emitters on per frame, "
                                                 "log-uniform per sample")
    photons: tuple[float, float] = Field(default=(300.0, 10_000.0), description="detected photons per "
                                         "emitter and frame; brightness log-uniform per emitter")
    photons_frame_cv: float = Field(default=0.3, ge=0, description="frame-to-frame variation of an "
                                    "emitter's photons (lognormal), relative")
    background_photons_per_px: tuple[float, float] = Field(default=(5.0, 200.0), description="log-uniform "
                                                           "per sample")
    pixel_size_nm: tuple[float, float] = Field(default=(65.0, 160.0), description="uniform per sample")
    psf_sigma_px: tuple[float, float] = Field(default=(0.8, 1.6), description="in-focus sigma, uniform per "
                                              "sample (gaussian, airy; astigmatic: set by the optics)")
    z_range_nm: tuple[float, float] = Field(default=(-600.0, 600.0), description="astigmatic: z uniform")
    na: float = Field(default=_RIG.na, gt=0, description="astigmatic: objective NA")
    emission_nm: float = Field(default=_RIG.emission_nm, gt=0, description="astigmatic: emission wavelength")
    immersion_index: float = Field(default=_RIG.immersion_index, gt=0)
    astigmatism_waves: float = Field(default=0.08, description="astigmatic: Z(2,2), waves rms (as the rig's)")
    spherical_waves: float = Field(default=_RIG.spherical_waves, description="astigmatic: Z(4,0), waves rms "
                                   "(as the rig's)")
    psf_energy_fraction: float = Field(default=0.95, gt=0.5, le=0.999, description="pupil PSFs: light a "
                                       "kernel holds at least; the faint halo beyond is left out")
    cameras: tuple[CameraModel, ...] = Field(default=(SCMOS,), min_length=1, description="one drawn per sample")
    stay_on_probability: float = Field(default=0.6, ge=0, le=1, description="on in frame t -> on in t+1")
    switch_on_probability: float = Field(default=0.01, gt=0, le=1, description="off in t -> on in t+1")
    outside_margin_px: float = Field(default=1.0, ge=0, description="emitters also lie this far outside")

    @model_validator(mode="after")
    def _valid(self) -> LocaliseSimulation:
        if self.context_frames % 2 != 1:
            raise ValueError(f"context_frames must be odd (a centre frame), got {self.context_frames}")
        if min(self.frame_shape_px) < 1:
            raise ValueError(f"frame_shape_px must be positive, got {self.frame_shape_px}")
        for name in ("density_per_um2", "photons", "background_photons_per_px", "pixel_size_nm", "psf_sigma_px"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be (min, max) with 0 < min <= max, got {(lo, hi)}")
        if not self.z_range_nm[0] <= self.z_range_nm[1]:
            raise ValueError(f"z_range_nm must be (min, max), got {self.z_range_nm}")
        if self.stay_on_probability == 1 and self.switch_on_probability == 1:
            raise ValueError("stay_on and switch_on probabilities cannot both be 1")
        self.optics  # noqa: B018 - validates na < immersion_index
        return self

    @property
    def optics(self) -> Optics:
        """The virtual microscope's optics for the astigmatic PSF."""
        return Optics(na=self.na, emission_nm=self.emission_nm, immersion_index=self.immersion_index,
                      astigmatism_waves=self.astigmatism_waves, spherical_waves=self.spherical_waves)

    @property
    def in_focus_sigma_nm(self) -> float:
        """The astigmatic PSF's nominal (in-focus, Gaussian-equivalent) sigma: 0.21 lambda/NA."""
        return SIGMA_PER_LAMBDA_OVER_NA * self.emission_nm / self.na

    @classmethod
    def from_kinetics(cls, kinetics: EmitterKinetics, exposure_ms: float, **fields) -> LocaliseSimulation:
        """Blinking as the virtual microscope's molecules blink at ``exposure_ms`` frames."""
        p_on, p_off, p_bleach = kinetics.probabilities(exposure_ms)
        return cls(stay_on_probability=(1 - p_bleach) * (1 - p_off), switch_on_probability=p_on, **fields)

    @classmethod
    def for_rig(cls, rig: VirtualRigConfig, **fields) -> LocaliseSimulation:
        """Data for one virtual rig: its pixel size, camera, blinking, optics, and a background range
        down to its own; ``psf`` defaults to astigmatic when the rig has astigmatism, else airy."""
        p_nm = rig.pixel_size_um * 1000
        sigma_px = SIGMA_PER_LAMBDA_OVER_NA * rig.emission_nm / rig.na / p_nm
        background = max(rig.background_photons_per_ms * rig.exposure_ms, 0.5)  # log-uniform needs > 0
        low, high = cls.model_fields["background_photons_per_px"].default
        base = dict(psf="astigmatic" if rig.astigmatism_waves else "airy", pixel_size_nm=(p_nm, p_nm),
                    background_photons_per_px=(min(low, background), max(high, background)),
                    psf_sigma_px=(sigma_px, sigma_px), na=rig.na, emission_nm=rig.emission_nm,
                    immersion_index=rig.immersion_index, astigmatism_waves=rig.astigmatism_waves,
                    spherical_waves=rig.spherical_waves, cameras=(rig.camera,))
        return cls.from_kinetics(rig.kinetics, rig.exposure_ms, **{**base, **fields})

    @property
    def duty_cycle(self) -> float:
        """Steady-state fraction of frames a molecule is on."""
        leave = 1.0 - self.stay_on_probability
        return self.switch_on_probability / (self.switch_on_probability + leave)


@dataclass(frozen=True)
class LocaliseBatch:
    """``n`` simulated samples. Per-sample arrays are (n,); the truth tables number sample i as frame
    i + 1; ``truth_frames[k]`` is context frame k's (``truth`` the last one's: the frame the network
    localises), and
    ``inside_frames[k]`` says which of its emitters lie inside the frame (the rest are within
    ``outside_margin_px`` of it)."""

    frames_adu: np.ndarray  # (n, T, H, W) uint16, as the camera gives them
    expected_photons: np.ndarray  # (n, T, H, W) float32: noise-free photons per pixel, background included
    baseline_adu: np.ndarray
    e_per_adu: np.ndarray
    em_gain: np.ndarray
    qe: np.ndarray
    read_noise_e: np.ndarray
    pixel_size_nm: np.ndarray
    psf_sigma_px: np.ndarray  # in-focus sigma (astigmatic: 0.21 lambda/NA / pixel)
    density_per_um2: np.ndarray
    background_photons: np.ndarray  # per pixel
    truth_frames: tuple[EmitterTable, ...]
    inside_frames: tuple[np.ndarray, ...]

    @property
    def truth(self) -> EmitterTable:
        """The last frame's emitters (inside and just outside the frame): what is localised."""
        return self.truth_frames[-1]

    @property
    def inside(self) -> np.ndarray:
        return self.inside_frames[-1]

    def photons(self) -> np.ndarray:
        """The frames in photons (`adu_to_photons`), float32 (n, T, H, W)."""
        return adu_to_photons(self.frames_adu, self.baseline_adu, self.e_per_adu, self.em_gain, self.qe)

    def photo_electrons(self) -> np.ndarray:
        """The frames as a calibrated camera gives them and the network takes them: (ADU - baseline)
        x e-/ADU / EM gain, float32 (n, T, H, W) (ThunderSTORM's "photons"; ``photons()`` x QE)."""
        return (self.photons() * self.qe[:, None, None, None]).astype(np.float32)

    def expected_adu(self) -> np.ndarray:
        """The noise-free frames in ADU, baseline included (cameras without pixel maps)."""
        return photons_to_adu(self.expected_photons, self.baseline_adu, self.e_per_adu, self.em_gain, self.qe)


def adu_to_photons(frames_adu: np.ndarray, baseline_adu: np.ndarray | float, e_per_adu: np.ndarray | float,
                   em_gain: np.ndarray | float, qe: np.ndarray | float) -> np.ndarray:
    """Camera frames (n, ..., H, W) in ADU to photons arriving at each pixel, float32: the core camera
    model's `livescope.camera.adu_to_photons`, with per-sample parameters as (n,) arrays (or scalars).
    Noise and offsets make dark pixels slightly negative."""
    frames = np.asarray(frames_adu, np.float32)
    return camera_model.adu_to_photons(frames, *_per_sample(frames.ndim, baseline_adu, e_per_adu, em_gain, qe))


def photons_to_adu(photons: np.ndarray, baseline_adu: np.ndarray | float, e_per_adu: np.ndarray | float,
                   em_gain: np.ndarray | float, qe: np.ndarray | float) -> np.ndarray:
    """The camera's mean response, float32 ADU (baseline included): the inverse of `adu_to_photons`."""
    photons = np.asarray(photons, np.float32)
    return camera_model.photons_to_adu(photons, *_per_sample(photons.ndim, baseline_adu, e_per_adu, em_gain, qe))


def _per_sample(ndim: int, *values: np.ndarray | float) -> list[np.ndarray | np.float32]:
    """Camera parameters in float32, (n,) arrays shaped to broadcast along the first of ``ndim`` axes."""
    shape = (-1,) + (1,) * (ndim - 1)
    return [np.asarray(v, np.float32).reshape(shape) if np.ndim(v) else np.float32(v) for v in values]


# -- sampling -------------------------------------------------------------------------------------


def _log_uniform(rng: np.random.Generator, lo_hi: tuple[float, float], size) -> np.ndarray:
    lo, hi = lo_hi
    return np.exp(rng.uniform(math.log(lo), math.log(hi), size)) if hi > lo else np.full(size, float(lo))


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float], size) -> np.ndarray:
    return rng.uniform(*lo_hi, size) if lo_hi[1] > lo_hi[0] else np.full(size, float(lo_hi[0]))


def _patterns(config: LocaliseSimulation) -> tuple[np.ndarray, np.ndarray]:
    """Every on/off pattern over the window with at least one on frame, (P, T) bool, and the
    density of molecules showing it per unit density of molecules on in one frame, (P,)."""
    t = config.context_frames
    q, a = config.stay_on_probability, config.switch_on_probability
    duty = config.duty_cycle
    step = np.array([[1 - a, a], [1 - q, q]])  # [from][to], state 1 = on
    patterns = np.array([s for s in itertools.product((0, 1), repeat=t) if any(s)], dtype=np.int64)
    prob = np.where(patterns[:, 0] == 1, duty, 1 - duty)
    for k in range(1, t):
        prob = prob * step[patterns[:, k - 1], patterns[:, k]]
    return patterns.astype(bool), prob / duty  # molecules per on-molecule


def simulate_batch(config: LocaliseSimulation, n: int, rng: np.random.Generator) -> LocaliseBatch:
    """``n`` samples of ``config``: camera frames and their emitters; reproducible for ``rng``'s seed."""
    h, w = config.frame_shape_px
    t = config.context_frames
    margin = config.outside_margin_px

    # Per sample.
    pixel_nm = _uniform(rng, config.pixel_size_nm, n)
    if config.psf == "astigmatic":
        sigma_px = config.in_focus_sigma_nm / pixel_nm
    else:
        sigma_px = _uniform(rng, config.psf_sigma_px, n)
    density = _log_uniform(rng, config.density_per_um2, n)
    background = _log_uniform(rng, config.background_photons_per_px, n)
    camera_index = rng.integers(len(config.cameras), size=n)

    # Emitters: a Poisson number per on/off pattern over the extended field.
    patterns, per_on = _patterns(config)
    area_um2 = (h + 2 * margin) * (w + 2 * margin) * (pixel_nm / 1000) ** 2
    counts = rng.poisson(density[:, None] * area_um2[:, None] * per_on[None, :])  # (n, P)
    sample = np.repeat(np.repeat(np.arange(n), counts.shape[1]), counts.ravel())
    on = patterns[np.repeat(np.tile(np.arange(len(patterns)), n), counts.ravel())]  # (E, T)
    e = sample.size
    x_nm = (rng.uniform(-margin, w + margin, e)) * pixel_nm[sample]
    y_nm = (rng.uniform(-margin, h + margin, e)) * pixel_nm[sample]
    z_nm = rng.uniform(*config.z_range_nm, e) if config.psf == "astigmatic" else np.zeros(e)
    brightness = _log_uniform(rng, config.photons, e)
    cv = config.photons_frame_cv
    spread = math.sqrt(math.log1p(cv * cv))
    photons = brightness[:, None] * np.exp(spread * rng.standard_normal((e, t)) - spread**2 / 2)
    photons = np.clip(photons, *config.photons) * on  # (E, T), 0 where off

    # Noise-free frames: emitter light + background.
    emitter, frame = np.nonzero(on)  # one row per emitter and frame it is on in
    canvas = _render(config, n * t, (h, w), sample[emitter] * t + frame, x_nm[emitter], y_nm[emitter],
                     z_nm[emitter], photons[emitter, frame], pixel_nm[sample[emitter]],
                     sigma_px[sample[emitter]])
    expected = canvas.reshape(n, t, h, w)
    expected += background[:, None, None, None].astype(np.float32)

    # The camera: one vectorised read-out per camera model.
    frames = np.empty((n, t, h, w), np.uint16)
    for c, camera in enumerate(config.cameras):
        mine = np.flatnonzero(camera_index == c)
        if mine.size:
            out = np.empty((mine.size, t, h, w), np.uint16)
            _read_band(expected[mine], rng, camera, pixel_maps(camera, (h, w)), out)
            frames[mine] = out
    cam = lambda name: np.array([getattr(config.cameras[i], name) for i in camera_index], np.float32)  # noqa: E731

    sigma_nm = (sigma_px * pixel_nm).astype(np.float32)
    inside = (x_nm >= 0) & (x_nm < w * pixel_nm[sample]) & (y_nm >= 0) & (y_nm < h * pixel_nm[sample])
    tables, insides = [], []
    for k in range(t):
        rows = np.flatnonzero(on[:, k])
        rows = rows[np.argsort(sample[rows], kind="stable")]
        s = sample[rows]
        tables.append(EmitterTable.from_columns(
            frame=s + 1, x_nm=x_nm[rows], y_nm=y_nm[rows], z_nm=z_nm[rows], photons=photons[rows, k],
            background_photons=background[s], sigma_nm=sigma_nm[s]))
        insides.append(inside[rows])
    return LocaliseBatch(
        frames_adu=frames, expected_photons=expected, baseline_adu=cam("baseline_adu"), e_per_adu=cam("e_per_adu"),
        em_gain=cam("em_gain"), qe=cam("qe"), read_noise_e=cam("read_noise_e"),
        pixel_size_nm=pixel_nm.astype(np.float32), psf_sigma_px=sigma_px.astype(np.float32),
        density_per_um2=density.astype(np.float32), background_photons=background.astype(np.float32),
        truth_frames=tuple(tables), inside_frames=tuple(insides))


# -- rendering ------------------------------------------------------------------------------------


def render_emitters(config: LocaliseSimulation, shape_px: tuple[int, int], x_nm: np.ndarray, y_nm: np.ndarray,
                    photons: np.ndarray, pixel_size_nm: float, psf_sigma_px: float = 1.0,
                    z_nm: np.ndarray | None = None) -> np.ndarray:
    """Noise-free photons per pixel (float32 ``shape_px``, no background) of emitters rendered as
    `simulate_batch` renders them; ``psf_sigma_px`` is ignored for the astigmatic PSF."""
    x_nm, y_nm, photons = (np.atleast_1d(np.asarray(v, np.float64)) for v in (x_nm, y_nm, photons))
    z = np.zeros_like(x_nm) if z_nm is None else np.broadcast_to(np.asarray(z_nm, np.float64), x_nm.shape)
    if config.psf == "astigmatic":
        psf_sigma_px = config.in_focus_sigma_nm / pixel_size_nm
    k = x_nm.size
    return _render(config, 1, shape_px, np.zeros(k, np.int64), x_nm, y_nm, z, photons,
                   np.full(k, float(pixel_size_nm)), np.full(k, float(psf_sigma_px)))[0]


def _render(config: LocaliseSimulation, frames: int, shape: tuple[int, int], frame: np.ndarray,
            x_nm: np.ndarray, y_nm: np.ndarray, z_nm: np.ndarray, photons: np.ndarray, pixel_nm: np.ndarray,
            sigma_px: np.ndarray) -> np.ndarray:
    """Sum the emitters' PSFs into ``frames`` frames of ``shape``: float32 (frames, H, W).

    Each emitter adds a (2r+1)^2 kernel centred on the pixel it lies in; kernels of one r are
    computed together, and everything lands in padded frames with a single bincount."""
    h, w = shape
    col, row = x_nm / pixel_nm, y_nm / pixel_nm  # from the frame's top-left corner, px
    if config.psf == "gaussian":
        reach_nm = _GAUSS_REACH_SIGMA * sigma_px * pixel_nm
        tables = None
    else:
        tables = _airy_tables(config.psf_energy_fraction) if config.psf == "airy" else _astig_tables(config)
        cell_nm = (tables.cell * sigma_px * pixel_nm / SIGMA_PER_LAMBDA_OVER_NA if config.psf == "airy"
                   else np.full(x_nm.shape, tables.cell))
        plane, weight = tables.planes(z_nm)
        upper = np.minimum(plane + 1, tables.reach.size - 1)
        # The reach of the planes blended (only those with weight, so that +-z stay mirror images).
        reach_cells = np.maximum(np.where(weight < 1, tables.reach[plane], 0.0),
                                 np.where(weight > 0, tables.reach[upper], 0.0))
        reach_nm = reach_cells * cell_nm
    # The kernel must cover the reach from anywhere in the emitter's pixel.
    radius = np.ceil(reach_nm / pixel_nm + 0.5).astype(np.int64)
    pad = int(radius.max(initial=0) + math.ceil(config.outside_margin_px) + 1)
    hp, wp = h + 2 * pad, w + 2 * pad
    indices, values = [], []
    for r in np.unique(radius):
        sel = np.flatnonzero(radius == r)
        k = 2 * int(r) + 1
        c0 = np.floor(col[sel]).astype(np.int64) - r  # the kernel's first column
        r0 = np.floor(row[sel]).astype(np.int64) - r
        steps = np.arange(k + 1)
        if tables is None:  # exact: erf at the pixel edges
            scale = 1.0 / (math.sqrt(2.0) * sigma_px[sel])
            cx = 0.5 * erf(((c0[:, None] + steps) - col[sel, None]) * scale[:, None])
            cy = 0.5 * erf(((r0[:, None] + steps) - row[sel, None]) * scale[:, None])
            kernel = np.diff(cy, axis=1)[:, :, None] * np.diff(cx, axis=1)[:, None, :]
        else:  # summed-area table at the pixel corners, in table cells from the PSF's centre
            per_px = pixel_nm[sel] / cell_nm[sel]
            tx = ((c0[:, None] + steps) - col[sel, None]) * per_px[:, None]
            ty = ((r0[:, None] + steps) - row[sel, None]) * per_px[:, None]
            kernel = tables.pixels(ty, tx, plane[sel], weight[sel], reach_cells[sel])
        kernel *= photons[sel, None, None]
        rows = (r0 + pad)[:, None] + np.arange(k)
        cols = (c0 + pad)[:, None] + np.arange(k)
        index = (frame[sel] * (hp * wp))[:, None, None] + rows[:, :, None] * wp + cols[:, None, :]
        indices.append(index.ravel())
        values.append(kernel.ravel())
    if not indices:
        return np.zeros((frames, h, w), np.float32)
    padded = np.bincount(np.concatenate(indices), np.concatenate(values), minlength=frames * hp * wp)
    return padded.reshape(frames, hp, wp)[:, pad:pad + h, pad:pad + w].astype(np.float32)


@dataclass(frozen=True)
class _PsfTables:
    """Summed-area tables of a pupil PSF on a grid of square cells, one per z plane.

    ``sat[p, i, j]`` is the PSF's light in cells [0, i) x [0, j) of plane p (so (M + 1)^2 for M x M
    cells, the PSF centred in the middle cell); ``reach[p]``: the radius (cells) that holds the
    energy fraction; ``cell``: the cell's size (nm; for the Airy pattern in lambda/NA)."""

    sat: np.ndarray  # (P, M + 1, M + 1) float64
    reach: np.ndarray  # (P,)
    z_nm: np.ndarray  # (P,)
    cell: float

    def planes(self, z_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The plane below each z and the weight of the one above (linear blend)."""
        if self.z_nm.size == 1:
            return np.zeros(z_nm.shape, np.int64), np.zeros(z_nm.shape)
        step = self.z_nm[1] - self.z_nm[0]
        u = np.clip((z_nm - self.z_nm[0]) / step, 0, self.z_nm.size - 1)
        p = np.minimum(np.floor(u).astype(np.int64), self.z_nm.size - 2)
        return p, u - p

    def pixels(self, ty: np.ndarray, tx: np.ndarray, plane: np.ndarray, weight: np.ndarray,
               reach: np.ndarray) -> np.ndarray:
        """Light in each pixel (E, K, K) whose corners lie at ``ty`` (E, K+1) x ``tx`` (E, K+1)
        cells from the PSF's centre, within the square of half-width ``reach`` (E,) cells."""
        m = self.sat.shape[1] - 1
        stride = m + 1
        flat = self.sat.reshape(-1)

        def axis(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            # Light beyond the reach is cut symmetrically about the emitter (so it cannot shift it).
            t = np.clip(t, -reach[:, None], reach[:, None]) + m / 2
            i = np.minimum(t.astype(np.int64), m - 1)
            return i, t - i

        iy, fy = axis(ty)
        ix, fx = axis(tx)
        corner = np.zeros(iy.shape + ix.shape[1:])
        if self.z_nm.size > 1:
            blends = ((plane, 1.0 - weight), (plane + 1, weight))
        else:
            blends = ((plane, np.ones_like(weight)),)
        for p, wz in blends:
            base = (p * stride * stride)[:, None, None] + iy[:, :, None] * stride + ix[:, None, :]
            a, b = flat[base], flat[base + 1]
            c, d = flat[base + stride], flat[base + stride + 1]
            top = a + (b - a) * fx[:, None, :]
            bottom = c + (d - c) * fx[:, None, :]
            corner += wz[:, None, None] * (top + (bottom - top) * fy[:, :, None])
        return corner[:, 1:, 1:] - corner[:, :-1, 1:] - corner[:, 1:, :-1] + corner[:, :-1, :-1]


def _tables(optics: Optics, cell_um: float, defocus_um: list[float], z_nm: np.ndarray, fraction: float,
            cell: float) -> _PsfTables:
    kernels, reaches = [], []
    for dz in defocus_um:
        k = 2 * optics.support_px(cell_um, dz) + 1
        psf = optics.psf((k, k), cell_um, dz).astype(np.float64)  # k x k: nothing wraps round
        r = np.hypot(*np.mgrid[:k, :k] - k // 2).ravel()
        order = np.argsort(r, kind="stable")
        enclosed = np.cumsum(psf.ravel()[order])
        reaches.append(float(r[order][np.searchsorted(enclosed, fraction)]) + 1.0)
        kernels.append(psf)
    half = int(math.ceil(max(reaches)))
    m = 2 * half + 1
    sat = np.zeros((len(kernels), m + 1, m + 1))
    for p, psf in enumerate(kernels):
        c = psf.shape[0] // 2
        lo = max(c - half, 0)
        crop = psf[lo:c + half + 1, lo:c + half + 1]
        o = half - (c - lo)
        block = np.zeros((m, m))
        block[o:o + crop.shape[0], o:o + crop.shape[1]] = crop
        sat[p, 1:, 1:] = block.cumsum(0).cumsum(1)
    return _PsfTables(sat, np.asarray(reaches), z_nm, cell)


@lru_cache(maxsize=2)
def _airy_tables(fraction: float) -> _PsfTables:
    """The in-focus pupil PSF (an Airy pattern: the same in units of lambda/NA for any lambda, NA)."""
    optics = Optics(na=_RIG.na, emission_nm=_RIG.emission_nm, immersion_index=_RIG.immersion_index)
    cell = 1.0 / _AIRY_CELLS_PER_LAMBDA_OVER_NA
    cell_um = cell * optics.emission_nm * 1e-3 / optics.na
    return _tables(optics, cell_um, [0.0], np.zeros(1), fraction, cell)


_astig_cache: dict[tuple, _PsfTables] = {}


def _astig_tables(config: LocaliseSimulation) -> _PsfTables:
    optics = config.optics
    # Planes on a fixed 20 nm grid over at least +-600 nm: every z range within shares one table.
    lo = math.floor(min(config.z_range_nm[0], -600.0) / _ASTIG_PLANE_NM)
    hi = math.ceil(max(config.z_range_nm[1], 600.0) / _ASTIG_PLANE_NM)
    key = (optics, lo, hi, config.psf_energy_fraction)
    tables = _astig_cache.get(key)
    if tables is None:
        z = np.arange(lo, hi + 1) * _ASTIG_PLANE_NM
        # An emitter z above the focal plane is imaged at defocus -z (scene.py: focus minus emitter).
        tables = _tables(optics, _ASTIG_CELL_NM * 1e-3, [-float(v) * 1e-3 for v in z], z,
                         config.psf_energy_fraction, _ASTIG_CELL_NM)
        if len(_astig_cache) >= 4:
            _astig_cache.clear()
        _astig_cache[key] = tables
    return tables

"""Training data for virtual refocusing (Deep-Z style): registered axial stacks of one field.

A refocusing network takes one widefield frame and a per-pixel map of dz (µm, the target focal
plane minus the input's) and gives the image at the target plane. It learns from z-stacks: a pair
is (plane z_i, dz = z_j - z_i) -> plane z_j of the same field and crop.

- `ZStack`: one field's planes, noisy (uint16 ADU) and, from the virtual microscope, noise-free.
- `VirtualRefocusData` / `virtual_stacks`: z-stacks snapped with the virtual microscope; seeded.
- `read_stacks`: the user's own z-stacks (TIFF / OME-TIFF / OME-Zarr via `livescope.stackio`).
- `register_stack`: lateral drift between planes, measured (normalised cross-correlation of plane
  pairs, a smooth drift fitted robustly) and removed; implausible stacks are refused.
- `sample_pairs`: a training batch; `split_fields`: hold out whole fields for validation.

Physics. With a PSF symmetric about focus, an image 1 µm above focus equals one 1 µm below it,
so refocusing has no unique answer (which way to go?). Real objectives are asymmetric: a
refractive-index mismatch adds spherical aberration; the virtual rig has it as ``spherical_waves``
(Zernike Z(4,0), waves rms). ``VirtualRefocusData.spherical_waves`` = None keeps the rig's
default (`VirtualRigConfig.spherical_waves`); `describe` states the value used, for the card.

Axial sampling: the widefield OTF of a 1.4 NA oil objective (n 1.515) at 520 nm reaches
kz = (n - sqrt(n^2 - NA^2)) / lambda = 1.80 cycles/µm, so Nyquist is 0.28 µm; the default
0.25 µm step samples every plane the optics can tell apart (the axial FWHM is 0.52 µm).

Specimens in depth: filaments and beads spread over z = 0..``specimen_depth_um`` (default 4 µm,
focus about its middle); nuclei ("cells") lie flat on the coverslip whatever the depth, so they
are imaged flat (focus about z = 0) -- the thin-specimen case, where refocusing is exactly a
change of PSF. The single-molecule specimen is refused: it changes every frame, so its planes
would not show one specimen.

Generation speed: the default spec (3 specimens x 6 fields of 128 x 128 px x 25 planes = 450
frames, 40 z-slabs per frame for the 4 µm specimens; 44 MB with the clean planes) took 22-25 s
on a 2-core machine shared with a training job (load ~5). Most of it is one OTF per plane and
z-slab, ~7 s per thick specimen, computed once for all its fields (they are snapped plane by
plane); each further field costs ~0.5 s; the flat cells ~0.2 s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from livescope.models.virtual_fields import field_centres
from livescope.session import SessionError, is_session, load_session
from livescope.stackio import StackError, StackInfo, read_stack

if TYPE_CHECKING:
    from livescope.acquire.virtual import VirtualRigConfig, VirtualScene

RefocusSpecimen = Literal["filaments", "beads", "cells"]
DEPTH_SPECIMENS: frozenset[str] = frozenset({"filaments", "beads"})  # the ones with fluorophores in z
UINT16_MAX = 65535
MIN_PLANES = 3
MIN_GREY_LEVELS = 4
MIN_FIELD_GAP_UM = 2.0  # virtual fields are kept this far apart, beyond their own width
FIELD_CANDIDATES = 4  # random positions a virtual field is chosen from (the fullest)


class RefocusDataError(ValueError):
    """Refocusing data that cannot be used; the message is one line, for the user."""


@dataclass(frozen=True)
class ZStack:
    """One field's focal planes, aligned laterally (virtual ones by construction; a file's after
    `register_stack`).

    ``field_id``: stacks with the same id image the same field (e.g. time points of one position),
    so `split_fields` keeps them together; None: a field of its own.
    """

    planes_adu: np.ndarray  # (Z, H, W) uint16, camera frames (noisy)
    clean_adu: np.ndarray | None  # (Z, H, W) float32, noise-free expectation (virtual only)
    z_um: np.ndarray  # (Z,) float64, focus positions, increasing
    pixel_size_um: float | None  # None: the file did not say (training does not need it)
    source: str  # one line: where the stack came from
    field_id: str | None = None

    def __post_init__(self) -> None:
        planes = self.planes_adu
        if planes.ndim != 3 or planes.dtype != np.uint16:
            raise ValueError(f"planes_adu must be (Z, H, W) uint16, got {planes.shape} {planes.dtype}")
        z = np.asarray(self.z_um, dtype=np.float64)
        object.__setattr__(self, "z_um", z)
        if z.shape != (planes.shape[0],):
            raise ValueError(f"z_um has {z.shape} entries for {planes.shape[0]} planes")
        if planes.shape[0] > 1 and not np.all(np.diff(z) > 0):
            raise ValueError("z_um must increase strictly")
        if self.clean_adu is not None and (self.clean_adu.shape != planes.shape
                                           or self.clean_adu.dtype != np.float32):
            raise ValueError(f"clean_adu must be float32 of {planes.shape}, got "
                             f"{self.clean_adu.shape} {self.clean_adu.dtype}")

    @property
    def n_planes(self) -> int:
        return self.planes_adu.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.planes_adu.shape[1], self.planes_adu.shape[2]

    @property
    def z_step_um(self) -> float:
        """Plane spacing (the median one, should the steps differ)."""
        return float(np.median(np.diff(self.z_um))) if self.n_planes > 1 else 0.0


# -- virtual stacks --------------------------------------------------------------------------------


class VirtualRefocusData(BaseModel):
    """z-stacks from the virtual microscope: fields x planes per specimen, seeded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    specimens: tuple[RefocusSpecimen, ...] = ("filaments", "beads", "cells")
    specimen_depth_um: float = Field(
        default=4.0, ge=0, description="filaments and beads fill z = 0..depth; cells are flat")
    fields_per_specimen: int = Field(default=6, ge=1, description="stage positions, one stack each")
    sensor_shape_px: tuple[int, int] = (128, 128)
    z_range_um: tuple[float, float] = Field(
        default=(-3.0, 3.0), description="planes relative to the focus mid-specimen, µm (inclusive)")
    z_step_um: float = Field(default=0.25, gt=0, description="plane spacing, µm")
    signal_photons_per_ms: tuple[float, ...] = Field(
        default=(3.0, 10.0, 30.0),
        description="peak signal rates of an in-focus structure; fields take them in turn")
    exposure_ms: float = Field(default=10.0, gt=0)
    spherical_waves: float | None = Field(
        default=None, description="primary spherical aberration, waves rms; None: the rig's default")
    stage_range_um: float = Field(default=150.0, gt=0, description="field centres x, y within +- this")
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _sane(self) -> VirtualRefocusData:
        if not self.specimens or not self.signal_photons_per_ms:
            raise ValueError("give at least one specimen and one signal level")
        if min(self.sensor_shape_px) < 16:
            raise ValueError(f"sensor_shape_px {self.sensor_shape_px} is too small (16 px at least)")
        if len(self.z_offsets_um) < MIN_PLANES:
            raise ValueError(f"z_range_um {self.z_range_um} at {self.z_step_um} µm gives fewer than "
                             f"{MIN_PLANES} planes")
        return self

    @property
    def z_offsets_um(self) -> np.ndarray:
        """The planes' focus relative to the specimen's middle, µm."""
        lo, hi = self.z_range_um
        n = math.floor((hi - lo) / self.z_step_um + 1e-9) + 1
        return lo + self.z_step_um * np.arange(max(n, 0))

    def focus_um(self, specimen: str) -> float:
        """The focus the planes are taken about: mid-specimen (a flat one: the coverslip)."""
        return self.specimen_depth_um / 2 if specimen in DEPTH_SPECIMENS else 0.0

    def rig(self, specimen: str, signal_photons_per_ms: float | None = None, seed: int = 0) -> VirtualRigConfig:
        """The `VirtualRigConfig` a specimen's stacks are snapped with (default: first signal level)."""
        from livescope.acquire.virtual import VirtualRigConfig

        extra = {} if self.spherical_waves is None else {"spherical_waves": self.spherical_waves}
        return VirtualRigConfig(
            sensor_shape_px=self.sensor_shape_px,
            specimen=specimen,
            specimen_depth_um=self.specimen_depth_um if specimen in DEPTH_SPECIMENS else 0.0,
            signal_photons_per_ms=(self.signal_photons_per_ms[0] if signal_photons_per_ms is None
                                   else signal_photons_per_ms),
            exposure_ms=self.exposure_ms,
            seed=seed,
            **extra,
        )

    def describe(self) -> str:
        rig = self.rig(self.specimens[0])
        depth = f"{self.specimen_depth_um:g} um deep"
        shapes = [f"{s} {depth if s in DEPTH_SPECIMENS else 'flat'}" for s in self.specimens]
        lo, hi = self.z_range_um
        return (
            f"virtual z-stacks ({', '.join(shapes)}), {self.fields_per_specimen} fields each of "
            f"{self.sensor_shape_px[0]}x{self.sensor_shape_px[1]} px x {len(self.z_offsets_um)} planes "
            f"{lo:+g}..{hi:+g} um step {self.z_step_um:g} um about mid-specimen, signal "
            f"{', '.join(f'{s:g}' for s in self.signal_photons_per_ms)} photons/ms, {self.exposure_ms:g} ms, "
            f"NA {rig.na:g} n {rig.immersion_index:g} {rig.emission_nm:g} nm, spherical "
            f"{rig.spherical_waves:g} waves rms, seed {self.seed}"
        )


def snap_at_signal(scene: VirtualScene, x_um: float, y_um: float, z_um: float, exposure_ms: float,
                   signal_photons_per_ms: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`VirtualScene.snap` as a rig whose signal is ``signal_photons_per_ms`` would give it, from a
    scene set up at 1 photon/ms: the signal is linear in the rate, the background is not scaled.

    One scene then serves every signal level, so its OTF cache (the costly part) is shared.
    """
    from livescope.acquire.virtual.camera import expected_adu, read_out

    if scene.config.signal_photons_per_ms != 1.0:
        raise ValueError("snap_at_signal needs a scene whose rig has signal_photons_per_ms = 1")
    background = np.float32(scene.config.background_photons_per_ms * exposure_ms)
    photons = scene.expected_photons(x_um, y_um, z_um, exposure_ms)
    photons = (photons - background) * np.float32(signal_photons_per_ms) + background
    np.maximum(photons, 0.0, out=photons)
    return read_out(photons, rng, scene.camera), expected_adu(photons, scene.camera)


def _field_centres(n: int, spec: VirtualRefocusData, scene: VirtualScene,
                   rng: np.random.Generator) -> list[tuple[float, float]]:
    """Stage positions of ``n`` fields that share no specimen (held-out fields must be unseen).

    Each is the one of `FIELD_CANDIDATES` random positions with the most fluorophore in view:
    the specimens are sparse enough (beads: ~2 in a 128 px field) that a random field is often
    empty. Positions lie on the pixel grid, so every field has the same sub-pixel offset and the
    scene's OTFs for a plane serve every field.
    """
    return field_centres(n, scene, pixel_size_um=scene.pixel_size_um, sensor_shape_px=spec.sensor_shape_px,
                         stage_range_um=spec.stage_range_um, rng=rng, candidates=FIELD_CANDIDATES,
                         min_gap_um=MIN_FIELD_GAP_UM, tries=1000)


def virtual_stacks(spec: VirtualRefocusData) -> list[ZStack]:
    """Snap ``spec``'s z-stacks: per specimen, fields at random stage positions, each with its
    noisy planes and their noise-free expectation; ``z_um`` are focus heights above the coverslip.

    Planes are snapped plane by plane across a specimen's fields, so each plane's OTFs (one per
    z-slab) are computed once for all of them.
    """
    from livescope.acquire.virtual import VirtualScene

    rng = np.random.default_rng(spec.seed)
    offsets = spec.z_offsets_um
    stacks: list[ZStack] = []
    for specimen in spec.specimens:
        rig = spec.rig(specimen, signal_photons_per_ms=1.0, seed=int(rng.integers(2**31)))
        scene = VirtualScene(rig)
        centres = _field_centres(spec.fields_per_specimen, spec, scene, rng)
        levels = [spec.signal_photons_per_ms[i % len(spec.signal_photons_per_ms)] for i in range(len(centres))]
        z_um = spec.focus_um(specimen) + offsets
        shape = (len(z_um), *spec.sensor_shape_px)
        noisy = [np.empty(shape, np.uint16) for _ in centres]
        clean = [np.empty(shape, np.float32) for _ in centres]
        for k, z in enumerate(z_um):
            for f, ((x, y), level) in enumerate(zip(centres, levels)):
                noisy[f][k], clean[f][k] = snap_at_signal(scene, x, y, float(z), spec.exposure_ms, level, rng)
        for f, ((x, y), level) in enumerate(zip(centres, levels)):
            source = (f"virtual {specimen} field {f} at ({x:.2f}, {y:.2f}) um, {level:g} photons/ms, "
                      f"rig seed {rig.seed}")
            stacks.append(ZStack(noisy[f], clean[f], z_um.copy(), rig.pixel_size_um, source))
    return stacks


# -- the user's stacks -----------------------------------------------------------------------------


def read_stacks(paths: Sequence[str | os.PathLike], z_step_um: float | None = None) -> list[ZStack]:
    """Read z-stacks: each file holds one (Z, Y, X) or several (P, Z, Y, X: positions, or time
    points of one position) stacks; a multi-series OME-TIFF holds one per series (position).

    Plane spacing: ``z_step_um`` if given (it overrides the file), else the file's (OME
    PhysicalSizeZ, ImageJ spacing, OME-Zarr z scale). The z axis is the one named Z; the one
    leading axis of a 3-D stack is taken as Z whatever its name (z-stacks are often saved as
    time series), and a 4-D one without a Z as P, Z, Y, X. Planes are assumed in
    increasing focus order. Every problem is a `RefocusDataError` with a one-line message.
    """
    if not paths:
        raise RefocusDataError("no z-stacks given: give one or more --data STACK")
    if z_step_um is not None and not (math.isfinite(z_step_um) and z_step_um > 0):
        raise RefocusDataError(f"z step {z_step_um} µm must be a positive number of micrometres")
    stacks: list[ZStack] = []
    for path in paths:
        if is_session(path):
            stacks += _session_stacks(Path(path))
            continue
        try:
            stack = read_stack(path)
        except StackError as e:
            raise RefocusDataError(str(e)) from None
        info = stack.info
        arrays = [stack.frames.reshape(info.shape)] + _more_series(Path(path), info)
        step = z_step_um if z_step_um is not None else info.z_step_um
        step_note = "given" if z_step_um is not None else "from metadata"
        for series, data in enumerate(arrays):
            volumes, lead = _z_volumes(Path(path), data, info.axes)
            counts = [_as_counts(Path(path), volume) for volume in volumes]
            if step is None:
                raise RefocusDataError(
                    f"{path}: no z spacing in its metadata (OME PhysicalSizeZ); give the plane "
                    "spacing with --z-step MICRONS")
            for index, planes in enumerate(counts):
                where = (f" series {series}" if len(arrays) > 1 else "") + (
                    f" {lead} {index}" if len(volumes) > 1 else "")
                # Time points of one position image one field; positions (or series) do not.
                field_id = f"{path} series {series}" if lead == "T" else None
                stacks.append(ZStack(
                    planes, None, step * np.arange(planes.shape[0], dtype=np.float64), info.pixel_size_um,
                    f"{path}{where}: {planes.shape[0]} planes of {planes.shape[1]}x{planes.shape[2]} px, "
                    f"{step:g} um apart ({step_note})", field_id))
    return stacks


def _session_stacks(path: Path) -> list[ZStack]:
    """A calibration zstack session's positions, one field each (plane spacing from its manifest)."""
    try:
        session = load_session(path)
        found = session.stacks()
    except SessionError as e:
        raise RefocusDataError(str(e)) from None
    if not found:
        raise RefocusDataError(f"{path}: the session has no completed positions yet")
    stacks = []
    for stack in found:
        z = np.asarray(stack.z_um, dtype=np.float64)
        order = np.argsort(z)  # the stage may have stepped downwards
        stacks.append(ZStack(
            stack.planes_adu[order], None, z[order], session.pixel_size_um,
            f"{path} position {stack.name}: {len(z)} planes of {stack.planes_adu.shape[1]}x"
            f"{stack.planes_adu.shape[2]} px, {np.median(np.diff(z[order])):g} um apart (session)",
            f"{session.session_id}:{stack.position}"))
    return stacks


def _more_series(path: Path, info: StackInfo) -> list[np.ndarray]:
    """A multi-series OME-TIFF's further series of the first one's layout (positions);
    `read_stack` reads the first only."""
    if info.format != "ome-tiff":
        return []
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return [s.asarray().reshape(info.shape) for s in tif.series[1:]
                if s.axes == info.axes and tuple(s.shape) == tuple(info.shape)]


def _z_volumes(path: Path, data: np.ndarray, axes: str) -> tuple[list[np.ndarray], str]:
    """(Z, Y, X) volumes of a stack, and the name of the axis across them ('' for one)."""
    colour = [a for a, n in zip(axes, data.shape) if a in "CS" and n > 1]
    if colour:
        raise RefocusDataError(f"{path}: a colour / multi-channel image (axes {axes}, shape {data.shape}); "
                               "save one grey-level channel per file")
    keep = [i for i, (a, n) in enumerate(zip(axes, data.shape)) if n > 1 or a in "ZYX"]
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if data.ndim not in (3, 4):
        raise RefocusDataError(f"{path}: shape {data.shape} (axes {axes}) is not a z-stack: give "
                               "(Z, Y, X), or (P, Z, Y, X) for several positions")
    if data.ndim == 3:
        return [data], ""
    z_axis = axes.index("Z") if "Z" in axes[:2] else 1  # unnamed: (P, Z, Y, X)
    lead = axes[1 - z_axis]
    data = np.moveaxis(data, z_axis, 1)
    return list(data), lead if lead in "PT" else "position"


def _as_counts(path: Path, planes: np.ndarray) -> np.ndarray:
    """A (Z, Y, X) volume as uint16 camera counts, or why it cannot be one."""
    if planes.shape[0] < MIN_PLANES:
        raise RefocusDataError(f"{path}: {planes.shape[0]} plane(s); refocusing needs at least "
                               f"{MIN_PLANES} planes per z-stack")
    if planes.dtype.kind == "f":
        if not np.isfinite(planes).all():
            raise RefocusDataError(f"{path}: has NaN or infinite pixels; remove them first")
        low, high = float(planes.min()), float(planes.max())
        if low < -0.5 or high >= UINT16_MAX + 0.5:
            # Clipping would change the noise the model learns from; refuse instead.
            raise RefocusDataError(f"{path}: float values from {low:g} to {high:g} are outside camera "
                                   f"counts (0..{UINT16_MAX}); give the raw stack")
        planes = np.rint(planes)
        h, w = planes.shape[1:]
        if len(np.unique(planes[:, :: max(1, h // 64), :: max(1, w // 64)])) < MIN_GREY_LEVELS:
            raise RefocusDataError(f"{path}: float values from {low:g} to {high:g} leave fewer than "
                                   f"{MIN_GREY_LEVELS} grey levels as counts (normalised to 0..1?); "
                                   "give the raw stack")
    return np.ascontiguousarray(planes, dtype=np.uint16)


# -- registration ----------------------------------------------------------------------------------
#
# Measured on the virtual microscope's stacks, aligned by construction, and on its frames with
# known stage offsets; why this is not "phase correlation of adjacent planes, accumulated":
# (1) skimage's phase correlation (with or without phase normalisation, windowing, band-pass)
# shrank known 1-3 px offsets of same-plane frames to about half or less: large structures cut by
# the frame edge correlate best unshifted; normalised cross-correlation over the frames' overlap
# (`_ncc_shift`) recovered them to ~0.2 px (median) where the field has structure. (2) Chaining
# adjacent planes adds their errors up as a random walk: 1-16 px of spurious drift over 25
# planes. So the drift is a smooth model (a line in plane index by default), fitted robustly to
# the shifts between every pair of planes 1 to 4 apart whose correlation shows structure: every
# pair constrains the slope, and errors do not accumulate.
#
# Limits, inherent in the data: a field with too little structure (empty, or one blob cut by the
# frame edge) cannot be registered to better than ~1 px; and in a thick specimen, a structure
# inclined in z (a filament rising through the stack) has its in-focus part slide along it from
# plane to plane -- real apparent motion, which registration cannot tell from drift. Virtual
# stacks are aligned by construction: do not register them.

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


# -- training batches ------------------------------------------------------------------------------


def sample_pairs(stacks: Sequence[ZStack], batch_size: int, patch_px: int, dz_max_um: float,
                 rng: np.random.Generator, target: Literal["clean", "noisy"] = "clean",
                 rotate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A batch of refocusing pairs: (inputs (B, 2, P, P), targets (B, 1, P, P)), float32.

    Input channel 0: the input plane's patch (ADU); channel 1: dz = z_target - z_input, µm, the
    same at every pixel. Target: the same field and crop at the target plane -- its noise-free
    expectation when ``target`` is "clean" and the stack has one, else the noisy plane (noise is
    independent between planes, so noisy targets train like Noise2Noise).

    Per pair: a stack uniformly, a plane offset k uniformly among those with |dz| <= ``dz_max_um``
    (so dz is uniform over the stack's steps; k = 0, the identity, included), the input plane
    uniformly among those that have a partner k away, a crop uniformly, and one of the 8 flips /
    quarter turns, the same for input and target. These assume a PSF symmetric under them, as
    defocus and spherical aberration are (rotationally); astigmatism is not: a quarter turn swaps
    its x and y focal lines, so for an astigmatic rig pass ``rotate=False`` (flips keep
    astigmatism along the axes as it is).

    With noisy targets k = 0 is left out: its target would be the input frame itself, noise and
    all, teaching the network to copy noise at dz = 0 while it learns to remove it elsewhere.
    """
    if not stacks:
        raise ValueError("no stacks to sample from")
    if target not in ("clean", "noisy"):
        raise ValueError(f"target must be 'clean' or 'noisy', got {target!r}")
    if dz_max_um < 0:
        raise ValueError(f"dz_max_um must not be negative, got {dz_max_um}")
    small = [s.source for s in stacks if min(s.frame_shape) < patch_px]
    if small:
        raise ValueError(f"{small[0]}: frames are smaller than the {patch_px} px patch")
    offsets = [_offsets(s, dz_max_um, exclude_zero=target == "noisy" or s.clean_adu is None)
               for s in stacks]
    usable = [i for i, o in enumerate(offsets) if o.size]
    if not usable:
        raise ValueError(f"no plane pairs within dz_max_um {dz_max_um:g} µm (other than identical frames)")
    inputs = np.empty((batch_size, 2, patch_px, patch_px), np.float32)
    targets = np.empty((batch_size, 1, patch_px, patch_px), np.float32)
    for b in range(batch_size):
        s = usable[rng.integers(len(usable))]
        stack = stacks[s]
        k = int(rng.choice(offsets[s]))
        i = int(rng.integers(max(0, -k), stack.n_planes - max(0, k)))
        j = i + k
        h, w = stack.frame_shape
        y, x = int(rng.integers(h - patch_px + 1)), int(rng.integers(w - patch_px + 1))
        crop = (slice(y, y + patch_px), slice(x, x + patch_px))
        source = stack.clean_adu if target == "clean" and stack.clean_adu is not None else stack.planes_adu
        a, t = stack.planes_adu[i][crop], source[j][crop]
        turns, flip = (int(rng.integers(4)) if rotate else 0), bool(rng.integers(2))
        a, t = np.rot90(a, turns), np.rot90(t, turns)
        if flip:
            a, t = a[:, ::-1], t[:, ::-1]
        inputs[b, 0] = a
        inputs[b, 1] = stack.z_um[j] - stack.z_um[i]
        targets[b, 0] = t
    return inputs, targets


def _offsets(stack: ZStack, dz_max_um: float, exclude_zero: bool) -> np.ndarray:
    """Plane offsets k whose every pair lies within ``dz_max_um`` (a hair over, for rounding)."""
    z, n = stack.z_um, stack.n_planes
    ks = []
    for k in range(-(n - 1), n):
        i = np.arange(max(0, -k), n - max(0, k))
        if not (k == 0 and exclude_zero) and np.all(np.abs(z[i + k] - z[i]) <= dz_max_um + 1e-6):
            ks.append(k)
    return np.asarray(ks, dtype=np.int64)


def split_fields(stacks: Sequence[ZStack], fraction: float,
                 rng: np.random.Generator) -> tuple[list[ZStack], list[ZStack]]:
    """(train, held out): whole fields held out (planes of one field are too alike to validate
    on), ``fraction`` of the fields rounded, at least one while there are two or more fields, and
    never all; stacks sharing a ``field_id`` go together. With one field nothing is held out."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    keys = [s.field_id if s.field_id is not None else f"#{i}" for i, s in enumerate(stacks)]
    fields = list(dict.fromkeys(keys))
    n = len(fields)
    n_held = 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))
    held = {fields[i] for i in rng.permutation(n)[:n_held]}
    train = [s for s, key in zip(stacks, keys) if key not in held]
    held_out = [s for s, key in zip(stacks, keys) if key in held]
    return train, held_out

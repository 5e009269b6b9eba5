"""Refocusing training data from the virtual microscope: z-stacks of several fields, seeded.

- `VirtualRefocusData`: what to snap (specimens, fields, planes, signal levels, optics).
- `virtual_stacks`: the `ZStack`s (`models.refocus.data`), with their noise-free planes.

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
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from livescope.models.refocus.data import MIN_PLANES, ZStack
from livescope.models.virtual_fields import field_centres, snap_at_signal

if TYPE_CHECKING:
    from livescope.acquire.virtual import VirtualRigConfig, VirtualScene

RefocusSpecimen = Literal["filaments", "beads", "cells"]
DEPTH_SPECIMENS: frozenset[str] = frozenset({"filaments", "beads"})  # the ones with fluorophores in z
MIN_FIELD_GAP_UM = 2.0  # virtual fields are kept this far apart, beyond their own width
FIELD_CANDIDATES = 4  # random positions a virtual field is chosen from (the fullest)


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

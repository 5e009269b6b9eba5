"""Training data for cross-modality restoration: registered pairs of one field in two modalities.

A pair is the low-resolution image (confocal) and the high-resolution one (STED) of the same
field, the high one registered to the low one and scaled to its brightness (the served contract,
see ``models.restore.net``).

- `RestorePair`: one field's pair (and, from the virtual microscope, the noise-free high image).
- `VirtualRestoreData` / `virtual_pairs`: pairs snapped with the virtual microscope, the two
  modalities through its confocal and STED PSFs (`VirtualScene.expected_photons(modality=...)`).
- `session_pairs`: a calibration session's pairs (anything with ``.position, .repeat, .low_adu,
  .high_adu``), each high image aligned by a registration callable (`registration_aligner`
  makes one from `livescope.acquire.calibration.registration`'s report); pairs that fail registration
  are left out, not used unaligned.
- `sample_patches`: a training batch; `split_fields`: hold out whole fields (positions);
  `require_fields`: the clear error for too few.

Pixel size: a STED image needs pixels well below the confocal resolution (the virtual rig's STED
FWHM is ~54 nm at saturation 10, its confocal one ~176 nm); the default 30 nm samples STED at
~1.8 px per FWHM, as STED users acquire. The confocal image is then oversampled (~6 px per FWHM),
as it is when both are acquired on a STED microscope's one scan grid.

Generation speed: the default spec (3 specimens x 12 fields of 128 x 128 px, both modalities) takes
~5 s on a shared 2-core machine; the STED OTF (a fine grid for the doughnut) is the costly part,
computed once per specimen since fields lie on the pixel grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from livescope.models.fields import split_by_field
from livescope.models.patches import random_crop, same_random_turn
from livescope.models.virtual_fields import field_centres, snap_at_signal

if TYPE_CHECKING:
    from livescope.acquire.calibration.registration import RegistrationReport
    from livescope.acquire.virtual import VirtualRigConfig, VirtualScene

RestoreSpecimen = Literal["filaments", "beads", "cells"]
MIN_FIELDS = 2  # one is held out: to keep the best weights and to score the model
MIN_SIGNAL_ADU = 0.5  # a high image whose mean is below this above the baseline has no signal to scale
FIELD_CANDIDATES = 32  # random positions a virtual field is chosen from (the fullest: specimens are sparse)
MIN_FIELD_GAP_UM = 1.0
CAMERA_PIXEL_UM = 6.5  # the virtual camera's pixel pitch; the magnification sets the pixel size


class RestoreDataError(ValueError):
    """Restoration data that cannot be used; the message is one line, for the user."""


@dataclass(frozen=True)
class RestorePair:
    """One field in the two modalities, registered, the high one at the low one's brightness.

    All arrays (H, W) float32 ADU with the camera baseline included. ``field_id``: pairs with the
    same id show the same field (repeats of one position), so `split_fields` keeps them together.
    """

    low_adu: np.ndarray  # the low modality (confocal) as acquired
    high_adu: np.ndarray  # the high modality (STED), registered to low, scaled to its brightness
    clean_high_adu: np.ndarray | None  # its noise-free expectation (virtual only), scaled alike
    field_id: str
    source: str  # one line: where the pair came from

    def __post_init__(self) -> None:
        for name in ("low_adu", "high_adu", "clean_high_adu"):
            a = getattr(self, name)
            if a is None:
                continue
            if a.ndim != 2 or a.shape != self.low_adu.shape:
                raise ValueError(f"{name} must be (H, W) like low_adu {self.low_adu.shape}, got {a.shape}")
            object.__setattr__(self, name, np.ascontiguousarray(a, np.float32))

    @property
    def shape(self) -> tuple[int, int]:
        return self.low_adu.shape[0], self.low_adu.shape[1]

    def target(self, kind: Literal["clean", "noisy"]) -> np.ndarray:
        """The training target: the noise-free high image where there is one and ``kind`` is
        'clean', else the acquired one (its noise is independent of the input's: Noise2Noise)."""
        return self.clean_high_adu if kind == "clean" and self.clean_high_adu is not None else self.high_adu


def brightness_ratio(low_adu: np.ndarray, high_adu: np.ndarray, baseline_adu: float) -> float | None:
    """The factor that brings ``high_adu``'s mean above the baseline to ``low_adu``'s; None when
    either has no signal above the baseline (nothing to scale)."""
    low = float(np.mean(low_adu, dtype=np.float64)) - baseline_adu
    high = float(np.mean(high_adu, dtype=np.float64)) - baseline_adu
    if low < MIN_SIGNAL_ADU or high < MIN_SIGNAL_ADU:
        return None
    return low / high


def _scaled(image: np.ndarray, ratio: float, baseline_adu: float) -> np.ndarray:
    return ((image.astype(np.float32) - baseline_adu) * np.float32(ratio) + baseline_adu).astype(np.float32)


# -- virtual pairs ---------------------------------------------------------------------------------


class VirtualRestoreData(BaseModel):
    """Confocal/STED pairs from the virtual microscope: fields per specimen, in focus, seeded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    specimens: tuple[RestoreSpecimen, ...] = ("filaments", "beads", "cells")
    fields_per_specimen: int = Field(default=12, ge=1, description="stage positions, one pair each")
    sensor_shape_px: tuple[int, int] = (128, 128)
    pixel_size_um: float = Field(default=0.03, gt=0, description="at the sample; STED wants ~ its FWHM / 2")
    signal_photons_per_ms: tuple[float, ...] = Field(
        default=(3.0, 10.0, 30.0),
        description="peak signal rates of an in-focus structure (the scene's unit); fields take them in turn")
    exposure_ms: float = Field(default=10.0, gt=0, description="per modality (pixel dwell summed over the frame)")
    sted_saturation: float = Field(default=10.0, ge=0, description="STED depletion I / I_sat")
    stage_range_um: float = Field(default=40.0, gt=0, description="field centres x, y within +- this")
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _sane(self) -> VirtualRestoreData:
        if not self.specimens or not self.signal_photons_per_ms:
            raise ValueError("give at least one specimen and one signal level")
        if min(self.sensor_shape_px) < 16:
            raise ValueError(f"sensor_shape_px {self.sensor_shape_px} is too small (16 px at least)")
        return self

    def rig(self, specimen: str, seed: int = 0) -> VirtualRigConfig:
        """The rig a specimen's pairs are snapped with (signal 1 photon/ms: `snap_at_signal` scales it)."""
        from livescope.acquire.virtual import VirtualRigConfig

        field_um = 2 * self.stage_range_um + max(self.sensor_shape_px) * self.pixel_size_um + 2 * MIN_FIELD_GAP_UM
        return VirtualRigConfig(
            sensor_shape_px=self.sensor_shape_px, magnification=CAMERA_PIXEL_UM / self.pixel_size_um,
            camera_pixel_um=CAMERA_PIXEL_UM, specimen=specimen, field_um=field_um,
            signal_photons_per_ms=1.0, sted_saturation=self.sted_saturation, exposure_ms=self.exposure_ms,
            seed=seed)

    def describe(self) -> str:
        rig = self.rig(self.specimens[0])
        return (
            f"virtual confocal/STED pairs ({', '.join(self.specimens)}; in focus), {self.fields_per_specimen} "
            f"fields each of {self.sensor_shape_px[0]}x{self.sensor_shape_px[1]} px at "
            f"{self.pixel_size_um * 1e3:g} nm, signal {', '.join(f'{s:g}' for s in self.signal_photons_per_ms)} "
            f"photons/ms, {self.exposure_ms:g} ms, NA {rig.na:g} {rig.excitation_nm:g}/{rig.emission_nm:g} nm, "
            f"pinhole {rig.pinhole_au:g} AU, STED saturation {self.sted_saturation:g}, seed {self.seed}"
        )


def _field_centres(n: int, spec: VirtualRestoreData, scene: VirtualScene,
                   rng: np.random.Generator) -> list[tuple[float, float]]:
    try:
        return field_centres(n, scene, pixel_size_um=spec.pixel_size_um, sensor_shape_px=spec.sensor_shape_px,
                             stage_range_um=spec.stage_range_um, rng=rng, candidates=FIELD_CANDIDATES,
                             min_gap_um=MIN_FIELD_GAP_UM, tries=2000)
    except ValueError as e:
        raise RestoreDataError(str(e)) from None


def virtual_pairs(spec: VirtualRestoreData) -> list[RestorePair]:
    """Snap ``spec``'s pairs: per specimen and field, a noisy confocal frame and a STED frame (noisy
    and noise-free) of the same field, the STED ones scaled to the confocal brightness (ratio of
    the noise-free means: exact)."""
    from livescope.acquire.virtual import VirtualScene

    rng = np.random.default_rng(spec.seed)
    pairs: list[RestorePair] = []
    for specimen in spec.specimens:
        rig = spec.rig(specimen, seed=int(rng.integers(2**31)))
        scene = VirtualScene(rig)
        base = rig.baseline_adu
        for f, (x, y) in enumerate(_field_centres(spec.fields_per_specimen, spec, scene, rng)):
            level = spec.signal_photons_per_ms[f % len(spec.signal_photons_per_ms)]
            low, low_clean = snap_at_signal(scene, x, y, 0.0, spec.exposure_ms, level, rng, modality="confocal")
            high, high_clean = snap_at_signal(scene, x, y, 0.0, spec.exposure_ms, level, rng, modality="sted")
            ratio = brightness_ratio(low_clean, high_clean, base) or 1.0  # an empty field: nothing to scale
            pairs.append(RestorePair(
                low.astype(np.float32), _scaled(high, ratio, base), _scaled(high_clean, ratio, base),
                field_id=f"virtual {specimen} {f}",
                source=f"virtual {specimen} field {f} at ({x:.2f}, {y:.2f}) um, {level:g} photons/ms, rig seed {rig.seed}"))
    return pairs


# -- a calibration session's pairs ----------------------------------------------------------------


class PairLike(Protocol):
    """What a calibration session gives per pair (`livescope.session.ImagePair` has it)."""

    position: int | str
    repeat: int
    low_adu: np.ndarray
    high_adu: np.ndarray


Align = Callable[[np.ndarray, int, int], "np.ndarray | str | None"]
"""align(high_adu, position, repeat) -> the high image registered onto the low one's grid (float;
NaN where the high field does not cover it), or why it could not be (a reason, or None)."""


def registration_aligner(report: RegistrationReport) -> Align:
    """An `Align` from a pair-registration report (`livescope.acquire.calibration.registration`): each
    pair resampled by its own registration; pairs that failed QA, or that the report lacks, are
    refused with the reason (left out, never used unaligned)."""
    from livescope.acquire.calibration.registration import apply_registration

    def align(high_adu: np.ndarray, position: int, repeat: int) -> np.ndarray | str:
        reg = report.get(position, repeat)
        if reg is None:
            return "not in the registration report"
        if not reg.passed:
            return f"registration failed ({reg.reason})"
        return apply_registration(high_adu, reg)

    return align


def _finite_box(image: np.ndarray) -> tuple[slice, slice]:
    """The box of rows and columns that a registration filled (its NaN border strips cut off);
    empty if the finite pixels do not form one box."""
    finite = np.isfinite(image)
    per_row, per_col = finite.sum(axis=1), finite.sum(axis=0)
    rows, cols = np.flatnonzero(per_row == per_row.max()), np.flatnonzero(per_col == per_col.max())
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    if per_row.max() == 0 or not finite[box].all():
        return slice(0, 0), slice(0, 0)
    return box


def session_pairs(pairs: Sequence[PairLike], *, baseline_adu: float, source: str,
                  align: Align | None = None) -> tuple[list[RestorePair], list[str]]:
    """A session's pairs as `RestorePair`s, and one line per pair left out (why).

    Each high image is registered by ``align`` (None: used as acquired, e.g. both modalities
    through one scanner), the border the registration leaves empty cut from both images, and
    scaled to its low image's brightness. Left out: pairs that failed registration, and pairs
    with no signal above ``baseline_adu`` in either image. ``field_id`` is ``source`` and the
    position, so repeats of a position are held out together."""
    kept: list[RestorePair] = []
    dropped: list[str] = []
    for pair in pairs:
        where = f"{source} position {pair.position} repeat {pair.repeat}"
        low, high = np.asarray(pair.low_adu), np.asarray(pair.high_adu)
        if low.ndim != 2 or low.shape != high.shape:
            raise RestoreDataError(f"{where}: low and high images must be one (H, W) frame each of the same "
                                   f"size, got {low.shape} and {high.shape}")
        aligned = high.astype(np.float32) if align is None else align(high, pair.position, pair.repeat)
        if aligned is None or isinstance(aligned, str):
            dropped.append(f"{where}: {aligned or 'registration failed'}; left out")
            continue
        box = _finite_box(aligned)
        low, aligned = low[box].astype(np.float32), aligned[box]
        if low.size == 0:
            dropped.append(f"{where}: nothing left after registration; left out")
            continue
        ratio = brightness_ratio(low, aligned, baseline_adu)
        if ratio is None:
            dropped.append(f"{where}: no signal above the baseline {baseline_adu:g} ADU in one of the images; "
                           "left out")
            continue
        kept.append(RestorePair(low, _scaled(aligned, ratio, baseline_adu), None,
                                field_id=f"{source} position {pair.position}",
                                source=f"{where}, {low.shape[0]}x{low.shape[1]} px"))
    return kept, dropped


def require_fields(pairs: Sequence[RestorePair], patch_px: int) -> None:
    """RestoreDataError unless the pairs show `MIN_FIELDS` fields and every pair holds a patch."""
    small = [p for p in pairs if min(p.shape) < patch_px]
    if small:
        raise RestoreDataError(f"{small[0].source}: the image ({small[0].shape[0]}x{small[0].shape[1]} px) is "
                               f"smaller than the {patch_px} px training patch; acquire larger fields")
    fields = len({p.field_id for p in pairs})
    if fields < MIN_FIELDS:
        raise RestoreDataError(
            f"{len(pairs)} usable pair(s) at {fields} position(s): training needs pairs at {MIN_FIELDS} or more "
            "positions (one is held out to choose the weights and score the model); acquire more positions")


# -- training batches ------------------------------------------------------------------------------


def sample_patches(pairs: Sequence[RestorePair], batch_size: int, patch_px: int, rng: np.random.Generator,
                   target: Literal["clean", "noisy"] = "clean", rotate: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A batch: (inputs (B, 1, P, P) low ADU, targets (B, 1, P, P) high ADU at the low's brightness).

    Per item: a pair uniformly, a crop uniformly, and one of the 8 flips / quarter turns, the same
    for both (the confocal and STED PSFs are round; for a rig whose are not, ``rotate=False``
    keeps the flips only). Targets: see `RestorePair.target`."""
    if not pairs:
        raise RestoreDataError("no pairs to sample from")
    small = [p.source for p in pairs if min(p.shape) < patch_px]
    if small:
        raise RestoreDataError(f"{small[0]}: smaller than the {patch_px} px patch")
    inputs = np.empty((batch_size, 1, patch_px, patch_px), np.float32)
    targets = np.empty((batch_size, 1, patch_px, patch_px), np.float32)
    for b in range(batch_size):
        pair = pairs[int(rng.integers(len(pairs)))]
        crop = random_crop(pair.shape, patch_px, rng)
        inputs[b, 0], targets[b, 0] = same_random_turn(pair.low_adu[crop], pair.target(target)[crop], rng, rotate)
    return inputs, targets


def split_fields(pairs: Sequence[RestorePair], fraction: float,
                 rng: np.random.Generator) -> tuple[list[RestorePair], list[RestorePair]]:
    """(train, held out): whole fields held out (repeats of one position are too alike to validate
    on), ``fraction`` of the fields rounded, at least one while there are two or more, never all
    (`models.fields.split_by_field`)."""
    return split_by_field(pairs, [p.field_id for p in pairs], fraction, rng)

"""Registration of calibration pair members: where the high image of a pair lies on the low one's grid.

A `pairs` session snaps the same field twice, with a low preset (confocal) and a high one
(STED). Between the snaps the sample can drift, and the two modalities differ in resolution
and brightness. Before a pair can train a model its high image is resampled onto the low
image's pixel grid, and a pair that cannot be registered with confidence is flagged, with the
reason, never used silently.

Translation (always): both images are band-passed the same way -- a Gaussian low-pass of
``smoothing_px`` (it blurs the high image towards the low one's resolution and removes pixel
noise) minus a Gaussian of ``background_px`` (it removes offsets and uneven illumination) --
zero-padded by half their size (so the correlation is linear: no wrap-around, and structure at
the field's edge counts as much as in its middle) and cross-correlated with
`skimage.registration.phase_cross_correlation`, upsampled ``upsample_factor`` times for
sub-pixel precision. Plain cross-correlation (``normalization=None``): phase whitening would give
the noise-dominated high frequencies the same weight as the structure. With symmetric
point-spread functions the cross-correlation of two differently blurred copies of a field
peaks at their true offset, so the resolution difference does not bias it.

Affine (``affine=True``): starting from the translation, the six parameters of an affine map
are refined by maximising the normalised cross-correlation of the band-passed images over the
central region that stays inside both fields (Powell's method, scipy.optimize; cubic-spline
resampling, scipy.ndimage). Intensity-based rather than feature-based, because feature detectors
find different corners in a confocal and a STED image of the same filaments.

Stability: the same cross-correlation on each half of the field (top, bottom, left, right)
must agree with the whole-field map at that half's centre; ``instability_px`` is the largest
disagreement among the halves that have structure in both images and whose own estimate fits
them better than the whole-field map does. Noise, unrelated fields and structure that runs one way only (the aperture
problem: one straight filament) give halves that disagree.

Conventions. Coordinates are (row, col) pixels, the centre of the top-left pixel at (0, 0).
``shift_px`` = (dy, dx) is the displacement that carries the high image onto the low one: a
feature at (r, c) in the high image is at (r + dy, c + dx) in the low one (so
``scipy.ndimage.shift(high, shift_px)`` lands on low). ``affine`` is the same forward map as a
2x3 row-major matrix: (r, c) in high -> A @ (r, c, 1) in low; with it, ``shift_px`` is where
the centre of the field moves.

Figures (all dimensionless):
- ``ncc_before`` / ``ncc_after``: normalised cross-correlation (Pearson's r) of the band-passed
  images, as acquired / after alignment, over the pixels both fields cover.
- ``residual_rms``: RMS of low - (a * high + b) after alignment, a and b the least-squares
  brightness match, relative to low's standard deviation there, on the low-passed images (so it
  measures misfit of structure, not pixel noise): 0 = the same image up to brightness, 1 = no
  better than a constant.
- ``low_snr`` / ``high_snr``: (99.9th percentile - background) / noise sigma (`image_stats`).

QA: a pair fails when either image has no structure above the noise (its low-passed 99.9th
percentile - median is below ``min_contrast`` times the low-passed noise) or is saturated
(more than ``max_saturated_fraction`` of its pixels at the clip level), when the shift is
larger than ``max_shift_px``, the estimate unstable (> ``max_instability_px``), the NCC after
alignment below ``min_ncc``, or an affine strays from a rigid map by more than
``max_affine_strain``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from scipy import ndimage, optimize
from skimage.filters import window
from skimage.registration import phase_cross_correlation

from livescope.acquire.calibration.store import replace_file_durably
from livescope.camera_estimate import noise_sigma
from livescope.validation import first_error

REGISTRATION_FILE = "registration.json"
"""The registration report's name inside a session folder."""

REPORT_FORMAT = "livescope-pair-registration"
SCHEMA_VERSION = 1
_MIN_SIDE_PX = 16
_SIGNAL_PERCENTILE = 99.9  # "the brightest structure": robust to a few hot pixels


class RegistrationError(Exception):
    """A pair or a report that cannot be registered, saved or read; the message is one line."""


class PairLike(Protocol):
    """What registration needs of a pair (`livescope.session.ImagePair` is one): both images
    (H, W) in ADU, on the same camera grid."""

    position: int
    repeat: int
    low_adu: np.ndarray
    high_adu: np.ndarray


class RegistrationSettings(BaseModel):
    """How pairs are registered and when one fails QA."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    affine: bool = Field(default=False, description="refine the translation to an affine map")
    upsample_factor: int = Field(default=100, ge=1, description="sub-pixel precision: 1 / factor px")
    smoothing_px: float = Field(default=1.5, gt=0, description="Gaussian low-pass sigma applied to both images")
    background_px: float = Field(default=20.0, ge=0, description="Gaussian sigma of the background removed (0: none)")
    max_shift_px: float = Field(default=16.0, gt=0, description="larger shifts fail")
    min_ncc: float = Field(default=0.5, ge=-1, le=1, description="lower NCC after alignment fails")
    max_instability_px: float = Field(default=1.0, gt=0,
                                      description="half-field estimates further from the whole field's fail")
    min_contrast: float = Field(default=6.0, ge=0,
                                description="structure below this many noise sigmas (low-passed) is an empty image")
    max_saturated_fraction: float = Field(default=0.01, ge=0, le=1)
    saturation_adu: float | None = Field(
        default=None, gt=0, description="the camera's clip level; None: the image's maximum, where more than "
        "max_saturated_fraction of its pixels sit exactly at it (a plateau is clipping)")
    max_affine_strain: float = Field(default=0.05, gt=0,
                                     description="largest |A - rotation| entry of an affine's linear part")

    @model_validator(mode="after")
    def _band(self) -> RegistrationSettings:
        if self.background_px and self.background_px <= self.smoothing_px:
            raise ValueError(f"background_px ({self.background_px}) must exceed smoothing_px "
                             f"({self.smoothing_px}), or be 0")
        return self


class PairRegistration(BaseModel):
    """One pair's registration and QA verdict (conventions and figures: the module's doc)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    position: int = Field(ge=0)
    repeat: int = Field(ge=0)
    shift_px: tuple[float, float] = Field(description="(dy, dx) carrying HIGH onto LOW")
    affine: tuple[float, ...] | None = Field(default=None, description="2x3 row-major, high (r, c, 1) -> low")
    ncc_before: float
    ncc_after: float
    residual_rms: float = Field(ge=0)
    instability_px: float = Field(default=0.0, ge=0, description="largest half-field disagreement")
    low_snr: float = 0.0
    high_snr: float = 0.0
    passed: bool
    reason: str | None = None

    @field_validator("affine")
    @classmethod
    def _six(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None and len(v) != 6:
            raise ValueError(f"an affine is 6 numbers (2x3 row-major), got {len(v)}")
        return v

    @model_validator(mode="after")
    def _verdict(self) -> PairRegistration:
        if self.passed == (self.reason is not None):
            raise ValueError("a pair passes without a reason, or fails with one")
        return self

    @property
    def matrix(self) -> np.ndarray:
        """The forward map high -> low as a 3x3 homogeneous matrix (rows: r, c, 1)."""
        m = np.eye(3)
        if self.affine is not None:
            m[:2] = np.asarray(self.affine, dtype=np.float64).reshape(2, 3)
        else:
            m[:2, 2] = self.shift_px
        return m


class RegistrationReport(BaseModel):
    """Every pair of a session, registered: ``registration.json`` in the session folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["livescope-pair-registration"] = REPORT_FORMAT
    schema_version: int = SCHEMA_VERSION
    session_id: str = ""
    settings: RegistrationSettings = Field(default_factory=RegistrationSettings)
    pairs: tuple[PairRegistration, ...] = ()

    @property
    def passed(self) -> list[PairRegistration]:
        return [p for p in self.pairs if p.passed]

    @property
    def failed(self) -> list[PairRegistration]:
        return [p for p in self.pairs if not p.passed]

    def get(self, position: int, repeat: int) -> PairRegistration | None:
        """The registration of pair (position, repeat), or None if the report has none."""
        return next((p for p in self.pairs if p.position == position and p.repeat == repeat), None)

    def summary(self) -> str:
        """One line: how many pairs pass, their largest shift and lowest NCC after alignment."""
        ok = self.passed
        if not ok:
            return f"none of {len(self.pairs)} pairs passes QA"
        shift = max(math.hypot(*p.shift_px) for p in ok)
        return (f"{len(ok)} of {len(self.pairs)} pairs pass QA (shifts up to {shift:.2f} px, "
                f"NCC after alignment {min(p.ncc_after for p in ok):.2f} or more)")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report to ``path`` (a folder: ``REGISTRATION_FILE`` inside it) atomically:
        a temporary file renamed over the target. Returns the file written."""
        file = _report_file(Path(path))
        try:
            replace_file_durably(file, self.model_dump_json(indent=2).encode("utf-8"))
        except OSError as e:
            raise RegistrationError(f"cannot write {file}: {e.strerror or e}") from None
        return file

    @classmethod
    def load(cls, path: str | os.PathLike) -> RegistrationReport:
        """The report at ``path`` (a file, or a folder holding ``REGISTRATION_FILE``)."""
        file = _report_file(Path(path))
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RegistrationError(f"{file}: no registration report (register the session's pairs first)") from None
        except (OSError, ValueError) as e:
            raise RegistrationError(f"cannot read {file}: {e}") from None
        if not isinstance(raw, dict) or raw.get("format") != REPORT_FORMAT:
            raise RegistrationError(f"{file} is not a livescope pair registration report")
        if isinstance(v := raw.get("schema_version"), int) and v > SCHEMA_VERSION:
            raise RegistrationError(f"{file} has schema version {v}; this livescope reads up to {SCHEMA_VERSION}")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise RegistrationError(f"{file}: {first_error(e)}") from None


def _report_file(path: Path) -> Path:
    return path / REGISTRATION_FILE if path.is_dir() else path


# -- image statistics -----------------------------------------------------------------------------


class ImageStats(BaseModel):
    """Noise, signal and clipping of one image, in its own units (ADU)."""

    model_config = ConfigDict(frozen=True)

    noise_adu: float = Field(description="noise sigma (`noise_sigma`)")
    background_adu: float = Field(description="the camera baseline where given, else the median")
    signal_adu: float = Field(description="99.9th percentile - background: the brightest structure")
    contrast: float = Field(description="low-passed structure over the low-passed noise, in sigmas")
    saturated_fraction: float = Field(description="fraction of pixels at the clip level")
    clip_adu: float | None = Field(description="the clip level, where known")

    @property
    def snr(self) -> float:
        return self.signal_adu / self.noise_adu if self.noise_adu > 0 else (math.inf if self.signal_adu > 0 else 0.0)


def image_stats(image: np.ndarray, smoothing_px: float = 1.5, saturation_adu: float | None = None,
                *, baseline_adu: float | None = None, max_saturated_fraction: float = 0.01) -> ImageStats:
    """Noise, signal, structure contrast and clipping of ``image`` (2-D)."""
    img = np.asarray(image)
    data = img.astype(np.float64, copy=False)
    noise = noise_sigma(data)
    median, top = np.percentile(data, [50.0, _SIGNAL_PERCENTILE])
    background = float(median if baseline_adu is None else baseline_adu)
    smooth = ndimage.gaussian_filter(data, smoothing_px)
    s_median, s_top = np.percentile(smooth, [50.0, _SIGNAL_PERCENTILE])
    # White noise low-passed by a Gaussian of sigma s keeps sigma / (2 sqrt(pi) s) of its sigma.
    smooth_noise = noise / (2 * math.sqrt(math.pi) * smoothing_px) if smoothing_px > 0.5 else noise
    contrast = float((s_top - s_median) / smooth_noise) if smooth_noise > 0 else (math.inf if s_top > s_median else 0.0)
    clip = _clip_level(data, saturation_adu, max_saturated_fraction)
    saturated = float(np.mean(data >= clip)) if clip is not None else 0.0
    return ImageStats(noise_adu=noise, background_adu=background, signal_adu=float(top - background),
                      contrast=contrast, saturated_fraction=saturated, clip_adu=clip)


def _clip_level(data: np.ndarray, saturation_adu: float | None, max_fraction: float) -> float | None:
    """The clip level: the one given, else the image's maximum where a plateau of pixels sits
    exactly at it (a camera's full well or ADC range; structure never plateaus)."""
    if saturation_adu is not None:
        return float(saturation_adu)
    if not data.size:
        return None
    top = float(data.max())
    if top > float(np.median(data)) and np.mean(data == top) > max_fraction:
        return top
    return None


# -- registration ---------------------------------------------------------------------------------


def register_pair(low: np.ndarray, high: np.ndarray, settings: RegistrationSettings = RegistrationSettings(),
                  *, position: int = 0, repeat: int = 0) -> PairRegistration:
    """Register ``high`` onto ``low`` (both (H, W), the same camera grid) and judge the result.

    RegistrationError if the two are not images of the same shape; a pair that is merely
    unregistrable (empty, saturated, unrelated, unstable) comes back failed, with its reason."""
    low, high = _check_images(low, high)
    s = settings
    low_stats, high_stats = (image_stats(img, s.smoothing_px, s.saturation_adu,
                                         max_saturated_fraction=s.max_saturated_fraction) for img in (low, high))
    reasons = [*_image_problems("low", low_stats, s), *_image_problems("high", high_stats, s)]
    lowf, highf = low.astype(np.float64), high.astype(np.float64)
    low_bp, high_bp = _band_pass(lowf, s), _band_pass(highf, s)
    ncc_before = _ncc(low_bp, high_bp)

    forward, instability = np.eye(3), 0.0
    if not reasons:  # (an empty or saturated pair is reported as acquired)
        forward = _estimate(low_bp, high_bp, s, affine=s.affine)
        if math.hypot(*forward[:2, 2]) <= s.max_shift_px:
            instability = _instability(low_bp, high_bp, forward, s, lowf, highf)

    warped_bp, valid = _warp(high_bp, forward)
    ncc_after = _ncc(low_bp[valid], warped_bp[valid]) if valid.sum() > 16 else 0.0
    residual = _residual(_low_pass(lowf, s), _warp(_low_pass(highf, s), forward)[0], valid)
    centre = (np.asarray(low.shape, dtype=np.float64) - 1) / 2
    shift_px = forward[:2, :2] @ centre + forward[:2, 2] - centre

    if not reasons:
        if (size := float(np.hypot(*shift_px))) > s.max_shift_px:
            reasons.append(f"shift {size:.1f} px exceeds the maximum {s.max_shift_px:g} px")
        elif instability > s.max_instability_px:
            reasons.append(f"unstable estimate: half-fields disagree by {instability:.2f} px "
                           f"(> {s.max_instability_px:g})")
        if ncc_after < s.min_ncc:
            reasons.append(f"NCC after alignment {ncc_after:.2f} < {s.min_ncc:g}: the images do not match")
        if s.affine and (strain := _strain(forward[:2, :2])) > s.max_affine_strain:
            reasons.append(f"affine strays from a rigid map by {strain:.3f} (> {s.max_affine_strain:g})")
    return PairRegistration(
        position=position, repeat=repeat, shift_px=(float(shift_px[0]), float(shift_px[1])),
        affine=tuple(float(v) for v in forward[:2].ravel()) if s.affine else None,
        ncc_before=ncc_before, ncc_after=float(ncc_after), residual_rms=residual,
        instability_px=_finite(instability), low_snr=_finite(low_stats.snr), high_snr=_finite(high_stats.snr),
        passed=not reasons, reason="; ".join(reasons) or None)


def register_pairs(pairs: Iterable[PairLike], settings: RegistrationSettings = RegistrationSettings(),
                   session_id: str = "") -> RegistrationReport:
    """Register every pair; one that cannot be (e.g. images of different shapes) is failed with
    its reason, and the others go on."""
    out = []
    for pair in pairs:
        try:
            out.append(register_pair(pair.low_adu, pair.high_adu, settings, position=pair.position,
                                     repeat=pair.repeat))
        except RegistrationError as e:
            out.append(PairRegistration(position=pair.position, repeat=pair.repeat, shift_px=(0.0, 0.0),
                                        ncc_before=0.0, ncc_after=0.0, residual_rms=1.0, passed=False,
                                        reason=str(e)))
    return RegistrationReport(session_id=session_id, settings=settings, pairs=tuple(out))


def apply_registration(high: np.ndarray, reg: PairRegistration, *, fill: float = np.nan) -> np.ndarray:
    """``high`` resampled onto the low image's grid (cubic spline), float32 in high's units;
    pixels the high field does not cover are ``fill`` (NaN by default: crop them away)."""
    img = np.asarray(high)
    if img.ndim != 2:
        raise RegistrationError(f"the high image must be 2-D (H, W), got shape {img.shape}")
    warped, valid = _warp(img.astype(np.float64), reg.matrix)
    warped[~valid] = fill
    return warped.astype(np.float32)


# -- the steps ------------------------------------------------------------------------------------


def _check_images(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.asarray(low), np.asarray(high)
    for name, img in (("low", low), ("high", high)):
        if img.ndim != 2:
            raise RegistrationError(f"the {name} image must be 2-D (H, W), got shape {img.shape}")
        if min(img.shape) < _MIN_SIDE_PX:
            raise RegistrationError(f"the {name} image is {img.shape[0]}x{img.shape[1]} px; registration needs "
                                    f"{_MIN_SIDE_PX} px or more a side")
        if not np.issubdtype(img.dtype, np.number) or np.iscomplexobj(img):
            raise RegistrationError(f"the {name} image must hold real numbers, got {img.dtype}")
        if not np.isfinite(img).all():
            raise RegistrationError(f"the {name} image holds NaN or infinite values")
    if low.shape != high.shape:
        raise RegistrationError(f"the low image is {low.shape[0]}x{low.shape[1]} px but the high one "
                                f"{high.shape[0]}x{high.shape[1]}: a pair must share the camera grid")
    return low, high


def _image_problems(name: str, stats: ImageStats, s: RegistrationSettings) -> list[str]:
    out = []
    if stats.contrast < s.min_contrast:
        out.append(f"the {name} image is empty (structure {stats.contrast:.1f} noise sigmas < {s.min_contrast:g})")
    if stats.saturated_fraction > s.max_saturated_fraction:
        out.append(f"the {name} image is saturated ({100 * stats.saturated_fraction:.1f}% of pixels at "
                   f"{stats.clip_adu:g} ADU)")
    return out


def _low_pass(img: np.ndarray, s: RegistrationSettings) -> np.ndarray:
    return ndimage.gaussian_filter(img, s.smoothing_px)


def _band_pass(img: np.ndarray, s: RegistrationSettings) -> np.ndarray:
    out = _low_pass(img, s)
    if s.background_px:
        out = out - ndimage.gaussian_filter(img, s.background_px, mode="nearest")
    return out - out.mean()


def _estimate(low: np.ndarray, high: np.ndarray, s: RegistrationSettings, *, affine: bool) -> np.ndarray:
    """The forward map high -> low (3x3) of two band-passed images: the cross-correlation peak,
    refined by maximising their NCC (the plain peak is biased by structure entering and leaving
    the field with the shift: up to 0.8 px on 96 px confocal/STED fields, 0.2 px after)."""
    forward = np.eye(3)
    forward[:2, 2] = _translation(low, high, s.upsample_factor)
    if math.hypot(*forward[:2, 2]) > s.max_shift_px:
        return forward  # fails anyway; not worth refining
    forward = _refine(low, high, forward, affine=False)
    return _refine(low, high, _local_affine(low, high, forward, s), affine=True) if affine else forward


def _local_affine(low: np.ndarray, high: np.ndarray, forward: np.ndarray, s: RegistrationSettings) -> np.ndarray:
    """A starting affine for the NCC refinement (which alone stalls far from the optimum): the
    least-squares affine through the translations of a 3x3 grid of half-size patches, each
    estimated as the whole field's translation, after the whole field's ``forward``."""
    warped = _warp(high, forward)[0]
    h, w = low.shape
    src, dst = [], []
    for r0 in (0, h // 4, h // 2):
        for c0 in (0, w // 4, w // 2):
            rows, cols = slice(r0, r0 + h // 2), slice(c0, c0 + w // 2)
            local = _estimate(low[rows, cols], warped[rows, cols], s, affine=False)[:2, 2]
            centre = np.array([r0 + (h // 2 - 1) / 2, c0 + (w // 2 - 1) / 2])
            src.append([*centre, 1.0])
            dst.append(centre + local)
    fit, *_ = np.linalg.lstsq(np.asarray(src), np.asarray(dst), rcond=None)  # dst = src @ fit
    local_map = np.eye(3)
    local_map[:2] = fit.T
    return local_map @ forward


def _translation(low: np.ndarray, high: np.ndarray, upsample: int) -> np.ndarray:
    """(dy, dx) carrying ``high`` onto ``low``: the cross-correlation peak of the two images
    tapered by a Hann window (so the field's edges do not pull the peak towards zero)."""
    taper = window("hann", low.shape)
    shift, _, _ = phase_cross_correlation(low * taper, high * taper, upsample_factor=upsample,
                                          normalization=None)
    return np.asarray(shift, dtype=np.float64)


def _halves(shape: tuple[int, ...]) -> list[tuple[slice, slice]]:
    h, w = shape
    return [(slice(0, h // 2), slice(0, w)), (slice(h - h // 2, h), slice(0, w)),
            (slice(0, h), slice(0, w // 2)), (slice(0, h), slice(w - w // 2, w))]


def _instability(low: np.ndarray, high: np.ndarray, forward: np.ndarray, s: RegistrationSettings,
                 raw_low: np.ndarray, raw_high: np.ndarray) -> float:
    """The largest translation (px) left between any half of the field and the high image
    resampled by the whole-field map, each half estimated afresh (as the whole field was).
    Halves with no structure in either image (a sparse specimen) have nothing to agree on and
    are not judged; if no half has structure, the field as a whole is the only estimate (0)."""
    warped = _warp(high, forward)[0]
    left = []
    for rows, cols in _halves(low.shape):
        if min(image_stats(raw[rows, cols], s.smoothing_px).contrast for raw in (raw_low, raw_high)) < s.min_contrast:
            continue
        half_low, half_high = low[rows, cols], warped[rows, cols]
        local = _estimate(half_low, half_high, s, affine=False)
        moved, valid = _warp(half_high, local)
        # A local estimate that fits its half worse than the whole-field map does is a spurious
        # peak (a fragment of structure at the edge), not a disagreement.
        if valid.sum() <= 16 or _ncc(half_low[valid], moved[valid]) <= _ncc(half_low, half_high):
            continue
        left.append(float(np.hypot(*local[:2, 2])))
    return max(left, default=0.0)


def _warp(img: np.ndarray, forward: np.ndarray, *, prefiltered: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``img`` (the high grid) resampled on the low grid through the forward map high -> low
    (cubic spline; ``prefiltered``: ``img`` holds its spline coefficients already); also the mask
    of low pixels that fall inside the high field."""
    inverse = np.linalg.inv(forward)
    lin, offset = inverse[:2, :2], inverse[:2, 2]
    out = ndimage.affine_transform(img, lin, offset=offset, order=3, mode="nearest", prefilter=not prefiltered)
    rows, cols = np.indices(img.shape, dtype=np.float64)
    src_r = lin[0, 0] * rows + lin[0, 1] * cols + offset[0]
    src_c = lin[1, 0] * rows + lin[1, 1] * cols + offset[1]
    eps = 1e-6
    valid = (src_r >= -eps) & (src_r <= img.shape[0] - 1 + eps) & (src_c >= -eps) & (src_c <= img.shape[1] - 1 + eps)
    return out, valid


def _refine(low: np.ndarray, high: np.ndarray, start: np.ndarray, *, affine: bool) -> np.ndarray:
    """The forward map (translation, or affine) maximising the NCC of the two band-passed images
    over the pixels of the low field that the high one covers, from the translation ``start``.

    Powell's method on parameters that all move the image by comparable amounts (px): the
    translation of the field's centre and, for an affine, the linear part's deviation from the
    identity scaled by the field's half-size (the displacement it causes at the field's edge)."""
    shape = np.array(low.shape, dtype=np.float64)
    centre, radius = (shape - 1) / 2, float(shape.max()) / 2
    coeffs = ndimage.spline_filter(high, order=3, mode="nearest")

    def forward_of(p: np.ndarray) -> np.ndarray:
        m = np.eye(3)
        if affine:
            m[:2, :2] += p[2:].reshape(2, 2) / radius
        m[:2, 2] = centre + p[:2] - m[:2, :2] @ centre
        return m

    def cost(p: np.ndarray) -> float:
        warped, valid = _warp(coeffs, forward_of(p), prefiltered=True)
        return -_ncc(low[valid], warped[valid]) if valid.sum() > 16 else 0.0

    # Powell stalls in narrow valleys of the six-parameter NCC; restarting it from where it stopped
    # (fresh search directions) finds the optimum the first run missed.
    best = np.zeros(6 if affine else 2)
    best[:2] = start[:2, :2] @ centre + start[:2, 2] - centre
    if affine:
        best[2:] = ((start[:2, :2] - np.eye(2)) * radius).ravel()
    best_cost = cost(best)
    for _ in range(3 if affine else 1):
        result = optimize.minimize(cost, best, method="Powell", options={"xtol": 1e-3, "ftol": 1e-9, "maxfev": 4000})
        if result.fun >= best_cost - 1e-7:
            break
        best, best_cost = result.x, float(result.fun)
    return forward_of(best)


def _strain(lin: np.ndarray) -> float:
    """How far the linear part is from the nearest rotation: the largest entry of the difference."""
    u, _, vt = np.linalg.svd(lin)
    return float(np.abs(lin - u @ vt).max())


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def _residual(low: np.ndarray, high: np.ndarray, valid: np.ndarray) -> float:
    """RMS of low - (a high + b) over ``valid``, a and b fitted by least squares, over low's
    standard deviation there."""
    if valid.sum() < 16:
        return 1.0
    y, x = low[valid], high[valid]
    sd = float(y.std())
    if sd == 0:
        return 0.0
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(np.sqrt(np.mean((y - design @ coef) ** 2)) / sd)


def _finite(v: float) -> float:
    return float(v) if math.isfinite(v) else 1e9

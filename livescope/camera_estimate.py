"""The camera model estimated from the data itself: baseline and conversion gain from the noise.

A camera's pixels follow, to a good approximation, a Poisson-Gaussian law: in ADU, the variance
of a pixel is linear in its mean, ``var = a (mean - baseline) + read variance``, with ``a`` the
ADU per detected photo-electron (1 / e-/ADU; an EMCCD's excess noise doubles it). So every patch
of plain background gives a point (mean, variance) on that line (photon transfer), and a
movie's tiles and frames give many.

What the points can tell depends on the data. Where the background covers a range of levels (an
illumination profile, bleaching, frames of different brightness), the line's slope and intercept
are both fitted: the gain and the baseline follow, each with its standard error. Where it sits at
one level (a flat field, sparse emitters), only that level and its variance are known: any gain
``a`` then explains the noise with the baseline ``level - variance / a``. The estimate keeps that
relation exact (so the noise of the background is what a Poisson model of the converted frames
expects, which is what localisation needs) and takes ``a`` from `PRIOR_ADU_PER_E`, a typical
scientific CMOS, saying so (``gain_source`` "prior"): photon counts derived from it are then
noise-equivalent, not absolute, until the user gives ``--e-per-adu``.

Read noise is folded into the baseline: with ``c`` the intercept, baseline = -c / a is the true
offset minus a x read variance, i.e. read noise counted as extra background photons (the usual
sCMOS treatment of Poisson-Gaussian data). EM excess noise is folded into the gain: the result is
in effective (noise-equivalent) photo-electrons.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from livescope.camera import CameraCalibration

PRIOR_ADU_PER_E = 2.0
"""ADU per photo-electron assumed when the data cannot tell (0.5 e-/ADU: a typical 16-bit sCMOS)."""

TILE_PX = 16
MAX_FRAMES = 256
DARKEST_PERCENT = 20
# The fitted slope is used only if its relative standard error is below this; otherwise the
# data's levels are too close together to separate gain from baseline.
MAX_RELATIVE_SLOPE_ERROR = 0.15
# The factor by which the fitted line may miss the darkest tiles' variance (an EMCCD's skew at a few
# photons biases that variance 2-3x).
MAX_LINE_MISS = 4.0
# Standard normal quantiles: z(0.30) = -0.5244, z(0.05) = -1.6449.
_Z30 = 0.5244
_Z30_MINUS_Z5 = 1.6449 - 0.5244
# A tile of plain background is nearly symmetric: its 95th percentile lies about as far above its median
# as its 5th below (Poisson skew at a few photons lengthens the upper side by tens of percent, emitters by more).
_MAX_UPPER_OVER_LOWER = 1.5
# Below this fraction of the darkest tiles looking like plain background, emitters or structure are
# everywhere and the background's level and noise (so the baseline) may carry their light: said.
CROWDED_BELOW = 0.1


class CameraEstimate(BaseModel):
    """A camera model estimated from frames, with its uncertainty and what it rests on."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    baseline_adu: float = Field(description="offset (read noise folded in), ADU")
    baseline_se_adu: float = Field(ge=0, description="standard error of the baseline, ADU")
    e_per_adu: float = Field(gt=0, description="conversion gain, e-/ADU: noise-equivalent photo-electrons when "
                                               "estimated (an EMCCD's excess noise folded in), as given by the user, "
                                               "or (baseline given) what the background's noise then says")
    e_per_adu_se: float | None = Field(default=None, ge=0,
                                       description="standard error of the gain, e-/ADU; None: not measured")
    gain_source: Literal["data", "prior", "user"] = Field(
        description="data: fitted; prior: the data's levels could not separate gain from baseline, so the gain is "
                    "the typical-sCMOS PRIOR_ADU_PER_E; user: given (the baseline then follows from the noise)")
    baseline_source: Literal["data", "user"] = "data"
    background_adu: float = Field(description="the median background level, ADU")
    background_variance_adu2: float = Field(gt=0, description="the background's noise variance at that level, ADU^2")
    tiles: int = Field(ge=1, description="background tiles the fit used")
    frames: int = Field(ge=1, description="frames they came from")
    plain_background_fraction: float = Field(
        default=1.0, ge=0, le=1, description="of the darkest tiles, those that look like plain background "
                                             f"(below {CROWDED_BELOW:g}: crowded, the baseline may be off)")

    @property
    def crowded(self) -> bool:
        return self.plain_background_fraction < CROWDED_BELOW

    @property
    def calibration(self) -> CameraCalibration:
        return CameraCalibration(baseline_adu=max(self.baseline_adu, 0.0), e_per_adu=self.e_per_adu)

    def describe(self) -> str:
        """One line for a user: the values, their errors and whether the gain is the data's."""
        error = "" if self.e_per_adu_se is None else f" ± {self.e_per_adu_se:.2g}"
        gain = {"data": f"{self.e_per_adu:.3g}{error} e-/ADU",
                "user": f"{self.e_per_adu:.3g} e-/ADU (given)",
                "prior": f"{self.e_per_adu:.3g} e-/ADU (assumed: the background is too flat to measure the gain; "
                         "photon counts are noise-equivalent, pass --e-per-adu for absolute ones)"}[self.gain_source]
        baseline = (f"{self.baseline_adu:.1f} ADU (given)" if self.baseline_source == "user" else
                    f"{self.baseline_adu:.1f} ± {self.baseline_se_adu:.2g} ADU")
        crowded = (f"; the background is crowded (only {self.plain_background_fraction:.0%} of its darkest tiles are "
                   "plain background), so the baseline may be off: give --baseline if you know it"
                   if self.crowded and self.baseline_source == "data" else "")
        return (f"camera estimated from {self.tiles} background tiles of {self.frames} frames: baseline "
                f"{baseline}, {gain}{crowded}")


def estimate_camera(frames_adu: np.ndarray, *, max_frames: int = MAX_FRAMES) -> CameraEstimate:
    """A camera model from ``frames_adu`` ((T, H, W) or (H, W), any numeric type, as the camera gave
    them). Raises ValueError, saying why, when the frames hold no measurable noise (constant, or
    too small)."""
    frames = np.asarray(frames_adu)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3 or min(frames.shape[1:]) < 8:
        raise ValueError(f"frames of shape {frames_adu.shape} are too small to measure the noise in (8x8 at least)")
    if len(frames) > max_frames:  # evenly spread, so bleaching still shows as a range of levels
        frames = frames[np.linspace(0, len(frames) - 1, max_frames).round().astype(int)]
    levels, variances, smooth_variances, flat, chooser = _tile_statistics(frames.astype(np.float64))
    if not np.any(variances > 0):
        raise ValueError("the frames have no pixel noise to measure (constant or empty background)")
    # The background's level and noise: those of the darkest fifth of the tiles. Emitters and structure
    # only add light (and variance), so the darkest tiles are the least crowded; in sparse data they
    # differ from the rest by their sampling noise only.
    darkest = chooser <= np.percentile(chooser, DARKEST_PERCENT)
    level, variance = float(np.median(levels[darkest])), float(np.median(variances[darkest]))
    # Where the darkest tiles still hold light of broad spots or haze, their spread of values counts
    # that light's slopes as noise (5x the noise in crowded astigmatic SMLM); their pixels' differences
    # from their neighbours cancel a locally smooth signal. The smaller of the two is the noise.
    variance = min(variance, float(np.median(smooth_variances[darkest])))
    plain = float(np.mean(flat[darkest]))
    if variance <= 0:
        raise ValueError("most of the frames' background has no noise to measure (constant or clipped at zero)")
    # The line through the plain tiles' neighbour-difference noise: a haze of broad spots makes tiles
    # of many levels that look plain, and their spread of values would put its slopes on the line.
    slope, intercept, slope_se, intercept_se = _photon_transfer(levels[flat], smooth_variances[flat], variance)
    n_frames = len(frames)
    # A fitted line is believed when its slope is well measured and it goes through the darkest
    # tiles' background (crowded data can line up tiles of structure instead of background).
    if (slope > 0 and slope_se < MAX_RELATIVE_SLOPE_ERROR * slope
            and 1 / MAX_LINE_MISS < (slope * level + intercept) / variance < MAX_LINE_MISS):
        baseline = -intercept / slope
        # Delta method: baseline = -c/a; the slope's and intercept's errors, treated as independent.
        baseline_se = float(np.hypot(intercept_se / slope, intercept * slope_se / slope**2))
        return CameraEstimate(baseline_adu=baseline, baseline_se_adu=baseline_se, e_per_adu=1.0 / slope,
                              e_per_adu_se=slope_se / slope**2, gain_source="data", background_adu=level,
                              background_variance_adu2=variance, tiles=len(levels), frames=n_frames,
                              plain_background_fraction=plain)
    # One level: keep level - baseline = variance / a exactly, with a from the prior, but never a
    # baseline below zero (then the noise says the gain must be larger).
    a = max(PRIOR_ADU_PER_E, variance / level) if level > 0 else PRIOR_ADU_PER_E
    baseline = level - variance / a
    level_se = 1.2533 * float(np.std(levels)) / np.sqrt(len(levels))
    return CameraEstimate(baseline_adu=baseline, baseline_se_adu=level_se, e_per_adu=1.0 / a,
                          gain_source="prior", background_adu=level, background_variance_adu2=variance,
                          tiles=len(levels), frames=n_frames, plain_background_fraction=plain)


def _tile_statistics(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per tile of every frame: its background level (ADU) and noise variance (ADU^2), from the
    tile's lower quantiles (emitters and structure only add light, so the darker part of a tile is
    its background); its noise variance again, as its pixels' differences from their neighbours
    say it (`_smooth_cancelled_variance`); which tiles look like plain background (their upper half
    not much longer than their lower half: emitters and structure lengthen it); and a second,
    independent level, from the tile's other pixels (a checkerboard's other squares), to choose
    tiles by without biasing the noise measured in them."""
    t, h, w = frames.shape
    th, tw = min(TILE_PX, h), min(TILE_PX, w)
    th, tw = th - th % 2, tw - tw % 2
    rows, cols = h // th, w // tw
    tiles = frames[:, :rows * th, :cols * tw].reshape(t, rows, th, cols, tw).transpose(0, 1, 3, 2, 4)
    tiles = tiles.reshape(-1, th, tw)
    black = np.indices((th, tw)).sum(axis=0) % 2 == 0
    x, other = tiles[:, black], tiles[:, ~black]
    level, variance, flat = _lower_quantile_statistics(x)
    chooser, _, _ = _lower_quantile_statistics(other)
    return level, variance, _smooth_cancelled_variance(tiles), flat, chooser


def _smooth_cancelled_variance(tiles: np.ndarray) -> np.ndarray:
    """Per tile (N, H, W): the noise variance from each inner pixel's difference to the mean of its
    four direct neighbours (a locally linear signal cancels; white noise gives 1 + 1/4 the pixel's
    variance), its largest tenth of squares left out (the peaks of emitters and edges), as
    `noise_level_gain` measures it."""
    centre = tiles[:, 1:-1, 1:-1]
    cross = (tiles[:, :-2, 1:-1] + tiles[:, 2:, 1:-1] + tiles[:, 1:-1, :-2] + tiles[:, 1:-1, 2:]) / 4.0
    return _trimmed_noise_variance((centre - cross).reshape(len(tiles), -1))


def _lower_quantile_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p5, p30, p50, p95 = np.percentile(x, [5, 30, 50, 95], axis=1)
    sigma = (p30 - p5) / _Z30_MINUS_Z5
    return p30 + _Z30 * sigma, sigma ** 2, (p95 - p50) <= _MAX_UPPER_OVER_LOWER * (p50 - p5)


def _photon_transfer(levels: np.ndarray, variances: np.ndarray, variance: float
                      ) -> tuple[float, float, float, float]:
    """The line variance = a x level + c through the plain-background tiles' points, robustly
    (medians of quantile bins of the level, fitted by least squares): a, c and their standard
    errors; inf errors when the levels do not span a range (twice the noise, ``variance``, at
    least) that could tell the slope."""
    bins = min(12, len(levels) // 8)
    if bins < 3 or np.subtract(*np.percentile(levels, [90, 10])) < 2 * np.sqrt(variance):
        return 0.0, 0.0, np.inf, np.inf
    order = np.argsort(levels)
    groups = np.array_split(order, bins)
    x = np.array([np.median(levels[g]) for g in groups])
    y = np.array([np.median(variances[g]) for g in groups])
    if np.ptp(x) <= 0:
        return 0.0, 0.0, np.inf, np.inf
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    dof = max(len(x) - 2, 1)
    cov = np.linalg.inv(design.T @ design) * float(residual @ residual) / dof
    return float(coef[0]), float(coef[1]), float(np.sqrt(cov[0, 0])), float(np.sqrt(cov[1, 1]))


def excess_noise_factor(em_gain: float) -> float:
    """F^2, the variance an EMCCD's gain register adds per electron: 2 at any useful gain, 1 without."""
    return 2.0 if em_gain > 1 else 1.0


def complete_camera(frames_adu: np.ndarray, *, baseline_adu: float | None = None, e_per_adu: float | None = None,
                    em_gain: float = 1.0) -> tuple[CameraCalibration, CameraEstimate | None]:
    """The calibration to convert ``frames_adu`` with: the user's values where given, the rest
    estimated from the frames (and the estimate, None when nothing was). A value given alone fixes the
    other through the background's noise: level - baseline = F^2 x EM gain x variance / (e-/ADU)^-1."""
    if baseline_adu is not None and e_per_adu is not None:
        return CameraCalibration(baseline_adu=baseline_adu, e_per_adu=e_per_adu, em_gain=em_gain), None
    estimate = estimate_camera(frames_adu)
    # ADU per photo-electron as the noise sees it (EM gain and its excess noise included).
    noise_adu_per_e = excess_noise_factor(em_gain) * em_gain
    level, variance = estimate.background_adu, estimate.background_variance_adu2
    if e_per_adu is not None:
        baseline_adu = max(level - variance * e_per_adu / noise_adu_per_e, 0.0)
        estimate = estimate.model_copy(update={"baseline_adu": baseline_adu, "e_per_adu": e_per_adu,
                                               "e_per_adu_se": None, "gain_source": "user"})
    elif baseline_adu is not None:
        if level <= baseline_adu:
            raise ValueError(f"the background ({level:.1f} ADU) is not above --baseline {baseline_adu:g}: "
                             "check the baseline, or give --e-per-adu too")
        e_per_adu = noise_adu_per_e * (level - baseline_adu) / variance
        estimate = estimate.model_copy(update={"baseline_adu": baseline_adu, "baseline_se_adu": 0.0,
                                               "e_per_adu": e_per_adu, "e_per_adu_se": None,
                                               "baseline_source": "user"})
    else:
        # The estimate is in noise-equivalent photo-electrons; an EMCCD's true ones are F^2 times as many.
        baseline_adu, e_per_adu = estimate.calibration.baseline_adu, estimate.e_per_adu * noise_adu_per_e
    return CameraCalibration(baseline_adu=max(baseline_adu, 0.0), e_per_adu=e_per_adu, em_gain=em_gain), estimate


class PhotonScale(BaseModel):
    """ADU <-> noise-equivalent photo-electrons (counts whose variance equals their mean): what a
    camera-agnostic model takes. The baseline may lie below zero: read noise counts as background."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    baseline_adu: float
    e_per_adu: float = Field(gt=0)
    source: str = Field(description="where it came from, in words")

    def to_photons(self, frames_adu: np.ndarray) -> np.ndarray:
        return ((np.asarray(frames_adu, np.float32) - np.float32(self.baseline_adu))
                * np.float32(self.e_per_adu)).astype(np.float32, copy=False)

    def to_adu(self, photons: np.ndarray) -> np.ndarray:
        return (np.asarray(photons, np.float32) / np.float32(self.e_per_adu)
                + np.float32(self.baseline_adu)).astype(np.float32, copy=False)

    def around(self, run: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        """``run`` (photons -> photons) as ADU -> ADU."""
        return lambda frames_adu: self.to_adu(run(self.to_photons(frames_adu)))


FALLBACK_SCALE = PhotonScale(baseline_adu=0.0, e_per_adu=1.0, source="no noise to estimate it from: 0 ADU "
                             "baseline and 1 e-/ADU assumed")


def noise_equivalent(camera: CameraCalibration) -> PhotonScale:
    """The scale of a known camera: EM gain and its excess noise folded into the gain, read noise
    (where known) into the baseline."""
    f2 = excess_noise_factor(camera.em_gain)
    e_per_adu = camera.e_per_adu / (camera.em_gain * f2)
    read_e = camera.read_noise_e or 0.0
    return PhotonScale(baseline_adu=camera.baseline_adu - read_e**2 / (f2**2 * e_per_adu), e_per_adu=e_per_adu,
                       source=f"the camera's calibration (baseline {camera.baseline_adu:g} ADU, "
                              f"{camera.e_per_adu:g} e-/ADU, EM gain {camera.em_gain:g})")


def photon_scale(frames_adu: np.ndarray, camera: CameraCalibration | None = None) -> PhotonScale:
    """The scale to convert ``frames_adu`` with: the camera's where given, else estimated from the
    frames (noise-equivalent by construction). The gain comes from the noise at each of the
    structure's levels (`noise_level_gain`, made for images with structure) where it can be told,
    the background's noise then fixing the baseline; else from `estimate_camera` (made for sparse
    emitters on a background: on dense structure its tiles can line up structure, not noise, which
    put the gain of simulated nuclei and membranes off by 2-8x). Frames with no noise to measure get
    ``FALLBACK_SCALE``, which says so."""
    if camera is not None:
        return noise_equivalent(camera)
    frames = np.asarray(frames_adu)
    frames = frames[None] if frames.ndim == 2 else frames
    try:
        estimate = estimate_camera(frames)
    except ValueError:
        estimate = None
    fitted = noise_level_gain(frames)
    if fitted is not None:
        adu_per_e, intercept = fitted
        if estimate is not None:  # the background stays exactly Poisson: level - baseline = variance / a
            baseline = estimate.background_adu - estimate.background_variance_adu2 / adu_per_e
        else:
            baseline = -intercept / adu_per_e
        return PhotonScale(baseline_adu=baseline, e_per_adu=1.0 / adu_per_e,
                           source=f"camera estimated from the noise at each intensity: baseline {baseline:.1f} ADU, "
                                  f"{1.0 / adu_per_e:.3g} e-/ADU (noise-equivalent)")
    if estimate is None:
        return FALLBACK_SCALE
    return PhotonScale(baseline_adu=estimate.baseline_adu, e_per_adu=estimate.e_per_adu, source=estimate.describe())


NOISE_LEVEL_BINS = 16
MAX_NOISE_LEVEL_FRAMES = 16
# E[x^2 | x^2 below its 90th percentile] for x ~ N(0, 1): the top tenth of squared differences
# (edges, puncta) is left out of a noise variance (`_trimmed_noise_variance`); this corrects for that.
_TRIMMED_CHI2_MEAN = 0.623


def noise_level_gain(frames_adu: np.ndarray) -> tuple[float, float] | None:
    """The noise-level function variance = a x level + c of frames with structure (ADU per
    noise-equivalent e-, and the intercept, ADU^2), or None when it cannot be told.

    Per pixel: its noise from its difference to the mean of its four direct neighbours (a locally
    smooth signal cancels), its level from the ring of pixels two away (independent of those five,
    and averaged over 16, so that binning by a noisy level does not flatten the line). Pixels are
    binned by level; each bin's variance leaves out its largest tenth (edges and puncta); the line
    is fitted through the bins, weighted by their precision. Believed when the slope is positive and
    well measured. On simulated filaments at 10-100 photons it is within 16 % for sCMOS and 8-bit
    cameras, from one frame (tests/test_broad_denoise.py)."""
    from scipy import ndimage

    frames = np.asarray(frames_adu, np.float64)
    if len(frames) > MAX_NOISE_LEVEL_FRAMES:
        frames = frames[np.linspace(0, len(frames) - 1, MAX_NOISE_LEVEL_FRAMES).round().astype(int)]
    if min(frames.shape[1:]) < 16:
        return None
    centre = frames[:, 2:-2, 2:-2]
    cross = (frames[:, 1:-3, 2:-2] + frames[:, 3:-1, 2:-2] + frames[:, 2:-2, 1:-3] + frames[:, 2:-2, 3:-1]) / 4.0
    ring = np.ones((5, 5))
    ring[1:4, 1:4] = 0.0
    level = ndimage.convolve(frames, (ring / ring.sum())[None], mode="nearest")[:, 2:-2, 2:-2].ravel()
    residual = (centre - cross).ravel()
    groups = np.array_split(np.argsort(level), NOISE_LEVEL_BINS)
    if min(len(g) for g in groups) < 64:
        return None
    x = np.array([np.mean(level[g]) for g in groups])
    y = np.empty_like(x)
    for i, g in enumerate(groups):
        y[i] = _trimmed_noise_variance(residual[g] - np.median(residual[g]))
    if not np.all(y > 0) or np.ptp(x) <= 0:
        return None
    w = 1.0 / y  # a bin's variance is uncertain in proportion to itself
    design = np.stack([x, np.ones_like(x)], axis=1)
    cov = np.linalg.inv(design.T @ (design * w[:, None]))
    coef = cov @ (design.T @ (w * y))
    residual_var = float(np.sum(w * (y - design @ coef) ** 2)) / max(len(x) - 2, 1)
    slope, intercept = float(coef[0]), float(coef[1])
    slope_se = float(np.sqrt(cov[0, 0] * residual_var))
    if not (slope > 0 and slope_se < MAX_RELATIVE_SLOPE_ERROR * slope):
        return None
    return slope, intercept


def _trimmed_noise_variance(residuals: np.ndarray) -> np.ndarray:
    """A pixel's noise variance from its differences to the mean of its four direct neighbours (last
    axis): their mean square with the largest tenth left out (edges, puncta, emitters' peaks),
    corrected for the trimming and for the difference's own variance (1 + 1/4 the pixel's)."""
    squared = np.sort(residuals**2, axis=-1)
    kept = squared[..., : max(1, int(0.9 * squared.shape[-1]))]
    return kept.mean(axis=-1) / _TRIMMED_CHI2_MEAN / 1.25


def noise_sigma(image: np.ndarray) -> float:
    """The noise's standard deviation: the median absolute finest diagonal wavelet detail / 0.6745
    (Donoho's estimator, as `skimage.restoration.estimate_sigma`, with the Haar wavelet: that
    function needs PyWavelets, which livescope does not depend on). Structure barely moves it."""
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    a, b = img[0:h:2, 0:w:2], img[0:h:2, 1:w:2]
    c, d = img[1:h:2, 0:w:2], img[1:h:2, 1:w:2]
    detail = (a - b - c + d) / 2  # white noise of sigma s gives details of sigma s
    return float(np.median(np.abs(detail)) / 0.6745)

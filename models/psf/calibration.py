"""Bead calibration of the PSF: fit the virtual microscope's pupil model to a rig's bead z-stacks,
so that its localiser is trained on the rig's own PSF (`PsfCalibration.simulation_fields`).

The model is `Optics`' scalar pupil PSF (acquire/virtual/optics.py), the one `LocaliseSimulation`
renders astigmatic emitters with: a pupil of radius NA / lambda, the exact high-NA defocus phase,
Zernike astigmatism Z(2,2) and primary spherical aberration Z(4,0), the intensity integrated over
camera pixels (`models.psf.pupil`); the beads are found and measured by `models.psf.beads`.

Fitted (global): ``astigmatism_waves``, ``spherical_waves`` and a lateral Gaussian blur
``blur_sigma_nm`` (the bead's own size, residual defocus blur of a real rig's sample, and, on the
virtual microscope, its bilinear splat of beads onto the raster), optionally an effective NA.
Per bead: sub-pixel x, y and its focus offset (the stage z at which the bead is in focus: beads
on a tilted coverslip differ); per bead and plane: amplitude and background (solved in closed form
inside the residual -- variable projection -- so bleaching and background drift along the stack
cost nothing). Fixed: pixel size, wavelength, immersion index.

`calibrate_psf` takes the stacks and the optics; `calibrate_psf_from_session` a ``beads`` calibration
session (`livescope calibrate beads`), with pixel size and camera from its manifest.

Conventions (the virtual microscope's, `VirtualScene`): ``z_um`` is the focal plane's position in
the focus drive's direction; a bead at stage z0 is imaged at defocus ``z_um - z0``; an emitter at
z above the focal plane (`LocaliseSimulation`'s z) is imaged at defocus ``-z``. Bead positions:
nm from the top-left corner of the top-left pixel, x along columns.

Weighted least squares: each pixel's residual in photo-electrons divided by its noise (shot noise
with the EMCCD's excess factor, plus read noise), the noise taken from the model of a first pass
(weights from the data bias a fit towards dim pixels). ``scipy.optimize.least_squares`` (trust
region reflective) with a sparse Jacobian: a bead's residuals depend on its own 3 parameters and
the global ones, so a Jacobian costs 3 + (global) model evaluations whatever the number of beads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage, optimize, sparse

from livescope.acquire.virtual.optics import Optics
from livescope.models.psf.beads import (
    BeadCandidate,
    BeadRejection,
    crop_rois,
    default_roi_half_px,
    detect_beads,
    focus_of,
    second_moments,
)
from livescope.models.psf.pupil import PupilGrids
from livescope.session import Session, SessionError

MIN_PLANES = 5
MIN_Z_RANGE_UM = 0.5  # both astigmatic foci (0.29 um apart at 0.1 waves, NA 1.4) and the widening beyond
_MAX_NFEV = 60


class PsfCalibrationError(Exception):
    """Bead stacks that cannot calibrate the PSF; the message is one line, for the user."""


class BeadFit(BaseModel):
    """A bead used in the fit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stack: int = Field(ge=0)
    x_nm: float = Field(description="from the top-left corner of the top-left pixel, along columns")
    y_nm: float
    focus_um: float = Field(description="stage z at which the bead is in focus")
    photons: float = Field(description="median over planes of the fitted photo-electrons (ADU x e-/ADU / gain)")
    residual_relative: float = Field(description="rms residual / rms signal above background, over its ROI stack")


class PsfCalibration(BaseModel):
    """The rig's PSF as fitted to bead z-stacks: the `Optics` pupil model's parameters and how well
    they fit. ``*_sd``: standard errors from the fit's Jacobian (scaled by the reduced chi^2)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pixel_size_nm: float = Field(gt=0)
    emission_nm: float = Field(gt=0)
    immersion_index: float = Field(gt=0)
    na: float = Field(gt=0, description="objective NA (fitted when na_fitted)")
    na_fitted: bool = False
    na_sd: float | None = None
    astigmatism_waves: float = Field(description="Z(2,2), waves rms (as `Optics`)")
    astigmatism_waves_sd: float
    spherical_waves: float = Field(description="Z(4,0), waves rms (as `Optics`)")
    spherical_waves_sd: float
    blur_sigma_nm: float = Field(ge=0, description="lateral Gaussian blur on top of the pupil PSF (bead size, "
                                 "raster); `LocaliseSimulation` has no such term")
    blur_sigma_nm_sd: float | None = None
    focus_offset_um: float = Field(description="median stage z at which the beads are in focus")
    focus_spread_um: float = Field(ge=0, description="rms spread of the beads' focus (tilt, bead depth)")
    z_range_nm: tuple[float, float] = Field(description="emitter z (from the focal plane, `LocaliseSimulation`'s "
                                            "convention) covered by every bead's stack")
    planes: int = Field(ge=1)
    roi_px: int = Field(ge=3, description="ROI side fitted per bead")
    beads: tuple[BeadFit, ...]
    rejected: tuple[BeadRejection, ...] = ()
    residual_relative: float = Field(description="rms residual / rms signal above background, all beads")
    reduced_chi2: float = Field(description="weighted residual^2 per degree of freedom (1: shot-noise limited)")
    evaluations: int = Field(ge=0, description="model evaluations the fit took")

    @property
    def optics(self) -> Optics:
        """The fitted PSF as the virtual microscope's optics (without the blur)."""
        return Optics(na=self.na, emission_nm=self.emission_nm, immersion_index=self.immersion_index,
                      astigmatism_waves=self.astigmatism_waves, spherical_waves=self.spherical_waves)

    def psf(self, defocus_um: np.ndarray, offset_px: np.ndarray | None = None, half_px: int = 8,
            blur: bool = True) -> np.ndarray:
        """The fitted model's pixel-integrated PSFs (B, 2 half_px + 1, 2 half_px + 1) at ``defocus_um``
        (B,), centred on the middle pixel plus ``offset_px`` (B, 2: rows, cols); a whole PSF sums to 1.
        ``blur``: with the fitted blur (as the beads looked), else the pupil PSF alone (as molecules)."""
        defocus = np.atleast_1d(np.asarray(defocus_um, np.float64))
        offsets = np.zeros((defocus.size, 2)) if offset_px is None else np.asarray(offset_px, np.float64)
        grids = PupilGrids(self.optics, self.pixel_size_nm * 1e-3, self.na)
        return grids.images(self.na, self.astigmatism_waves, self.spherical_waves,
                            self.blur_sigma_nm * 1e-3 if blur else 0.0, defocus, offsets, grids.sizes(defocus), half_px)

    def simulation_fields(self) -> dict:
        """`LocaliseSimulation` fields for training data with this PSF: ``LocaliseSimulation(
        **calibration.simulation_fields(), ...)``. The blur is not among them (the simulation has no
        such term); the z range is the calibrated one."""
        p = float(self.pixel_size_nm)
        return {"psf": "astigmatic", "na": self.na, "emission_nm": self.emission_nm,
                "immersion_index": self.immersion_index, "astigmatism_waves": self.astigmatism_waves,
                "spherical_waves": self.spherical_waves, "z_range_nm": self.z_range_nm, "pixel_size_nm": (p, p)}

    def summary(self) -> str:
        """One line for the user."""
        return (f"PSF from {len(self.beads)} beads ({len(self.rejected)} rejected): astigmatism "
                f"{self.astigmatism_waves:.4f} +- {self.astigmatism_waves_sd:.4f} waves, spherical "
                f"{self.spherical_waves:.4f} +- {self.spherical_waves_sd:.4f} waves, NA {self.na:.3f}, blur "
                f"{self.blur_sigma_nm:.0f} nm, focus {self.focus_offset_um:+.3f} um, residual "
                f"{100 * self.residual_relative:.1f} %")



def _astigmatism_per_focal_split(grids: PupilGrids, na: float, half: int) -> float:
    """d(z_x focus - z_y focus) / d(astigmatism waves), um per wave, measured on the model itself
    with the same moment code as the data (so sign and scale conventions cannot drift apart)."""
    a = 0.1
    z = np.linspace(-1.0, 1.0, 41)
    psf = grids.images(na, a, 0.0, 0.0, z, np.zeros((z.size, 2)), grids.sizes(z), half)
    vx, vy = second_moments(psf)
    return (focus_of(vx, z) - focus_of(vy, z)) / a


# -- the fit ----------------------------------------------------------------------------------------


@dataclass
class _Problem:
    grids: PupilGrids
    data_e: np.ndarray  # (N, Z, R, R) photo-electrons above the baseline
    z_um: np.ndarray  # (Z,)
    half: int
    variance_floor_e2: float
    excess: float
    fit_na: bool
    fit_blur: bool
    na: float
    weights: np.ndarray | None = None  # (N, Z, R, R) 1 / noise sigma
    sizes: np.ndarray | None = None  # (N Z,) each image's grid, fixed for the fit
    fixed: tuple[float, float, float, float] | None = None  # (na, astig, sph, blur px): only beads fitted
    evaluations: int = 0

    @property
    def n_global(self) -> int:
        return 0 if self.fixed else 2 + int(self.fit_blur) + int(self.fit_na)

    def unpack(self, theta: np.ndarray) -> tuple[float, float, float, float, np.ndarray]:
        if self.fixed:
            return (*self.fixed, theta.reshape(-1, 3))
        g = theta[:self.n_global]
        astig, sph = g[0], g[1]
        blur_px = g[2] if self.fit_blur else 0.0
        na = g[-1] if self.fit_na else self.na
        return na, astig, sph, blur_px, theta[self.n_global:].reshape(-1, 3)  # per bead: row, col, focus

    def model_images(self, theta: np.ndarray) -> np.ndarray:
        """(N, Z, R, R) unit PSFs of every bead and plane."""
        na, astig, sph, blur_px, beads = self.unpack(theta)
        n, z = len(beads), self.z_um.size
        defocus = (self.z_um[None, :] - beads[:, 2:3]).ravel()
        offsets = np.repeat(beads[:, :2], z, axis=0)
        if self.sizes is None:
            self.sizes = self.grids.sizes(defocus)
        psf = self.grids.images(na, astig, sph, abs(blur_px) * self.grids.p, defocus, offsets, self.sizes, self.half)
        self.evaluations += 1
        return psf.reshape(n, z, 2 * self.half + 1, 2 * self.half + 1)

    def amplitudes(self, psf: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per bead and plane, the weighted least-squares amplitude and background (closed form)."""
        w2 = weights**2
        sw = w2.sum(axis=(-2, -1))
        sp = (w2 * psf).sum(axis=(-2, -1))
        spp = (w2 * psf * psf).sum(axis=(-2, -1))
        sd = (w2 * self.data_e).sum(axis=(-2, -1))
        spd = (w2 * psf * self.data_e).sum(axis=(-2, -1))
        det = sw * spp - sp * sp
        det = np.where(np.abs(det) > 1e-300, det, 1e-300)
        amplitude = (sw * spd - sp * sd) / det
        background = (spp * sd - sp * spd) / det
        return amplitude, background

    def weights_for(self, expected_e: np.ndarray) -> np.ndarray:
        return 1.0 / np.sqrt(self.excess * np.clip(expected_e, 0, None) + self.variance_floor_e2)

    def fitted(self, theta: np.ndarray) -> np.ndarray:
        psf = self.model_images(theta)
        amplitude, background = self.amplitudes(psf, self.weights)
        return amplitude[..., None, None] * psf + background[..., None, None]

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        return ((self.fitted(theta) - self.data_e) * self.weights).ravel()

    def sparsity(self, n_beads: int) -> sparse.csr_matrix:
        per_bead = self.data_e[0].size
        rows = n_beads * per_bead
        pattern = sparse.lil_matrix((rows, self.n_global + 3 * n_beads), dtype=np.int8)
        pattern[:, :self.n_global] = 1
        for b in range(n_beads):
            pattern[b * per_bead:(b + 1) * per_bead, self.n_global + 3 * b:self.n_global + 3 * b + 3] = 1
        return pattern.tocsr()


def _validate(stacks: Sequence[np.ndarray], z_um: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    if len(stacks) == 0:
        raise PsfCalibrationError("no bead stacks given")
    z = np.asarray(z_um, np.float64).ravel()
    out = []
    for i, stack in enumerate(stacks):
        a = np.asarray(stack)
        if a.ndim != 3:
            raise PsfCalibrationError(f"bead stack {i} has shape {a.shape}; expected (Z, H, W) planes")
        if a.shape[0] != z.size:
            raise PsfCalibrationError(f"bead stack {i} has {a.shape[0]} planes but {z.size} z positions were given")
        if not np.isfinite(a).all():
            raise PsfCalibrationError(f"bead stack {i} holds NaN or infinite values")
        out.append(a)
    if not np.isfinite(z).all():
        raise PsfCalibrationError("the z positions hold NaN or infinite values")
    if z.size < MIN_PLANES:
        raise PsfCalibrationError(f"too few planes: {z.size}; a PSF calibration needs at least {MIN_PLANES} "
                                  f"(e.g. 41 planes 25-50 nm apart)")
    if np.any(np.diff(z) <= 0):
        raise PsfCalibrationError("the z positions must increase plane by plane")
    if z[-1] - z[0] < MIN_Z_RANGE_UM:
        raise PsfCalibrationError(f"z range too short: {z[-1] - z[0]:.3f} um; the beads' stacks must span at "
                                  f"least {MIN_Z_RANGE_UM} um (both astigmatic foci), e.g. -0.8 to +0.8 um")
    return out, z


def calibrate_psf(stacks: Sequence[np.ndarray], z_um: np.ndarray, *, pixel_size_nm: float, baseline_adu: float,
                  e_per_adu: float = 1.0, em_gain: float = 1.0, read_noise_e: float = 1.0, emission_nm: float,
                  na: float, immersion_index: float, roi_half_px: int | None = None,
                  saturation_adu: float | None = None, min_snr: float = 10.0, max_beads: int = 24,
                  fit_blur: bool = True, fit_na: bool = False, max_evaluations: int = _MAX_NFEV,
                  progress: Callable[[str], None] | None = None) -> PsfCalibration:
    """Fit the pupil PSF to beads in (Z, H, W) ADU ``stacks`` taken at focus positions ``z_um``
    (shared by all stacks, increasing). ``e_per_adu``: the camera's conversion gain after EM gain
    (photo-electrons = (ADU - baseline) x e_per_adu / em_gain). ``na`` is the start value when
    ``fit_na``. Raises `PsfCalibrationError` on unusable input or a fit that fails."""
    stacks, z = _validate(stacks, z_um)
    for name, value in (("pixel_size_nm", pixel_size_nm), ("e_per_adu", e_per_adu), ("emission_nm", emission_nm),
                        ("na", na)):
        if not value > 0:
            raise PsfCalibrationError(f"{name} must be positive, got {value}")
    if na >= immersion_index:
        raise PsfCalibrationError(f"na {na} must be below the immersion index {immersion_index}")
    if em_gain < 1:
        raise PsfCalibrationError(f"em_gain must be at least 1, got {em_gain}")
    say = progress or (lambda message: None)
    p_um = pixel_size_nm * 1e-3
    half = roi_half_px or default_roi_half_px(pixel_size_nm, emission_nm, na)
    if saturation_adu is None and np.issubdtype(stacks[0].dtype, np.integer):
        saturation_adu = float(np.iinfo(stacks[0].dtype).max)

    beads, rejected = detect_beads(stacks, roi_half_px=half, baseline_adu=baseline_adu, pixel_size_nm=pixel_size_nm,
                                   saturation_adu=saturation_adu, min_snr=min_snr)
    if not beads:
        detail = f" ({len(rejected)} found but rejected: {rejected[0].reason}, ...)" if rejected else ""
        raise PsfCalibrationError(f"no usable beads found in {len(stacks)} stack(s){detail}; check the "
                                  f"baseline ({baseline_adu:g} ADU) and that beads are in the field")
    if len(beads) > max_beads:  # the brightest: the most information per evaluation
        peak = [float(stacks[b.stack][:, b.row, b.col].max()) for b in beads]
        order = np.argsort(peak)[::-1]
        rejected += [BeadRejection(stack=beads[i].stack, x_nm=(beads[i].col + 0.5) * pixel_size_nm,
                                   y_nm=(beads[i].row + 0.5) * pixel_size_nm,
                                   reason=f"not needed (the {max_beads} brightest beads are fitted)")
                     for i in order[max_beads:]]
        beads = [beads[i] for i in sorted(order[:max_beads])]
    say(f"fitting {len(beads)} beads over {z.size} planes")

    gain = e_per_adu / em_gain
    data_e = (crop_rois(stacks, beads, half) - baseline_adu) * gain
    excess = 2.0 if em_gain > 1 else 1.0
    na_max = min(na * 1.1, immersion_index * 0.999) if fit_na else na
    grids = PupilGrids(Optics(na=na, emission_nm=emission_nm, immersion_index=immersion_index), p_um, na_max)
    # Variance floor: read noise referred to the input, plus 1 e^2 so that no pixel weighs infinitely.
    floor_e2 = max(read_noise_e / em_gain, 0.0) ** 2 + 1.0
    problem = _Problem(grids, data_e, z, half, floor_e2, excess, fit_na, fit_blur, na)
    theta0 = _start(problem, na)
    theta, result = _solve(problem, theta0, na, max_evaluations)
    return _calibration(problem, theta, result, beads, rejected, pixel_size_nm, emission_nm, immersion_index, na)


def calibrate_psf_from_session(session: Session, *, emission_nm: float | None = None, na: float | None = None,
                               immersion_index: float | None = None, **options) -> PsfCalibration:
    """`calibrate_psf` on a ``beads`` calibration session (`livescope.session.load_session`): pixel
    size and camera from the manifest's rig snapshot; the optics from the arguments, else (virtual
    rig only) from the snapshot -- a real rig's snapshot does not know them. ``options`` go to
    `calibrate_psf`."""
    if session.kind != "beads":
        raise PsfCalibrationError(f"{session.root} is a {session.kind} session; a PSF calibration needs a "
                                  f"beads session (livescope calibrate beads)")
    rig = session.manifest.rig
    virtual = rig.virtual_rig_metadata or {}
    given = {"emission_nm": emission_nm, "na": na, "immersion_index": immersion_index}
    optics = {name: value if value is not None else virtual.get(name) for name, value in given.items()}
    missing = [name for name, value in optics.items() if value is None]
    if missing:
        labels = {"emission_nm": "emission wavelength (nm)", "na": "NA", "immersion_index": "immersion index"}
        raise PsfCalibrationError(f"the session's {rig.source} rig does not record its optics: give its "
                                  f"{', '.join(labels[name] for name in missing)}")
    if rig.pixel_size_um is None:
        raise PsfCalibrationError(f"session {session.root} records no pixel size; set the rig's pixel size "
                                  f"configuration and acquire again")
    if rig.camera is None:
        raise PsfCalibrationError(f"session {session.root} records no camera calibration (baseline, e-/ADU)")
    try:
        stacks = session.stacks()
    except SessionError as e:
        raise PsfCalibrationError(str(e)) from None
    if not stacks:
        raise PsfCalibrationError(f"session {session.root} has no completed positions")
    camera = rig.camera
    extra: dict = {}
    if rig.virtual_rig_config is not None:  # the virtual camera's read noise and where it saturates
        config = rig.virtual_rig_config
        extra["read_noise_e"] = float(config.get("read_noise_e", 1.0))
        full_well_adu = camera.baseline_adu + float(config.get("full_well_e", np.inf)) * camera.em_gain / camera.e_per_adu
        extra["saturation_adu"] = min(2.0 ** int(config.get("bit_depth", 16)) - 1, math.floor(full_well_adu))
    return calibrate_psf([s.planes_adu for s in stacks], stacks[0].z_um, pixel_size_nm=rig.pixel_size_um * 1e3,
                         baseline_adu=camera.baseline_adu, e_per_adu=camera.e_per_adu, em_gain=camera.em_gain,
                         **{**optics, **extra, **options})


def _start(problem: _Problem, na: float) -> np.ndarray:
    """Starting values: each bead's centroid and focus (its narrowest plane), astigmatism from the
    split between its x and y foci (second moments), no spherical aberration, no blur."""
    data, z, half = problem.data_e, problem.z_um, problem.half
    vx, vy = second_moments(data)  # (N, Z)
    width = vx + vy
    focus = np.array([focus_of(w, z) for w in width])
    split = np.median([focus_of(a, z) - focus_of(b, z) for a, b in zip(vx, vy)])
    per_wave = _astigmatism_per_focal_split(problem.grids, na, half)
    astig = float(np.clip(split / per_wave, -0.5, 0.5)) if abs(per_wave) > 1e-6 else 0.0
    # Each image's grid as `Optics.psf` takes it at the starting astigmatism (fixed from here on).
    problem.grids.optics = problem.grids.optics.model_copy(update={"astigmatism_waves": astig})
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    total = np.clip(data - np.median(data, axis=(-2, -1), keepdims=True), 0, None).sum(axis=1)
    s = total.sum(axis=(-2, -1)) + 1e-12
    rows = np.clip((total * yy).sum(axis=(-2, -1)) / s, -1.5, 1.5)
    cols = np.clip((total * xx).sum(axis=(-2, -1)) / s, -1.5, 1.5)
    head = [astig, 0.0] + ([0.5] if problem.fit_blur else []) + ([na] if problem.fit_na else [])
    return np.concatenate([head, np.stack([rows, cols, focus], axis=1).ravel()])


def _solve(problem: _Problem, theta0: np.ndarray, na: float, max_evaluations: int = _MAX_NFEV, passes: int = 2,
           span: float | None = None) -> tuple[np.ndarray, optimize.OptimizeResult]:
    n_beads = problem.data_e.shape[0]
    zlo, zhi = problem.z_um[0], problem.z_um[-1]
    if problem.fixed:
        lower, upper = [], []
    else:
        lower = [-1.0, -0.5] + ([0.0] if problem.fit_blur else []) + ([na * 0.8] if problem.fit_na else [])
        upper = [1.0, 0.5] + ([4.0] if problem.fit_blur else []) + (
            [min(na * 1.1, problem.grids.optics.immersion_index * 0.999)] if problem.fit_na else [])
    span = zhi - zlo if span is None else span
    lower = np.array(lower + [-problem.half, -problem.half, zlo - span] * n_beads)
    upper = np.array(upper + [problem.half, problem.half, zhi + span] * n_beads)
    theta = np.clip(theta0, lower + 1e-9, upper - 1e-9)
    sparsity = problem.sparsity(n_beads)
    result = None
    # Pass 1 weights each pixel by the noise of the (smoothed) data; pass 2 by the noise of pass 1's
    # model, which removes the bias data weights give towards pixels that fluctuated low.
    smooth = ndimage.uniform_filter(problem.data_e, size=(1, 1, 3, 3), mode="nearest")
    problem.weights = problem.weights_for(smooth)
    for _ in range(passes):
        try:
            result = optimize.least_squares(problem.residuals, theta, jac_sparsity=sparsity, bounds=(lower, upper),
                                            x_scale="jac", diff_step=1e-6, max_nfev=max_evaluations, method="trf")
        except (ValueError, np.linalg.LinAlgError) as e:
            raise PsfCalibrationError(f"the PSF fit failed: {e}") from None
        if not np.all(np.isfinite(result.x)):
            raise PsfCalibrationError("the PSF fit did not converge (non-finite parameters)")
        theta = result.x
        problem.weights = problem.weights_for(problem.fitted(theta))
    if result.status == 0:  # stopped at max_evaluations
        raise PsfCalibrationError(f"the PSF fit did not converge in {max_evaluations} evaluations; check the "
                                  f"beads' z range and the optics given (NA, wavelength, pixel size)")
    return theta, result


def _calibration(problem: _Problem, theta: np.ndarray, result: optimize.OptimizeResult,
                 beads: Sequence[BeadCandidate], rejected: list[BeadRejection], pixel_size_nm: float,
                 emission_nm: float, immersion_index: float, na0: float) -> PsfCalibration:
    na, astig, sph, blur_px, per_bead = problem.unpack(theta)
    psf = problem.model_images(theta)
    amplitude, background = problem.amplitudes(psf, problem.weights)
    model = amplitude[..., None, None] * psf + background[..., None, None]
    residual = model - problem.data_e
    signal = problem.data_e - background[..., None, None]
    per_bead_rel = np.sqrt((residual**2).mean(axis=(1, 2, 3)) / np.maximum((signal**2).mean(axis=(1, 2, 3)), 1e-12))
    weighted = residual * problem.weights
    dof = max(weighted.size - theta.size - 2 * amplitude.size, 1)
    chi2 = float((weighted**2).sum() / dof)
    sd = _standard_errors(result.jac, chi2, problem.n_global)
    focus = per_bead[:, 2]
    z = problem.z_um
    # Emitter z = -defocus = focus - z: bead i covers [focus_i - z[-1], focus_i - z[0]]; every bead
    # covers the intersection.
    z_range = (float((focus.max() - z[-1]) * 1e3), float((focus.min() - z[0]) * 1e3))
    if not (z[0] <= np.median(focus) <= z[-1]):
        raise PsfCalibrationError(f"the beads' focus ({np.median(focus):+.3f} um) lies outside the stack "
                                  f"({z[0]:+.3f} to {z[-1]:+.3f} um); centre the stack on the beads' focus")
    if z_range[1] - z_range[0] < MIN_Z_RANGE_UM * 1e3:
        raise PsfCalibrationError(f"the beads' foci spread over {focus.max() - focus.min():.3f} um, leaving "
                                  f"{max(z_range[1] - z_range[0], 0.0):.0f} nm that every bead's stack covers; "
                                  f"level the sample or acquire a longer stack")
    fits = tuple(BeadFit(stack=b.stack, x_nm=(b.col + 0.5 + per_bead[i, 1]) * pixel_size_nm,
                         y_nm=(b.row + 0.5 + per_bead[i, 0]) * pixel_size_nm, focus_um=float(focus[i]),
                         photons=float(np.median(amplitude[i])), residual_relative=float(per_bead_rel[i]))
                 for i, b in enumerate(beads))
    g = 2
    blur_sd = sd[g] * pixel_size_nm if problem.fit_blur else None
    g += int(problem.fit_blur)
    return PsfCalibration(
        pixel_size_nm=pixel_size_nm, emission_nm=emission_nm, immersion_index=immersion_index, na=float(na),
        na_fitted=problem.fit_na, na_sd=sd[g] if problem.fit_na else None, astigmatism_waves=float(astig),
        astigmatism_waves_sd=sd[0], spherical_waves=float(sph), spherical_waves_sd=sd[1],
        blur_sigma_nm=float(abs(blur_px) * pixel_size_nm), blur_sigma_nm_sd=blur_sd,
        focus_offset_um=float(np.median(focus)), focus_spread_um=float(np.std(focus)), z_range_nm=z_range,
        planes=int(z.size), roi_px=2 * problem.half + 1, beads=fits, rejected=tuple(rejected),
        residual_relative=float(np.sqrt((residual**2).sum() / max((signal**2).sum(), 1e-12))),
        reduced_chi2=chi2, evaluations=problem.evaluations)


def _standard_errors(jac, chi2: float, n_global: int) -> list[float]:
    """Standard errors of the global parameters: sqrt(diag((J^T J)^-1) chi2)."""
    j = jac.toarray() if sparse.issparse(jac) else np.asarray(jac)
    try:
        cov = np.linalg.pinv(j.T @ j) * chi2
    except np.linalg.LinAlgError:
        return [float("nan")] * n_global
    return [float(math.sqrt(max(cov[i, i], 0.0))) for i in range(n_global)]


def localise_planes(calibration: PsfCalibration, rois_e: np.ndarray, *, excess: float = 1.0,
                    read_noise_e: float = 1.0) -> np.ndarray:
    """Each image of ``rois_e`` (N, R, R; photo-electrons above the baseline; R odd) localised alone
    with the calibrated PSF: (N, 3) = row and column offset of the emitter from the ROI's centre (px)
    and its z (nm from the focal plane, `LocaliseSimulation`'s convention: -defocus). Starts from the
    best of a library of PSFs every 25 nm over the calibrated range, then least squares."""
    rois = np.asarray(rois_e, np.float64)
    if rois.ndim != 3 or rois.shape[1] != rois.shape[2] or rois.shape[1] % 2 != 1:
        raise PsfCalibrationError(f"ROIs must be (N, R, R) with R odd, got {rois.shape}")
    half = rois.shape[1] // 2
    lo, hi = calibration.z_range_nm
    library_z = np.arange(-hi, -lo + 1e-9, 25.0) * 1e-3  # defocus, um
    library = calibration.psf(library_z, half_px=half)
    # The best library entry per image (amplitude and background solved for each).
    flat = library.reshape(len(library_z), -1)
    centred = flat - flat.mean(axis=1, keepdims=True)
    data = rois.reshape(len(rois), -1)
    data_c = data - data.mean(axis=1, keepdims=True)
    score = (data_c @ centred.T) ** 2 / (centred**2).sum(axis=1)[None, :]  # explained variance
    start = library_z[np.argmax(score, axis=1)]
    grids = PupilGrids(calibration.optics, calibration.pixel_size_nm * 1e-3, calibration.na)
    fixed = (calibration.na, calibration.astigmatism_waves, calibration.spherical_waves,
             calibration.blur_sigma_nm / calibration.pixel_size_nm)
    problem = _Problem(grids, rois[:, None], np.zeros(1), half, read_noise_e**2 + 1.0, excess, False, True,
                       calibration.na, fixed=fixed)
    # One "plane" at z = 0 per image: its fitted focus f gives defocus -f, so emitter z = f.
    theta0 = np.stack([np.zeros(len(rois)), np.zeros(len(rois)), -start], axis=1).ravel()
    span = max(hi - lo, 100.0) * 1e-3
    theta, _ = _solve(problem, theta0, calibration.na, passes=1, span=span)
    per = theta.reshape(-1, 3)
    return np.stack([per[:, 0], per[:, 1], per[:, 2] * 1e3], axis=1)

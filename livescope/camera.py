"""The camera model: how a camera's ADU relate to photo-electrons and photons, in physical units.

A pixel detects QE x the photons reaching it as photo-electrons; an EMCCD multiplies them by its
EM gain; the ADC divides by the conversion gain (e-/ADU, after EM gain) and adds the baseline
(ADU). On average, then::

    ADU = photons x QE x em_gain / e_per_adu + baseline_adu
    photons = (ADU - baseline_adu) x e_per_adu / (em_gain x QE)

With QE 1 (the default below) "photons" are photo-electrons: the *detected* photons that the wire
protocol's ``camera`` field, ThunderSTORM and the localisation models count. This module is the one
place that says so: the wire's `CameraCalibration`, the virtual camera (acquire/virtual/camera.py,
which adds the noise: shot, EM excess, read noise) and the simulated localisation training data
(models/localise/data.py) all convert with `adu_to_photons` and `photons_to_adu`.

Parameters are scalars or arrays that broadcast against the frames (numpy's rules): an sCMOS's
per-pixel offset and gain maps, or per-frame values shaped (n, 1, 1).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

CameraValue = float | np.ndarray
"""A camera parameter: one value, or an array broadcast against the frames."""


def adu_to_photons(frames_adu: np.ndarray, baseline_adu: CameraValue, e_per_adu: CameraValue,
                   em_gain: CameraValue = 1.0, qe: CameraValue = 1.0) -> np.ndarray:
    """Frames in ADU to photons per pixel, float32 (the inverse of the camera's mean response);
    with ``qe`` 1, photo-electrons. Noise makes dark pixels slightly negative."""
    return (np.asarray(frames_adu, np.float32) - baseline_adu) * (e_per_adu / (em_gain * qe))


def photons_to_adu(photons: np.ndarray, baseline_adu: CameraValue, e_per_adu: CameraValue,
                   em_gain: CameraValue = 1.0, qe: CameraValue = 1.0) -> np.ndarray:
    """The camera's mean response to ``photons`` per pixel: ADU, baseline included, float32 (not
    rounded, clipped or saturated); with ``qe`` 1, to photo-electrons."""
    # The same arithmetic either way, rounded differently; kept as the simulator has always done it,
    # so that its frames stay bit-identical: a gain that is one value per frame (a scalar, or per-frame
    # values shaped (n, 1, 1)) is folded into one factor, a gain per pixel (an sCMOS's map) is divided
    # by pixel by pixel. float64 photons are computed in float64 and rounded once, at the end.
    photons = np.asarray(photons)
    if np.shape(e_per_adu)[-2:] in ((), (1,), (1, 1)):
        adu = photons * np.float32(em_gain * qe / e_per_adu) + np.float32(baseline_adu)
    else:
        adu = photons * np.float32(em_gain * qe) / e_per_adu + baseline_adu
    return adu.astype(np.float32, copy=False)


class CameraCalibration(BaseModel):
    """A camera's ADU <-> photo-electrons (detected photons): its baseline, conversion gain and EM
    gain, and its read noise where known. Every value is finite. Localisation models take photo-electrons, so a frame for a ``localise`` stage carries its
    camera's calibration: this model is the wire protocol's ``FrameHeader.camera``
    (docs/protocol.md), and also what a calibration session records of its rig."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    baseline_adu: float = Field(ge=0, description="offset added to every pixel, ADU")
    e_per_adu: float = Field(gt=0, description="conversion gain, e- per ADU (after EM gain)")
    em_gain: float = Field(default=1.0, ge=1, description="EMCCD multiplication gain; 1 = none (sCMOS)")
    # Optional and left out of the JSON when not known, so headers and manifests that do not give it
    # are byte for byte what they were before it existed. No stage uses it yet.
    read_noise_e: float | None = Field(default=None, ge=0, exclude_if=lambda v: v is None,
                                       description="read noise, e- rms (referred to the input)")

    def photons(self, frames_adu: np.ndarray, qe: float = 1.0) -> np.ndarray:
        """Frames (ADU) in photo-electrons, float32: (ADU - baseline) x e-/ADU / EM gain (with the
        camera's ``qe``: the photons that reached each pixel)."""
        return adu_to_photons(frames_adu, self.baseline_adu, self.e_per_adu, self.em_gain, qe)

    def expected_adu(self, photons: np.ndarray, qe: float = 1.0) -> np.ndarray:
        """The mean frame (ADU, baseline included, float32) for ``photons`` photo-electrons per pixel
        (with the camera's ``qe``: for the photons reaching each pixel)."""
        return photons_to_adu(photons, self.baseline_adu, self.e_per_adu, self.em_gain, qe)

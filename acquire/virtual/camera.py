"""The camera: photons -> photo-electrons (QE, shot noise) -> read noise -> ADU.

An sCMOS/CCD model in physical units: each pixel detects Poisson(QE x photons) electrons, adds
Gaussian read noise (e- rms), is divided by the conversion gain (e-/ADU), offset by the
baseline, rounded and clipped to the ADC's range. No dark current, no pixel-to-pixel gain or
offset variation yet.

Shot noise is the expensive part of a frame, so `read_out` draws it in fixed row bands on a
small thread pool (numpy's samplers release the GIL). The bands' random streams are spawned
from the caller's generator and their number is fixed, so a frame is the same on any machine.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

_BANDS = 8  # fixed: a frame must not depend on how many cores drew it
_pool = ThreadPoolExecutor(max_workers=min(_BANDS, os.cpu_count() or 1), thread_name_prefix="camera")


class CameraModel(BaseModel):
    """The detector's parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    qe: float = Field(gt=0, le=1, description="quantum efficiency, e- per photon")
    e_per_adu: float = Field(gt=0, description="conversion gain, e- per ADU")
    read_noise_e: float = Field(ge=0, description="read noise, e- rms")
    baseline_adu: float = Field(ge=0, description="offset added to every pixel, ADU")
    bit_depth: int = Field(ge=1, le=16, description="ADC bits; frames are uint16 whatever it is")

    @property
    def max_adu(self) -> int:
        return 2**self.bit_depth - 1


def expected_adu(photons: np.ndarray, camera: CameraModel) -> np.ndarray:
    """The noise-free mean of each pixel in ADU, baseline included (not rounded or clipped)."""
    return (photons * np.float32(camera.qe / camera.e_per_adu) + np.float32(camera.baseline_adu)).astype(
        np.float32, copy=False
    )


def read_out(photons: np.ndarray, rng: np.random.Generator, camera: CameraModel) -> np.ndarray:
    """One noisy frame (uint16 ADU) for the expected ``photons`` arriving at each pixel."""
    if photons.ndim != 2:
        raise ValueError(f"photons must be 2-D (rows, cols), got shape {photons.shape}")
    out = np.empty(photons.shape, np.uint16)
    edges = np.linspace(0, photons.shape[0], _BANDS + 1).astype(int)
    bands = [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]
    streams = rng.spawn(_BANDS)
    list(_pool.map(lambda band, stream: _read_band(photons[band], stream, camera, out[band]), bands, streams))
    return out


def _read_band(photons: np.ndarray, rng: np.random.Generator, camera: CameraModel, out: np.ndarray) -> None:
    electrons = rng.poisson(photons * camera.qe).astype(np.float32)
    electrons += rng.standard_normal(photons.shape, np.float32) * np.float32(camera.read_noise_e)
    adu = electrons
    adu *= np.float32(1.0 / camera.e_per_adu)
    adu += np.float32(camera.baseline_adu)
    np.rint(adu, out=adu)
    np.clip(adu, 0, camera.max_adu, out=adu)
    out[...] = adu

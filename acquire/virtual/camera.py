"""The camera: photons -> photo-electrons (QE, shot noise) -> gain -> read noise -> ADU.

A detector model in physical units, around the core's camera model (livescope/camera.py: how ADU
relate to photo-electrons, which `expected_adu` and `read_out` convert with; ``calibration`` is
this camera's). Each pixel detects Poisson(QE x photons) electrons, which
saturate at the full-well capacity; an EMCCD (``em_gain`` > 1) multiplies them in its gain
register, which adds excess noise (the output of n electrons is Gamma(n, G) distributed, so the
noise factor F^2 tends to 2); then Gaussian read noise (e- rms) is added, the sum divided by
the conversion gain (e-/ADU), offset by the baseline, rounded and clipped to the ADC's range.

An sCMOS has a readout per pixel: with ``offset_rms_adu``, ``gain_rms`` or
``read_noise_spread`` set, every pixel gets its own offset, conversion gain and read noise
(`PixelMaps`, drawn once from ``map_seed`` — fixed pattern, the same in every frame).

Shot noise is the expensive part of a frame, so `read_out` draws it in fixed row bands on a
small thread pool (numpy's samplers release the GIL). The bands' random streams are spawned
from the caller's generator and their number is fixed, so a frame is the same on any machine.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from livescope.camera import CameraCalibration, photons_to_adu

_BANDS = 8  # fixed: a frame must not depend on how many cores drew it
_pool = ThreadPoolExecutor(max_workers=min(_BANDS, os.cpu_count() or 1), thread_name_prefix="camera")


class CameraModel(BaseModel):
    """The detector's parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    qe: float = Field(gt=0, le=1, description="quantum efficiency, e- per photon")
    e_per_adu: float = Field(gt=0, description="conversion gain, e- per ADU (after EM gain)")
    read_noise_e: float = Field(ge=0, description="read noise, e- rms")
    baseline_adu: float = Field(ge=0, description="offset added to every pixel, ADU")
    bit_depth: int = Field(ge=1, le=16, description="ADC bits; frames are uint16 whatever it is")
    em_gain: float = Field(default=1.0, ge=1, description="EMCCD multiplication gain; 1 = none")
    full_well_e: float = Field(default=30_000.0, gt=0, description="photo-electrons a pixel holds")
    offset_rms_adu: float = Field(default=0.0, ge=0, description="sCMOS pixel-to-pixel offset spread, ADU")
    gain_rms: float = Field(default=0.0, ge=0, lt=0.5, description="sCMOS pixel-to-pixel gain spread, relative")
    read_noise_spread: float = Field(default=0.0, ge=0, description="sCMOS read-noise spread (lognormal sigma)")
    map_seed: int = Field(default=0, ge=0, description="seed of the fixed-pattern pixel maps")

    @property
    def calibration(self) -> CameraCalibration:
        """The core camera model of this detector (without its pixel maps' spread)."""
        return CameraCalibration(baseline_adu=self.baseline_adu, e_per_adu=self.e_per_adu, em_gain=self.em_gain,
                                 read_noise_e=self.read_noise_e)

    @property
    def max_adu(self) -> int:
        return 2**self.bit_depth - 1

    @property
    def has_pixel_maps(self) -> bool:
        return bool(self.offset_rms_adu or self.gain_rms or self.read_noise_spread)


@dataclass(frozen=True)
class PixelMaps:
    """Per-pixel readout of an sCMOS: offset (ADU), conversion gain (e-/ADU), read noise (e-)."""

    offset_adu: np.ndarray
    e_per_adu: np.ndarray
    read_noise_e: np.ndarray

    @staticmethod
    def draw(camera: CameraModel, shape: tuple[int, int]) -> PixelMaps:
        rng = np.random.default_rng([0x5c305, camera.map_seed])
        offset = camera.baseline_adu + camera.offset_rms_adu * rng.standard_normal(shape)
        gain = camera.e_per_adu * (1.0 + camera.gain_rms * rng.standard_normal(shape))
        spread = camera.read_noise_spread
        noise = camera.read_noise_e * rng.lognormal(-spread**2 / 2, spread, shape)  # mean = read_noise_e
        return PixelMaps(offset.astype(np.float32), gain.astype(np.float32), noise.astype(np.float32))


def pixel_maps(camera: CameraModel, shape: tuple[int, int]) -> PixelMaps | None:
    """The camera's fixed-pattern maps for a sensor of ``shape`` (None when it has none)."""
    return _cached_maps(camera, tuple(shape)) if camera.has_pixel_maps else None


_maps_cache: dict[tuple, PixelMaps] = {}


def _cached_maps(camera: CameraModel, shape: tuple[int, int]) -> PixelMaps:
    key = (camera, shape)
    maps = _maps_cache.get(key)
    if maps is None:
        if len(_maps_cache) > 8:
            _maps_cache.clear()
        maps = _maps_cache[key] = PixelMaps.draw(camera, shape)
    return maps


def expected_adu(photons: np.ndarray, camera: CameraModel) -> np.ndarray:
    """The noise-free mean of each pixel in ADU, baseline included (not rounded or clipped;
    saturation ignored). With pixel maps: each pixel's own offset and gain."""
    maps = pixel_maps(camera, photons.shape)
    if maps is None:
        return camera.calibration.expected_adu(photons, camera.qe)
    return photons_to_adu(photons, maps.offset_adu, maps.e_per_adu, camera.em_gain, camera.qe)


def read_out(photons: np.ndarray, rng: np.random.Generator, camera: CameraModel) -> np.ndarray:
    """One noisy frame (uint16 ADU) for the expected ``photons`` arriving at each pixel."""
    if photons.ndim != 2:
        raise ValueError(f"photons must be 2-D (rows, cols), got shape {photons.shape}")
    out = np.empty(photons.shape, np.uint16)
    maps = pixel_maps(camera, photons.shape)
    edges = np.linspace(0, photons.shape[0], _BANDS + 1).astype(int)
    bands = [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]
    streams = rng.spawn(_BANDS)

    def band_maps(band: slice) -> PixelMaps | None:
        if maps is None:
            return None
        return PixelMaps(maps.offset_adu[band], maps.e_per_adu[band], maps.read_noise_e[band])

    list(_pool.map(lambda band, stream: _read_band(photons[band], stream, camera, band_maps(band), out[band]),
                   bands, streams))
    return out


def _read_band(photons: np.ndarray, rng: np.random.Generator, camera: CameraModel,
               maps: PixelMaps | None, out: np.ndarray) -> None:
    electrons = rng.poisson(photons * camera.qe)
    if electrons.size and electrons.max() > camera.full_well_e:
        np.minimum(electrons, int(camera.full_well_e), out=electrons)
    if camera.em_gain > 1:
        adu = rng.gamma(electrons, camera.em_gain).astype(np.float32)
    else:
        adu = electrons.astype(np.float32)
    noise = rng.standard_normal(photons.shape, np.float32)
    noise *= np.float32(camera.read_noise_e) if maps is None else maps.read_noise_e
    adu += noise
    # The electrons out of the gain register (QE and EM gain applied above) through the ADC.
    if maps is None:
        adu = photons_to_adu(adu, camera.baseline_adu, camera.e_per_adu)
    else:
        adu = photons_to_adu(adu, maps.offset_adu, maps.e_per_adu)
    np.rint(adu, out=adu)
    np.clip(adu, 0, camera.max_adu, out=adu)
    out[...] = adu

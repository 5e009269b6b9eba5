"""The virtual rig's physics, end to end: specimen -> optics -> camera, for a stage position.

`VirtualScene.snap(x, y, z, exposure, rng)` is what the virtual camera does for each frame, and
what training code calls directly to get (noisy frame, noise-free frame) pairs.

To keep up as a live camera, the specimen is rendered at camera resolution once per tile of the
field, when the stage first shows that tile; OTFs are cached per defocus and sub-pixel offset;
and the noise-free frame for the current stage position and exposure is kept, so a camera that
is not moving only draws noise.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .camera import CameraModel, expected_adu, read_out
from .optics import WidefieldOptics, convolve, fast_fft_len, otf
from .specimen import SpecimenKind, make_specimen


class VirtualRigConfig(BaseModel):
    """Everything physical about the virtual microscope."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sensor_shape_px: tuple[int, int] = Field(default=(512, 512), description="(height, width)")
    camera_pixel_um: float = Field(default=6.5, gt=0, description="camera pixel pitch, µm")
    magnification: float = Field(default=60.0, gt=0)
    na: float = Field(default=1.4, gt=0, description="numerical aperture")
    emission_nm: float = Field(default=520.0, gt=0)
    immersion_index: float = Field(default=1.515, gt=0)
    specimen: SpecimenKind = "filaments"
    field_um: float = Field(default=400.0, gt=0, description="specimen extent; the XY stage pans across it")
    signal_photons_per_ms: float = Field(
        default=2.0, ge=0, description="peak emitted photons/px/ms of an in-focus structure (sets SNR)"
    )
    background_photons_per_ms: float = Field(default=0.2, ge=0, description="photons/px/ms, uniform")
    qe: float = Field(default=0.8, gt=0, le=1)
    e_per_adu: float = Field(default=0.5, gt=0)
    read_noise_e: float = Field(default=1.5, ge=0)
    baseline_adu: float = Field(default=100.0, ge=0)
    bit_depth: int = Field(default=16, ge=8, le=16, description="ADC bits; frames are uint16")
    exposure_ms: float = Field(default=10.0, gt=0, description="the camera's exposure at start-up")
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _physical(self) -> VirtualRigConfig:
        if min(self.sensor_shape_px) < 1:
            raise ValueError(f"sensor_shape_px must be positive, got {self.sensor_shape_px}")
        self.optics  # noqa: B018 - validates na < immersion_index
        return self

    @property
    def pixel_size_um(self) -> float:
        """Camera pixel size at the sample."""
        return self.camera_pixel_um / self.magnification

    @property
    def optics(self) -> WidefieldOptics:
        return WidefieldOptics(na=self.na, emission_nm=self.emission_nm, immersion_index=self.immersion_index)

    @property
    def camera(self) -> CameraModel:
        return CameraModel(qe=self.qe, e_per_adu=self.e_per_adu, read_noise_e=self.read_noise_e,
                           baseline_adu=self.baseline_adu, bit_depth=self.bit_depth)


class VirtualScene:
    """The specimen seen through the rig's optics and camera.

    Coordinates: the stage position (x_um, y_um) is the centre of the field of view; x runs
    along columns, y along rows; the specimen sits at z = 0, so z_um is the defocus.
    """

    TILE_PX = 512
    OTF_CACHE = 16  # (defocus, sub-pixel offset) pairs kept; a 2048 px frame's OTF is ~20 MB

    def __init__(self, config: VirtualRigConfig) -> None:
        self.config = config
        self.optics = config.optics
        self.camera = config.camera
        self.pixel_size_um = config.pixel_size_um
        self.specimen = make_specimen(config.specimen, config.field_um, config.seed)
        # The field raster: whole pixels, centred on the origin.
        self._field_px = math.ceil(config.field_um / self.pixel_size_um)
        self._origin_um = -self._field_px * self.pixel_size_um / 2  # corner of field pixel (0, 0)
        peak = self.specimen.in_focus_peak(self.optics.sigma0_um, self.pixel_size_um)
        self._photons_per_ms_per_unit = config.signal_photons_per_ms / peak
        self._tiles: dict[tuple[int, int], np.ndarray] = {}
        self._otfs: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._last: tuple[tuple, np.ndarray] | None = None
        self._lock = threading.Lock()

    # -- public -----------------------------------------------------------------------------------

    def expected_photons(self, x_um: float, y_um: float, z_um: float, exposure_ms: float,
                         shape: tuple[int, int] | None = None) -> np.ndarray:
        """Noise-free photons arriving at each pixel during the exposure, background included.

        float32 of ``shape`` (default: the sensor), read-only (it is cached).
        """
        h, w = shape or self.config.sensor_shape_px
        key = (float(x_um), float(y_um), float(z_um), float(exposure_ms), h, w)
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        p = self.pixel_size_um
        # Field-raster coordinates (pixel centres at integers) of the frame's pixel (0, 0).
        col = (x_um - self._origin_um) / p - w / 2
        row = (y_um - self._origin_um) / p - h / 2
        c0, r0 = math.floor(col), math.floor(row)
        margin = self.optics.support_px(p, z_um) + 1  # light from outside the frame spills in
        fft_shape = (fast_fft_len(h + 2 * margin), fast_fft_len(w + 2 * margin))
        emission = self._emission(r0 - margin, c0 - margin, fft_shape)
        # Sampling the image (row - r0, col - c0) px further on = a PSF centred that much nearer.
        image = convolve(emission, self._otf(fft_shape, z_um, (r0 - row, c0 - col)))
        photons = image[margin:margin + h, margin:margin + w]
        photons += np.float32(self.config.background_photons_per_ms)
        photons *= np.float32(exposure_ms)
        np.maximum(photons, 0.0, out=photons)  # FFT round-off can dip below zero
        photons = np.ascontiguousarray(photons)
        photons.flags.writeable = False
        self._last = (key, photons)
        return photons

    def snap(self, x_um: float, y_um: float, z_um: float, exposure_ms: float,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(noisy frame as uint16 ADU, noise-free frame as float32 ADU), baseline included."""
        photons = self.expected_photons(x_um, y_um, z_um, exposure_ms)
        return read_out(photons, rng, self.camera), expected_adu(photons, self.camera)

    # -- caches -----------------------------------------------------------------------------------

    def _emission(self, row: int, col: int, shape: tuple[int, int]) -> np.ndarray:
        """In-focus emitted photons/ms per pixel of the field raster window at (row, col)."""
        h, w = shape
        out = np.zeros(shape, np.float32)
        t = self.TILE_PX
        for ty in range(row // t, (row + h - 1) // t + 1):
            for tx in range(col // t, (col + w - 1) // t + 1):
                tile = self._tile(ty, tx)
                if tile is None:
                    continue
                r_a, r_b = max(row, ty * t), min(row + h, (ty + 1) * t)
                c_a, c_b = max(col, tx * t), min(col + w, (tx + 1) * t)
                out[r_a - row:r_b - row, c_a - col:c_b - col] = tile[r_a - ty * t:r_b - ty * t,
                                                                     c_a - tx * t:c_b - tx * t]
        return out

    def _tile(self, ty: int, tx: int) -> np.ndarray | None:
        """A rendered tile of the field raster, or None where the field holds nothing."""
        n_tiles = math.ceil(self._field_px / self.TILE_PX)
        if not (0 <= ty < n_tiles and 0 <= tx < n_tiles):
            return None
        tile = self._tiles.get((ty, tx))
        if tile is None:
            t, p = self.TILE_PX, self.pixel_size_um
            tile = self.specimen.render(self._origin_um + tx * t * p, self._origin_um + ty * t * p, (t, t), p)
            tile *= np.float32(self._photons_per_ms_per_unit)
            with self._lock:
                tile = self._tiles.setdefault((ty, tx), tile)
        return tile

    def _otf(self, shape: tuple[int, int], z_um: float, offset_px: tuple[float, float]) -> np.ndarray:
        key = (shape, round(float(z_um), 6), round(offset_px[0], 4), round(offset_px[1], 4))
        with self._lock:
            if key in self._otfs:
                self._otfs.move_to_end(key)
                return self._otfs[key]
        transfer = otf(self.optics.psf(shape, self.pixel_size_um, z_um, offset_px)).astype(np.complex64)
        with self._lock:
            self._otfs[key] = transfer
            while len(self._otfs) > self.OTF_CACHE:
                self._otfs.popitem(last=False)
        return transfer

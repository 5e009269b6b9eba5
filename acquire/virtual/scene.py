"""The virtual rig's physics, end to end: specimen -> optics -> camera, for a stage position.

`VirtualScene.snap(x, y, z, exposure, rng)` is what the virtual camera does for each frame, and
what training code calls directly to get (noisy frame, noise-free frame) pairs; ``modality``
picks the PSF (widefield, confocal, STED) of the frame.

Default rig: a 60x / 1.4 oil objective (n = 1.515), 520 nm emission (488 nm excitation), 6.5 µm
camera pixels (108 nm at the sample), an sCMOS with QE 0.8, 1.5 e- read noise, 0.5 e-/ADU,
100 ADU baseline, 16 bits; widefield through the scalar pupil-function PSF. The operating ranges
training data covers: pixel size 65-160 nm, NA 0.8-1.49, emission 450-700 nm, 300-10000 photons
per emitter, background 5-200 photons/px.

The single-molecule specimen (``"smlm"``) changes every frame: each `expected_photons` call steps
its molecules one frame, and ``last_emitters`` holds that frame's active molecules in the field
of view with the photons each emitted (the ground truth): a `livescope.emitters.EmitterTable` in
the frame's coordinates (x, y nm from its top-left corner, z nm from the focal plane), and
``last_emitter_ids`` the molecules' ids, row by row. Molecules are imaged one by one, each
as the exact PSF at its own sub-pixel position (`spots.SpotImager`), not through the raster.

To keep up as a live camera, the specimen is rendered at camera resolution once per tile of the
field, when the stage first shows that tile; OTFs are cached per defocus and sub-pixel offset;
and the noise-free frame for the current stage position and exposure is kept, so a camera that
is not moving only draws noise.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

import scipy.fft as sfft
from scipy.special import erfinv

from livescope.emitters import EmitterTable

from .camera import CameraModel, expected_adu, read_out
from .optics import Modality, Optics, PsfModel, fast_fft_len, otf
from .specimen import EmitterKinetics, SpecimenKind, make_specimen
from .spots import SpotImager


_WORKERS = os.cpu_count() or 1


def _slabs(depth_um: float, slab_um: float) -> list[tuple[float, tuple[float, float] | None]]:
    """(centre z, (lo, hi) or None for all) of the z-slabs a specimen is rendered in, µm."""
    if depth_um == 0:
        return [(0.0, None)]
    n = math.ceil(depth_um / slab_um)
    edges = np.linspace(0.0, depth_um, n + 1)
    edges[-1] = np.nextafter(depth_um, np.inf)  # the top belongs to the last slab
    return [((a + b) / 2, (float(a), float(b))) for a, b in zip(edges[:-1], edges[1:])]


class VirtualRigConfig(BaseModel):
    """Everything physical about the virtual microscope."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sensor_shape_px: tuple[int, int] = Field(default=(512, 512), description="(height, width)")
    camera_pixel_um: float = Field(default=6.5, gt=0, description="camera pixel pitch, µm")
    magnification: float = Field(default=60.0, gt=0)
    na: float = Field(default=1.4, gt=0, description="numerical aperture")
    emission_nm: float = Field(default=520.0, gt=0)
    immersion_index: float = Field(default=1.515, gt=0)
    excitation_nm: float = Field(default=488.0, gt=0, description="confocal / STED excitation, nm")
    psf_model: PsfModel = Field(default="pupil", description="'pupil' (scalar Debye) or 'gaussian'")
    modality: Modality = Field(default="widefield", description="light path at start-up")
    pinhole_au: float = Field(default=1.0, ge=0, description="confocal pinhole diameter, Airy units")
    sted_saturation: float = Field(default=10.0, ge=0, description="STED depletion I / I_sat")
    spherical_waves: float = Field(
        default=0.07, description="primary spherical aberration, waves rms: by default 0.07, the Marechal "
        "limit of a diffraction-limited objective, as an oil objective focused a few µm into an aqueous "
        "sample keeps; it makes the widefield PSF asymmetric about focus, as real ones are")
    astigmatism_waves: float = Field(default=0.0, description="astigmatism (cylindrical lens), waves rms")
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
    em_gain: float = Field(default=1.0, ge=1, description="EMCCD gain (1: an sCMOS, no excess noise)")
    full_well_e: float = Field(default=30_000.0, gt=0, description="saturation, photo-electrons")
    offset_rms_adu: float = Field(default=0.0, ge=0, description="sCMOS per-pixel offset spread, ADU")
    gain_rms: float = Field(default=0.0, ge=0, lt=0.5, description="sCMOS per-pixel gain spread, relative")
    read_noise_spread: float = Field(default=0.0, ge=0, description="sCMOS per-pixel read-noise spread")
    kinetics: EmitterKinetics = Field(default_factory=EmitterKinetics, description="smlm photophysics")
    drift_um_per_frame: tuple[float, float, float] = Field(
        default=(0.0, 0.0, 0.0), description="sample drift (x, y, z) between successive frames, µm")
    drift_jitter_um: float = Field(default=0.0, ge=0, description="random-walk drift per frame, µm rms")
    specimen_depth_um: float = Field(
        default=0.0, ge=0, description="3-D specimen: fluorophores over z = 0..depth µm above the coverslip")
    slab_um: float = Field(default=0.1, gt=0, description="z-slab thickness a 3-D specimen is rendered in, µm")
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
    def optics(self) -> Optics:
        """The optics of the start-up modality (`optics_for` gives any other)."""
        return self.optics_for(self.modality)

    def optics_for(self, modality: Modality) -> Optics:
        return Optics(na=self.na, emission_nm=self.emission_nm, immersion_index=self.immersion_index,
                      excitation_nm=self.excitation_nm, psf_model=self.psf_model, modality=modality,
                      pinhole_au=self.pinhole_au, sted_saturation=self.sted_saturation,
                      spherical_waves=self.spherical_waves, astigmatism_waves=self.astigmatism_waves)

    @property
    def camera(self) -> CameraModel:
        return CameraModel(qe=self.qe, e_per_adu=self.e_per_adu, read_noise_e=self.read_noise_e,
                           baseline_adu=self.baseline_adu, bit_depth=self.bit_depth, em_gain=self.em_gain,
                           full_well_e=self.full_well_e, offset_rms_adu=self.offset_rms_adu,
                           gain_rms=self.gain_rms, read_noise_spread=self.read_noise_spread,
                           map_seed=self.seed)

    def metadata(self) -> dict:
        """The optics and camera in a flat mapping of named, unit-suffixed values (for OME)."""
        return {"pixel_size_um": self.pixel_size_um, "magnification": self.magnification, "na": self.na,
                "immersion_index": self.immersion_index, "emission_nm": self.emission_nm,
                "excitation_nm": self.excitation_nm, "psf_model": self.psf_model,
                "pinhole_au": self.pinhole_au, "sted_saturation": self.sted_saturation,
                "qe": self.qe, "e_per_adu": self.e_per_adu, "read_noise_e": self.read_noise_e,
                "baseline_adu": self.baseline_adu, "em_gain": self.em_gain, "specimen": self.specimen}


class VirtualScene:
    """The specimen seen through the rig's optics and camera.

    Coordinates: the stage position (x_um, y_um) is the centre of the field of view; x runs
    along columns, y along rows; z_um is the focal plane's height above the coverslip (z = 0),
    so a flat specimen's defocus. A 3-D specimen (``specimen_depth_um`` > 0) is cut into z-slabs
    of ``slab_um``; each slab is blurred with the PSF at its own defocus (z_um minus the slab's
    centre) and the slabs summed (in Fourier space: one inverse FFT per frame).
    """

    TILE_PX = 512
    OTF_CACHE = 16  # (defocus, sub-pixel offset) pairs kept; a 2048 px frame's OTF is ~20 MB
    # ... or more, so that every z-slab of one frame stays cached (a 3-D specimen's frame needs
    # one OTF per slab)

    def __init__(self, config: VirtualRigConfig) -> None:
        self.config = config
        self.optics = config.optics
        self.camera = config.camera
        self.pixel_size_um = config.pixel_size_um
        self.specimen = make_specimen(config.specimen, config.field_um, config.seed, config.kinetics,
                                      config.specimen_depth_um)
        self._slabs = _slabs(config.specimen_depth_um, config.slab_um)
        self.dynamic = getattr(self.specimen, "dynamic", False)
        self.last_emitters: EmitterTable | None = None
        # A molecule's id is simulator knowledge, not a localisation's: it stays beside the table
        # (whose records are the wire's, and whose CSV "id" is a row number).
        self.last_emitter_ids: np.ndarray | None = None
        self._optics = {config.modality: self.optics}
        # The field raster: whole pixels, centred on the origin.
        self._field_px = math.ceil(config.field_um / self.pixel_size_um)
        self._origin_um = -self._field_px * self.pixel_size_um / 2  # corner of field pixel (0, 0)
        peak = self.specimen.in_focus_peak(self._effective_sigma_um(), self.pixel_size_um)
        self._photons_per_ms_per_unit = config.signal_photons_per_ms / peak
        self._tiles: dict[tuple[int, int, int], np.ndarray] = {}
        self._otfs: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._last: tuple[tuple, np.ndarray] | None = None
        self._lock = threading.Lock()
        self._spots = SpotImager(self.pixel_size_um)

    # -- public -----------------------------------------------------------------------------------

    def expected_photons(self, x_um: float, y_um: float, z_um: float, exposure_ms: float,
                         shape: tuple[int, int] | None = None, modality: Modality | None = None) -> np.ndarray:
        """Noise-free photons arriving at each pixel during the exposure, background included.

        float32 of ``shape`` (default: the sensor), read-only (it is cached). ``modality``
        defaults to the rig's. For a dynamic specimen (smlm) every call is a new frame.
        """
        h, w = shape or self.config.sensor_shape_px
        modality = modality or self.config.modality
        key = (float(x_um), float(y_um), float(z_um), float(exposure_ms), h, w, modality)
        last = self._last
        if not self.dynamic and last is not None and last[0] == key:
            return last[1]
        optics = self.optics_for(modality)
        p = self.pixel_size_um
        # Field-raster coordinates (pixel centres at integers) of the frame's pixel (0, 0).
        col = (x_um - self._origin_um) / p - w / 2
        row = (y_um - self._origin_um) / p - h / 2
        if self.dynamic:
            self.specimen.step(exposure_ms)
            self._keep_emitters(row, col, h, w, z_um)
            photons = self._molecules(row, col, h, w, z_um, optics)
        else:
            photons = self._blurred(row, col, h, w, z_um, optics)
        if self.dynamic:  # the molecules' photons are per frame already
            photons += np.float32(self.config.background_photons_per_ms * exposure_ms)
        else:
            photons += np.float32(self.config.background_photons_per_ms)
            photons *= np.float32(exposure_ms)
        np.maximum(photons, 0.0, out=photons)  # FFT round-off can dip below zero
        photons = np.ascontiguousarray(photons)
        photons.flags.writeable = False
        self._last = (key, photons)
        return photons

    def _blurred(self, row: float, col: float, h: int, w: int, z_um: float, optics: Optics) -> np.ndarray:
        """The static specimen's raster around the frame whose pixel (0, 0) sits at field-raster
        coordinates (row, col), blurred slab by slab; float32 (h, w), a view."""
        p = self.pixel_size_um
        c0, r0 = math.floor(col), math.floor(row)
        defocus = [z_um - centre for centre, _ in self._slabs]
        margin = max(optics.support_px(p, dz) for dz in defocus) + 1  # light from outside spills in
        fft_shape = (fast_fft_len(h + 2 * margin), fast_fft_len(w + 2 * margin))
        spectrum = None
        for slab, dz in enumerate(defocus):
            emission = self._emission(r0 - margin, c0 - margin, fft_shape, slab)
            if emission is None:
                continue
            # Sampling the image (row - r0, col - c0) px further on = a PSF centred that much nearer.
            term = sfft.rfft2(emission, workers=_WORKERS)
            term *= self._otf(optics, fft_shape, dz, (r0 - row, c0 - col))
            spectrum = term if spectrum is None else spectrum + term
        if spectrum is None:
            image = np.zeros(fft_shape, np.float32)
        else:
            image = sfft.irfft2(spectrum, s=fft_shape, workers=_WORKERS).astype(np.float32, copy=False)
        return image[margin:margin + h, margin:margin + w]

    def _molecules(self, row: float, col: float, h: int, w: int, z_um: float, optics: Optics) -> np.ndarray:
        """The active molecules' photons in the frame whose pixel (0, 0) sits at field-raster
        coordinates (row, col): each the PSF at its position and its z-slab's defocus (as the
        raster's slabs are blurred), molecules just outside the frame included."""
        image = np.zeros((h, w), np.float32)
        molecules = self.specimen
        on = molecules.active()
        z, photons = molecules.z_um[on], molecules.photons[on]
        # Frame pixel coordinates, centres at integers: a molecule at the frame's corner is at -0.5.
        r = (molecules.y_um[on] - self._origin_um) / self.pixel_size_um - row - 0.5
        c = (molecules.x_um[on] - self._origin_um) / self.pixel_size_um - col - 0.5
        for centre, z_range in self._slabs:
            dz = z_um - centre
            reach = self._spots.support_px(optics, dz) + 1
            near = (r > -reach) & (r < h + reach) & (c > -reach) & (c < w + reach)
            if z_range is not None:
                near &= (z >= z_range[0]) & (z < z_range[1])
            if near.any():
                self._spots.add(image, r[near], c[near], photons[near], optics, dz)
        return image

    def snap(self, x_um: float, y_um: float, z_um: float, exposure_ms: float,
             rng: np.random.Generator, modality: Modality | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(noisy frame as uint16 ADU, noise-free frame as float32 ADU), baseline included."""
        photons = self.expected_photons(x_um, y_um, z_um, exposure_ms, modality=modality)
        return read_out(photons, rng, self.camera), expected_adu(photons, self.camera)

    def optics_for(self, modality: Modality) -> Optics:
        optics = self._optics.get(modality)
        if optics is None:
            optics = self._optics[modality] = self.config.optics_for(modality)
        return optics

    def _effective_sigma_um(self) -> float:
        """The Gaussian sigma whose in-focus centre pixel holds what the widefield PSF's does
        (so a signal level means the same peak photons whatever the PSF model)."""
        optics = self.config.optics_for("widefield")
        if optics.psf_model == "gaussian":
            return optics.sigma0_um
        p = self.pixel_size_um
        k = 2 * optics.support_px(p, 0.0) + 1
        centre = float(optics.psf((k, k), p, 0.0)[k // 2, k // 2])
        return p / (2 * math.sqrt(2) * float(erfinv(math.sqrt(min(centre, 0.999999)))))

    def _keep_emitters(self, row: float, col: float, h: int, w: int, z_um: float) -> None:
        """Keep the active molecules inside the frame (whose pixel (0, 0) sits at field-raster
        coordinates (row, col); focal plane at ``z_um``) as ``last_emitters``, numbered as the
        specimen's frame, and their ids as ``last_emitter_ids``."""
        p = self.pixel_size_um
        x0, y0 = self._origin_um + col * p, self._origin_um + row * p  # the frame's top-left corner
        molecules = self.specimen
        on = molecules.active()
        x, y = molecules.x_um[on], molecules.y_um[on]
        on = on[(x >= x0) & (x < x0 + w * p) & (y >= y0) & (y < y0 + h * p)]
        # The simulator works in sample coordinates (µm, float64, which its pixels depend on); the
        # truth is converted here, at its edge, to the emitter table's frame coordinates in nm.
        self.last_emitters = EmitterTable.from_columns(
            frame=np.full(on.size, molecules.frame), x_nm=(molecules.x_um[on] - x0) * 1e3,
            y_nm=(molecules.y_um[on] - y0) * 1e3, z_nm=(molecules.z_um[on] - z_um) * 1e3,
            photons=molecules.photons[on])
        self.last_emitter_ids = on

    # -- caches -----------------------------------------------------------------------------------

    def _emission(self, row: int, col: int, shape: tuple[int, int], slab: int = 0) -> np.ndarray | None:
        """Emitted photons/ms per pixel of the field raster window at (row, col), from the
        fluorophores in z-slab ``slab``; None where there are none."""
        h, w = shape
        out = np.zeros(shape, np.float32)
        t = self.TILE_PX
        found = False
        for ty in range(row // t, (row + h - 1) // t + 1):
            for tx in range(col // t, (col + w - 1) // t + 1):
                tile = self._tile(ty, tx, slab)
                if tile is None:
                    continue
                found = True
                r_a, r_b = max(row, ty * t), min(row + h, (ty + 1) * t)
                c_a, c_b = max(col, tx * t), min(col + w, (tx + 1) * t)
                out[r_a - row:r_b - row, c_a - col:c_b - col] = tile[r_a - ty * t:r_b - ty * t,
                                                                     c_a - tx * t:c_b - tx * t]
        return out if found else None

    def _tile(self, ty: int, tx: int, slab: int) -> np.ndarray | None:
        """A rendered tile of the field raster (one z-slab), or None where it holds nothing."""
        n_tiles = math.ceil(self._field_px / self.TILE_PX)
        if not (0 <= ty < n_tiles and 0 <= tx < n_tiles):
            return None
        key = (slab, ty, tx)
        if key not in self._tiles:
            t, p = self.TILE_PX, self.pixel_size_um
            tile = self.specimen.render(self._origin_um + tx * t * p, self._origin_um + ty * t * p, (t, t), p,
                                        self._slabs[slab][1])
            tile *= np.float32(self._photons_per_ms_per_unit)
            with self._lock:
                self._tiles.setdefault(key, tile if tile.any() else None)
        return self._tiles[key]

    def _otf(self, optics: Optics, shape: tuple[int, int], z_um: float,
             offset_px: tuple[float, float]) -> np.ndarray:
        key = (optics.modality, shape, round(float(z_um), 6), round(offset_px[0], 4), round(offset_px[1], 4))
        with self._lock:
            if key in self._otfs:
                self._otfs.move_to_end(key)
                return self._otfs[key]
        transfer = otf(optics.psf(shape, self.pixel_size_um, z_um, offset_px)).astype(np.complex64)
        with self._lock:
            self._otfs[key] = transfer
            while len(self._otfs) > max(self.OTF_CACHE, 2 * len(self._slabs)):
                self._otfs.popitem(last=False)
        return transfer

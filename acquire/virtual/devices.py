"""The virtual microscope's Micro-Manager devices, as pymmcore-plus Python devices (UniMMCore).

The camera renders `VirtualScene` at wherever the XY and Z stages are; it holds the stage and
shutter devices themselves because a Python device's core proxy exposes only signals. A closed
shutter means no light reaches the sample: the frame is baseline plus read noise.

Noise is drawn from a generator seeded by (rig seed, frame number), so a run is reproducible:
the n-th frame of two cameras built from the same config is the same frame.

The light path (state device, switched by the `Modality` config group) selects the PSF:
widefield, confocal or STED. The sample drifts between successive frames by the rig's
``drift_um_per_frame`` plus a seeded random walk of ``drift_jitter_um``; the camera keeps the
drift of its last frame (``last_drift_um``), the ground truth for registration. The camera's
`Specimen` property swaps the specimen (filaments, cells, beads, smlm).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from pymmcore_plus import FocusDirection, Keyword
from pymmcore_plus.experimental.unicore import (
    ShutterDevice,
    SimpleCameraDevice,
    StageDevice,
    StateDevice,
    XYStageDevice,
    pymm_property,
)

from livescope.emitters import EmitterTable

from .camera import CameraModel, expected_adu, read_out
from .scene import VirtualScene

_NOISE_STREAM = 0xca3  # keeps the camera's random stream apart from the specimen's

MODALITIES = ("Widefield", "Confocal", "STED")
"""Light paths the virtual rig has (the presets of the `Modality` config group)."""

SPECIMENS = ("filaments", "cells", "beads", "smlm")
_DRIFT_STREAM = 0xd71f7
_OPTICS_MODALITY = {"Widefield": "widefield", "Confocal": "confocal", "STED": "sted"}


@dataclass(frozen=True)
class FrameTruth:
    """What the virtual camera knows about one frame it delivered.

    ``clean_adu``: the noise-free expectation (float32 ADU, baseline included) of the frame as
    delivered (ROI applied); ``emitters``: the active molecules on the sensor (smlm, else None),
    numbered as frame ``frame_number + 1``, in the delivered frame's coordinates (so with an ROI,
    those outside it lie beyond its edges), and ``emitter_ids`` the molecules' ids, row by row; the
    stage position (µm) and defocus, the sample's drift (x, y, z, µm) and the light path.
    """

    frame_number: int
    clean_adu: np.ndarray
    emitters: EmitterTable | None
    emitter_ids: np.ndarray | None
    stage_xy_um: tuple[float, float]
    defocus_um: float
    drift_um: tuple[float, float, float]
    modality: str


class VirtualShutter(ShutterDevice):
    """The illumination shutter."""

    def __init__(self) -> None:
        super().__init__()
        self._open = False

    def get_open(self) -> bool:
        return self._open

    def set_open(self, open: bool) -> None:
        self._open = bool(open)


class VirtualFocusStage(StageDevice):
    """The focus drive. The specimen lies at z = 0 µm in stage coordinates (until `set_origin`),
    so the position there is the defocus."""

    def __init__(self) -> None:
        super().__init__()
        self._z_um = 0.0  # where the focal plane is, relative to the specimen
        self._origin_um = 0.0  # reported position = _z_um - _origin_um

    @property
    def defocus_um(self) -> float:
        return self._z_um

    def get_position_um(self) -> float:
        return self._z_um - self._origin_um

    def set_position_um(self, val: float) -> None:
        self._z_um = float(val) + self._origin_um
        self.core.events.stagePositionChanged.emit(self.get_label(), float(val))

    def get_focus_direction(self) -> FocusDirection:
        return FocusDirection.TowardSample  # + moves the focal plane up, into the sample

    def set_origin(self) -> None:
        self._origin_um = self._z_um

    def home(self) -> None:
        self.set_position_um(-self._origin_um)

    def stop(self) -> None:
        """Moves are instantaneous: nothing to stop."""


class VirtualXYStage(XYStageDevice):
    """The XY stage: its position is the sample point at the centre of the field of view.

    `TravelRange-um` (0: unlimited) limits it to |x|, |y| <= that many µm in sample coordinates,
    as a real stage's travel is limited: a move beyond raises, and the stage stays put."""

    def __init__(self) -> None:
        super().__init__()
        self._xy_um = (0.0, 0.0)  # in sample coordinates
        self._origin_um = (0.0, 0.0)  # reported position = _xy_um - _origin_um
        self._travel_um = 0.0

    @pymm_property(name="TravelRange-um", limits=(0.0, 1e6), property_type=float)
    def travel_range_um(self) -> float:
        return self._travel_um

    @travel_range_um.setter
    def travel_range_um(self, value: float) -> None:
        self._travel_um = float(value)

    @property
    def sample_position_um(self) -> tuple[float, float]:
        return self._xy_um

    def get_position_um(self) -> tuple[float, float]:
        return (self._xy_um[0] - self._origin_um[0], self._xy_um[1] - self._origin_um[1])

    def set_position_um(self, x: float, y: float) -> None:
        target = (float(x) + self._origin_um[0], float(y) + self._origin_um[1])
        if self._travel_um and max(map(abs, target)) > self._travel_um:
            raise ValueError(f"({x:g}, {y:g}) µm is beyond the stage's travel (±{self._travel_um:g} µm)")
        self._xy_um = target
        self.core.events.XYStagePositionChanged.emit(self.get_label(), float(x), float(y))

    def set_origin_x(self) -> None:
        self._origin_um = (self._xy_um[0], self._origin_um[1])

    def set_origin_y(self) -> None:
        self._origin_um = (self._origin_um[0], self._xy_um[1])

    def home(self) -> None:
        self.set_position_um(-self._origin_um[0], -self._origin_um[1])

    def stop(self) -> None:
        """Moves are instantaneous: nothing to stop."""


class VirtualLightPath(StateDevice):
    """Selects the imaging modality; the `Modality` config group switches it. Its read-only
    properties record the optics (they travel with the rig's property state in metadata)."""

    def __init__(self, scene: VirtualScene, modality: str = "widefield") -> None:
        super().__init__(dict(enumerate(MODALITIES)))
        self._rig = scene.config
        self._state = [_OPTICS_MODALITY[m] for m in MODALITIES].index(modality)

    def get_state(self) -> int:
        return self._state

    def set_state(self, position: int) -> None:
        self._state = int(position)

    @property
    def modality(self) -> str:
        """The optics' name of the selected light path: widefield, confocal or sted."""
        return _OPTICS_MODALITY[MODALITIES[self._state]]

    @pymm_property(name="NumericalAperture", is_read_only=True, property_type=float)
    def numerical_aperture(self) -> float:
        return self._rig.na

    @pymm_property(name="ImmersionIndex", is_read_only=True, property_type=float)
    def immersion_index(self) -> float:
        return self._rig.immersion_index

    @pymm_property(name="Emission-nm", is_read_only=True, property_type=float)
    def emission_nm(self) -> float:
        return self._rig.emission_nm

    @pymm_property(name="Excitation-nm", is_read_only=True, property_type=float)
    def excitation_nm(self) -> float:
        return self._rig.excitation_nm

    @pymm_property(name="Pinhole-AU", is_read_only=True, property_type=float)
    def pinhole_au(self) -> float:
        return self._rig.pinhole_au

    @pymm_property(name="STED-SaturationFactor", is_read_only=True, property_type=float)
    def sted_saturation(self) -> float:
        return self._rig.sted_saturation


BINNINGS = (1, 2, 4)


class VirtualCamera(SimpleCameraDevice):
    """A scientific camera looking at the virtual scene.

    `snap` takes at least the exposure time, like a real camera, so a live loop runs at the
    camera's frame rate rather than as fast as the CPU renders. `last_ground_truth` is the
    noise-free expectation (float32 ADU, baseline included, full sensor) of the last frame;
    ``last_emitters`` the active molecules of the last frame (smlm specimen, else None; an
    `EmitterTable` in the sensor's coordinates, and ``last_emitter_ids`` their ids);
    ``last_drift_um`` the sample's drift (x, y, z) at the last frame.

    An MDA delivers frames to its outputs after the camera has moved on, so "the last frame"
    may not be the one an output is handling: `truth_of(img)` finds the `FrameTruth` of any of
    the recent frames from its pixels.
    """

    TRUTH_MEMORY_BYTES = 256 * 2**20  # clean frames kept for `truth_of`

    def __init__(self, scene: VirtualScene, *, xy: VirtualXYStage, focus: VirtualFocusStage,
                 shutter: VirtualShutter, light_path: VirtualLightPath | None = None) -> None:
        super().__init__()
        self._scene = scene
        self._xy, self._focus, self._shutter, self._light_path = xy, focus, shutter, light_path
        self._camera: CameraModel = scene.camera
        self._exposure_ms = scene.config.exposure_ms
        self._frame = 0
        self._drift = np.zeros(3)
        self._drift_rng = np.random.default_rng([scene.config.seed, _DRIFT_STREAM])
        self.last_ground_truth: np.ndarray | None = None
        self.last_emitters: EmitterTable | None = None
        self.last_emitter_ids: np.ndarray | None = None
        self.last_drift_um: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self._truths: OrderedDict[bytes, FrameTruth] = OrderedDict()
        self._binning = 1
        self.set_property_limits(Keyword.Exposure, (0.001, 60_000.0))
        # As strings: pymmcore-plus compares allowed values before converting the type, and
        # Micro-Manager passes property values as strings.
        self.set_property_allowed_values(Keyword.Binning, [str(b) for b in BINNINGS])

    def truth_of(self, frame: np.ndarray) -> FrameTruth | None:
        """The ground truth of a recent frame (as delivered, ROI applied), or None if it is
        not one of them."""
        return self._truths.get(_digest(frame))

    def sensor_shape(self) -> tuple[int, int]:
        h, w = self._scene.config.sensor_shape_px
        return h // self._binning, w // self._binning

    def get_binning(self) -> int:
        return self._binning

    def set_binning(self, value: int) -> None:
        """Charge binning: b x b pixels read out as one, with one read noise (the ROI resets)."""
        value = int(value)
        if value not in BINNINGS:
            raise ValueError(f"binning must be one of {BINNINGS}, got {value}")
        self._binning = value
        self.clear_roi()

    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16)

    def get_exposure(self) -> float:
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        if not exposure > 0:
            raise ValueError(f"exposure must be positive, got {exposure} ms")
        self._exposure_ms = float(exposure)

    def _remember(self, buffer: np.ndarray, stage_xy_um: tuple[float, float]) -> None:
        x, y, w, h = self.get_roi()
        window = (slice(y, y + h), slice(x, x + w))
        emitters = self.last_emitters
        if emitters is not None and (x or y):  # the ROI's corner is the delivered frame's origin
            pixel_nm = self._scene.pixel_size_um * self._binning * 1e3
            emitters = _moved_origin(emitters, x * pixel_nm, y * pixel_nm)
        truth = FrameTruth(self._frame, self.last_ground_truth[window], emitters, self.last_emitter_ids,
                           stage_xy_um, self._focus.defocus_um, self.last_drift_um,
                           self._light_path.modality if self._light_path is not None else "widefield")
        self._truths[_digest(buffer[window])] = truth
        keep = max(4, self.TRUTH_MEMORY_BYTES // max(self.last_ground_truth.nbytes, 1))
        while len(self._truths) > keep:
            self._truths.popitem(last=False)

    @property
    def scene(self) -> VirtualScene:
        """What the camera looks at (replaced when the `Specimen` property changes)."""
        return self._scene

    @pymm_property(name="Specimen", allowed_values=SPECIMENS, property_type=str)
    def specimen(self) -> str:
        """The specimen on the stage: filaments, cells, beads or smlm (single molecules)."""
        return self._scene.config.specimen

    @specimen.setter
    def specimen(self, value: str) -> None:
        if value != self._scene.config.specimen:
            self._scene = VirtualScene(self._scene.config.model_copy(update={"specimen": value}))

    @pymm_property(name="BitDepth", limits=(8, 16), property_type=int)
    def bit_depth(self) -> int:
        """ADC bits: frames stay uint16, clipped at 2^bits - 1."""
        return self._camera.bit_depth

    @bit_depth.setter
    def bit_depth(self, value: int) -> None:
        self._camera = self._camera.model_copy(update={"bit_depth": int(value)})

    def snap(self, buffer: np.ndarray) -> Mapping:
        started = time.perf_counter()
        exposure_ms = self._exposure_ms
        rng = np.random.default_rng([self._scene.config.seed, _NOISE_STREAM, self._frame])
        if self._frame:
            self._drift += self._scene.config.drift_um_per_frame
            if self._scene.config.drift_jitter_um:
                self._drift += self._drift_rng.normal(0.0, self._scene.config.drift_jitter_um, 3)
        # The sample moved by the drift: the field of view sits that much the other way on it.
        dx, dy, dz = self._drift
        self.last_drift_um = (float(dx), float(dy), float(dz))
        x_um, y_um = self._xy.sample_position_um
        if self._shutter.get_open():
            modality = self._light_path.modality if self._light_path is not None else None
            photons = self._scene.expected_photons(x_um - dx, y_um - dy, self._focus.defocus_um - dz,
                                                   exposure_ms, modality=modality)
            emitters = self._scene.last_emitters
            self.last_emitters = None if emitters is None else emitters.with_frame(self._frame + 1)
            self.last_emitter_ids = self._scene.last_emitter_ids
        else:
            photons = np.zeros(self._scene.config.sensor_shape_px, np.float32)
            self.last_emitters = self.last_emitter_ids = None
        photons = _bin(photons, self._binning)
        buffer[...] = read_out(photons, rng, self._camera)
        self.last_ground_truth = expected_adu(photons, self._camera)
        self._remember(buffer, (x_um, y_um) if self._shutter.get_open() else self._xy.sample_position_um)
        self._frame += 1
        time.sleep(max(0.0, exposure_ms / 1000 - (time.perf_counter() - started)))
        return {}


def _bin(photons: np.ndarray, b: int) -> np.ndarray:
    """Sum b x b blocks (charge binning); a remainder at the edges is cut off, as on a sensor."""
    if b == 1:
        return photons
    h, w = photons.shape[0] // b * b, photons.shape[1] // b * b
    return photons[:h, :w].reshape(h // b, b, w // b, b).sum(axis=(1, 3))


def _moved_origin(table: EmitterTable, x_nm: float, y_nm: float) -> EmitterTable:
    """``table`` in coordinates whose origin is its point (x_nm, y_nm)."""
    rows = table.rows.copy()
    rows["x_nm"] -= x_nm
    rows["y_nm"] -= y_nm
    return EmitterTable(rows)


def _digest(frame: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(frame).data, digest_size=16).digest()

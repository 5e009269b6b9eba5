"""The virtual microscope's Micro-Manager devices, as pymmcore-plus Python devices (UniMMCore).

The camera renders `VirtualScene` at wherever the XY and Z stages are; it holds the stage and
shutter devices themselves because a Python device's core proxy exposes only signals. A closed
shutter means no light reaches the sample: the frame is baseline plus read noise.

Noise is drawn from a generator seeded by (rig seed, frame number), so a run is reproducible:
the n-th frame of two cameras built from the same config is the same frame.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

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

from .camera import CameraModel, expected_adu, read_out
from .scene import VirtualScene

_NOISE_STREAM = 0xca3  # keeps the camera's random stream apart from the specimen's

MODALITIES = ("Widefield",)
"""Light paths the virtual rig has; the camera renders widefield (confocal and STED come later)."""


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
    """The XY stage: its position is the sample point at the centre of the field of view."""

    def __init__(self) -> None:
        super().__init__()
        self._xy_um = (0.0, 0.0)  # in sample coordinates
        self._origin_um = (0.0, 0.0)  # reported position = _xy_um - _origin_um

    @property
    def sample_position_um(self) -> tuple[float, float]:
        return self._xy_um

    def get_position_um(self) -> tuple[float, float]:
        return (self._xy_um[0] - self._origin_um[0], self._xy_um[1] - self._origin_um[1])

    def set_position_um(self, x: float, y: float) -> None:
        self._xy_um = (float(x) + self._origin_um[0], float(y) + self._origin_um[1])
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
    """Selects the imaging modality; the `Modality` config group switches it."""

    def __init__(self) -> None:
        super().__init__(dict(enumerate(MODALITIES)))
        self._state = 0

    def get_state(self) -> int:
        return self._state

    def set_state(self, position: int) -> None:
        self._state = int(position)


class VirtualCamera(SimpleCameraDevice):
    """A scientific camera looking at the virtual scene.

    `snap` takes at least the exposure time, like a real camera, so a live loop runs at the
    camera's frame rate rather than as fast as the CPU renders. `last_ground_truth` is the
    noise-free expectation (float32 ADU, baseline included, full sensor) of the last frame.
    """

    def __init__(self, scene: VirtualScene, *, xy: VirtualXYStage, focus: VirtualFocusStage,
                 shutter: VirtualShutter) -> None:
        super().__init__()
        self._scene = scene
        self._xy, self._focus, self._shutter = xy, focus, shutter
        self._camera: CameraModel = scene.camera
        self._exposure_ms = scene.config.exposure_ms
        self._frame = 0
        self.last_ground_truth: np.ndarray | None = None
        self.set_property_limits(Keyword.Exposure, (0.001, 60_000.0))

    def sensor_shape(self) -> tuple[int, int]:
        return self._scene.config.sensor_shape_px

    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16)

    def get_exposure(self) -> float:
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        if not exposure > 0:
            raise ValueError(f"exposure must be positive, got {exposure} ms")
        self._exposure_ms = float(exposure)

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
        if self._shutter.get_open():
            x_um, y_um = self._xy.sample_position_um
            photons = self._scene.expected_photons(x_um, y_um, self._focus.defocus_um, exposure_ms)
        else:
            photons = np.zeros(self.sensor_shape(), np.float32)
        buffer[...] = read_out(photons, rng, self._camera)
        self.last_ground_truth = expected_adu(photons, self._camera)
        self._frame += 1
        time.sleep(max(0.0, exposure_ms / 1000 - (time.perf_counter() - started)))
        return {}

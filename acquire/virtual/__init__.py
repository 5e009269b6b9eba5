"""The virtual microscope: physics (specimen, optics, camera) and its Micro-Manager devices.

`VirtualScene` renders frames from a `VirtualRigConfig` with numpy/scipy only; the devices in
`livescope.acquire.virtual.devices` (which need pymmcore-plus) put it behind a Micro-Manager
core, see `livescope.acquire.microscope.open_microscope`.
"""

from .optics import Optics
from .scene import VirtualRigConfig, VirtualScene
from .specimen import EmitterKinetics

__all__ = ["EmitterKinetics", "Optics", "VirtualRigConfig", "VirtualScene"]

"""The virtual microscope: physics (specimen, optics, camera) and its Micro-Manager devices.

`VirtualScene` renders frames from a `VirtualRigConfig` with numpy only; the devices in
`livescope.acquire.virtual.devices` (which need pymmcore-plus) put it behind a Micro-Manager
core, see `livescope.acquire.microscope.open_microscope`.
"""

from .scene import VirtualRigConfig, VirtualScene

__all__ = ["VirtualRigConfig", "VirtualScene"]

"""Opening the microscope: a real rig from its Micro-Manager config, or the virtual microscope.

Both are pymmcore-plus cores, driven the same way (useq sequences through ``core.mda``). The
virtual one is a `UniMMCore` whose devices are Python objects rendering `VirtualScene`.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pymmcore
from pymmcore_plus import CMMCorePlus, find_micromanager
from pymmcore_plus.experimental.unicore import UniMMCore

from .virtual.devices import (
    MODALITIES,
    VirtualCamera,
    VirtualFocusStage,
    VirtualLightPath,
    VirtualShutter,
    VirtualXYStage,
)
from .virtual.scene import VirtualRigConfig, VirtualScene

CAMERA, FOCUS, XY_STAGE, SHUTTER, LIGHT_PATH = "Camera", "Z", "XY", "Shutter", "LightPath"
MODALITY_GROUP = "Modality"
MODALITY_PRESETS = {"widefield": "Widefield", "confocal": "Confocal", "sted": "STED"}
"""The `Modality` group's preset for each optics modality (``--modality`` names the keys)."""

_INSTALL_HINT = "`mmcore install` installs the Micro-Manager device adapters"


class MicroscopeError(Exception):
    """One-line, user-facing message (the CLI prints it without traceback)."""


def open_microscope(mm_config: Path | None = None, *, rig: VirtualRigConfig | None = None) -> CMMCorePlus:
    """The rig described by the Micro-Manager config ``mm_config``, or else the virtual microscope
    built from ``rig`` (default `VirtualRigConfig()`)."""
    if mm_config is not None:
        if rig is not None:
            raise ValueError("give either a Micro-Manager config or a virtual rig, not both")
        return _open_rig(Path(mm_config))
    return VirtualMicroscope(rig or VirtualRigConfig())


class VirtualMicroscope(UniMMCore):
    """The virtual microscope, ready to use: devices `Camera`, `Z`, `XY`, `Shutter` (open) and
    `LightPath`, the rig's pixel size, and the `Modality` config group (presets `Widefield`,
    `Confocal`, `STED`, each switching the PSF; the rig's ``modality`` is selected at start).

    Besides the core API it keeps what simulation-aware code may look behind: ``rig``,
    ``scene`` and ``virtual_camera`` (whose ``last_ground_truth`` is the last frame's clean
    expectation, and ``truth_of(img)`` any recent frame's `FrameTruth`). The camera's
    `Specimen` property swaps the specimen; `LightPath`'s read-only properties record the optics.

    Auto-shutter is off and the shutter is left open: UniMMCore (pymmcore-plus 0.18) does not
    open a Python shutter around a Python camera's exposures, so with auto-shutter on every
    frame would be dark. Close the shutter (``setShutterOpen(False)``) for dark frames.
    """

    def __init__(self, rig: VirtualRigConfig) -> None:
        # Pointing the adapter search at a folder without adapters skips the search for a
        # Micro-Manager installation (and its error log): Python devices need none.
        super().__init__(mm_path=str(Path(__file__).parent / "virtual"))
        scene = VirtualScene(rig)
        xy, focus, shutter = VirtualXYStage(), VirtualFocusStage(), VirtualShutter()
        self.light_path = VirtualLightPath(scene, rig.modality)
        self.virtual_camera = VirtualCamera(scene, xy=xy, focus=focus, shutter=shutter,
                                            light_path=self.light_path)
        for label, device in [(CAMERA, self.virtual_camera), (FOCUS, focus), (XY_STAGE, xy),
                              (SHUTTER, shutter), (LIGHT_PATH, self.light_path)]:
            self.loadPyDevice(label, device)
        self.initializeAllDevices()
        self.setCameraDevice(CAMERA)
        self.setFocusDevice(FOCUS)
        self.setXYStageDevice(XY_STAGE)
        self.setShutterDevice(SHUTTER)
        self.setAutoShutter(False)
        self.setShutterOpen(True)

        resolution = f"{rig.magnification:g}x"
        self.definePixelSizeConfig(resolution)
        self.setPixelSizeUm(resolution, rig.pixel_size_um)
        # Moving the stage by +x µm brings into view what was x µm to the right (+columns).
        p = rig.pixel_size_um
        self.setPixelSizeAffine(resolution, [p, 0.0, 0.0, 0.0, p, 0.0])
        self.setPixelSizeConfig(resolution)

        self.defineConfigGroup(MODALITY_GROUP)
        for modality in MODALITIES:
            self.defineConfig(MODALITY_GROUP, modality, LIGHT_PATH, "Label", modality)
        self.setConfig(MODALITY_GROUP, MODALITY_PRESETS[rig.modality])
        # Python devices' properties reach the cache (and so the metadata that pymmcore-plus
        # writes with the data: the optics, read-only on `LightPath`) only on an update.
        self.updateSystemStateCache()


    @property
    def scene(self) -> VirtualScene:
        """The physics the camera renders (a new one after the camera's `Specimen` changes)."""
        return self.virtual_camera.scene

    @property
    def rig(self) -> VirtualRigConfig:
        """The virtual rig's parameters (the current specimen's)."""
        return self.virtual_camera.scene.config


def _open_rig(path: Path) -> CMMCorePlus:
    if not path.is_file():
        raise MicroscopeError(f"Micro-Manager config not found: {path}")
    with _quiet_discovery():
        mm_path = find_micromanager()
        core = CMMCorePlus(mm_path=mm_path)
    try:
        core.loadSystemConfiguration(str(path))
    except Exception as err:  # pymmcore raises OSError / RuntimeError with MMCore's text
        reason = _one_line(str(err)) or type(err).__name__
    else:
        _unload_at_exit(core)
        return core
    _release(core)
    del core  # not kept alive by this error's traceback
    hint = (f"no Micro-Manager installation was found; {_INSTALL_HINT}" if mm_path is None
            else f"is the device adapter installed? {_INSTALL_HINT}")
    raise MicroscopeError(f"cannot load Micro-Manager config {path}: {reason} ({hint})")


def _one_line(text: str, limit: int = 400) -> str:
    """MMCore's multi-line error text as one line, cut to ``limit`` characters."""
    line = "; ".join(" ".join(part.split()) for part in text.splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


@contextmanager
def _quiet_discovery() -> Iterator[None]:
    """Silence pymmcore-plus' log while looking for Micro-Manager: a missing installation is
    reported by our own error, in one line, if loading the config then fails."""
    log = logging.getLogger("pymmcore-plus")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _unload_at_exit(core: CMMCorePlus) -> None:
    ref = weakref.ref(core)

    def release() -> None:
        if (alive := ref()) is not None:
            _release(alive)

    atexit.register(release)


def _release(core: CMMCorePlus) -> None:
    """Unload the rig's devices (closing their ports) and detach pymmcore-plus' callback relay,
    as ``CMMCorePlus.__del__`` does. A core left loaded until interpreter exit otherwise makes
    MMCore call back into a half-finalised Python, which aborts the process (pymmcore 11.x)."""
    try:
        core.unloadAllDevices()
    finally:
        pymmcore.CMMCore.registerCallback(core, None)

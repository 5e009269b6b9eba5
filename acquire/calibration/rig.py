"""The virtual microscope a calibration session runs on: its defaults per kind of session, and
on resuming the session's own rig, which options given again must not change.

``given``: the virtual microscope options given on the command line (None ones left out), by
`VirtualRigConfig` field, except ``size`` (a square camera, px).
"""

from __future__ import annotations

from typing import Any

from livescope.acquire.virtual import VirtualRigConfig
from livescope.session import SessionError, SessionKind

# Flat specimens image pairs; stacks need depth (as the refocus training data's virtual stacks:
# 4 µm deep, focused mid-specimen). kind -> (specimen, depth µm)
VIRTUAL_DEFAULTS: dict[str, tuple[str, float]] = {"pairs": ("filaments", 0.0), "zstack": ("filaments", 4.0),
                                                  "beads": ("beads", 4.0)}
DEFAULT_SIZE_PX = 512


def virtual_rig(kind: SessionKind, given: dict[str, Any]) -> VirtualRigConfig:
    """A new session's virtual microscope: the options given, the kind's defaults for the rest."""
    specimen, depth = VIRTUAL_DEFAULTS[kind]
    size = given.get("size", DEFAULT_SIZE_PX)
    return VirtualRigConfig(
        sensor_shape_px=(size, size), specimen=given.get("specimen", specimen),
        specimen_depth_um=given.get("specimen_depth_um", depth),
        signal_photons_per_ms=given.get("signal_photons_per_ms", 10.0), seed=given.get("seed", 0))


def resumed_virtual_rig(saved: dict[str, Any], given: dict[str, Any], where: str) -> VirtualRigConfig:
    """The virtual microscope a session was acquired on (``saved``: its manifest's record);
    SessionError if an option given would change it (the rest of the session would not match)."""
    rig = VirtualRigConfig.model_validate(saved)
    update = {k: v for k, v in given.items() if k != "size"}
    if (size := given.get("size")) is not None:
        update["sensor_shape_px"] = (size, size)
    wanted = rig.model_copy(update=update)
    differ = [k for k in type(rig).model_fields if getattr(wanted, k) != getattr(rig, k)]
    if differ:
        raise SessionError(f"cannot resume {where}: its virtual microscope had {differ[0]} "
                           f"{getattr(rig, differ[0])!r}; leave the virtual microscope options out")
    return rig

"""The user's own z-stacks as refocusing training data: files (TIFF / OME-TIFF / OME-Zarr via
`livescope.stackio`) and calibration zstack sessions, read into `ZStack`s (`models.refocus.data`)
with every problem a `RefocusDataError` whose one-line message says what to do. Their planes'
lateral drift is measured and removed by `models.refocus.registration`."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from livescope.models.refocus.data import MIN_PLANES, UINT16_MAX, RefocusDataError, ZStack
from livescope.session import SessionError, is_session, load_session
from livescope.stackio import StackError, StackInfo, read_stack

MIN_GREY_LEVELS = 4


def read_stacks(paths: Sequence[str | os.PathLike], z_step_um: float | None = None) -> list[ZStack]:
    """Read z-stacks: each file holds one (Z, Y, X) or several (P, Z, Y, X: positions, or time
    points of one position) stacks; a multi-series OME-TIFF holds one per series (position).

    Plane spacing: ``z_step_um`` if given (it overrides the file), else the file's (OME
    PhysicalSizeZ, ImageJ spacing, OME-Zarr z scale). The z axis is the one named Z; the one
    leading axis of a 3-D stack is taken as Z whatever its name (z-stacks are often saved as
    time series), and a 4-D one without a Z as P, Z, Y, X. Planes are assumed in
    increasing focus order. Every problem is a `RefocusDataError` with a one-line message.
    """
    if not paths:
        raise RefocusDataError("no z-stacks given: give one or more --data STACK")
    if z_step_um is not None and not (math.isfinite(z_step_um) and z_step_um > 0):
        raise RefocusDataError(f"z step {z_step_um} µm must be a positive number of micrometres")
    stacks: list[ZStack] = []
    for path in paths:
        if is_session(path):
            stacks += _session_stacks(Path(path))
            continue
        try:
            stack = read_stack(path)
        except StackError as e:
            raise RefocusDataError(str(e)) from None
        info = stack.info
        arrays = [stack.frames.reshape(info.shape)] + _more_series(Path(path), info)
        step = z_step_um if z_step_um is not None else info.z_step_um
        step_note = "given" if z_step_um is not None else "from metadata"
        for series, data in enumerate(arrays):
            volumes, lead = _z_volumes(Path(path), data, info.axes)
            counts = [_as_counts(Path(path), volume) for volume in volumes]
            if step is None:
                raise RefocusDataError(
                    f"{path}: no z spacing in its metadata (OME PhysicalSizeZ); give the plane "
                    "spacing with --z-step MICRONS")
            for index, planes in enumerate(counts):
                where = (f" series {series}" if len(arrays) > 1 else "") + (
                    f" {lead} {index}" if len(volumes) > 1 else "")
                # Time points of one position image one field; positions (or series) do not.
                field_id = f"{path} series {series}" if lead == "T" else None
                stacks.append(ZStack(
                    planes, None, step * np.arange(planes.shape[0], dtype=np.float64), info.pixel_size_um,
                    f"{path}{where}: {planes.shape[0]} planes of {planes.shape[1]}x{planes.shape[2]} px, "
                    f"{step:g} um apart ({step_note})", field_id))
    return stacks


def _session_stacks(path: Path) -> list[ZStack]:
    """A calibration zstack session's positions, one field each (plane spacing from its manifest)."""
    try:
        session = load_session(path)
        found = session.stacks()
    except SessionError as e:
        raise RefocusDataError(str(e)) from None
    if not found:
        raise RefocusDataError(f"{path}: the session has no completed positions yet")
    stacks = []
    for stack in found:
        z = np.asarray(stack.z_um, dtype=np.float64)
        order = np.argsort(z)  # the stage may have stepped downwards
        stacks.append(ZStack(
            stack.planes_adu[order], None, z[order], session.pixel_size_um,
            f"{path} position {stack.name}: {len(z)} planes of {stack.planes_adu.shape[1]}x"
            f"{stack.planes_adu.shape[2]} px, {np.median(np.diff(z[order])):g} um apart (session)",
            f"{session.session_id}:{stack.position}"))
    return stacks


def _more_series(path: Path, info: StackInfo) -> list[np.ndarray]:
    """A multi-series OME-TIFF's further series of the first one's layout (positions);
    `read_stack` reads the first only."""
    if info.format != "ome-tiff":
        return []
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return [s.asarray().reshape(info.shape) for s in tif.series[1:]
                if s.axes == info.axes and tuple(s.shape) == tuple(info.shape)]


def _z_volumes(path: Path, data: np.ndarray, axes: str) -> tuple[list[np.ndarray], str]:
    """(Z, Y, X) volumes of a stack, and the name of the axis across them ('' for one)."""
    colour = [a for a, n in zip(axes, data.shape) if a in "CS" and n > 1]
    if colour:
        raise RefocusDataError(f"{path}: a colour / multi-channel image (axes {axes}, shape {data.shape}); "
                               "save one grey-level channel per file")
    keep = [i for i, (a, n) in enumerate(zip(axes, data.shape)) if n > 1 or a in "ZYX"]
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if data.ndim not in (3, 4):
        raise RefocusDataError(f"{path}: shape {data.shape} (axes {axes}) is not a z-stack: give "
                               "(Z, Y, X), or (P, Z, Y, X) for several positions")
    if data.ndim == 3:
        return [data], ""
    z_axis = axes.index("Z") if "Z" in axes[:2] else 1  # unnamed: (P, Z, Y, X)
    lead = axes[1 - z_axis]
    data = np.moveaxis(data, z_axis, 1)
    return list(data), lead if lead in "PT" else "position"


def _as_counts(path: Path, planes: np.ndarray) -> np.ndarray:
    """A (Z, Y, X) volume as uint16 camera counts, or why it cannot be one."""
    if planes.shape[0] < MIN_PLANES:
        raise RefocusDataError(f"{path}: {planes.shape[0]} plane(s); refocusing needs at least "
                               f"{MIN_PLANES} planes per z-stack")
    if planes.dtype.kind == "f":
        if not np.isfinite(planes).all():
            raise RefocusDataError(f"{path}: has NaN or infinite pixels; remove them first")
        low, high = float(planes.min()), float(planes.max())
        if low < -0.5 or high >= UINT16_MAX + 0.5:
            # Clipping would change the noise the model learns from; refuse instead.
            raise RefocusDataError(f"{path}: float values from {low:g} to {high:g} are outside camera "
                                   f"counts (0..{UINT16_MAX}); give the raw stack")
        planes = np.rint(planes)
        h, w = planes.shape[1:]
        if len(np.unique(planes[:, :: max(1, h // 64), :: max(1, w // 64)])) < MIN_GREY_LEVELS:
            raise RefocusDataError(f"{path}: float values from {low:g} to {high:g} leave fewer than "
                                   f"{MIN_GREY_LEVELS} grey levels as counts (normalised to 0..1?); "
                                   "give the raw stack")
    return np.ascontiguousarray(planes, dtype=np.uint16)

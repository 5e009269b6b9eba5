"""Reading and writing image stacks for the offline commands: TIFF / OME-TIFF and OME-Zarr.

A stack is read whole as (T, H, W) frames: every axis before Y and X is flattened into the
first one, whose original axes and shape the ``StackInfo`` keeps, so the output is written
back with the same layout. Pixel values keep their dtype (uint8, uint16, float32).

- TIFF / OME-TIFF: tifffile; pixel size and z step from the OME-XML (or ImageJ) metadata.
- OME-Zarr: the layout pymmcore-plus and ome-writers write (a zarr v3 group whose ``ome``
  attributes hold the multiscales and whose ``0`` array is the full resolution); OME-Zarr
  0.4 (zarr v2) and a bare zarr array are read too. Read with tensorstore, imported only here.

Outputs are written to a hidden sibling path and renamed into place when complete, so an
error never leaves a half-written stack under the requested name; an existing output is
refused unless ``overwrite``. Every problem is a ``StackError`` with a one-line message.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

StackFormat = Literal["tiff", "ome-tiff", "ome-zarr", "zarr"]
SUPPORTED_DTYPES = ("uint8", "uint16", "float32")

_TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")
_ZARR_SUFFIXES = (".ome.zarr", ".zarr")
# length units as OME-XML and OME-Zarr name them -> micrometres
_UM_PER_UNIT = {"µm": 1.0, "um": 1.0, "micron": 1.0, "micrometer": 1.0, "micrometre": 1.0,
                "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
                "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "m": 1e6, "meter": 1e6}
# leading axes that OME writers (tifffile OME, ome-writers) understand, with their types
_OME_LEADING = {"T": "time", "C": "channel", "Z": "space"}


class StackError(Exception):
    """A stack that cannot be read or written; the message is one line, for the user."""


class StackInfo(BaseModel):
    """Where a stack came from and its layout before flattening to (T, H, W)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    format: StackFormat
    axes: str = Field(description="original axes, upper case, e.g. 'TZYX'; the last two are Y, X")
    shape: tuple[int, ...] = Field(description="original shape, one entry per axis")
    dtype: Literal["uint8", "uint16", "float32"]
    pixel_size_um: float | None = Field(default=None, gt=0, description="Y/X pixel size, µm")
    z_step_um: float | None = Field(default=None, gt=0, description="Z plane spacing, µm")

    @property
    def leading_axes(self) -> str:
        return self.axes[:-2]


@dataclass(frozen=True)
class Stack:
    frames: np.ndarray  # (T, H, W), the original dtype
    info: StackInfo

    @property
    def n_frames(self) -> int:
        return self.frames.shape[0]


def stack_format(path: Path) -> StackFormat:
    """The format a path's name asks for ('ome-tiff' for any .tif/.tiff output)."""
    name = path.name.lower()
    if name.endswith(_TIFF_SUFFIXES):
        return "ome-tiff" if ".ome.tif" in name else "tiff"
    if name.endswith(_ZARR_SUFFIXES):
        return "ome-zarr"
    raise StackError(f"{path}: unsupported format; use a .tif, .tiff, .ome.tif(f), .zarr or "
                     ".ome.zarr path")


# -- reading ------------------------------------------------------------------------------------


def read_stack(path: str | os.PathLike) -> Stack:
    path = Path(path)
    if not path.exists():
        raise StackError(f"{path}: no such file or folder")
    is_zarr = path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zattrs", ".zarray"))
    fmt = "ome-zarr" if is_zarr else stack_format(path)
    if fmt == "ome-zarr":
        data, axes, px, dz, fmt = _read_zarr(path)
    else:
        data, axes, px, dz, fmt = _read_tiff(path)
    return _as_stack(path, fmt, data, axes, px, dz)


def _as_stack(path: Path, fmt: StackFormat, data: np.ndarray, axes: str,
              px: float | None, dz: float | None) -> Stack:
    if data.ndim < 2:
        raise StackError(f"{path}: has {data.ndim} dimension(s); a stack needs at least Y and X")
    axes = axes.upper()
    if len(axes) != data.ndim or axes[-2:] != "YX":
        raise StackError(f"{path}: axes {axes!r} do not end in Y, X (colour/RGB samples are not "
                         "supported); save one grey-level channel per plane")
    if data.dtype.name not in SUPPORTED_DTYPES:
        raise StackError(f"{path}: dtype {data.dtype.name} is not supported; livescope reads "
                         f"{', '.join(SUPPORTED_DTYPES)} stacks (convert it first)")
    info = StackInfo(path=str(path), format=fmt, axes=axes, shape=data.shape,
                     dtype=data.dtype.name, pixel_size_um=px, z_step_um=dz)
    frames = np.ascontiguousarray(data.reshape(-1, *data.shape[-2:]))
    return Stack(frames, info)


def _to_um(value: float | str | None, unit: str | None) -> float | None:
    if value is None:
        return None
    factor = _UM_PER_UNIT.get((unit or "µm").strip().lower().replace("μ", "µ"))
    v = float(value) * factor if factor is not None else None
    return v if v is not None and math.isfinite(v) and v > 0 else None


def _read_tiff(path: Path) -> tuple[np.ndarray, str, float | None, float | None, StackFormat]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data, axes = series.asarray(), series.axes
            px = dz = None
            if tif.is_ome and tif.ome_metadata:
                px, dz = _ome_xml_sizes(tif.ome_metadata)
            elif tif.is_imagej:
                px, dz = _imagej_sizes(tif)
            fmt: StackFormat = "ome-tiff" if tif.is_ome else "tiff"
    except (tifffile.TiffFileError, ValueError, IndexError, OSError) as e:
        raise StackError(f"{path}: cannot read as TIFF ({_first_line(e)})") from None
    # tifffile names unknown leading axes Q/I: they are frames all the same.
    return data, axes, px, dz, fmt


def _ome_xml_sizes(xml: str) -> tuple[float | None, float | None]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None, None
    px = _to_um(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit"))
    dz = _to_um(pixels.get("PhysicalSizeZ"), pixels.get("PhysicalSizeZUnit"))
    return px, dz


def _imagej_sizes(tif) -> tuple[float | None, float | None]:
    meta = tif.imagej_metadata or {}
    unit = str(meta.get("unit", "")).replace("\\u00B5", "µ")
    tag = tif.pages[0].tags.get("XResolution")
    px = None
    if tag is not None and unit:
        num, den = tag.value
        px = _to_um(den / num, unit) if num else None
    return px, _to_um(meta.get("spacing"), unit) if unit else None


def _read_zarr(path: Path) -> tuple[np.ndarray, str, float | None, float | None, StackFormat]:
    v3 = (path / "zarr.json").exists()
    if not v3 and (path / ".zarray").exists():  # a bare zarr v2 array
        data = _zarr_array(path, v3)
        return data, _axes_from_names([], data.shape), None, None, "zarr"
    try:
        meta = json.loads((path / ("zarr.json" if v3 else ".zattrs")).read_text())
    except (OSError, ValueError) as e:
        raise StackError(f"{path}: cannot read zarr metadata ({_first_line(e)})") from None
    if v3 and meta.get("node_type") == "array":  # a bare array, not an OME image
        names = meta.get("dimension_names") or []
        return _zarr_array(path, v3), _axes_from_names(names, meta.get("shape", [])), None, None, "zarr"
    attrs = meta.get("attributes", {}).get("ome", meta.get("attributes", {})) if v3 else meta
    multiscales = attrs.get("multiscales")
    if not multiscales:
        raise StackError(f"{path}: a zarr group without OME multiscales metadata; give the path "
                         "of one OME-Zarr image")
    ms = multiscales[0]
    ds = ms["datasets"][0]
    axes_meta = ms.get("axes", [])
    names = [a["name"] if isinstance(a, dict) else str(a) for a in axes_meta]
    units = [a.get("unit") if isinstance(a, dict) else None for a in axes_meta]
    scale = next((t["scale"] for t in ds.get("coordinateTransformations", [])
                  if t.get("type") == "scale"), None)
    data = _zarr_array(path / ds["path"], v3)
    axes = _axes_from_names(names, data.shape)
    px = dz = None
    if scale and len(scale) == len(axes):
        px = _to_um(scale[axes.index("X")], units[axes.index("X")]) if units else None
        if "Z" in axes:
            dz = _to_um(scale[axes.index("Z")], units[axes.index("Z")]) if units else None
    return data, axes, px, dz, "ome-zarr"


def _axes_from_names(names: list[str], shape) -> str:
    if len(names) == len(shape) and all(len(n) == 1 for n in names) and len(set(names)) == len(names):
        return "".join(names).upper()
    # unnamed: frames... then Y, X
    return "Q" * max(len(shape) - 2, 0) + "YX"[-min(len(shape), 2):] if len(shape) else ""


def _zarr_array(path: Path, v3: bool) -> np.ndarray:
    import tensorstore as ts

    spec = {"driver": "zarr3" if v3 else "zarr", "kvstore": {"driver": "file", "path": str(path)}}
    try:
        return np.asarray(ts.open(spec, open=True, read=True).result().read().result())
    except Exception as e:  # tensorstore raises ValueError / its own errors
        raise StackError(f"{path}: cannot read zarr array ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# -- writing ------------------------------------------------------------------------------------


def write_stack(path: str | os.PathLike, frames: np.ndarray, like: Stack | StackInfo | None = None,
                *, overwrite: bool = False) -> Path:
    """Write (T, H, W) frames as OME-TIFF (.tif/.tiff) or OME-Zarr (.zarr), atomically.

    With ``like`` (the input stack), the frames get its leading axes, pixel size and z step.
    Returns the path written.
    """
    path = Path(path)
    fmt = stack_format(path)
    if frames.ndim != 3:
        raise StackError(f"{path}: frames to write must be (T, H, W), got shape {frames.shape}")
    if frames.dtype.name not in SUPPORTED_DTYPES:
        raise StackError(f"{path}: cannot write dtype {frames.dtype.name}; use one of "
                         f"{', '.join(SUPPORTED_DTYPES)}")
    if path.exists() and not overwrite:
        raise StackError(f"{path} already exists; choose another output or allow overwriting")
    if not path.parent.is_dir():
        raise StackError(f"{path.parent}: no such folder for the output")
    info = like.info if isinstance(like, Stack) else like
    axes, shape = _output_layout(frames, info)
    px = info.pixel_size_um if info else None
    dz = info.z_step_um if info and "Z" in axes else None
    data = frames.reshape(shape)

    suffix = next(s for s in (*_TIFF_SUFFIXES, *_ZARR_SUFFIXES) if path.name.lower().endswith(s))
    stem = path.name[: -len(suffix)]
    tmp = path.with_name(f".{stem}.partial-{uuid.uuid4().hex[:8]}{path.name[-len(suffix):]}")
    try:
        if fmt == "ome-zarr":
            _write_ome_zarr(tmp, data, axes, px, dz)
        else:
            _write_ome_tiff(tmp, data, axes, px, dz)
        move_into_place(tmp, path)
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, StackError | KeyboardInterrupt):
            raise
        if isinstance(e, Exception):
            raise StackError(f"{path}: writing failed ({_first_line(e)}); nothing was written") from e
        raise
    return path


def _output_layout(frames: np.ndarray, info: StackInfo | None) -> tuple[str, tuple[int, ...]]:
    """The input's leading axes when they hold as many frames and OME can name them; else T."""
    t, h, w = frames.shape
    if info is not None:
        lead, lead_shape = info.leading_axes, info.shape[:-2]
        if (math.prod(lead_shape) == t and len(set(lead)) == len(lead)
                and all(a in _OME_LEADING for a in lead)):
            return lead + "YX", (*lead_shape, h, w)
    return "TYX", (t, h, w)


def _write_ome_tiff(tmp: Path, data: np.ndarray, axes: str, px: float | None,
                    dz: float | None) -> None:
    import tifffile

    meta: dict = {"axes": axes}
    if px:
        meta |= {"PhysicalSizeX": px, "PhysicalSizeXUnit": "µm",
                 "PhysicalSizeY": px, "PhysicalSizeYUnit": "µm"}
    if dz:
        meta |= {"PhysicalSizeZ": dz, "PhysicalSizeZUnit": "µm"}
    tifffile.imwrite(tmp, data, ome=True, photometric="minisblack", metadata=meta,
                     bigtiff=data.nbytes > 2**31)


def _write_ome_zarr(tmp: Path, data: np.ndarray, axes: str, px: float | None,
                    dz: float | None) -> None:
    import ome_writers as ow

    dims = []
    for name, n in zip(axes, data.shape):
        kw: dict = {}
        if name in "YX":
            kw = {"type": "space", "unit": "micrometer", "scale": px} if px else {"type": "space"}
        elif name == "Z" and dz:
            kw = {"type": "space", "unit": "micrometer", "scale": dz}
        else:
            kw = {"type": _OME_LEADING.get(name, "other")}
        dims.append(ow.Dimension(name=name.lower(), count=n, **kw))
    settings = ow.AcquisitionSettings(root_path=str(tmp), dimensions=dims, dtype=data.dtype.name,
                                      format="ome-zarr", storage_order="acquisition")
    if Path(settings.output_path) != tmp:
        raise StackError(f"{tmp}: ome-writers would write {settings.output_path} instead")
    stream = ow.create_stream(settings)
    try:
        for frame in data.reshape(-1, *data.shape[-2:]):
            stream.append(frame)
    finally:
        stream.close()


def move_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished temporary output (a file or a folder) to ``path``, replacing an existing
    one; if that fails, the old one is put back."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)

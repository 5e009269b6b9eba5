"""Reading and writing image stacks for the offline commands: TIFF / OME-TIFF and OME-Zarr.

A stack is read whole as (T, H, W) frames: every axis before Y and X is flattened into the
first one, whose original axes and shape the ``StackInfo`` keeps, so the output is written
back with the same layout. Pixel values keep their dtype (uint8, uint16, float32).

- TIFF / OME-TIFF: tifffile; pixel size and z step from the OME-XML (or ImageJ) metadata.
- OME-Zarr: the layout pymmcore-plus and ome-writers write (a zarr v3 group whose ``ome``
  attributes hold the multiscales and whose ``0`` array is the full resolution); OME-Zarr
  0.4 (zarr v2) and a bare zarr array are read too. Read with tensorstore, imported only here.

The raw data's metadata travels to the output: pixel size, z step and time step, channel names,
each frame's time, exposure and stage position (OME-XML planes; ome-writers' frame metadata), the
rest of an OME-Zarr's attributes (pymmcore-plus's summary), and a `Provenance` record of which
model made each frame (`livescope.provenance` says where each format keeps it).

Outputs are written to a hidden sibling path and renamed into place when complete, so an
error never leaves a half-written stack under the requested name; an existing output is
refused unless ``overwrite``. Every problem is a ``StackError`` with a one-line message.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from livescope.provenance import ANNOTATION_NAMESPACE, PROVENANCE_KEY, Provenance
from livescope.validation import first_line

StackFormat = Literal["tiff", "ome-tiff", "ome-zarr", "zarr"]
SUPPORTED_DTYPES = ("uint8", "uint16", "float32")

_TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")
_ZARR_SUFFIXES = (".ome.zarr", ".zarr")
# length units as OME-XML and OME-Zarr name them -> micrometres
_UM_PER_UNIT = {"µm": 1.0, "um": 1.0, "micron": 1.0, "micrometer": 1.0, "micrometre": 1.0,
                "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
                "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "m": 1e6, "meter": 1e6}
_S_PER_UNIT = {"s": 1.0, "second": 1.0, "ms": 1e-3, "millisecond": 1e-3, "µs": 1e-6, "us": 1e-6,
               "microsecond": 1e-6, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}
# leading axes that OME writers (tifffile OME, ome-writers) understand, with their types
_OME_LEADING = {"T": "time", "C": "channel", "Z": "space"}
# per-frame metadata, named as ome-writers names it (seconds, micrometres) <- OME-XML Plane attributes
FRAME_KEYS = {"delta_t": ("DeltaT", "s"), "exposure_time": ("ExposureTime", "s"),
              "position_x": ("PositionX", "µm"), "position_y": ("PositionY", "µm"),
              "position_z": ("PositionZ", "µm")}
# OME-Zarr group attributes that the writer makes itself rather than copies from the input
_OWN_ATTRIBUTES = ("ome", "ome_writers", PROVENANCE_KEY)


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
    time_step_s: float | None = Field(default=None, gt=0, description="T spacing, s")
    channel_names: tuple[str, ...] | None = Field(default=None, description="one per C index")
    frame_metadata: tuple[dict, ...] | None = Field(
        default=None, description="per frame of the (T, H, W) frames: delta_t and exposure_time (s), "
                                  "position_x/y/z (µm), as far as the input has them")
    attributes: dict | None = Field(default=None, description="an OME-Zarr's other group attributes, "
                                                              "e.g. pymmcore-plus's summary")
    provenance: Provenance | None = Field(default=None, description="what made it, if livescope did")

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
        _require_zarr_io(path)
        return "ome-zarr"
    raise StackError(f"{path}: unsupported format; use a .tif, .tiff, .ome.tif(f), .zarr or "
                     ".ome.zarr path")


def _require_zarr_io(path: Path) -> None:
    """OME-Zarr needs the `zarr` extra (tensorstore, ome-writers), which the plain install leaves out:
    say so before any work, not as a failed write after it."""
    missing = []
    for module in ("tensorstore", "ome_writers"):
        try:
            importlib.import_module(module)  # imported once; what reads and writes it needs it anyway
        except ImportError:
            missing.append(module)
    if missing:
        raise StackError(f"{path}: OME-Zarr needs {' and '.join(missing)}, which the plain install leaves out; "
                         'pip install "livescope[zarr]", or use a .ome.tif path')


# -- reading ------------------------------------------------------------------------------------


def read_stack(path: str | os.PathLike) -> Stack:
    path = Path(path)
    if not path.exists():
        raise StackError(f"{path}: no such file or folder")
    is_zarr = path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zattrs", ".zarray"))
    if is_zarr:
        _require_zarr_io(path)
    fmt = "ome-zarr" if is_zarr else stack_format(path)
    data, axes, fmt, meta = _read_zarr(path) if fmt == "ome-zarr" else _read_tiff(path)
    return _as_stack(path, fmt, data, axes, meta)


def _as_stack(path: Path, fmt: StackFormat, data: np.ndarray, axes: str, meta: dict) -> Stack:
    """``meta``: the `StackInfo` fields the reader found (pixel_size_um, ..., frame_metadata)."""
    info = _stack_info(path, fmt, data, axes, meta)
    frames = np.ascontiguousarray(data.reshape(-1, *data.shape[-2:]))
    return Stack(frames, info)


def _stack_info(path: Path, fmt: StackFormat, data: np.ndarray | ZarrSource, axes: str, meta: dict) -> StackInfo:
    if data.ndim < 2:
        raise StackError(f"{path}: has {data.ndim} dimension(s); a stack needs at least Y and X")
    axes = axes.upper()
    if len(axes) != data.ndim or axes[-2:] != "YX":
        raise StackError(f"{path}: axes {axes!r} do not end in Y, X (colour/RGB samples are not "
                         "supported); save one grey-level channel per plane")
    if data.dtype.name not in SUPPORTED_DTYPES:
        raise StackError(f"{path}: dtype {data.dtype.name} is not supported; livescope reads "
                         f"{', '.join(SUPPORTED_DTYPES)} stacks (convert it first)")
    if meta.get("channel_names") and ("C" not in axes or len(meta["channel_names"]) != data.shape[axes.index("C")]):
        meta = meta | {"channel_names": None}
    return StackInfo(path=str(path), format=fmt, axes=axes, shape=data.shape, dtype=data.dtype.name, **meta)


def open_zarr_stack(path: str | os.PathLike) -> tuple[StackInfo, ZarrSource]:
    """An OME-Zarr (or bare zarr) stack's metadata, and its pixels to read region by region (in the
    original layout, ``info.axes``), without reading them now. StackError if it is not zarr."""
    path = Path(path)
    if not path.is_dir() or not any((path / f).exists() for f in ("zarr.json", ".zattrs", ".zarray")):
        raise StackError(f"{path}: not an OME-Zarr stack" if path.exists() else f"{path}: no such file or folder")
    _require_zarr_io(path)
    data, axes, fmt, meta = _read_zarr(path, lazy=True)
    return _stack_info(path, fmt, data, axes, meta), data


def _to_um(value: float | str | None, unit: str | None) -> float | None:
    """A positive length in µm (None: missing, zero, or in an unknown unit)."""
    return _in_units(value, unit, "µm", _UM_PER_UNIT, positive=True)


def _to_s(value: float | str | None, unit: str | None) -> float | None:
    """A positive time in s."""
    return _in_units(value, unit, "s", _S_PER_UNIT, positive=True)


def _in_units(value: float | str | None, unit: str | None, default: str, per_unit: dict[str, float], *,
              positive: bool) -> float | None:
    if value is None:
        return None
    factor = per_unit.get((unit or default).strip().lower().replace("μ", "µ"))
    try:
        v = float(value) * factor if factor is not None else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) and (v > 0 or not positive) else None


def _read_tiff(path: Path) -> tuple[np.ndarray, str, StackFormat, dict]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data, axes = series.asarray(), series.axes
            meta: dict = {}
            if tif.is_ome and tif.ome_metadata:
                meta = _ome_xml_metadata(tif.ome_metadata, axes.upper(), data.shape)
            elif tif.is_imagej:
                meta = _imagej_metadata(tif)
            fmt: StackFormat = "ome-tiff" if tif.is_ome else "tiff"
    except (tifffile.TiffFileError, ValueError, IndexError, OSError, ModuleNotFoundError) as e:
        # tifffile decodes LZW, JPEG, zstd... with imagecodecs, which the plain install leaves out
        if isinstance(e, ModuleNotFoundError) or "imagecodecs" in str(e):
            raise StackError(f"{path}: its pixels are compressed in a way that needs the imagecodecs package "
                             f"({first_line(e)}); install it: pip install imagecodecs") from None
        raise StackError(f"{path}: cannot read as TIFF ({first_line(e)})") from None
    # tifffile names unknown leading axes Q/I: they are frames all the same.
    return data, axes, fmt, meta


def _local(el: ET.Element) -> str:
    return el.tag.rsplit("}", 1)[-1]


def _ome_xml_metadata(xml: str, axes: str, shape: tuple[int, ...]) -> dict:
    """The first image's sizes, time step, channel names and planes (per frame, in ``axes`` order)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    pixels = next((el for el in root.iter() if _local(el) == "Pixels"), None)
    if pixels is None:
        return {}
    meta: dict = {"pixel_size_um": _to_um(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit")),
                  "z_step_um": _to_um(pixels.get("PhysicalSizeZ"), pixels.get("PhysicalSizeZUnit")),
                  "time_step_s": _to_s(pixels.get("TimeIncrement"), pixels.get("TimeIncrementUnit"))}
    names = [c.get("Name") for c in pixels if _local(c) == "Channel"]
    if names and all(names):
        meta["channel_names"] = tuple(names)
    meta["frame_metadata"] = _plane_metadata([p for p in pixels if _local(p) == "Plane"], axes, shape)
    meta["provenance"] = _ome_xml_provenance(root)
    return meta


def _ome_xml_provenance(root: ET.Element) -> Provenance | None:
    """The provenance record in livescope's MapAnnotation of an OME-XML document, if there is one."""
    for annotation in (el for el in root.iter() if _local(el) == "MapAnnotation"):
        if annotation.get("Namespace") == ANNOTATION_NAMESPACE:
            return _provenance(next((m.text for m in annotation.iter()
                                     if _local(m) == "M" and m.get("K") == PROVENANCE_KEY), None))
    return None


def read_provenance(path: str | os.PathLike) -> Provenance | None:
    """What made a stack, from its metadata alone, without reading its pixels (None: livescope did
    not write it, or its metadata cannot be read)."""
    path = Path(path)
    if path.is_dir():
        try:
            attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
        except (OSError, ValueError):
            return None
        return _provenance(attrs.get(PROVENANCE_KEY)) if isinstance(attrs, dict) else None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata if tif.is_ome else None
        return _ome_xml_provenance(ET.fromstring(xml)) if xml else None
    except (tifffile.TiffFileError, ValueError, OSError, ET.ParseError):
        return None


def _provenance(record: str | dict | None) -> Provenance | None:
    """A stored provenance record, or None when there is none or it cannot be read (it is a note
    about the data, never a reason to refuse the data)."""
    if record is None:
        return None
    try:
        return Provenance.model_validate_json(record) if isinstance(record, str) else Provenance.model_validate(record)
    except ValueError:
        return None


def _plane_metadata(planes: list[ET.Element], axes: str, shape: tuple[int, ...]) -> tuple[dict, ...] | None:
    """Each frame's time, exposure and position from the OME Planes (matched by TheT/TheC/TheZ)."""
    lead, lead_shape = axes[:-2], shape[:-2]
    frames = math.prod(lead_shape)
    if not planes or any(a not in "TCZ" for a in lead):
        return None
    out: list[dict] = [{} for _ in range(frames)]
    for plane in planes:
        try:
            index = tuple(int(plane.get(f"The{a}", 0)) for a in lead)
            frame = int(np.ravel_multi_index(index, lead_shape)) if lead else 0
        except ValueError:
            continue
        for key, (attribute, unit) in FRAME_KEYS.items():
            # a frame's time and position may be zero (or, for a position, negative)
            value = _in_units(plane.get(attribute), plane.get(attribute + "Unit"), unit,
                              _S_PER_UNIT if unit == "s" else _UM_PER_UNIT, positive=False)
            if value is not None:
                out[frame][key] = value
    return tuple(out) if any(out) else None


def _imagej_metadata(tif) -> dict:
    meta = tif.imagej_metadata or {}
    unit = str(meta.get("unit", "")).replace("\\u00B5", "µ")
    tag = tif.pages[0].tags.get("XResolution")
    px = None
    if tag is not None and unit:
        num, den = tag.value
        px = _to_um(den / num, unit) if num else None
    return {"pixel_size_um": px, "z_step_um": _to_um(meta.get("spacing"), unit) if unit else None,
            "time_step_s": _to_s(meta.get("finterval"), meta.get("tunit") or "s")}


def _read_zarr(path: Path, lazy: bool = False) -> tuple[np.ndarray, str, StackFormat, dict]:
    """``lazy``: the pixels as a `ZarrSource` (read on demand), not an array."""
    v3 = (path / "zarr.json").exists()
    if not v3 and (path / ".zarray").exists():  # a bare zarr v2 array
        data = _zarr_array(path, v3, lazy)
        return data, _axes_from_names([], data.shape), "zarr", {}
    try:
        meta = json.loads((path / ("zarr.json" if v3 else ".zattrs")).read_text())
    except (OSError, ValueError) as e:
        raise StackError(f"{path}: cannot read zarr metadata ({first_line(e)})") from None
    if v3 and meta.get("node_type") == "array":  # a bare array, not an OME image
        names = meta.get("dimension_names") or []
        return _zarr_array(path, v3, lazy), _axes_from_names(names, meta.get("shape", [])), "zarr", {}
    group_attrs = meta.get("attributes", {}) if v3 else meta
    attrs = group_attrs.get("ome", group_attrs) if v3 else meta
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
    data = _zarr_array(path / ds["path"], v3, lazy)
    axes = _axes_from_names(names, data.shape)
    found: dict = {}
    if scale and len(scale) == len(axes) and units:
        found["pixel_size_um"] = _to_um(scale[axes.index("X")], units[axes.index("X")])
        if "Z" in axes:
            found["z_step_um"] = _to_um(scale[axes.index("Z")], units[axes.index("Z")])
        if "T" in axes:
            found["time_step_s"] = _to_s(scale[axes.index("T")], units[axes.index("T")])
    labels = [c.get("label") for c in attrs.get("omero", {}).get("channels", []) if isinstance(c, dict)]
    if labels and all(isinstance(label, str) and label for label in labels):
        found["channel_names"] = tuple(labels)
    found["frame_metadata"] = _writer_frame_metadata(group_attrs.get("ome_writers", {}), data.shape[:-2])
    others = {k: v for k, v in group_attrs.items() if k not in _OWN_ATTRIBUTES} if v3 else {}
    found["attributes"] = others or None
    found["provenance"] = _provenance(group_attrs.get(PROVENANCE_KEY))
    return data, axes, "ome-zarr", found


def _writer_frame_metadata(writer_attrs: dict, lead_shape: tuple[int, ...]) -> tuple[dict, ...] | None:
    """ome-writers' per-frame metadata (each entry placed by its storage_index), as frames."""
    entries = writer_attrs.get("frame_metadata") if isinstance(writer_attrs, dict) else None
    if not entries:
        return None
    out: list[dict] = [{} for _ in range(math.prod(lead_shape))]
    for entry in entries:
        try:
            frame = int(np.ravel_multi_index(tuple(entry["storage_index"]), lead_shape)) if lead_shape else 0
        except (KeyError, TypeError, ValueError):
            continue
        out[frame] = {k: v for k, v in entry.items() if k != "storage_index"}
    return tuple(out) if any(out) else None


def _axes_from_names(names: list[str], shape) -> str:
    if len(names) == len(shape) and all(len(n) == 1 for n in names) and len(set(names)) == len(names):
        return "".join(names).upper()
    # unnamed: frames... then Y, X
    return "Q" * max(len(shape) - 2, 0) + "YX"[-min(len(shape), 2):] if len(shape) else ""


def _zarr_array(path: Path, v3: bool, lazy: bool = False):
    """The array at ``path`` read whole (np.ndarray), or, ``lazy``, a `ZarrSource` of it."""
    try:
        store = _open_zarr(str(path), v3)
        if lazy:
            return ZarrSource(str(path), v3, tuple(store.shape), np.dtype(store.dtype.numpy_dtype))
        return np.asarray(store.read().result())
    except Exception as e:  # tensorstore raises ValueError / its own errors
        raise StackError(f"{path}: cannot read zarr array ({first_line(e)})") from None


def _open_zarr(path: str, v3: bool, write: bool = False):
    import tensorstore as ts

    spec = {"driver": "zarr3" if v3 else "zarr", "kvstore": {"driver": "file", "path": path}}
    return ts.open(spec, open=True, read=True, write=write).result()


@dataclass(frozen=True)
class ZarrSource:
    """A zarr array read region by region, as dask's ``from_array`` takes it. It holds only the
    path, so it travels to other processes (a cluster's workers), each opening the array itself."""

    path: str
    v3: bool
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index) -> np.ndarray:
        return np.asarray(_open_zarr(self.path, self.v3)[index].read().result())


def write_zarr_frames(array_path: str | os.PathLike, first_frame: int, frames: np.ndarray) -> None:
    """Write (N, H, W) frames into a zarr v3 array of any leading axes as frames ``first_frame``...
    (in the flattened order `read_stack` gives). Writers of different frames may run at once when
    each frame is a chunk of its own, as in the OME-Zarr `write_ome_zarr_filled` makes."""
    store = _open_zarr(str(array_path), True, write=True)
    lead = tuple(store.shape[:-2])
    for k, frame in enumerate(frames):
        index = np.unravel_index(first_frame + k, lead) if lead else ()
        store[tuple(int(i) for i in index)].write(frame).result()


# -- writing ------------------------------------------------------------------------------------


def write_stack(path: str | os.PathLike, frames: np.ndarray, like: Stack | StackInfo | None = None,
                *, overwrite: bool = False, provenance: Provenance | None = None) -> Path:
    """Write (T, H, W) frames as OME-TIFF (.tif/.tiff) or OME-Zarr (.zarr), atomically.

    With ``like`` (the input stack), the frames get its leading axes and its metadata (sizes, time
    step, channel names, per-frame times and positions, other OME-Zarr attributes); with
    ``provenance``, the record of what made them, and in an OME-Zarr each frame's model.
    Returns the path written.
    """
    path = Path(path)
    fmt = stack_format(path)
    if frames.ndim != 3:
        raise StackError(f"{path}: frames to write must be (T, H, W), got shape {frames.shape}")

    def write(tmp: Path, axes: str, shape: tuple[int, ...], meta: _OutputMetadata) -> None:
        if fmt == "ome-zarr":
            _write_ome_zarr(tmp, frames.reshape(shape), axes, meta)
        else:
            _write_ome_tiff(tmp, frames.reshape(shape), axes, meta)

    return _write_atomically(path, frames.shape, frames.dtype.name, like, overwrite, provenance, write)


def write_ome_zarr_filled(path: str | os.PathLike, frames_shape: tuple[int, int, int],
                          fill: Callable[[Path], tuple[float, float]], like: Stack | StackInfo | None = None,
                          *, overwrite: bool = False, provenance: Provenance | None = None) -> Path:
    """An OME-Zarr of float32 (T, H, W) frames, laid out and described exactly as `write_stack`
    writes it, whose pixels ``fill(array_path)`` writes: the image's full-resolution zarr v3 array
    exists then, one chunk per frame, so several processes may fill it at once (`write_zarr_frames`).
    ``fill`` returns the (min, max) of what it wrote (the channels' display window). Atomic as
    `write_stack`: if ``fill`` raises, nothing is left under ``path``."""
    path = Path(path)
    if stack_format(path) != "ome-zarr":
        raise StackError(f"{path}: only an OME-Zarr (.ome.zarr) can be written in parallel")

    def write(tmp: Path, axes: str, shape: tuple[int, ...], meta: _OutputMetadata) -> None:
        stream = _ome_zarr_stream(tmp, axes, shape, "float32", meta)
        try:
            window = fill(tmp / "0")  # ome-writers' one image: its full resolution is array "0"
            _add_group_attributes(stream, meta, window)
        finally:
            stream.close()
        _add_frame_metadata(tmp, meta, shape[:-2])

    return _write_atomically(path, frames_shape, "float32", like, overwrite, provenance, write)


def _write_atomically(path: Path, frames_shape: tuple[int, ...], dtype: str, like: Stack | StackInfo | None,
                      overwrite: bool, provenance: Provenance | None,
                      write: Callable[[Path, str, tuple[int, ...], _OutputMetadata], None]) -> Path:
    """Check the output, then ``write(tmp, axes, shape, metadata)`` to a hidden sibling of ``path``
    and rename it into place; on any error, remove it."""
    stack_format(path)  # a name of no known format is refused before anything is written
    if dtype not in SUPPORTED_DTYPES:
        raise StackError(f"{path}: cannot write dtype {dtype}; use one of {', '.join(SUPPORTED_DTYPES)}")
    if path.exists() and not overwrite:
        raise StackError(f"{path} already exists; choose another output or allow overwriting")
    if not path.parent.is_dir():
        raise StackError(f"{path.parent}: no such folder for the output")
    info = like.info if isinstance(like, Stack) else like
    t = frames_shape[0]
    axes, shape = _output_layout(frames_shape, info)
    if provenance is not None and provenance.frame_count != t:
        raise StackError(f"{path}: the provenance describes {provenance.frame_count} frames, not {t}")
    meta = _OutputMetadata.of(info, axes, t, provenance)

    suffix = next(s for s in (*_TIFF_SUFFIXES, *_ZARR_SUFFIXES) if path.name.lower().endswith(s))
    stem = path.name[: -len(suffix)]
    tmp = path.with_name(f".{stem}.partial-{uuid.uuid4().hex[:8]}{path.name[-len(suffix):]}")
    try:
        write(tmp, axes, shape, meta)
        move_into_place(tmp, path)
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, StackError | KeyboardInterrupt):
            raise
        if isinstance(e, Exception):
            raise StackError(f"{path}: writing failed ({first_line(e)}); nothing was written") from e
        raise
    return path


def _output_layout(frames_shape: tuple[int, ...], info: StackInfo | None) -> tuple[str, tuple[int, ...]]:
    """The input's leading axes when they hold as many frames and OME can name them; else T."""
    t, h, w = frames_shape
    if info is not None:
        lead, lead_shape = info.leading_axes, info.shape[:-2]
        if (math.prod(lead_shape) == t and len(set(lead)) == len(lead)
                and all(a in _OME_LEADING for a in lead)):
            return lead + "YX", (*lead_shape, h, w)
    return "TYX", (t, h, w)


@dataclass(frozen=True)
class _OutputMetadata:
    """What an output carries of its input and its making, fitted to the output's layout."""

    pixel_size_um: float | None = None
    z_step_um: float | None = None
    time_step_s: float | None = None
    channel_names: tuple[str, ...] | None = None
    frame_metadata: tuple[dict, ...] | None = None
    attributes: dict | None = None
    provenance: Provenance | None = None

    @classmethod
    def of(cls, info: StackInfo | None, axes: str, frames: int, provenance: Provenance | None) -> _OutputMetadata:
        if info is None:
            return cls(provenance=provenance)
        same_layout = axes[:-2] == info.leading_axes
        per_frame = info.frame_metadata if info.frame_metadata and len(info.frame_metadata) == frames else None
        return cls(pixel_size_um=info.pixel_size_um, z_step_um=info.z_step_um if "Z" in axes else None,
                   time_step_s=info.time_step_s if "T" in axes else None,
                   channel_names=info.channel_names if same_layout and "C" in axes else None,
                   frame_metadata=per_frame, attributes=info.attributes, provenance=provenance)

    def frame(self, i: int) -> dict:
        """Frame ``i``'s metadata as ome-writers takes it, with the model that made it."""
        out = dict(self.frame_metadata[i]) if self.frame_metadata else {}
        model = self.provenance.model_of(i) if self.provenance else None
        return out | ({"livescope_model": model} if model else {})


def _write_ome_tiff(tmp: Path, data: np.ndarray, axes: str, meta: _OutputMetadata) -> None:
    import tifffile

    ome: dict = {"axes": axes}
    if meta.pixel_size_um:
        ome |= {"PhysicalSizeX": meta.pixel_size_um, "PhysicalSizeXUnit": "µm",
                "PhysicalSizeY": meta.pixel_size_um, "PhysicalSizeYUnit": "µm"}
    if meta.z_step_um:
        ome |= {"PhysicalSizeZ": meta.z_step_um, "PhysicalSizeZUnit": "µm"}
    if meta.time_step_s:
        ome |= {"TimeIncrement": meta.time_step_s, "TimeIncrementUnit": "s"}
    if meta.channel_names:
        ome["Channel"] = {"Name": list(meta.channel_names)}
    if meta.frame_metadata:
        plane: dict = {}
        for key, (attribute, unit) in FRAME_KEYS.items():
            values = [f.get(key) for f in meta.frame_metadata]
            if all(isinstance(v, int | float) for v in values):  # OME takes a value for every plane or none
                plane |= {attribute: values, attribute + "Unit": [unit] * len(values)}
        if plane:
            ome["Plane"] = plane
    if meta.provenance is not None:
        ome |= meta.provenance.ome_annotation()
    tifffile.imwrite(tmp, data, ome=True, photometric="minisblack", metadata=ome,
                     bigtiff=data.nbytes > 2**31)


def _write_ome_zarr(tmp: Path, data: np.ndarray, axes: str, meta: _OutputMetadata) -> None:
    stream = _ome_zarr_stream(tmp, axes, data.shape, data.dtype.name, meta)
    try:
        for i, frame in enumerate(data.reshape(-1, *data.shape[-2:])):
            stream.append(frame, frame_metadata=meta.frame(i) or None)
        window = ((float(data.min()), float(data.max())) if data.size else (0.0, 1.0)) \
            if meta.channel_names else None
        _add_group_attributes(stream, meta, window)
    finally:
        stream.close()


def _ome_zarr_stream(tmp: Path, axes: str, shape: tuple[int, ...], dtype: str, meta: _OutputMetadata):
    """An ome-writers stream for an image of ``shape``; its group and array exist when this returns."""
    import ome_writers as ow

    dims = []
    for name, n in zip(axes, shape):
        kw: dict = {}
        if name in "YX":
            kw = {"type": "space", "unit": "micrometer", "scale": meta.pixel_size_um} if meta.pixel_size_um \
                else {"type": "space"}
        elif name == "Z" and meta.z_step_um:
            kw = {"type": "space", "unit": "micrometer", "scale": meta.z_step_um}
        elif name == "T" and meta.time_step_s:
            kw = {"type": "time", "unit": "second", "scale": meta.time_step_s}
        else:
            kw = {"type": _OME_LEADING.get(name, "other")}
        dims.append(ow.Dimension(name=name.lower(), count=n, **kw))
    settings = ow.AcquisitionSettings(root_path=str(tmp), dimensions=dims, dtype=dtype,
                                      format="ome-zarr", storage_order="acquisition")
    if Path(settings.output_path) != tmp:
        raise StackError(f"{tmp}: ome-writers would write {settings.output_path} instead")
    return ow.create_stream(settings)


def _add_frame_metadata(tmp: Path, meta: _OutputMetadata, lead_shape: tuple[int, ...]) -> None:
    """Each frame's metadata where ome-writers' ``append`` puts it (its ``ome_writers`` attribute,
    each entry with its storage index), for frames written without ``append``."""
    import ome_writers as ow

    entries = [meta.frame(i) | {"storage_index": [int(j) for j in np.unravel_index(i, lead_shape)]}
               for i in range(math.prod(lead_shape)) if meta.frame(i)]
    if not entries:
        return
    group = tmp / "zarr.json"
    doc = json.loads(group.read_text())
    doc["attributes"]["ome_writers"] = {"version": ow.__version__, "frame_metadata": entries}
    group.write_text(json.dumps(doc))


def _add_group_attributes(stream, meta: _OutputMetadata, window: tuple[float, float] | None) -> None:
    """Channel names (OMERO, with a display window (min, max) over the data: ome-writers 0.3.2 cannot
    name a float32 image's channels itself), the input's other attributes, and the provenance."""
    extra: dict = dict(meta.attributes or {})
    if meta.provenance is not None:
        extra[PROVENANCE_KEY] = meta.provenance.model_dump(mode="json")
    if not extra and not meta.channel_names:
        return
    omero = None
    if meta.channel_names:
        omero = omero_channels(meta.channel_names, window or (0.0, 1.0))

    def change(attrs: dict) -> None:
        if omero is not None:
            attrs["ome"]["omero"] = omero
        attrs.update(extra)

    update_image_attributes(stream, change)


def omero_channels(labels: Sequence[str], window: tuple[float, float],
                   colours: Sequence[str] | None = None) -> dict:
    """The OMERO block naming an image's channels, each with a display window (low, high) and a
    colour (RRGGBB; default white)."""
    low, high = window
    shown = {"min": low, "max": high, "start": low, "end": high}
    return {"channels": [{"label": label, "color": colour, "window": shown}
                         for label, colour in zip(labels, colours or ["FFFFFF"] * len(labels))]}


def update_image_attributes(stream, change: Callable[[dict], None]) -> None:
    """``change`` applied to the group attributes of every image an ome-writers stream writes (one
    per stage position), then written back."""
    metadata = stream.get_metadata()
    for attrs in metadata.values():
        if "multiscales" in attrs.get("ome", {}):
            change(attrs)
    stream.update_metadata(metadata)


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

"""Recovering the raw frames of a killed acquisition saved as OME-TIFF.

pymmcore-plus's OME-TIFF writer (ome-writers with tifffile) writes each position's frames
contiguously after the file's first page and the other pages' directories only when the run
ends, so readers of a killed run's file see its first frame only. The frames are there, whole,
in acquisition order: this reads them from after the first page's data and writes them, one
page each, under the file's own OME-XML, to a new file beside it (the original is left as it is).
Planes planned but never written read as zeros, as in a killed run's restored file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile


class RecoveryError(Exception):
    """The file cannot be recovered (one line: the file and why)."""


def recovered_path(path: Path) -> Path:
    """run.ome.tiff -> run.recovered.ome.tiff"""
    for suffix in (".ome.tiff", ".ome.tif"):
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)] + ".recovered" + suffix)
    return path.with_name(path.name + ".recovered")


def recover_tiff(path: Path) -> tuple[Path, int]:
    """Write the frames of the killed run's OME-TIFF ``path`` to ``recovered_path(path)``;
    return that path and the number of whole frames recovered."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            if len(page.dataoffsets) != 1 or page.compression != 1:
                raise RecoveryError(f"{path}: its frames are not stored contiguously and uncompressed, "
                                    "as pymmcore-plus writes them")
            offset, frame_bytes = page.dataoffsets[0], page.databytecounts[0]
            dtype = page.dtype.newbyteorder(tif.byteorder)
            shape, description = page.shape, page.description
    except (OSError, tifffile.TiffFileError, IndexError) as e:
        raise RecoveryError(f"{path}: not a readable TIFF ({e})") from None
    frames = (os.path.getsize(path) - offset) // frame_bytes
    data = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(frames, *shape))
    out = recovered_path(path)
    tmp = out.with_name(out.name + ".part")
    with tifffile.TiffWriter(tmp, bigtiff=True, ome=False) as writer:
        for k in range(frames):
            writer.write(np.asarray(data[k]).astype(dtype.newbyteorder("=")), metadata=None,
                         photometric="minisblack", description=description.encode() if k == 0 else None)
    os.replace(tmp, out)  # never a half-written recovery under the final name
    return out, frames


def raw_tiff_files(raw: Path) -> list[Path]:
    """The files of a run saved as run.ome.tiff: that file, or one per position in run/."""
    if raw.is_file():
        return [raw]
    stem = raw.name.split(".ome.tif")[0]
    folder = raw.with_name(stem)
    return sorted(folder.glob(f"{stem}_p*.ome.tif*")) if folder.is_dir() else []

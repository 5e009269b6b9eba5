"""Writing restored frames in the raw data's layout: OME-Zarr with ome-writers (the library
behind pymmcore-plus's outputs), OME-TIFF with tifffile in ome-writers' layout (`OmeTiffFiles`).

Outcomes can arrive out of order (a frame dropped before sending is reported at once, while
older frames are still in flight), so they pass a reorder buffer; frames that got no result
are skipped, leaving the writer's fill value (zeros), and are counted in the summary.

Restored frames are float32 in the raw data's units (ADU). A failure to write them is raised as
`RestoredWriteError`, a one-line message naming the store; the acquisition stops on it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import ome_types.model as ome
import ome_writers
import tifffile
import useq

from livescope.client import FrameOutcome, Refusal, Result
from livescope.provenance import PROVENANCE_KEY, Provenance
from livescope.stackio import omero_channels, update_image_attributes

log = logging.getLogger(__name__)


class RestoredWriteError(Exception):
    """The restored frames could not be written (one line: the store and the reason)."""


def _Gap(seq: int) -> Refusal:  # noqa: N802 - reads as a value
    return Refusal(seq, "unanswered", "the server never answered this frame")


def _split_suffix(raw: Path) -> tuple[str, str]:
    """run.ome.zarr -> ("run", ".ome.zarr"); a name without an image suffix keeps it whole."""
    name = raw.name
    for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif", ".zarr", ".tiff", ".tif"):
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


def restored_path(raw: Path, stage: str) -> Path:
    """run.ome.zarr -> run.denoise.ome.zarr (same folder, same format)."""
    stem, suffix = _split_suffix(raw)
    return raw.with_name(f"{stem}.{stage}{suffix}")


def table_paths(raw: Path, stage: str) -> tuple[Path, Path]:
    """The emitter table and its render for a table stage: run.ome.zarr ->
    (run.localise.csv, run.localise.render.ome.tif), in the raw data's folder."""
    stem, _ = _split_suffix(raw)
    return raw.with_name(f"{stem}.{stage}.csv"), raw.with_name(f"{stem}.{stage}.render.ome.tif")


class RestoredWriter:
    """Opens the file at the first result, whose shape and dtype it takes.

    ``window_adu`` (low, high) is the display range written with each channel: the camera's
    range, since restored frames keep the raw data's units. ``add`` and ``close`` raise
    `RestoredWriteError` if the store cannot be written; after that the writer takes nothing more.
    """

    def __init__(self, path: Path, sequence: useq.MDASequence,
                 pixel_size_um: float | None, window_adu: tuple[float, float] = (0.0, 65535.0),
                 *, source: str = "", stage: str = "") -> None:
        self.path = path
        self._source, self._stage = source, stage
        self._models: dict[int, str] = {}  # frame -> the model@version that made it
        self._sequence = sequence
        self._pixel_size_um = pixel_size_um
        self._window_adu = window_adu
        self.error: RestoredWriteError | None = None
        self._stream: ome_writers.OMEStream | OmeTiffFiles | None = None
        self._pending_skips = 0
        self._next = 0
        self._held: dict[int, FrameOutcome] = {}
        self.written = 0
        self.skipped = 0
        self.on_written: Callable[[int], None] | None = None  # called with each frame's seq once written

    def add(self, outcome: FrameOutcome) -> None:
        if self.error is not None:
            return
        try:
            self._add(outcome)
        except Exception as e:  # whatever the backend raises: the disk, the path, the library
            raise self._failed(e) from e

    def _add(self, outcome: FrameOutcome) -> None:
        self._held[outcome.seq] = outcome
        while self._next in self._held:
            o = self._held.pop(self._next)
            if isinstance(o, Result):
                stream = self._stream or self._open(o)
                if self._pending_skips:
                    stream.skip(frames=self._pending_skips)
                    self._pending_skips = 0
                stream.append(o.data, frame_metadata={"livescope_model": o.header.model})
                self._check_writes_done(stream)
                self._models[self._next] = o.header.model
                self.written += 1
                if self.on_written is not None:
                    self.on_written(o.seq)
            else:
                self._pending_skips += 1
                self.skipped += 1
            self._next += 1

    @property
    def provenance(self) -> Provenance:
        """What made the frames handled so far (in acquisition order, every position's)."""
        return Provenance.of_frames(operation=self._stage or "restore", source=self._source,
                                    frame_count=self._next, models=self._models)

    def _open(self, first: Result) -> ome_writers.OMEStream | OmeTiffFiles:
        h, w = first.data.shape
        settings = ome_writers.useq_to_acquisition_settings(
            self._sequence, image_width=w, image_height=h, pixel_size_um=self._pixel_size_um)
        fmt = "ome-tiff" if ".tif" in self.path.name else "ome-zarr"
        dtype = first.data.dtype
        if fmt == "ome-tiff":
            self._stream = OmeTiffFiles(ome_writers.AcquisitionSettings(
                root_path=str(self.path), dtype=dtype.name, format=fmt, **settings))
            return self._stream
        channels = None
        if not np.issubdtype(dtype, np.integer):
            # Works around ome-writers 0.3.2: its Zarr backends (all yaozarrs-based) give each
            # named channel a display window from np.iinfo(dtype), which raises on float32. So
            # the channel axis goes in unnamed, and the names (with a window) are added below.
            settings["dimensions"], channels = _unnamed_channels(settings["dimensions"])
        self._stream = ome_writers.create_stream(ome_writers.AcquisitionSettings(
            root_path=str(self.path), dtype=dtype.name, format=fmt, overwrite=True,
            **settings))
        if channels:
            self._name_channels(channels)
        return self._stream

    @staticmethod
    def _check_writes_done(stream: ome_writers.OMEStream) -> None:
        """Raise the error of a write that has failed so far, and let go of finished writes.

        Works around ome-writers 0.3.2: its tensorstore backend writes asynchronously and keeps
        every write's future until the store is closed, so a failed write (the store removed,
        the disk full) would surface only at the end of the acquisition, and the futures
        pile up. Its list is private: where it is absent, ``close`` still reports the failure.
        """
        futures = getattr(getattr(stream, "_backend", None), "_futures", None)
        if not isinstance(futures, list) or not futures:
            return
        pending = []
        for future in futures:
            if future.done():
                future.result()  # raises the write's error
            else:
                pending.append(future)
        futures[:] = pending

    def _name_channels(self, channels: list) -> None:
        """Write the channels' OMERO metadata (names, colours, display window) into each image."""
        omero = omero_channels([c.name for c in channels], self._window_adu,
                               [c.color.as_hex(format="long").lstrip("#").upper() if c.color else "FFFFFF"
                                for c in channels])

        def name(attrs: dict) -> None:
            attrs["ome"]["omero"] = omero

        update_image_attributes(self._stream, name)

    def _record_provenance(self) -> None:
        """The provenance in each image group's attributes (the frames' models are in ome-writers'
        per-frame metadata already)."""
        record = self.provenance.model_dump(mode="json")

        def add(attrs: dict) -> None:
            attrs[PROVENANCE_KEY] = record

        update_image_attributes(self._stream, add)

    def _failed(self, e: Exception) -> RestoredWriteError:
        log.debug("writing %s failed", self.path, exc_info=e)
        reason = " ".join(str(e).split()) or type(e).__name__
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        self.error = RestoredWriteError(f"cannot write the restored data to {self.path}: {reason}")
        return self.error

    def close(self) -> None:
        """Write what is held, leaving frames that were never answered as gaps, and finish the
        store (where a backend that writes asynchronously reports its errors)."""
        if self.error is not None:
            self._abandon()
            return
        try:
            while self._held:
                if self._next not in self._held:
                    self._held[self._next] = _Gap(self._next)
                self._add(self._held.pop(self._next))
            if self._stream is not None:
                if self._pending_skips:
                    self._stream.skip(frames=self._pending_skips)
                if isinstance(self._stream, OmeTiffFiles):
                    self._stream.close(self.provenance)
                else:
                    self._record_provenance()
                    self._stream.close()
        except Exception as e:
            self._failed(e)
            self._abandon()
            raise self.error from e

    def _abandon(self) -> None:
        """After a failure: release the store as far as it lets us; its own errors add nothing."""
        self._held.clear()
        if self._stream is not None:
            try:
                if isinstance(self._stream, OmeTiffFiles):
                    self._stream.abort()
                else:
                    self._stream.close()
            except Exception:
                log.debug("closing %s after a failure failed too", self.path, exc_info=True)


def _unnamed_channels(dims: list) -> tuple[list, list | None]:
    """``dims`` with the channel axis's names taken out, and the names (None if it had none)."""
    out, channels = [], None
    for d in dims:
        if d.type == "channel" and d.coords:
            channels = list(d.coords)
            d = d.model_copy(update={"coords": None})
        out.append(d)
    return out, channels


class OmeTiffFiles:
    """Restored frames as OME-TIFF, in the layout ome-writers gives the raw data: one file, or
    (several positions) one file per position in a folder, run.denoise/run.denoise_p000.ome.tiff;
    the axes (in acquisition order), sizes, channel names, position names and physical sizes of
    ``settings``, the ones the raw data's writer gets.

    Works around ome-writers 0.3.2: its OME-TIFF backend writes a float32 image's OME pixel type
    as 'float32', which ome-types refuses ('float'), so it writes no float OME-TIFF at all; and
    its writer thread turns a failed write into a warning. Here each frame is written with
    tifffile as it arrives (contiguous pages after the first, which carries the OME-XML), on the
    calling thread, so a failed write raises there; memory does not grow with the run. Each
    frame is its own page, flushed to the file as it is written, so a writer that is killed
    leaves a file that reads (its OME-XML names every planned plane; the planes never written
    read as zeros).

    ``close`` completes the last time point (or outermost step) of a run that stopped early with
    zeros and shrinks the OME-XML to what was written; ``abort`` only releases the files.
    """

    def __init__(self, settings: ome_writers.AcquisitionSettings) -> None:
        dims = settings.dimensions[:-2]  # in acquisition order, positions included
        self._counts = tuple(d.count for d in dims)
        self._p_axis = next((i for i, d in enumerate(dims) if d.type == "position"), None)
        index = [d for d in dims if d.type != "position"]  # a position's frames, file order
        self._outer = index[0].name.upper() if index else None
        self._inner = math.prod(d.count for d in index[1:])
        self._sizes = {d.name.upper(): d.count for d in index}
        self._order = _dimension_order("".join(d.name.upper() for d in index))
        self._frame_shape = tuple(d.count for d in settings.frame_dimensions)
        self._dtype = np.dtype(settings.dtype)
        self._names = [p.name for p in settings.positions]
        self._meta = _ome_pixels_metadata(settings)
        out, suffix = Path(settings.output_path), settings.format.suffix
        self.paths = ([out] if len(self._names) == 1
                      else [out / f"{out.name}_p{i:03}{suffix}" for i in range(len(self._names))])
        self._writers: dict[int, tifffile.TiffWriter] = {}
        self._files: dict[int, BinaryIO] = {}
        self._written = [0] * len(self._names)
        self._frames = 0

    def append(self, frame: np.ndarray, frame_metadata: dict | None = None) -> None:
        """``frame_metadata``: taken as ome-writers' streams take it; each frame's model is in the
        provenance that ``close`` writes instead."""
        p = 0 if self._p_axis is None else int(np.unravel_index(self._frames, self._counts)[self._p_axis])
        writer = self._writers.get(p) or self._create(p)
        writer.write(frame, metadata=None, photometric="minisblack",
                     description=self._xml(p).encode() if not self._written[p] else None)
        self._files[p].flush()
        self._written[p] += 1
        self._frames += 1

    def skip(self, *, frames: int = 1) -> None:
        for _ in range(frames):
            self.append(np.zeros(self._frame_shape, self._dtype))

    def close(self, provenance: Provenance | None = None) -> None:
        """Finish every file; ``provenance`` goes into each one's OME-XML (a MapAnnotation)."""
        planned = math.prod(self._sizes.values())
        for p, writer in sorted(self._writers.items()):
            whole = math.ceil(self._written[p] / self._inner) * self._inner
            for _ in range(whole - self._written[p]):
                writer.write(np.zeros(self._frame_shape, self._dtype), metadata=None,
                             photometric="minisblack")
            writer.close()
            self._files.pop(p).close()
            if whole < planned or provenance is not None:
                xml = self._xml(p, whole // self._inner if whole < planned else None, provenance)
                tifffile.tiffcomment(self.paths[p], comment=xml.encode())
        self._writers.clear()

    def abort(self) -> None:
        writers, self._writers = self._writers, {}
        for p, writer in writers.items():
            try:
                writer.close()
                self._files.pop(p).close()
            except Exception:  # a file that failed already: its own errors add nothing
                log.debug("closing %s after a failure failed too", self.paths[p], exc_info=True)

    def _create(self, p: int) -> tifffile.TiffWriter:
        self.paths[p].parent.mkdir(parents=True, exist_ok=True)
        # Our own file handle, to flush each frame to the OS (tifffile's is private).
        self._files[p] = open(self.paths[p], "wb")  # noqa: SIM115 - closed with the writer
        self._writers[p] = tifffile.TiffWriter(self._files[p], bigtiff=True, ome=False)
        return self._writers[p]

    def _xml(self, p: int, outer_count: int | None = None, provenance: Provenance | None = None) -> str:
        """Position ``p``'s OME-XML (tifffile's), with ``outer_count`` steps of the outermost axis
        (default: all planned), and ``provenance`` as a MapAnnotation."""
        sizes = dict(self._sizes)
        if outer_count is not None:
            sizes[self._outer] = outer_count
        axes = self._order[:1:-1]  # XYZCT -> TCZ: slowest first, every OME axis (size 1 if absent)
        shape = tuple(sizes.get(a, 1) for a in axes) + self._frame_shape
        xml = tifffile.OmeXml()
        annotation = {} if provenance is None else provenance.ome_annotation()
        xml.addimage(self._dtype, shape, (math.prod(shape[:-2]), 1, 1, *self._frame_shape, 1),
                     axes=axes + "YX", Name=self._names[p], **self._meta, **annotation)
        return xml.tostring()


def _dimension_order(axes: str) -> str:
    """The OME DimensionOrder ome-writers 0.3.2 gives ``axes`` (slowest first): the first one
    whose axes after X, Y start with them, fastest first ("TCZ" -> "XYZCT"; "T" -> "XYTCZ")."""
    suffix = axes[::-1]
    return next(o.value for o in ome.Pixels_DimensionOrder if o.value[2:].startswith(suffix))


def _ome_pixels_metadata(settings: ome_writers.AcquisitionSettings) -> dict:
    """Physical sizes (x, y, z) and channel names as tifffile's OmeXml takes them."""
    meta: dict = {}
    for d in settings.dimensions:
        if d.name in ("x", "y", "z") and d.scale is not None:
            meta[f"PhysicalSize{d.name.upper()}"] = d.scale
            if d.unit:
                meta[f"PhysicalSize{d.name.upper()}Unit"] = ome.UnitsLength[d.unit.upper()].value
        if d.type == "channel" and d.coords:
            meta["Channel"] = {"Name": [c.name for c in d.coords]}
    return meta

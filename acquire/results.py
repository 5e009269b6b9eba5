"""Writing restored frames with ome-writers (the library behind pymmcore-plus's outputs).

Outcomes can arrive out of order (a frame dropped before sending is reported at once, while
older frames are still in flight), so they pass a reorder buffer; frames that got no result
are skipped, leaving the writer's fill value, and are counted in the summary.
"""

from __future__ import annotations

from pathlib import Path

import ome_writers
import useq

from livescope.client import FrameOutcome, Refusal, Result


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
    """Opens the file at the first result, whose shape and dtype it takes."""

    def __init__(self, path: Path, sequence: useq.MDASequence,
                 pixel_size_um: float | None) -> None:
        self.path = path
        self._sequence = sequence
        self._pixel_size_um = pixel_size_um
        self._stream: ome_writers.OMEStream | None = None
        self._pending_skips = 0
        self._next = 0
        self._held: dict[int, FrameOutcome] = {}
        self.written = 0
        self.skipped = 0

    def add(self, outcome: FrameOutcome) -> None:
        self._held[outcome.seq] = outcome
        while self._next in self._held:
            o = self._held.pop(self._next)
            if isinstance(o, Result):
                stream = self._stream or self._open(o)
                if self._pending_skips:
                    stream.skip(frames=self._pending_skips)
                    self._pending_skips = 0
                stream.append(o.data)
                self.written += 1
            else:
                self._pending_skips += 1
                self.skipped += 1
            self._next += 1

    def _open(self, first: Result) -> ome_writers.OMEStream:
        h, w = first.data.shape
        settings = ome_writers.useq_to_acquisition_settings(
            self._sequence, image_width=w, image_height=h, pixel_size_um=self._pixel_size_um)
        fmt = "ome-tiff" if ".tif" in self.path.name else "ome-zarr"
        self._stream = ome_writers.create_stream(ome_writers.AcquisitionSettings(
            root_path=str(self.path), dtype=first.data.dtype.name, format=fmt, overwrite=True,
            **settings))
        return self._stream

    def close(self) -> None:
        """Write what is held, leaving frames that were never answered as gaps."""
        while self._held:
            if self._next not in self._held:
                self._held[self._next] = _Gap(self._next)
            self.add(self._held.pop(self._next))
        if self._stream is not None:
            if self._pending_skips:
                self._stream.skip(frames=self._pending_skips)
            self._stream.close()

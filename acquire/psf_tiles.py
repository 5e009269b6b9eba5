"""A live ``psf`` stage's tables during an acquisition: kept as they arrive, summed up for the
progress line and the summary, and written at the end as the CSV `livescope psf` writes offline
(run.psf.csv, with its provenance sidecar)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from livescope.client import Result
from livescope.protocol import Objective, stage_name
from livescope.provenance import Provenance
from livescope.psf_estimate import TILE_DTYPE, write_tiles_csv

PSF_STAGES = ("psf",)


def reads_psf(pipeline: tuple[str, ...] | list[str]) -> bool:
    """Whether a pipeline's final results are PSF tile tables (its last stage is a psf model)."""
    return bool(pipeline) and stage_name(pipeline[-1]) in PSF_STAGES


class PsfSummary(BaseModel):
    """What the psf stage read over a run."""

    model_config = ConfigDict(frozen=True)

    frames: int
    tiles: int
    median_abs_defocus_um: float | None = Field(description="over the last frame's tiles")
    median_abs_defocus_sd_um: float | None = Field(description="their predicted sd, median")
    objective: Objective


class PsfTileWriter:
    """Keeps each frame's tile records (frame = seq + 1) and writes them at the end."""

    def __init__(self, path: Path | None, objective: Objective, source: str = "") -> None:
        self.path, self.objective, self.source = path, objective, source
        self._frames: dict[int, np.ndarray] = {}
        self._last: np.ndarray | None = None
        self.models: set[str] = set()
        self.frames = self.tiles = 0

    def add(self, outcome: Result) -> None:
        h = outcome.header
        if h.kind != "table" or outcome.data.dtype.names != TILE_DTYPE.names:
            raise ValueError(f"{h.stage} answered with a {h.kind}, not PSF tiles")
        rows = np.array(outcome.data, TILE_DTYPE)  # a copy: the received buffer is the client's
        if self.path is not None:  # kept for the CSV; without one only counted
            self._frames[h.seq + 1] = rows
        self._last = rows
        self.frames += 1
        self.tiles += len(rows)
        self.models.add(h.model)

    def latest_median(self, column: str) -> float | None:
        """The median of ``column`` over the latest frame's tiles (None before any, or with none)."""
        last = self._last
        return float(np.median(last[column])) if last is not None and len(last) else None

    def summary(self) -> PsfSummary:
        return PsfSummary(frames=self.frames, tiles=self.tiles,
                          median_abs_defocus_um=self.latest_median("abs_defocus_um"),
                          median_abs_defocus_sd_um=self.latest_median("abs_defocus_sd_um"),
                          objective=self.objective)

    def close(self) -> Path | None:
        """Write the CSV and its sidecar (nothing without a path or a frame)."""
        if self.path is None or not self._frames:
            return None
        frames = sorted(self._frames.items())
        Provenance.of_one_model(operation="psf (live, tiles per frame)", source=self.source,
                                frame_count=frames[-1][0], model=", ".join(sorted(self.models)),
                                model_file=None).write_sidecar(self.path, overwrite=True)
        write_tiles_csv(self.path, frames)
        return self.path

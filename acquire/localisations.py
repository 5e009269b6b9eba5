"""Collecting a live ``localise`` stage's emitter tables: counted as they arrive and, with an
output, drawn into a running super-resolution render and written at the end as a ThunderSTORM
CSV and the render (OME-TIFF), the same files ``livescope localise`` writes offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from livescope.client import FrameOutcome, Result
from livescope.emitters import EmitterTable
from livescope.provenance import Provenance
from livescope.render import RenderGrid, RunningRender
from livescope.stackio import StackInfo, stack_format, write_stack

TABLE_STAGES = ("localise",)
"""Pipeline stages whose result is an emitter table rather than an image."""


def gives_tables(pipeline: Sequence[str]) -> bool:
    """Whether a pipeline's final results are emitter tables (its last stage localises)."""
    return bool(pipeline) and pipeline[-1].split("@")[0] in TABLE_STAGES


def localises(pipeline: Sequence[str]) -> bool:
    """Whether a pipeline has a localise stage: its frames need the camera's calibration and
    pixel size (the stage works in photons and nm)."""
    return any(stage.split("@")[0] == "localise" for stage in pipeline)


class LocalisationWriter:
    """Emitter tables of one acquisition. Without ``table_path`` it only counts (live view);
    with it, it keeps every table and renders it as it arrives (costs about the table, not the
    image), and ``close`` writes the CSV and, with ``render_path``, the render.

    ``frame_shape_px`` and ``pixel_size_nm`` are the camera's: the render covers its field.
    Existing files at the paths are replaced (the caller refuses them beforehand).

    The CSV has no ``sigma [nm]`` (the network estimates no PSF width) and ``z [nm]`` only for a 3-D
    model: ``three_d`` is its card's ``localise.three_d`` where the caller has the card. Without it
    (``None``: the live client is told only the model's name@version, no card) the tables decide
    when the CSV is written: z is kept if any emitter has a z other than 0. That is sound for
    livescope's networks, whose z output a 2-D model multiplies by 0 (``models/localise/net.py``),
    so an all-zero z is no measurement and a 3-D model's is never all exactly 0.
    """

    def __init__(self, table_path: Path | None = None, render_path: Path | None = None, *,
                 frame_shape_px: tuple[int, int] | None = None, pixel_size_nm: float | None = None,
                 render_px_nm: float = 10.0, three_d: bool | None = None, source: str = "") -> None:
        if render_path is not None and table_path is None:
            raise ValueError("a render is written only with the table (give table_path)")
        if render_path is not None and (frame_shape_px is None or not pixel_size_nm):
            raise ValueError("a render needs the camera's frame shape and pixel size")
        self.table_path, self.render_path = table_path, render_path
        self.three_d = three_d
        self._source = source
        self._models: dict[int, str] = {}  # frame (seq) -> the model@version that localised it
        self._tables: list[EmitterTable] = []
        self._render = None
        if render_path is not None:
            stack_format(render_path)  # an unsupported name fails now, not after the acquisition
            h, w = frame_shape_px
            self._render = RunningRender(RenderGrid(width_nm=w * pixel_size_nm, height_nm=h * pixel_size_nm,
                                                    pixel_nm=render_px_nm))
        self.tables = 0  # table results received
        self.emitters = 0
        self.last_frame_emitters = 0
        self.written: tuple[Path, ...] = ()

    def add(self, outcome: FrameOutcome) -> int:
        """Take one outcome (refusals and image results are ignored); its emitters' number."""
        if not isinstance(outcome, Result) or outcome.header.kind != "table":
            return 0
        table = EmitterTable.from_payload(np.asarray(outcome.data))
        self._models[outcome.seq] = outcome.header.model
        self.tables += 1
        self.emitters += len(table)
        self.last_frame_emitters = len(table)
        if self.table_path is not None:
            self._tables.append(table)
        if self._render is not None:
            self._render.add(table)
        return len(table)

    def close(self) -> tuple[Path, ...]:
        """Write the table (frames in order) and the render; the paths written. Writes nothing
        when no table arrived (an acquisition that localised nothing at all has no result)."""
        if self.table_path is None or not self.tables:
            return ()
        table = EmitterTable.concatenate(self._tables)
        # Results can arrive out of order (resends after a reconnect): the CSV goes by frame.
        table = table.select(np.argsort(table["frame"], kind="stable"))
        three_d = self.three_d if self.three_d is not None else bool(np.any(table["z_nm"] != 0))
        # The data first (atomically, complete or not at all); the render is a view of it.
        made = self.provenance
        made.write_sidecar(self.table_path, overwrite=True)
        table.write_csv(self.table_path, z=three_d, sigma=False, overwrite=True)
        self.written = (self.table_path,)
        if self._render is not None:
            image = self._render.image()[None]
            px_nm = self._render.grid.pixel_nm
            info = StackInfo(path=str(self.render_path), format=stack_format(self.render_path), axes="TYX",
                             shape=image.shape, dtype="float32", pixel_size_um=px_nm / 1000.0)
            # one image of every frame's localisations: named by every model that localised (hot-swapped: several)
            render_made = Provenance.of_frames(operation="localise render (every frame's localisations)",
                                               source=self._source, frame_count=1,
                                               models={0: " + ".join(sorted(set(self._models.values())))})
            self.written += (write_stack(self.render_path, image, info, overwrite=True, provenance=render_made),)
        return self.written

    @property
    def provenance(self) -> Provenance:
        """Which model localised which frame (frames counted from 0, as the seq; the CSV's from 1)."""
        return Provenance.of_frames(operation="localise", source=self._source,
                                    frame_count=max(self._models, default=-1) + 1, models=self._models)

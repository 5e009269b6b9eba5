"""Collecting a live ``localise`` stage's emitter tables: counted as they arrive and, with an
output, drawn into a running super-resolution render and written at the end as a ThunderSTORM
CSV and the render (OME-TIFF), the same files ``livescope localise`` writes offline.

With an output (or a stop rule) the tables are also assessed (``livescope.smlm_quality``): the
lateral drift is estimated from the localisations and the CSV and render are written corrected
for it (the sidecar says by how much); the FRC resolution and the emitter density are in the
summary. With a ``SmlmStop``, every ``check_every_frames`` frames the tables so far are assessed
and, once the FRC resolution reaches the target or the density falls below the floor, the
acquisition is told it has enough (``on_enough``, with the reason).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from livescope.client import FrameOutcome, Result
from livescope.emitters import EmitterTable
from livescope.protocol import stage_name
from livescope.provenance import DriftCorrection, Provenance
from livescope.render import RenderGrid, RunningRender, render
from livescope.smlm_quality import Assessment, SmlmQuality, assess
from livescope.stackio import StackInfo, stack_format, write_stack

TABLE_STAGES = ("localise",)
"""Pipeline stages whose result is an emitter table rather than an image."""


def gives_tables(pipeline: Sequence[str]) -> bool:
    """Whether a pipeline's final results are emitter tables (its last stage localises)."""
    return bool(pipeline) and stage_name(pipeline[-1]) in TABLE_STAGES


def localises(pipeline: Sequence[str]) -> bool:
    """Whether a pipeline has a localise stage: its frames need the camera's calibration and
    pixel size (the stage works in photons and nm)."""
    return any(stage_name(stage) == "localise" for stage in pipeline)


class SmlmStop(BaseModel):
    """When a live SMLM acquisition has enough: the FRC resolution reached ``resolution_nm`` or
    the emitter density fell below ``min_density_per_um2`` (either may be None: not a reason)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resolution_nm: float | None = Field(default=None, gt=0, description="stop when the FRC resolution is this or finer")
    min_density_per_um2: float | None = Field(default=None, gt=0, description="stop when the emitters per µm² "
                                              "per frame (mean of the latest check_every_frames) fall below")
    check_every_frames: int = Field(default=50, ge=1, description="assess the tables every this many frames")
    min_frames: int = Field(default=100, ge=1, description="never stop before this many frames: the first "
                            "frames' FRC and density are too noisy to trust")


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
                 render_px_nm: float = 10.0, three_d: bool | None = None, source: str = "",
                 stop: SmlmStop | None = None, correct_drift: bool = True) -> None:
        if stop is not None and (frame_shape_px is None or not pixel_size_nm):
            raise ValueError("a stop rule needs the camera's frame shape and pixel size (the FRC's field)")
        if render_path is not None and table_path is None:
            raise ValueError("a render is written only with the table (give table_path)")
        if render_path is not None and (frame_shape_px is None or not pixel_size_nm):
            raise ValueError("a render needs the camera's frame shape and pixel size")
        self.table_path, self.render_path = table_path, render_path
        self.three_d = three_d
        self._source = source
        self.stop, self.correct_drift = stop, correct_drift
        self._field_nm = ((frame_shape_px[1] * pixel_size_nm, frame_shape_px[0] * pixel_size_nm)
                          if frame_shape_px is not None and pixel_size_nm else None)
        self.quality: SmlmQuality | None = None  # the latest assessment
        self.enough: str | None = None  # why the acquisition has enough, once it has
        self.on_enough: Callable[[str], None] | None = None
        self._next_check = stop.min_frames if stop is not None else None
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
        if self.table_path is not None or self.stop is not None:
            self._tables.append(table)
        if self._render is not None:
            self._render.add(table)
        if self._next_check is not None and self.enough is None and self.tables >= self._next_check:
            self._next_check = self.tables + self.stop.check_every_frames
            self._check()
        return len(table)

    def _assess(self) -> Assessment:
        table = EmitterTable.concatenate(self._tables)
        width_nm, height_nm = self._field_nm
        density_frames = self.stop.check_every_frames if self.stop is not None else 20
        return assess(table, width_nm, height_nm, last_frame=max(self._models) + 1,
                      density_frames=density_frames, correct_drift=self.correct_drift)

    def _check(self) -> None:
        """Assess the tables so far; tell the acquisition when they are enough."""
        q = self.quality = self._assess().quality
        stop, reason = self.stop, None
        # no crossing up to the renders' Nyquist frequency: the resolution is finer than 2 pixels
        finest = 2 * q.frc_pixel_nm if q.frc_pixel_nm is not None and q.frc_resolution_nm is None else None
        if stop.resolution_nm is not None and q.frc_resolution_nm is not None \
                and q.frc_resolution_nm <= stop.resolution_nm:
            reason = (f"FRC resolution {q.frc_resolution_nm:.1f} nm reached the target {stop.resolution_nm:g} nm "
                      f"at frame {q.frames}")
        elif stop.resolution_nm is not None and finest is not None and finest <= stop.resolution_nm:
            reason = (f"FRC resolution finer than {finest:g} nm (no crossing) reached the target "
                      f"{stop.resolution_nm:g} nm at frame {q.frames}")
        elif stop.min_density_per_um2 is not None and q.density_per_um2 < stop.min_density_per_um2:
            reason = (f"emitter density {q.density_per_um2:.3g} /µm² per frame fell below the floor "
                      f"{stop.min_density_per_um2:g} at frame {q.frames}")
        if reason is not None:
            self.enough = reason
            if self.on_enough is not None:
                self.on_enough(reason)

    def close(self) -> tuple[Path, ...]:
        """Write the table (frames in order) and the render; the paths written. Writes nothing
        when no table arrived (an acquisition that localised nothing at all has no result)."""
        if self.table_path is None or not self.tables:
            return ()
        table = EmitterTable.concatenate(self._tables)
        three_d = self.three_d if self.three_d is not None else bool(np.any(table["z_nm"] != 0))
        made = self.provenance
        corrected = None
        if self._field_nm is not None:
            final = self._assess()
            self.quality = final.quality
            if final.drift is not None:
                corrected, d = final.corrected, final.drift
                table = corrected
                made = made.model_copy(update={"drift_correction": DriftCorrection(
                    segments=d.segments, final_x_nm=round(d.final_nm[0], 2), final_y_nm=round(d.final_nm[1], 2),
                    max_nm=round(d.max_nm, 2))})
        # Results can arrive out of order (resends after a reconnect): the CSV goes by frame.
        table = table.select(np.argsort(table["frame"], kind="stable"))
        # The data first (atomically, complete or not at all); the render is a view of it.
        made.write_sidecar(self.table_path, overwrite=True)
        table.write_csv(self.table_path, z=three_d, sigma=False, overwrite=True)
        self.written = (self.table_path,)
        if self._render is not None:
            # the running render drew the positions as they came; a drift-corrected table is drawn again
            image = (self._render.image() if corrected is None else
                     render(corrected, self._render.grid, self._render.method).image)[None]
            px_nm = self._render.grid.pixel_nm
            info = StackInfo(path=str(self.render_path), format=stack_format(self.render_path), axes="TYX",
                             shape=image.shape, dtype="float32", pixel_size_um=px_nm / 1000.0)
            # one image of every frame's localisations: named by every model that localised (hot-swapped: several)
            render_made = Provenance.of_frames(operation="localise render (every frame's localisations)",
                                               source=self._source, frame_count=1,
                                               models={0: " + ".join(sorted(set(self._models.values())))})
            render_made = render_made.model_copy(update={"drift_correction": made.drift_correction})
            self.written += (write_stack(self.render_path, image, info, overwrite=True, provenance=render_made),)
        return self.written

    @property
    def provenance(self) -> Provenance:
        """Which model localised which frame (frames counted from 0, as the seq; the CSV's from 1)."""
        return Provenance.of_frames(operation="localise", source=self._source,
                                    frame_count=max(self._models, default=-1) + 1, models=self._models)

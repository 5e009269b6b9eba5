"""How far an SMLM acquisition has got: FRC resolution, lateral drift, emitter density (numpy only).

One assessment of an emitter table, shared by the live acquisition (which stops on it, with
``--stop-at-resolution``, and writes the drift-corrected table) and the server (which reports it
with a stream's render): the drift is estimated by RCC (``livescope.drift``), the emitters are
moved back by it, and the FRC (``livescope.frc``) is of the corrected emitters, so that drift does
not pass for poor resolution. The density is of the latest frames, the figure a dwindling supply
of fluorophores shows first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from livescope.drift import DriftEstimate, estimate_drift
from livescope.emitters import EmitterTable
from livescope.frc import FrcCurve, table_frc


class SmlmQuality(BaseModel):
    """The figures of an SMLM table so far (sent in the render reply and the acquisition summary)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frames: int = Field(description="frames assessed (the last localised frame's number)")
    emitters: int
    frc_resolution_nm: float | None = Field(
        description="FRC resolution (1/7 threshold) of the drift-corrected halves; None: not measured or "
                    "no crossing")
    frc_pixel_nm: float | None = Field(description="the pixel the FRC renders were drawn at")
    drift_corrected: bool = Field(description="whether the FRC and the written table are drift-corrected")
    drift_nm: tuple[float, float] | None = Field(description="(x, y) drift of the last frame from the first")
    drift_max_nm: float | None = Field(description="the largest lateral drift of any frame from the first")
    density_per_um2: float = Field(description="emitters per µm² per frame, over the latest frames")
    density_frames: int = Field(description="the latest frames the density is the mean of")


@dataclass(frozen=True)
class Assessment:
    quality: SmlmQuality
    corrected: EmitterTable  # the table moved back by the drift (the table itself without an estimate)
    drift: DriftEstimate | None
    frc: FrcCurve | None


def assess(table: EmitterTable, width_nm: float, height_nm: float, *, last_frame: int | None = None,
           frc_pixel_nm: float = 10.0, block_frames: int = 10, drift_segments: int = 10,
           density_frames: int = 20, correct_drift: bool = True) -> Assessment:
    """Drift (RCC), FRC of the corrected table and density of the latest ``density_frames``
    frames of ``table`` over the ``width_nm`` x ``height_nm`` field. ``last_frame``: the latest
    frame localised, emitters or not (default: the table's last)."""
    frames = table["frame"].astype(np.int64)
    last = int(last_frame if last_frame is not None else (frames.max() if frames.size else 0))
    drift = estimate_drift(table, width_nm, height_nm, segments=drift_segments) if correct_drift else None
    corrected = drift.corrected(table) if drift is not None else table
    curve = table_frc(corrected, width_nm, height_nm, pixel_nm=frc_pixel_nm, block_frames=block_frames)
    window = max(1, min(density_frames, last))
    recent = int(np.count_nonzero(frames > last - window))
    area_um2 = width_nm * height_nm / 1e6
    quality = SmlmQuality(
        frames=last, emitters=len(table),
        frc_resolution_nm=curve.resolution_nm if curve is not None else None,
        frc_pixel_nm=curve.pixel_nm if curve is not None else None,
        drift_corrected=drift is not None,
        drift_nm=(round(drift.final_nm[0], 2), round(drift.final_nm[1], 2)) if drift is not None else None,
        drift_max_nm=round(drift.max_nm, 2) if drift is not None else None,
        density_per_um2=recent / window / area_um2, density_frames=window)
    return Assessment(quality=quality, corrected=corrected, drift=drift, frc=curve)

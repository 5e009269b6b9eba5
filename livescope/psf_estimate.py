"""The PSF estimator's contract, shared by its trainer (models/psf/estimate_*.py) and its offline and
live runners (server/offline_psf.py): what the ONNX graph takes and gives, and the CSV it becomes.

The graph takes float32 [N, 5, H, W]: channel 0 is a camera tile in ADU (any baseline, gain or
photon level: the graph normalises each tile itself), channels 1-4 are the optics, one constant
per channel (`OPTICS_CHANNELS`): a blur of so many pixels means a different defocus at another NA,
wavelength or pixel size, so the network is told them. It gives float32 [N, 8, 1, 1]
(`OUTPUT_CHANNELS`), one estimate per tile.

Sign. A scalar PSF at defocus z with aberrations (a, s) is the image at (-z, -a, -s), point-reflected
(the pupil phase only changes sign): no single image tells the sign of the defocus alone, only its
sign relative to the aberrations'. The network therefore gives |defocus| with its uncertainty, the
magnitudes of astigmatism Z(2,2) and spherical aberration Z(4,0), and the probabilities that the
defocus has the astigmatism's sign and the spherical aberration's. A rig whose astigmatism sign is
known (a cylindrical lens, a bead calibration) gets a signed defocus from the first; with no
astigmatism that probability stays near 0.5 and the signed defocus is left empty.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from livescope.modelcard import ModelCard
from livescope.protocol import Objective, TableField, check_na_below_index, table_dtype

OPTICS_CHANNELS = ("na", "emission_um", "pixel_size_um", "immersion_index")
OUTPUT_CHANNELS = (
    "abs_defocus_um", "abs_defocus_log_var",  # log-variances in the value's units squared
    "astigmatism_abs_waves", "astigmatism_log_var",
    "spherical_abs_waves", "spherical_log_var",
    "logit_defocus_sign_of_astigmatism",  # P(sign(z) == sign(astigmatism)), as a logit
    "logit_defocus_sign_of_spherical",
)
INPUT_NAME = "raw"
OUTPUT_NAME = "psf"
SIGN_CONFIDENCE = 0.9  # a signed defocus only where P(sign) is beyond this (or below 1 - this)

CSV_COLUMNS = (
    "frame", "tile_y_px", "tile_x_px", "tile_px",
    "abs_defocus_um", "abs_defocus_sd_um", "defocus_um", "p_defocus_positive",
    "astigmatism_abs_waves", "astigmatism_abs_sd_waves", "spherical_abs_waves", "spherical_abs_sd_waves",
    "p_defocus_sign_of_spherical",
)
"""frame counts from 1; tile_y_px / tile_x_px: the tile's top-left pixel (row, column, from 0);
defocus_um is signed for the rig's astigmatism sign and empty where the sign is not known."""

PSF_TILE_FIELDS = tuple(
    TableField(name=name, dtype="int32" if name.endswith("_px") else "float32",
               unit=next((u for u in ("px", "um", "waves") if name.endswith("_" + u)), ""))
    for name in CSV_COLUMNS[1:])
"""A live ``psf`` stage's result: one record per tile (the CSV's columns but the frame, which is
the result's own); NaN where a value is not known."""
TILE_DTYPE = table_dtype(PSF_TILE_FIELDS)
DEFAULT_TILE_PX = 64  # a psf model whose card names no tile size reads tiles of this side


def tile_px_of(card: ModelCard) -> int:
    """The tile side a psf model reads: its card's, else `DEFAULT_TILE_PX`."""
    return card.tiling.tile_px or DEFAULT_TILE_PX


@dataclass(frozen=True)
class PsfTiles:
    """One frame's tile estimates, as a live ``psf`` stage sends them: ``rows`` of `TILE_DTYPE`."""

    rows: np.ndarray
    alarm: str | None = None  # why the frame looks out of focus (a live stage's threshold), if it does
    wire_fields: ClassVar[tuple[TableField, ...]] = PSF_TILE_FIELDS

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the frame's result says beside its table: the focus alarm, if any."""
        return (self.alarm,) if self.alarm else ()


def focus_alarm(rows: np.ndarray, threshold_um: float) -> str | None:
    """A sentence where one frame's tiles (`TILE_DTYPE`) have a median |defocus| beyond ``threshold_um``,
    or a median predicted sd beyond half of it (the network cannot tell: too blurred, too dim, no
    structure); None where neither."""
    if not len(rows):
        return None
    z = float(np.median(rows["abs_defocus_um"]))
    sd = float(np.median(rows["abs_defocus_sd_um"]))
    if z > threshold_um:
        return f"focus alarm: median |defocus| {z:.2f} µm over the tiles, beyond {threshold_um:g} µm"
    if sd > threshold_um / 2:
        return (f"focus alarm: the tiles' |defocus| is uncertain (median sd {sd:.2f} µm, beyond "
                f"{threshold_um / 2:g} µm): out of focus, too dim or without structure")
    return None


def tile_table(origins: list[tuple[int, int]], tile_px: int, estimates: dict[str, np.ndarray]) -> np.ndarray:
    """One frame's tiles and their estimates (`tile_estimates`' arrays) as `TILE_DTYPE` records."""
    rows = np.zeros(len(origins), TILE_DTYPE)
    if origins:
        rows["tile_y_px"], rows["tile_x_px"] = np.array(origins, np.int32).T
    rows["tile_px"] = tile_px
    for name in TILE_DTYPE.names[3:]:
        rows[name] = estimates[name]
    return rows


class PsfOptics(BaseModel):
    """The optics a frame was taken with: what the network is told beside each tile."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    na: float = Field(gt=0, description="numerical aperture of the objective")
    emission_nm: float = Field(gt=0, description="emission wavelength, nm")
    pixel_size_nm: float = Field(gt=0, description="camera pixel at the sample, nm")
    immersion_index: float = Field(gt=1.0 - 1e-9, description="refractive index of the immersion medium")

    @model_validator(mode="after")
    def _na_below_index(self) -> PsfOptics:
        check_na_below_index(self.na, self.immersion_index)
        return self

    @classmethod
    def of(cls, objective: Objective, pixel_size_nm: float) -> PsfOptics:
        """A stream's objective at its frames' pixel size (ValueError where NA >= the index)."""
        return cls(na=objective.na, emission_nm=objective.emission_nm, pixel_size_nm=pixel_size_nm,
                   immersion_index=objective.immersion_index)

    def channels(self) -> np.ndarray:
        """The optics in the units and order of `OPTICS_CHANNELS`, float32 (4,)."""
        return np.array([self.na, self.emission_nm * 1e-3, self.pixel_size_nm * 1e-3, self.immersion_index],
                        np.float32)


def tile_estimates(outputs: np.ndarray, astigmatism_sign: int = 1) -> dict[str, np.ndarray]:
    """The graph's (N, 8[, 1, 1]) outputs as named arrays of the CSV's estimate columns. The signed
    defocus assumes the rig's astigmatism has ``astigmatism_sign`` (+1 or -1, the convention of
    `Optics.astigmatism_waves`); NaN where the network is not sure of the sign."""
    out = np.asarray(outputs, np.float64).reshape(len(outputs), len(OUTPUT_CHANNELS))
    p_astig = 1.0 / (1.0 + np.exp(-out[:, 6]))
    p_positive = p_astig if astigmatism_sign > 0 else 1.0 - p_astig
    sure = np.abs(p_positive - 0.5) >= SIGN_CONFIDENCE - 0.5
    abs_z = np.maximum(out[:, 0], 0.0)
    return {
        "abs_defocus_um": abs_z,
        "abs_defocus_sd_um": np.exp(0.5 * out[:, 1]),
        "defocus_um": np.where(sure, np.where(p_positive >= 0.5, abs_z, -abs_z), math.nan),
        "p_defocus_positive": p_positive,
        "astigmatism_abs_waves": np.maximum(out[:, 2], 0.0),
        "astigmatism_abs_sd_waves": np.exp(0.5 * out[:, 3]),
        "spherical_abs_waves": np.maximum(out[:, 4], 0.0),
        "spherical_abs_sd_waves": np.exp(0.5 * out[:, 5]),
        "p_defocus_sign_of_spherical": 1.0 / (1.0 + np.exp(-out[:, 7])),
    }


def write_tiles_csv(path: Path, frames: list[tuple[int, np.ndarray]]) -> None:
    """The CSV (`CSV_COLUMNS`) of (frame number from 1, its `TILE_DTYPE` records) pairs, atomically;
    an empty cell where a value is not known (NaN)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(CSV_COLUMNS)
            for frame, rows in frames:
                for r in rows:
                    values = [float(r[c]) for c in CSV_COLUMNS[4:]]
                    out.writerow([frame, int(r["tile_y_px"]), int(r["tile_x_px"]), int(r["tile_px"])]
                                 + ["" if math.isnan(v) else f"{v:.5g}" for v in values])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

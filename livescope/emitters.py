"""The emitter table: single-molecule localisations, one type for every part of livescope.

The simulator's ground truth, the network's post-processed output, the live ``localise`` stage's
per-frame result, the metrics and the CSV export all use ``EmitterTable``: a 1-D numpy structured
array of ``EMITTER_DTYPE`` with units in the field names.

Conventions (those of ThunderSTORM and the SMLM challenges):
  * x, y in nm from the top-left corner of the top-left pixel: pixel column i spans
    [i p, (i + 1) p) nm and its centre is at (i + 0.5) p; x along columns, y along rows.
  * z in nm, 0 at the focal plane, positive in the focus stage's direction.
  * frames numbered from 1.
  * photons: detected photons of the emitter in the frame; background: photons per pixel.
  * uncertainties: one standard deviation, nm (for the ground truth: 0).

The CSV is ThunderSTORM's: ``id, frame, x [nm], y [nm], z [nm], sigma [nm], intensity [photon],
offset [photon], bkgstd [photon], uncertainty [nm]`` (uncertainty: lateral, the rms of the x and
y uncertainties; bkgstd: the background's shot-noise standard deviation, sqrt(offset)), less
``z [nm]`` and ``sigma [nm]`` where the localiser did not measure them: a 2-D model's z and a
model's PSF width (the network estimates none) would be zeros a reader takes for measurements.
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

from livescope.protocol import TableField, table_dtype

EMITTER_FIELDS: tuple[TableField, ...] = (
    TableField(name="frame", dtype="uint32", unit="1-based"),
    TableField(name="x_nm", dtype="float32", unit="nm"),
    TableField(name="y_nm", dtype="float32", unit="nm"),
    TableField(name="z_nm", dtype="float32", unit="nm"),
    TableField(name="photons", dtype="float32", unit="photon"),
    TableField(name="background_photons", dtype="float32", unit="photon/px"),
    TableField(name="sigma_nm", dtype="float32", unit="nm"),
    TableField(name="x_uncertainty_nm", dtype="float32", unit="nm"),
    TableField(name="y_uncertainty_nm", dtype="float32", unit="nm"),
    TableField(name="z_uncertainty_nm", dtype="float32", unit="nm"),
    TableField(name="probability", dtype="float32", unit="0..1"),
)
"""The fields, as the wire protocol describes a table result (``ResultHeader.fields``)."""

EMITTER_DTYPE: np.dtype = table_dtype(EMITTER_FIELDS)
"""Packed little-endian records: what a ``localise`` result's payload holds."""

LOCALISE_MAP_CHANNELS = ("p", "photons", "dx", "dy", "dz", "photons_sigma", "x_sigma", "y_sigma", "z_sigma",
                         "background")
"""The per-pixel maps a localisation model outputs (ONNX output ``maps``, channel order), which
``livescope/localise_maps.py`` turns into emitters: p detection probability; photons; dx, dy sub-pixel
offset from the pixel centre (px); dz (nm); the standard deviations of photons, x, y (px), z (nm);
background (photons/px)."""

THUNDERSTORM_COLUMNS = ("id", "frame", "x [nm]", "y [nm]", "z [nm]", "sigma [nm]", "intensity [photon]",
                        "offset [photon]", "bkgstd [photon]", "uncertainty [nm]")
"""Every column the CSV can have, in ThunderSTORM's order; ``csv_columns`` says which one has."""


def csv_columns(*, z: bool, sigma: bool) -> tuple[str, ...]:
    """The CSV's columns when the table's z and PSF width (sigma) are, or are not, measured."""
    left_out = {name for name, known in (("z [nm]", z), ("sigma [nm]", sigma)) if not known}
    return tuple(name for name in THUNDERSTORM_COLUMNS if name not in left_out)


class EmitterTableError(ValueError):
    """A table or CSV that cannot be read as emitters; the message is one line, for the user."""


@dataclass(frozen=True)
class EmitterTable:
    """Localisations (or ground-truth emitters): ``rows`` is a 1-D array of ``EMITTER_DTYPE``."""

    rows: np.ndarray
    wire_fields: ClassVar[tuple[TableField, ...]] = EMITTER_FIELDS  # its records on the wire
    warnings: ClassVar[tuple[str, ...]] = ()  # a table of emitters adds nothing to its result's warnings

    def __post_init__(self) -> None:
        if self.rows.dtype != EMITTER_DTYPE or self.rows.ndim != 1:
            raise EmitterTableError(f"rows must be a 1-D array of EMITTER_DTYPE, got {self.rows.dtype} "
                                    f"with shape {self.rows.shape}")

    @classmethod
    def empty(cls) -> EmitterTable:
        return cls(np.zeros(0, EMITTER_DTYPE))

    @classmethod
    def from_columns(cls, *, frame: np.ndarray, x_nm: np.ndarray, y_nm: np.ndarray, **columns: np.ndarray
                     ) -> EmitterTable:
        """A table from per-field arrays (broadcast to one length); fields not given are 0, except
        ``probability`` (1) -- so a ground truth needs only frame, x, y (and z, photons...)."""
        unknown = set(columns) - set(EMITTER_DTYPE.names)
        if unknown:
            raise EmitterTableError(f"unknown emitter fields: {', '.join(sorted(unknown))}")
        given = {"frame": frame, "x_nm": x_nm, "y_nm": y_nm, **columns}
        n = max((np.size(v) for v in given.values()), default=0)
        rows = np.zeros(n, EMITTER_DTYPE)
        rows["probability"] = 1.0
        for name, values in given.items():
            rows[name] = np.broadcast_to(np.asarray(values), (n,))
        return cls(rows)

    @classmethod
    def from_payload(cls, payload: np.ndarray) -> EmitterTable:
        """A table from a ``localise`` result's decoded payload (same fields, any order)."""
        if set(payload.dtype.names or ()) != set(EMITTER_DTYPE.names):
            raise EmitterTableError(f"a table result with fields {payload.dtype.names} is not an "
                                    f"emitter table (expected {EMITTER_DTYPE.names})")
        rows = np.zeros(payload.shape[0], EMITTER_DTYPE)
        for name in EMITTER_DTYPE.names:
            rows[name] = payload[name]
        return cls(rows)

    @classmethod
    def concatenate(cls, tables: list[EmitterTable]) -> EmitterTable:
        return cls(np.concatenate([t.rows for t in tables])) if tables else cls.empty()

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, field: str) -> np.ndarray:
        return self.rows[field]

    def select(self, keep: np.ndarray) -> EmitterTable:
        """The rows where ``keep`` (bool mask or indices) says."""
        return EmitterTable(self.rows[keep])

    def in_frame(self, frame: int) -> EmitterTable:
        return self.select(self.rows["frame"] == frame)

    def with_frame(self, frame: int) -> EmitterTable:
        """A copy numbered as frame ``frame`` (the live stage numbers a stream's frames)."""
        rows = self.rows.copy()
        rows["frame"] = frame
        return EmitterTable(rows)

    @property
    def lateral_uncertainty_nm(self) -> np.ndarray:
        """sqrt((ux^2 + uy^2) / 2): ThunderSTORM's single ``uncertainty [nm]``."""
        ux, uy = self.rows["x_uncertainty_nm"].astype(np.float64), self.rows["y_uncertainty_nm"]
        return np.sqrt((ux**2 + uy.astype(np.float64) ** 2) / 2.0)

    # -- ThunderSTORM CSV ----------------------------------------------------------------------

    def write_csv(self, path: Path, *, z: bool = False, sigma: bool = True, overwrite: bool = False) -> None:
        """ThunderSTORM CSV, written atomically (a temporary file renamed into place).

        ``z`` and ``sigma``: whether the localiser measured z and a PSF width per emitter; a column
        it did not is left out rather than written as zeros (readers take what is there as
        measured). The writer of a localisation model's table decides from the model's card: z
        for a 3-D model (``card.localise.three_d``), never sigma (the network gives no PSF width,
        see ``LOCALISE_MAP_CHANNELS``). The defaults are a 2-D Gaussian fitter's, as ThunderSTORM's
        own 2-D export: a fitted sigma, no z (``models/localise/classical.py`` writes so).
        Refuses an existing ``path`` unless ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite to replace it")
        r = self.rows
        values = {"id": np.arange(1, len(self) + 1), "frame": r["frame"], "x [nm]": r["x_nm"], "y [nm]": r["y_nm"],
                  "z [nm]": r["z_nm"], "sigma [nm]": r["sigma_nm"], "intensity [photon]": r["photons"],
                  "offset [photon]": r["background_photons"],
                  "bkgstd [photon]": np.sqrt(np.maximum(r["background_photons"], 0.0)),
                  "uncertainty [nm]": self.lateral_uncertainty_nm}
        header = csv_columns(z=z, sigma=sigma)
        columns = [values[name] for name in header]  # id and frame first, the integers
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", newline="") as f:
                writer = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
                writer.writerow(header)
                for row in zip(*columns):
                    writer.writerow([int(row[0]), int(row[1]), *(_number(float(v)) for v in row[2:])])
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def read_csv(cls, path: Path) -> EmitterTable:
        """A ThunderSTORM CSV (as ``write_csv`` writes, or ThunderSTORM exports): the columns above
        that are present, those absent (a 2-D table's z, an unmeasured sigma) 0;
        ``uncertainty [nm]`` fills both lateral uncertainties."""
        path = Path(path)
        try:
            with open(path, newline="") as f:
                reader = csv.reader(f)
                header = next(reader)
                data = [row for row in reader if row]
        except FileNotFoundError:
            raise EmitterTableError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, StopIteration) as e:
            raise EmitterTableError(f"{path}: not a readable CSV ({e})") from None
        index = {name.strip(): i for i, name in enumerate(header)}
        missing = [c for c in ("frame", "x [nm]", "y [nm]") if c not in index]
        if missing:
            raise EmitterTableError(f"{path}: no {', '.join(repr(c) for c in missing)} column "
                                    f"(ThunderSTORM CSV expected; columns: {', '.join(index)})")
        try:
            values = np.array(data, dtype=np.float64).reshape(len(data), len(header))
        except ValueError:
            raise EmitterTableError(f"{path}: non-numeric values in the table") from None
        # An absent column is zeros of the table's length: a scalar 0 would make an empty table one row.
        column = lambda name: values[:, index[name]] if name in index else np.zeros(len(data))  # noqa: E731
        uncertainty = column("uncertainty [nm]")
        return cls.from_columns(
            frame=column("frame"), x_nm=column("x [nm]"), y_nm=column("y [nm]"), z_nm=column("z [nm]"),
            sigma_nm=column("sigma [nm]"), photons=column("intensity [photon]"),
            background_photons=column("offset [photon]"), x_uncertainty_nm=uncertainty,
            y_uncertainty_nm=uncertainty)


def _number(v: float) -> float | str:
    """Floats rounded for the CSV (0.01 nm / photon is far below any localisation precision)."""
    return round(v, 3) if math.isfinite(v) else "NaN"

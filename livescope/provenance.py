"""What made a restored output: written with every restored stack and localisation table, so that
a result found on a disk months later still says which model@version produced each frame, from
which raw data, and with which camera model.

The record travels in the output itself: an OME-Zarr's group attributes (key ``livescope``), an
OME-TIFF's OME-XML (a MapAnnotation whose one value is this record as JSON), a CSV's sidecar
``NAME.csv.provenance.json``. Frames are counted in the output's frame order, from 0; for a table,
in the input's (the CSV's ``frame`` column counts from 1, so its frame 1 is frame 0 here).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from livescope.code_version import code_version

PROVENANCE_KEY = "livescope"
"""The OME-Zarr attribute and the OME-XML MapAnnotation namespace suffix that hold the record."""
ANNOTATION_NAMESPACE = "https://github.com/livescope/livescope/provenance"


class ModelRun(BaseModel):
    """Consecutive output frames ``first_frame`` .. ``first_frame + frame_count - 1`` made by one model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    first_frame: int = Field(ge=0)
    frame_count: int = Field(ge=1)
    model: str = Field(description="NAME@VERSION")
    model_sha256: str | None = Field(default=None, description="of the model's ONNX file")
    ensemble_transforms: int = Field(default=1, ge=1, le=8, description=(
        "each frame is the mean of the model's outputs over this many flips / quarter turns of it (1: one run)"))


class CameraModel(BaseModel):
    """The camera the frames were converted to photons with, and where it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    baseline_adu: float
    e_per_adu: float = Field(gt=0)
    em_gain: float = Field(default=1.0, ge=1)
    source: str = Field(description="given, or how it was estimated, in words")


class DriftCorrection(BaseModel):
    """The lateral drift a table's positions were corrected for (``livescope.drift``): each emitter
    moved back by its frame's drift, to where it was at the first frame."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str = Field(default="redundant cross-correlation of the localisations (RCC)")
    segments: int = Field(ge=2, description="time segments correlated")
    final_x_nm: float = Field(description="drift of the last frame from the first, x")
    final_y_nm: float = Field(description="drift of the last frame from the first, y")
    max_nm: float = Field(ge=0, description="the largest lateral drift of any frame from the first")


class Provenance(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = 1
    software: str = Field(default_factory=lambda: f"livescope {code_version()}")
    created_utc: str = Field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"))
    operation: str = Field(description="the command or stage: denoise, restore, refocus, localise, ...")
    source: str = Field(description="the raw data it was made from (path or stream)")
    frame_count: int = Field(ge=0, description="frames in the output")
    model_runs: tuple[ModelRun, ...] = ()
    frames_without_result: tuple[int, ...] = Field(
        default=(), description="output frames no model made (left at the fill value), e.g. dropped live")
    camera: CameraModel | None = None
    drift_correction: DriftCorrection | None = Field(
        default=None, description="a localisation table's positions corrected for drift, and by how much")

    @model_validator(mode="after")
    def _runs_fit(self) -> Provenance:
        end = 0
        for run in self.model_runs:
            if run.first_frame < end or run.first_frame + run.frame_count > self.frame_count:
                raise ValueError(f"model run {run.first_frame}+{run.frame_count} overlaps another or lies "
                                 f"outside the {self.frame_count} frames")
            end = run.first_frame + run.frame_count
        return self

    def model_of(self, frame: int) -> str | None:
        """The model@version that made output frame ``frame`` (None: no model did)."""
        for run in self.model_runs:
            if run.first_frame <= frame < run.first_frame + run.frame_count:
                return run.model
        return None

    @classmethod
    def of_frames(cls, *, operation: str, source: str, frame_count: int, models: Mapping[int, str]) -> Provenance:
        """From the model of each frame that got a result (``models``: frame -> NAME@VERSION, e.g.
        results that named theirs); the other frames count as without result."""
        runs: list[ModelRun] = []
        for frame in sorted(models):
            last = runs[-1] if runs else None
            if last is not None and last.model == models[frame] and last.first_frame + last.frame_count == frame:
                runs[-1] = last.model_copy(update={"frame_count": last.frame_count + 1})
            else:
                runs.append(ModelRun(first_frame=frame, frame_count=1, model=models[frame]))
        return cls(operation=operation, source=source, frame_count=frame_count, model_runs=tuple(runs),
                   frames_without_result=tuple(i for i in range(frame_count) if i not in models))

    @classmethod
    def of_one_model(cls, *, operation: str, source: str, frame_count: int, model: str,
                     model_file: Path | None = None, camera: CameraModel | None = None,
                     ensemble_transforms: int = 1) -> Provenance:
        """Every frame made by one model (an offline command)."""
        sha = sha256_of(model_file) if model_file is not None else None
        runs = (ModelRun(first_frame=0, frame_count=frame_count, model=model, model_sha256=sha,
                         ensemble_transforms=ensemble_transforms),) if frame_count else ()
        return cls(operation=operation, source=source, frame_count=frame_count, model_runs=runs, camera=camera)


    def ome_annotation(self) -> dict:
        """This record as tifffile's OME-XML metadata takes it: a MapAnnotation in livescope's namespace."""
        return {"MapAnnotation": {"Namespace": ANNOTATION_NAMESPACE, PROVENANCE_KEY: self.model_dump_json()}}

    def write_sidecar(self, table: Path, *, overwrite: bool = False) -> Path:
        """Write this record next to ``table`` (`sidecar_path`), atomically."""
        path = sidecar_path(table)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite to replace it")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.model_dump_json(indent=1))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def of_table(cls, table: Path) -> Provenance | None:
        """The record next to ``table``, if there is one."""
        path = sidecar_path(table)
        return cls.model_validate_json(path.read_text()) if path.is_file() else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(table: Path) -> Path:
    """Where a table's (CSV's) provenance goes: NAME.csv -> NAME.csv.provenance.json."""
    return table.with_name(table.name + ".provenance.json")

"""Calibration sessions on disk: the manifest schema and the reader every consumer uses.

A session is a folder the user names (``SESSION.ome.zarr``) holding the manifest
``livescope_session.json`` and one OME-Zarr per completed position (``p000.ome.zarr`` ...),
written by pymmcore-plus. A position counts once it is on disk: renamed into place,
checksummed and listed in the manifest, which is rewritten atomically after every position.
Partial data of an interrupted position is kept under ``interrupted/`` and recorded there.

Core module: pydantic, numpy and `livescope.stackio` only (no pymmcore-plus, no torch), so
training code reads sessions without the acquisition stack. Acquiring one is
`livescope.acquire.calibration.run.run_session`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from livescope.camera import CameraCalibration
from livescope.stackio import StackError, read_stack
from livescope.validation import first_error

MANIFEST_FILE = "livescope_session.json"
INTERRUPTED_DIR = "interrupted"
SESSION_FORMAT = "livescope-calibration-session"
SCHEMA_VERSION = 1

SessionKind = Literal["pairs", "zstack", "beads"]
KINDS: tuple[str, ...] = ("pairs", "zstack", "beads")


class SessionError(Exception):
    """A session that cannot be planned, acquired, resumed or read; the message is one line."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def store_name(index: int) -> str:
    """The folder of position ``index`` inside the session: p000.ome.zarr, p001.ome.zarr, ..."""
    return f"p{index:03d}.ome.zarr"


# -- the plan -------------------------------------------------------------------------------------


class PlannedPosition(BaseModel):
    """One stage position of the plan; ``z_um`` is its focus (None: a rig without focus drive)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    x_um: float
    y_um: float
    z_um: float | None = None


class GridSpec(BaseModel):
    """Where a grid's positions came from: ``rows`` x ``columns``, ``spacing_um`` apart, centred
    on the stage position at the start of the session (kept so that a resume rebuilds the same
    grid wherever the stage is then)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rows: int = Field(ge=1)
    columns: int = Field(ge=1)
    spacing_um: float = Field(gt=0)
    centre_x_um: float
    centre_y_um: float


class SessionPlan(BaseModel):
    """What a session acquires. ``pairs``: at every position ``repeats`` x (low preset, high
    preset) of config ``group``, interleaved; ``zstack`` / ``beads``: planes at
    ``z_offsets_um`` about every position's focus (``z_range_um`` wide, ``z_step_um`` apart)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: SessionKind
    positions: tuple[PlannedPosition, ...] = Field(min_length=1)
    grid: GridSpec | None = None
    positions_file: str | None = Field(default=None, description="where the positions were read from")
    exposure_ms: float = Field(gt=0)
    group: str | None = None
    low_preset: str | None = None
    high_preset: str | None = None
    repeats: int = Field(default=1, ge=1)
    z_range_um: float | None = Field(default=None, gt=0)
    z_step_um: float | None = Field(default=None, gt=0)
    z_offsets_um: tuple[float, ...] = Field(default=(), description="planes relative to the focus, µm")

    @model_validator(mode="after")
    def _consistent(self) -> SessionPlan:
        names = [p.name for p in self.positions]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"position names must be unique; repeated: {', '.join(dup)}")
        if self.kind == "pairs":
            if not (self.group and self.low_preset and self.high_preset):
                raise ValueError("a pairs session needs a config group and its low and high presets")
            if self.low_preset == self.high_preset:
                raise ValueError(f"the low and high presets are the same ({self.low_preset!r})")
            if self.z_offsets_um:
                raise ValueError("a pairs session takes no z planes")
        else:
            if self.z_range_um is None or self.z_step_um is None or len(self.z_offsets_um) < 2:
                raise ValueError(f"a {self.kind} session needs a z range and step giving 2 planes or more")
            if self.repeats != 1 or self.group is not None:
                raise ValueError(f"a {self.kind} session takes no repeats and no presets")
        return self

    @property
    def channels(self) -> tuple[str, ...]:
        """The presets in the order each pair is acquired (and stored): low, high."""
        return (self.low_preset, self.high_preset) if self.kind == "pairs" else ()

    @property
    def frames_per_position(self) -> int:
        return 2 * self.repeats if self.kind == "pairs" else len(self.z_offsets_um)

    def differences(self, other: SessionPlan) -> list[str]:
        """What differs between two plans, as 'field: ours vs theirs' (where positions were
        read from is provenance, not plan)."""
        mine, theirs = self.model_dump(exclude={"positions_file"}), other.model_dump(exclude={"positions_file"})
        return [f"{key}: {mine[key]!r} vs {theirs[key]!r}" for key in mine if mine[key] != theirs[key]]


# -- the record -----------------------------------------------------------------------------------


class RigSnapshot(BaseModel):
    """The rig at the session's start."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Literal["virtual", "micro-manager"]
    mm_config_path: str | None = None
    system_state: dict[str, dict[str, str]] = Field(default_factory=dict,
                                                    description="core.getSystemState(): device -> property -> value")
    pixel_size_um: float | None = Field(default=None, gt=0)
    pixel_size_config: str | None = Field(default=None, description="the active pixel size (objective) config")
    camera: CameraCalibration | None = Field(default=None, description="baseline and gain, where known")
    virtual_rig_metadata: dict[str, Any] | None = Field(default=None, description="VirtualRigConfig.metadata()")
    virtual_rig_config: dict[str, Any] | None = Field(default=None, description="the whole VirtualRigConfig")


class CompletedPosition(BaseModel):
    """A position on disk: its store (relative to the session), checksums and when it was taken."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    name: str
    x_um: float
    y_um: float
    z_um: float | None = None
    path: str = Field(description="the position's OME-Zarr, relative to the session folder")
    axes: str = Field(description="the stored array's axes, e.g. 'TCYX' or 'ZYX'")
    channels: tuple[str, ...] = Field(default=(), description="the presets along C, in order")
    sha256: dict[str, str] = Field(description="file (relative to the store, '/'-separated) -> sha256")
    frame_count: int = Field(ge=1)
    started_at: datetime
    finished_at: datetime


class InterruptedAttempt(BaseModel):
    """A position that did not complete; its partial data (if any) is kept at ``path``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    name: str
    path: str | None = Field(default=None, description="partial data, relative to the session folder")
    frames_acquired: int | None = Field(default=None, ge=0)
    reason: str
    recorded_at: datetime


class SessionManifest(BaseModel):
    """``livescope_session.json``: the plan, the rig, and what of the plan is on disk."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["livescope-calibration-session"] = SESSION_FORMAT
    schema_version: int = SCHEMA_VERSION
    session_id: str = Field(min_length=1)
    kind: SessionKind
    command_line: list[str] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime
    rig: RigSnapshot
    plan: SessionPlan
    completed: list[CompletedPosition] = Field(default_factory=list)
    interrupted: list[InterruptedAttempt] = Field(default_factory=list)
    complete: bool = False

    @model_validator(mode="after")
    def _kind_matches(self) -> SessionManifest:
        if self.plan.kind != self.kind:
            raise ValueError(f"kind {self.kind!r} but a {self.plan.kind!r} plan")
        return self

    def completed_indices(self) -> set[int]:
        return {p.index for p in self.completed}

    def remaining(self) -> list[int]:
        """Indices of the planned positions not yet on disk, in plan order."""
        done = self.completed_indices()
        return [i for i in range(len(self.plan.positions)) if i not in done]


# -- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImagePair:
    """One low/high pair: both (H, W) uint16 ADU as stored."""

    position: int
    name: str
    repeat: int
    low_adu: np.ndarray
    high_adu: np.ndarray


@dataclass(frozen=True)
class SessionStack:
    """One position's planes: (Z, H, W) uint16 ADU as stored, and each plane's focus relative to
    the position's focus, µm (Z,)."""

    position: int
    name: str
    planes_adu: np.ndarray
    z_um: np.ndarray


class Session:
    """A calibration session read from disk (`load_session`)."""

    def __init__(self, root: Path, manifest: SessionManifest) -> None:
        self.root = root
        self.manifest = manifest

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Session({str(self.root)!r}, {m.kind}, {len(m.completed)}/{len(m.plan.positions)} positions"
                f"{', complete' if m.complete else ''})")

    @property
    def session_id(self) -> str:
        return self.manifest.session_id

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def pixel_size_um(self) -> float | None:
        return self.manifest.rig.pixel_size_um

    @property
    def baseline_adu(self) -> float | None:
        camera = self.manifest.rig.camera
        return camera.baseline_adu if camera is not None else None

    def pairs(self) -> list[ImagePair]:
        """Every completed position's pairs, in position then repeat order."""
        if self.kind != "pairs":
            raise SessionError(f"{self.root} is a {self.kind} session; it has stacks, not pairs")
        out = []
        for done in sorted(self.manifest.completed, key=lambda p: p.index):
            data = self._read(done)  # (T, C, H, W)
            low, high = (done.channels.index(p) for p in self.manifest.plan.channels)
            out += [ImagePair(done.index, done.name, t, data[t, low], data[t, high]) for t in range(data.shape[0])]
        return out

    def stacks(self) -> list[SessionStack]:
        """Every completed position's z-stack, in position order."""
        if self.kind not in ("zstack", "beads"):
            raise SessionError(f"{self.root} is a {self.kind} session; it has pairs, not stacks")
        z_um = np.asarray(self.manifest.plan.z_offsets_um, dtype=np.float64)
        out = []
        for done in sorted(self.manifest.completed, key=lambda p: p.index):
            out.append(SessionStack(done.index, done.name, self._read(done), z_um.copy()))
        return out

    def verify(self) -> list[str]:
        """Checksum problems of the completed positions, one line each (empty: all intact)."""
        problems = []
        for done in self.manifest.completed:
            store = self.root / done.path
            if not store.is_dir():
                problems.append(f"{done.path}: missing")
                continue
            found = file_checksums(store)
            for rel, digest in done.sha256.items():
                if rel not in found:
                    problems.append(f"{done.path}/{rel}: missing")
                elif found[rel] != digest:
                    problems.append(f"{done.path}/{rel}: checksum differs from the manifest")
            problems += [f"{done.path}/{rel}: not in the manifest" for rel in sorted(set(found) - set(done.sha256))]
        return problems

    def _read(self, done: CompletedPosition) -> np.ndarray:
        """The stored array with every axis the plan has: (T, C, H, W) for pairs, (Z, H, W) for
        stacks (a writer drops axes of length 1)."""
        try:
            stack = read_stack(self.root / done.path)
        except StackError as e:
            raise SessionError(f"session {self.root}: {e}") from None
        data = stack.frames.reshape(stack.info.shape)
        plan = self.manifest.plan
        expected = (plan.repeats, 2) if plan.kind == "pairs" else (len(plan.z_offsets_um),)
        if data.size != int(np.prod(expected)) * data.shape[-2] * data.shape[-1]:
            raise SessionError(f"session {self.root}: {done.path} holds {stack.n_frames} frames, "
                               f"the plan {int(np.prod(expected))}")
        return data.reshape(*expected, *data.shape[-2:])


def is_session(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a calibration session folder (it holds a manifest)."""
    return (Path(path) / MANIFEST_FILE).is_file()


def load_session(path: str | os.PathLike, *, verify: bool = False) -> Session:
    """The session in folder ``path``; with ``verify``, SessionError unless every completed
    position's files match their checksums."""
    root = Path(path)
    manifest = read_manifest(root)
    session = Session(root, manifest)
    if verify and (problems := session.verify()):
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SessionError(f"session {root} is damaged: {problems[0]}{more}")
    return session


def expand_sessions(paths: list[Path]) -> tuple[list[Path], tuple[str, ...]]:
    """``paths`` with every calibration session replaced by its completed positions' OME-Zarr
    stores, in position order (each an ordinary stack, for readers that know nothing of
    sessions), and the sessions' ids (for a trained model's lineage). SessionError for a session
    that cannot be read or has no completed position."""
    expanded: list[Path] = []
    ids: list[str] = []
    for path in paths:
        if not is_session(path):
            expanded.append(path)
            continue
        session = load_session(path)
        if not session.manifest.completed:
            raise SessionError(f"{path}: the session has no completed positions yet")
        expanded += [session.root / done.path for done in sorted(session.manifest.completed, key=lambda d: d.index)]
        ids.append(session.session_id)
    return expanded, tuple(ids)


def read_manifest(root: Path) -> SessionManifest:
    if not root.is_dir():
        raise SessionError(f"{root}: no such session folder")
    file = root / MANIFEST_FILE
    if not file.is_file():
        raise SessionError(f"{root} is not a livescope calibration session (no {MANIFEST_FILE})")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SessionError(f"cannot read {file}: {e}") from None
    if isinstance(raw, dict):
        if raw.get("format") != SESSION_FORMAT:
            raise SessionError(f"{file} is not a livescope calibration session manifest")
        if isinstance(v := raw.get("schema_version"), int) and v > SCHEMA_VERSION:
            raise SessionError(f"{file} has schema version {v}; this livescope reads up to "
                               f"{SCHEMA_VERSION} (upgrade livescope)")
    try:
        return SessionManifest.model_validate(raw)
    except ValidationError as e:
        raise SessionError(f"{file}: {first_error(e)}") from None


def file_checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by '/'-separated relative path."""
    out = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        out[file.relative_to(folder).as_posix()] = digest.hexdigest()
    return out

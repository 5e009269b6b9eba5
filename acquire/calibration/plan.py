"""Planning a calibration session: positions (a grid or a list file), the `SessionPlan` (from
the options given, when resuming completed by the session's own plan), the useq sequence of one
position, and the checks of a plan against the rig made before anything is acquired.

Every problem is a `SessionError` with a one-line message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import useq
import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pymmcore_plus import CMMCorePlus

from livescope.session import GridSpec, PlannedPosition, SessionError, SessionKind, SessionPlan
from livescope.validation import first_error


class PositionEntry(BaseModel):
    """One entry of a positions file: stage x, y (and focus z) in µm, an optional name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    x_um: float
    y_um: float
    z_um: float | None = None
    name: str | None = None


def read_positions(path: Path, *, default_z_um: float | None = None) -> tuple[PlannedPosition, ...]:
    """The positions listed in a YAML or JSON file (a list of {x_um, y_um, z_um?, name?});
    unnamed ones are called p000, p001, ... by their place in the list, and those without z
    take ``default_z_um`` (the current focus)."""
    path = Path(path)
    if path.suffix.lower() not in {".yaml", ".yml", ".json"}:
        raise SessionError(f"positions file {path}: use a .yaml, .yml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SessionError(f"cannot read positions file {path}: {e.strerror or e}") from None
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise SessionError(f"positions file {path} is not valid {path.suffix[1:].upper()}: "
                           f"{' '.join(str(e).split())}") from None
    try:
        entries = TypeAdapter(list[PositionEntry]).validate_python(raw)
    except ValidationError as e:
        raise SessionError(f"positions file {path}: {first_error(e)} "
                           "(expected a list of {x_um, y_um, z_um?, name?})") from None
    if not entries:
        raise SessionError(f"positions file {path} lists no positions")
    return tuple(PlannedPosition(name=e.name or f"p{i:03d}", x_um=e.x_um, y_um=e.y_um,
                                 z_um=e.z_um if e.z_um is not None else default_z_um)
                 for i, e in enumerate(entries))


def parse_grid(text: str) -> tuple[int, int]:
    """'3x4' -> (3 rows, 4 columns)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise SessionError(f"--grid must be ROWSxCOLS with at least 1 of each (e.g. 2x3), not {text!r}")
    return int(m[1]), int(m[2])


def grid_positions(grid: GridSpec, z_um: float | None) -> tuple[PlannedPosition, ...]:
    """The grid's positions in useq's snake order (each row reversed from the last, so the
    stage never travels back across the grid), named r<row>c<column>."""
    layout = useq.GridRowsColumns(rows=grid.rows, columns=grid.columns, fov_width=grid.spacing_um,
                                  fov_height=grid.spacing_um, overlap=0.0, relative_to="center")
    return tuple(PlannedPosition(name=f"r{p.grid_row}c{p.grid_col}", x_um=grid.centre_x_um + p.x,
                                 y_um=grid.centre_y_um + p.y, z_um=z_um)
                 for p in layout.iter_grid_positions())


def z_offsets_um(range_um: float, step_um: float) -> tuple[float, ...]:
    """Plane offsets from the focus, as useq's `ZRangeAround` steps them."""
    if not (range_um > 0 and step_um > 0):
        raise SessionError(f"--range and --step must be positive, got {range_um:g} and {step_um:g} µm")
    offsets = tuple(round(z, 9) for z in useq.ZRangeAround(range=range_um, step=step_um))
    if len(offsets) < 2:
        raise SessionError(f"a z range of {range_um:g} µm at steps of {step_um:g} µm gives "
                           f"{len(offsets)} plane; make the range at least one step")
    return offsets


def make_plan(kind: SessionKind, positions: tuple[PlannedPosition, ...], *, exposure_ms: float,
              grid: GridSpec | None = None, positions_file: str | None = None,
              group: str | None = None, low_preset: str | None = None, high_preset: str | None = None,
              repeats: int = 1, z_range_um: float | None = None, z_step_um: float | None = None) -> SessionPlan:
    """A validated plan: `SessionError` (one line) for anything inconsistent."""
    if not exposure_ms > 0:
        raise SessionError(f"--exposure must be positive, got {exposure_ms:g} ms")
    if repeats < 1:
        raise SessionError(f"--repeats must be at least 1, got {repeats}")
    extra: dict = {}
    if kind == "pairs":
        extra = {"group": group, "low_preset": low_preset, "high_preset": high_preset, "repeats": repeats}
    else:
        if z_range_um is None or z_step_um is None:
            raise SessionError(f"a {kind} session needs --range and --step (µm)")
        extra = {"z_range_um": z_range_um, "z_step_um": z_step_um,
                 "z_offsets_um": z_offsets_um(z_range_um, z_step_um)}
    try:
        return SessionPlan(kind=kind, positions=positions, grid=grid, positions_file=positions_file,
                           exposure_ms=exposure_ms, **extra)
    except ValidationError as e:
        raise SessionError(f"calibration plan: {first_error(e)}") from None


def position_sequence(plan: SessionPlan, index: int) -> useq.MDASequence:
    """What one position acquires. pairs: channels (group, low) then (group, high), repeated
    ``repeats`` times, so each pair is taken back to back; stacks: the planes about the focus.
    The stage position is in the sequence, so that the data's metadata holds it."""
    p = plan.positions[index]
    position = useq.Position(x=p.x_um, y=p.y_um, z=p.z_um, name=p.name)
    if plan.kind == "pairs":
        channels = [useq.Channel(group=plan.group, config=c, exposure=plan.exposure_ms) for c in plan.channels]
        time_plan = {"interval": 0, "loops": plan.repeats} if plan.repeats > 1 else None
        return useq.MDASequence(stage_positions=[position], channels=channels, time_plan=time_plan,
                                axis_order="tpgcz")
    return useq.MDASequence(stage_positions=[position],
                            z_plan=useq.ZRangeAround(range=plan.z_range_um, step=plan.z_step_um),
                            setup=useq.MDAEvent(exposure=plan.exposure_ms))


def check_plan_on_rig(core: CMMCorePlus, plan: SessionPlan) -> None:
    """What the rig must have for the plan, checked before anything is acquired."""
    if not core.getCameraDevice():
        raise SessionError("the rig has no camera device")
    if not core.getXYStageDevice():
        raise SessionError("the rig has no XY stage: a calibration session moves between positions")
    if plan.kind != "pairs" and not core.getFocusDevice():
        raise SessionError(f"a {plan.kind} session needs a focus drive, and the rig has none")
    if plan.kind == "pairs":
        groups = tuple(core.getAvailableConfigGroups())
        if plan.group not in groups:
            raise SessionError(f"config group {plan.group!r} does not exist on this rig (groups: "
                               f"{', '.join(groups) or 'none'})")
        presets = tuple(core.getAvailableConfigs(plan.group))
        for preset in plan.channels:
            if preset not in presets:
                raise SessionError(f"preset {preset!r} does not exist in config group {plan.group!r} "
                                   f"(presets: {', '.join(presets) or 'none'})")


def plan_session(core: CMMCorePlus, kind: SessionKind, kind_options: dict[str, Any], defaults: dict[str, Any], *,
                 positions_file: Path | None = None, grid: str | None = None, spacing_um: float | None = None,
                 exposure_ms: float | None = None, previous: SessionPlan | None = None,
                 warn: Callable[[str], None] = lambda message: None) -> SessionPlan:
    """The plan from the options given (None: not given): positions from ``positions_file`` or a
    ``grid`` ('ROWSxCOLS', default 1x1) ``spacing_um`` apart (default: one field of view) about the
    stage's position, ``kind_options`` (the kind's presets and repeats, or z range and step; those
    not given take ``defaults``). When resuming, ``previous`` is the session's plan and options left
    out take its values. ``warn`` receives what is legal but worth saying (fields that overlap).
    SessionError (one line)."""
    z_now = core.getPosition() if core.getFocusDevice() else None
    if positions_file is not None:
        positions, grid_spec, source = _listed_positions(positions_file, previous, z_now), None, str(positions_file)
    elif grid is None and spacing_um is None and previous is not None:
        positions, grid_spec, source = previous.positions, previous.grid, previous.positions_file
    else:
        grid_spec = _grid(core, grid, spacing_um, previous)
        z = previous.positions[0].z_um if previous is not None and previous.grid is not None else z_now
        positions, source = grid_positions(grid_spec, z), None
        if (message := overlap_warning(core, grid_spec)) is not None:
            warn(message)
    own = previous.model_dump() if previous is not None else {}
    chosen = {k: v if v is not None else own.get(k, defaults[k]) for k, v in kind_options.items()}
    exposure = exposure_ms or (previous.exposure_ms if previous is not None else core.getExposure())
    return make_plan(kind, positions, exposure_ms=exposure, grid=grid_spec, positions_file=source, **chosen)


def _listed_positions(path: Path, previous: SessionPlan | None, z_now: float | None) -> tuple[PlannedPosition, ...]:
    """A positions file's positions; entries without z take the focus of the day (when resuming:
    of the day the session started, which its plan kept)."""
    positions = read_positions(path)
    if previous is not None:
        return tuple(p if p.z_um is not None or i >= len(previous.positions)
                     else p.model_copy(update={"z_um": previous.positions[i].z_um})
                     for i, p in enumerate(positions))
    return tuple(p if p.z_um is not None else p.model_copy(update={"z_um": z_now}) for p in positions)


def _grid(core: CMMCorePlus, grid: str | None, spacing_um: float | None, previous: SessionPlan | None) -> GridSpec:
    """The grid asked for, centred where the session's grid was (resuming) or on the stage now."""
    rows, cols = parse_grid(grid or "1x1")
    before = previous.grid if previous is not None else None
    spacing = spacing_um or (before.spacing_um if before is not None else field_of_view_um(core))
    if spacing is None:
        raise SessionError("the rig has no pixel size configured: give the grid's --spacing in µm")
    cx, cy = (before.centre_x_um, before.centre_y_um) if before is not None else core.getXYPosition()
    return GridSpec(rows=rows, columns=cols, spacing_um=spacing, centre_x_um=cx, centre_y_um=cy)


def overlap_warning(core: CMMCorePlus, grid: GridSpec) -> str | None:
    """Overlapping fields are legal, but training holds out whole positions to score a model:
    a held-out field that overlaps a trained one is not unseen."""
    field_um = field_of_view_um(core)
    if grid.rows * grid.columns > 1 and field_um is not None and grid.spacing_um < field_um:
        return (f"the grid spacing {grid.spacing_um:g} µm is less than the field of view ({field_um:g} µm): "
                "neighbouring fields overlap, so a model's held-out fields would not be unseen")
    return None


def field_of_view_um(core: CMMCorePlus) -> float | None:
    """The camera's field of view at the sample (its longer side, to 1 nm), µm; None without a pixel size."""
    px = core.getPixelSizeUm()
    return round(px * max(core.getImageWidth(), core.getImageHeight()), 3) if px else None

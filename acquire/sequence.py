"""What to acquire: a useq-schema `MDASequence`, from a YAML/JSON file or from simple flags.

The exposure of a channel-less sequence travels in the sequence's ``setup`` event, which the
pymmcore-plus engine applies before the first frame (and undoes after the last), so it needs
no channel config group on the rig.
"""

from __future__ import annotations

import json
from pathlib import Path

import useq
import yaml
from pydantic import ValidationError


class SequenceError(Exception):
    """One-line, user-facing message: which sequence, and what is wrong with it."""


def load_sequence(path: Path | None = None, *, frames: int | None = None, interval_s: float = 0.0,
                  exposure_ms: float | None = None) -> useq.MDASequence:
    """The sequence in ``path`` (.yaml, .yml or .json), or one made from the flags.

    ``frames`` makes a time plan of that many frames, ``interval_s`` apart (0 = as fast as the
    camera goes); ``exposure_ms`` sets the camera's exposure for the whole sequence. Without a
    file or ``frames``: a single frame. With a file, a flag may add what the file leaves out,
    but not contradict it.
    """
    if frames is not None and frames < 1:
        raise SequenceError(f"frames must be at least 1, got {frames}")
    if interval_s < 0:
        raise SequenceError(f"interval must not be negative, got {interval_s} s")
    if interval_s and frames is None:
        raise SequenceError(f"an interval ({interval_s} s) needs a number of frames")
    if exposure_ms is not None and not exposure_ms > 0:
        raise SequenceError(f"exposure must be positive, got {exposure_ms} ms")

    if path is None:
        sequence = useq.MDASequence(time_plan={"interval": interval_s, "loops": frames or 1})
        return _with_exposure(sequence, exposure_ms, "the sequence")

    path = Path(path)
    sequence = _read(path)
    if frames is not None:
        if sequence.time_plan is None:
            sequence = sequence.replace(time_plan={"interval": interval_s, "loops": frames})
        elif sequence.sizes.get("t") != frames or interval_s:
            raise SequenceError(f"sequence {path} has its own time plan ({sequence.sizes.get('t')} "
                                f"frames); remove it from the file or drop the frames flags")
    sequence = _with_exposure(sequence, exposure_ms, f"sequence {path}")
    if next(iter(sequence), None) is None:
        raise SequenceError(f"sequence {path} describes no frames")
    return sequence


def _read(path: Path) -> useq.MDASequence:
    if path.suffix not in {".yaml", ".yml", ".json"}:
        raise SequenceError(f"sequence {path}: unknown file type {path.suffix!r} "
                            f"(use .yaml, .yml or .json)")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SequenceError(f"cannot read sequence {path}: {err.strerror or err}") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        kind = path.suffix[1:].upper()
        raise SequenceError(f"sequence {path} is not valid {kind}: {_describe(err)}") from None
    # useq ignores fields it does not know; a misspelt "z_plan" would silently drop the z-stack.
    if isinstance(raw, dict) and (unknown := sorted(set(raw) - set(useq.MDASequence.model_fields))):
        raise SequenceError(f"sequence {path}: unknown field(s) {', '.join(map(repr, unknown))}")
    try:
        return useq.MDASequence.model_validate(raw)
    except ValidationError as err:
        raise SequenceError(f"sequence {path}: {_describe(err)}") from None


def _with_exposure(sequence: useq.MDASequence, exposure_ms: float | None, name: str) -> useq.MDASequence:
    if exposure_ms is None:
        return sequence
    set_in_file = {c.exposure for c in sequence.channels if c.exposure is not None}
    if sequence.setup is not None and sequence.setup.exposure is not None:
        set_in_file.add(sequence.setup.exposure)
    if set_in_file - {exposure_ms}:
        own = ", ".join(f"{e:g}" for e in sorted(set_in_file))
        raise SequenceError(f"{name} sets its own exposure ({own} ms); remove it from the file "
                            f"or drop the exposure flag")
    setup = sequence.setup or useq.MDAEvent()
    return sequence.replace(setup=setup.model_copy(update={"exposure": exposure_ms}))


def _describe(err: Exception) -> str:
    """The first problem in a parser's or validator's error, on one line."""
    if isinstance(err, ValidationError):
        first = _closest_union_branch(err.errors())[0]
        where = ".".join(str(part) for part in first["loc"] if not _is_branch(part))
        return f"{where + ': ' if where else ''}{first['msg']}"
    if isinstance(err, json.JSONDecodeError):
        return f"line {err.lineno}: {err.msg}"
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        return f"line {err.problem_mark.line + 1}: {err.problem}"
    return " ".join(str(err).split())


def _is_branch(loc_part: object) -> bool:
    """pydantic names the member of a union (``ZRangeAround``) in an error's location."""
    return isinstance(loc_part, str) and loc_part[:1].isupper()


def _closest_union_branch(errors: list) -> list:
    """The errors of the union member the input came closest to: a plan with a wrong value
    beats one missing a field, so ``{range: 2, step: x}`` reports `step`, not missing `top`."""
    branches: dict[tuple, list] = {}
    for error in errors:
        loc = error["loc"]
        cut = next((i + 1 for i, part in enumerate(loc) if _is_branch(part)), len(loc))
        branches.setdefault(loc[:cut], []).append(error)
    return min(branches.values(), key=lambda group: (sum(e["type"] == "missing" for e in group), len(group)))

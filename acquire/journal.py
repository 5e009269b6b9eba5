"""The run journal: an account of what an acquisition saved, true even if it is killed.

Next to the raw data, run.ome.zarr -> run.journal.jsonl: a first line that says what was
planned (the sequence, the pipeline, the outputs), one line for each frame acquired (handed to
the raw data's writer), restored (handed to the restored data's writer) or refused, and a last
line with the summary. The writers of the raw data (pymmcore-plus's) and of restored OME-Zarr
(tensorstore) write on threads of their own, so a killed run's stores may hold a few frames
more or fewer than its journal says; `livescope report --recover` counts what a raw OME-TIFF holds. Each line is flushed as it is written, so a process killed at any moment
(kill -9, a crash, a power cut of the client alone) leaves every line before it; a journal
without its last line is an interrupted run. `livescope report RUN` reads it.

Written from two threads (the acquisition's and the results'); a lock keeps lines whole.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

JOURNAL_SUFFIX = ".journal.jsonl"


class JournalError(Exception):
    """A journal that cannot be read (one line: the file and why)."""


class RunPlan(BaseModel):
    """The journal's first line."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["plan"] = "plan"
    started_utc: str
    pid: int
    host: str
    frames_planned: int
    sequence: dict
    pipeline: tuple[str, ...] = ()  # empty: acquire only
    server: str | None = None
    raw_path: str
    results_path: str | None = None  # restored frames, or the emitter table


class RunEnd(BaseModel):
    """The journal's last line: the run ended (completely or stopped for a reason it gives)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["end"] = "end"
    ended_utc: str
    summary: dict


class RunAccount(BaseModel):
    """What a journal says of its run."""

    model_config = ConfigDict(frozen=True)

    plan: RunPlan
    status: Literal["complete", "stopped", "interrupted"]
    frames_acquired: int
    frames_restored: int  # written to the restored data
    frames_refused: int
    refusal_reasons: dict[str, int]
    last_line_utc: str | None  # when the journal was last written (an interrupted run: about when)
    end: RunEnd | None
    unreadable_lines: int = 0  # only a killed run's last, half-written one is expected


def journal_path(raw: Path) -> Path:
    """run.ome.zarr -> run.journal.jsonl (same folder)."""
    name = raw.name
    for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif"):
        if name.endswith(suffix):
            return raw.with_name(name[: -len(suffix)] + JOURNAL_SUFFIX)
    return raw.with_name(name + JOURNAL_SUFFIX)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class RunJournal:
    """Appends the journal of one run; replaces an earlier run's journal at the same path."""

    def __init__(self, raw: Path, *, sequence: dict, frames_planned: int, pipeline: Sequence[str] = (),
                 server: str | None = None, results_path: Path | None = None) -> None:
        self.path = journal_path(raw)
        self._lock = threading.Lock()
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed by end()
        self._t0 = time.monotonic()
        self._write(RunPlan(started_utc=_now(), pid=os.getpid(), host=socket.gethostname(),
                            frames_planned=frames_planned, sequence=sequence, pipeline=tuple(pipeline),
                            server=server, raw_path=str(raw),
                            results_path=str(results_path) if results_path else None).model_dump())

    def acquired(self, seq: int) -> None:
        self._write({"acquired": seq, "t_s": self._elapsed()})

    def restored(self, seq: int) -> None:
        self._write({"restored": seq, "t_s": self._elapsed()})

    def refused(self, seq: int, reason: str) -> None:
        self._write({"refused": seq, "reason": reason, "t_s": self._elapsed()})

    def end(self, summary: dict) -> None:
        self._write(RunEnd(ended_utc=_now(), summary=summary).model_dump())
        with self._lock:
            self._file.close()

    def _elapsed(self) -> float:
        return round(time.monotonic() - self._t0, 3)

    def _write(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file.closed:
                return  # a late outcome after the run ended adds nothing
            self._file.write(line)
            self._file.flush()  # to the OS: survives the process being killed


@dataclass
class FrameTimes:
    """When each frame was acquired, restored (written) or refused, s from the run's start."""

    acquired_s: dict[int, float] = field(default_factory=dict)
    restored_s: dict[int, float] = field(default_factory=dict)
    refused: dict[int, tuple[float, str]] = field(default_factory=dict)  # seq -> (t_s, reason)


def _journal_lines(raw_or_journal: Path) -> tuple[RunPlan, list[str]]:
    path = raw_or_journal if raw_or_journal.name.endswith(JOURNAL_SUFFIX) else journal_path(raw_or_journal)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise JournalError(f"no run journal {path.name} next to {raw_or_journal.name}: it was not "
                           "written by `livescope acquire --output`") from None
    except (OSError, UnicodeDecodeError) as e:
        raise JournalError(f"cannot read {path}: {e}") from None
    try:
        plan = RunPlan.model_validate_json(lines[0]) if lines else None
    except ValidationError:
        plan = None
    if plan is None:
        raise JournalError(f"{path} is not a livescope run journal (its first line is not a run plan)")
    return plan, lines[1:]


def read_frame_times(raw_or_journal: Path) -> FrameTimes:
    """Each frame's times, from the journal of the run whose raw data (or journal) this is."""
    return _scan(_records(_journal_lines(raw_or_journal)[1])[0])[0]


def _records(lines: list[str]) -> tuple[list[dict], int]:
    """The journal's records, and how many lines could not be read (a killed run's last one)."""
    records, bad = [], 0
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    return records, bad


def _scan(records: list[dict]) -> tuple[FrameTimes, dict[str, int], RunEnd | None, float | None]:
    """The frames' times, the refusals counted by reason, the run's end, and the last time written."""
    times, reasons, end, last_t = FrameTimes(), {}, None, None
    for record in records:
        if record.get("kind") == "end":
            end = RunEnd.model_validate(record)
        elif "acquired" in record:
            times.acquired_s[record["acquired"]] = record.get("t_s", 0.0)
        elif "restored" in record:
            times.restored_s[record["restored"]] = record.get("t_s", 0.0)
        elif "refused" in record:
            times.refused[record["refused"]] = (record.get("t_s", 0.0), record["reason"])
            reasons[record["reason"]] = reasons.get(record["reason"], 0) + 1
        last_t = record.get("t_s", last_t)
    return times, reasons, end, last_t


def read_account(raw_or_journal: Path) -> RunAccount:
    """The account of the run whose raw data (or journal) this is; JournalError if there is none."""
    plan, lines = _journal_lines(raw_or_journal)
    records, bad = _records(lines)  # a line cut short by the kill is counted, not fatal
    times, reasons, end, last_t = _scan(records)
    stopped = end is not None and (end.summary.get("stopped_reason") or end.summary.get("output_error"))
    status = "interrupted" if end is None else "stopped" if stopped else "complete"
    when = None
    if last_t is not None:
        t0 = datetime.fromisoformat(plan.started_utc)
        when = datetime.fromtimestamp(t0.timestamp() + last_t, timezone.utc).isoformat(timespec="seconds")
    return RunAccount(plan=plan, status=status, frames_acquired=len(times.acquired_s),
                      frames_restored=len(times.restored_s), frames_refused=len(times.refused),
                      refusal_reasons=reasons, last_line_utc=when, end=end, unreadable_lines=bad)

"""Calibration sessions: run a `SessionPlan` position by position on a rig, crash-safely.

Each position is its own useq sequence run through pymmcore-plus (``core.mda.run(seq,
output=path)``), which writes its OME-Zarr; `SessionStore` turns that into a committed
position (renamed, checksummed, in the manifest). The stage is moved to each position and
read back before its sequence runs, because pymmcore-plus's engine only logs a failed move.

Ctrl-C during a position cancels its sequence at the next frame (the runner then closes its
output cleanly); the partial data is set aside and `SessionInterrupted` raised. ``resume``
continues a session: same plan, completed positions skipped, the interrupted one re-acquired.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import useq
from pydantic import BaseModel
from pymmcore_plus import CMMCorePlus

from livescope.acquire.calibration.plan import (
    check_plan_on_rig,
    grid_positions,
    make_plan,
    parse_grid,
    position_sequence,
    read_positions,
    z_offsets_um,
)
from livescope.acquire.calibration.store import SessionStore, is_disk_full, stored_axes
from livescope.camera import CameraCalibration
from livescope.session import (
    RigSnapshot,
    Session,
    SessionError,
    SessionManifest,
    SessionPlan,
    load_session,
    utc_now,
)

__all__ = ["SessionInterrupted", "SessionPlan", "SessionProgress", "check_plan_on_rig", "grid_positions",
           "make_plan", "parse_grid", "position_sequence", "read_positions", "rig_snapshot", "run_session",
           "z_offsets_um"]

XY_TOLERANCE_UM = 1.0  # a stage further than this from where it was sent did not get there
Z_TOLERANCE_UM = 0.25
_MDA_LOG = logging.getLogger("pymmcore-plus")


class SessionInterrupted(SessionError):
    """The user stopped the session (Ctrl-C); what was completed is saved."""


class SessionProgress(BaseModel):
    """Where a session is, for a progress display."""

    positions_total: int
    positions_done: int = 0  # on disk, including those of earlier runs
    position: int | None = None  # the index being acquired
    position_name: str = ""
    frames_total: int = 0  # of the current position
    frames_done: int = 0


def run_session(core: CMMCorePlus, plan: SessionPlan, output: Path, *, resume: bool = False,
                progress: Callable[[SessionProgress], None] | None = None,
                camera: CameraCalibration | None = None, mm_config: Path | None = None,
                command_line: list[str] | None = None) -> Session:
    """Acquire ``plan`` into the session folder ``output``; return it, read back.

    A new session refuses an existing ``output``; ``resume`` continues the one there and
    refuses a plan that differs from its own. ``camera``: the camera's calibration when known
    (the virtual microscope's is taken from it); ``mm_config``: the rig's Micro-Manager config,
    recorded. Raises `SessionError` (one line; `SessionInterrupted` for Ctrl-C) with every
    completed position kept on disk and in the manifest.
    """
    output = Path(output)
    check_plan_on_rig(core, plan)
    if resume:
        store = SessionStore.reopen(output)
        if diff := store.manifest.plan.differences(plan):
            raise SessionError(f"cannot resume {output}: the plan differs from the session's "
                               f"({'; '.join(diff[:3])}); repeat the session's own options")
    else:
        now = utc_now()
        manifest = SessionManifest(
            session_id=uuid.uuid4().hex, kind=plan.kind, command_line=list(command_line or sys.argv),
            created_at=now, updated_at=now, rig=rig_snapshot(core, camera=camera, mm_config=mm_config),
            plan=plan)
        store = SessionStore.create(output, manifest)
    state = SessionProgress(positions_total=len(plan.positions),
                            positions_done=len(store.manifest.completed_indices()))
    for index in store.manifest.remaining():
        _acquire_position(core, store, index, state, progress)
        state.positions_done += 1
        if progress:
            progress(state)
    store.finish()
    return load_session(output)


def _acquire_position(core: CMMCorePlus, store: SessionStore, index: int, state: SessionProgress,
                      progress: Callable[[SessionProgress], None] | None) -> None:
    plan = store.manifest.plan
    pos = plan.positions[index]
    state.position, state.position_name = index, pos.name
    state.frames_total, state.frames_done = plan.frames_per_position, 0
    if progress:
        progress(state)
    started = utc_now()
    try:
        xyz = _move_to(core, plan, index)
    except SessionError as e:
        store.set_aside(index, str(e), None)
        raise SessionError(f"{e}; {_saved(store)}, resume with --resume once it is reachable") from None

    partial = store.partial_path(index)
    if partial.exists():  # left by this process's own earlier failure: keep it, out of the way
        store.set_aside(index, "left over from an earlier attempt", None)

    def frame_ready(img: np.ndarray, event: useq.MDAEvent, meta: dict | None = None) -> None:
        state.frames_done += 1
        if progress:
            progress(state)

    sequence = position_sequence(plan, index)
    core.mda.events.frameReady.connect(frame_ready)  # synchronous: counted before run() returns
    try:
        with _ctrl_c_cancels(core) as interrupted:
            core.mda.run(sequence, output=str(partial))
    except BaseException as e:
        _close_output(core)  # before its folder is moved aside
        store.set_aside(index, f"stopped by {_describe(e)}", state.frames_done)
        if isinstance(e, Exception):
            raise _position_error(store, pos.name, e) from None
        raise
    finally:
        core.mda.events.frameReady.disconnect(frame_ready)
    if interrupted.is_set():
        store.set_aside(index, "interrupted by the user (Ctrl-C)", state.frames_done)
        raise SessionInterrupted(f"interrupted at position {pos.name} ({state.frames_done} of "
                                 f"{plan.frames_per_position} frames, set aside); {_saved(store)}, "
                                 "continue with --resume")
    if state.frames_done != plan.frames_per_position:
        store.set_aside(index, f"the camera delivered {state.frames_done} of {plan.frames_per_position} "
                               "frames", state.frames_done)
        raise SessionError(f"position {pos.name}: the camera delivered {state.frames_done} of "
                           f"{plan.frames_per_position} frames (see the log); {_saved(store)}, "
                           "continue with --resume")
    try:
        store.commit(index, name=pos.name, xyz_um=xyz, axes=stored_axes(partial), channels=plan.channels,
                     frame_count=state.frames_done, started_at=started)
    except OSError as e:
        if store.partial_path(index).exists():
            store.set_aside(index, f"could not be saved: {_describe(e)}", state.frames_done)
        raise _position_error(store, pos.name, e) from None


def _move_to(core: CMMCorePlus, plan: SessionPlan, index: int) -> tuple[float, float, float | None]:
    """Move to a planned position and check the stage got there; the position read back."""
    p = plan.positions[index]
    where = f"({p.x_um:g}, {p.y_um:g}{f', z {p.z_um:g}' if p.z_um is not None else ''} µm)"
    try:
        core.setXYPosition(p.x_um, p.y_um)
        if p.z_um is not None:
            core.setPosition(p.z_um)
        core.waitForSystem()
        x, y = core.getXYPosition()
        z = core.getPosition() if core.getFocusDevice() else None
    except Exception as e:
        raise SessionError(f"the stage cannot reach position {p.name} {where}: {_describe(e)}") from None
    if max(abs(x - p.x_um), abs(y - p.y_um)) > XY_TOLERANCE_UM or (
            p.z_um is not None and z is not None and abs(z - p.z_um) > Z_TOLERANCE_UM):
        got = f"({x:g}, {y:g}{f', z {z:g}' if z is not None else ''} µm)"
        raise SessionError(f"the stage cannot reach position {p.name} {where}: it stopped at {got}")
    return float(x), float(y), (float(z) if z is not None else None)


def _close_output(core: CMMCorePlus) -> None:
    """Close the run's OME-Zarr writer. pymmcore-plus closes it when a run ends or raises an
    Exception, but not after a BaseException (KeyboardInterrupt, SystemExit): left open, ome-writers
    would flush its pending writes when it is garbage-collected - into a folder moved aside by then.
    The runner keeps its sink only as a private attribute; closing an already closed one is a no-op."""
    sink = getattr(core.mda, "_sink", None)
    if sink is not None:
        try:
            sink.close()
        except Exception:  # a writer that cannot finish leaves its partial data as it is
            pass


@contextmanager
def _ctrl_c_cancels(core: CMMCorePlus) -> Iterator[threading.Event]:
    """Ctrl-C cancels the running sequence at its next frame (so pymmcore-plus closes the
    output cleanly) instead of raising inside it; the event says it happened."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def cancel(signum, frame) -> None:
        interrupted.set()
        core.mda.cancel()

    def not_our_cancel(record: logging.LogRecord) -> bool:
        # pymmcore-plus logs the cancel as a warning; the user pressed Ctrl-C and is told once.
        return not (interrupted.is_set() and str(record.msg).startswith("MDA Canceled"))

    previous = signal.signal(signal.SIGINT, cancel)
    _MDA_LOG.addFilter(not_our_cancel)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)
        _MDA_LOG.removeFilter(not_our_cancel)


def _position_error(store: SessionStore, name: str, err: BaseException) -> SessionError:
    if is_disk_full(err):
        return SessionError(f"the disk is full: position {name} could not be written (set aside); "
                            f"{_saved(store)}; free some space and continue with --resume")
    return SessionError(f"position {name} failed: {_describe(err)}; {_saved(store)}, "
                        "continue with --resume")


def _saved(store: SessionStore) -> str:
    n, total = len(store.manifest.completed), len(store.manifest.plan.positions)
    return f"{n} of {total} positions are saved in {store.root}"


def _describe(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def rig_snapshot(core: CMMCorePlus, *, camera: CameraCalibration | None = None,
                 mm_config: Path | None = None) -> RigSnapshot:
    """The rig as the session starts: its property state, pixel size, camera calibration and,
    for the virtual microscope, its whole configuration."""
    from livescope.acquire.microscope import VirtualMicroscope

    try:
        state = {dev: {k: str(v) for k, v in props.items()} for dev, props in core.getSystemState().dict().items()}
    except Exception:  # a device that fails to report must not stop the session
        state = {}
    try:
        pixel_config = core.getCurrentPixelSizeConfig() or None
    except Exception:
        pixel_config = None
    virtual = isinstance(core, VirtualMicroscope)
    if virtual and camera is None:
        c = core.rig.camera
        camera = CameraCalibration(baseline_adu=c.baseline_adu, e_per_adu=c.e_per_adu, em_gain=c.em_gain)
    return RigSnapshot(
        source="virtual" if virtual else "micro-manager",
        mm_config_path=str(Path(mm_config).resolve()) if mm_config is not None else None,
        system_state=state, pixel_size_um=core.getPixelSizeUm() or None, pixel_size_config=pixel_config,
        camera=camera, virtual_rig_metadata=core.rig.metadata() if virtual else None,
        virtual_rig_config=core.rig.model_dump(mode="json") if virtual else None)

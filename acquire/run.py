"""One acquisition: run a useq sequence on a core, stream frames, collect restored results.

The acquisition runs on the calling thread (pymmcore-plus's MDA runner); results are read on
a second thread, written to disk and summarised. Progress is reported through a callback so
that the CLI can draw it and tests can ignore it. A pipeline ending in ``localise`` gives an
emitter table per frame instead of an image: the tables are counted live and, with an output,
written as a ThunderSTORM CSV and a super-resolution render (``acquire/localisations.py``).

If the results cannot be written, the acquisition stops (the raw data acquired is saved) and
the summary's ``output_error`` says why; nothing then claims the results were saved.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import useq
from livescope.acquire.autofocus import AutofocusReport, AutofocusSettings, FocusController, FocusScorer, focused_run
from livescope.acquire.journal import RunJournal
from livescope.acquire.localisations import LocalisationWriter, SmlmStop, gives_tables, localises
from livescope.acquire.psf_tiles import PsfSummary, PsfTileWriter, reads_psf
from livescope.acquire.results import (
    RestoredWriteError,
    RestoredWriter,
    restored_path,
    table_paths,
)
from livescope.acquire.streamer import FrameStreamer
from pydantic import BaseModel, ConfigDict
from pymmcore_plus import CMMCorePlus

from livescope.camera import CameraCalibration
from livescope.client import DeliveryMode, Refusal, Result, StreamClient
from livescope.protocol import Objective, stage_name
from livescope.smlm_quality import SmlmQuality

log = logging.getLogger(__name__)


class AcquisitionProgress(BaseModel):
    acquired: int = 0
    total: int = 0
    restored: int = 0
    refused: int = 0
    elapsed_s: float = 0.0
    latency_p50_ms: float | None = None
    tables: int = 0  # results that are emitter tables (a localise pipeline's)
    emitters: int = 0  # in all tables so far
    last_frame_emitters: int = 0  # in the latest table
    frc_resolution_nm: float | None = None  # the latest check's (with a stop rule)
    psf_abs_defocus_um: float | None = None  # a psf pipeline's latest frame, median over its tiles
    focus_um: float | None = None  # the autofocus's working plane (with autofocus)
    focus_alarms: int = 0  # its focus-loss alarms so far

    def follow(self, focus: FocusController | None) -> None:
        """Take the autofocus's latest working plane and alarm count."""
        if focus is not None:
            self.focus_um, self.focus_alarms = focus.working_um, len(focus.alarms)

    @property
    def fps(self) -> float:
        return self.acquired / self.elapsed_s if self.elapsed_s else 0.0


class AcquisitionSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    frames_acquired: int
    frames_planned: int = 0
    frames_sent: int = 0
    results: int = 0
    errors: int = 0
    dropped_by_client: int = 0
    dropped_by_server: int = 0
    acquisition_fps: float
    restored_fps: float = 0.0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    server_latency_p50_ms: float | None = None
    unanswered: int = 0  # sent or queued, but the server never answered
    not_streamed: int = 0  # acquired after streaming stopped (saved raw, never sent)
    stopped_reason: str | None = None  # why restoration stopped before the end, if it did
    ended_early: str | None = None  # why the acquisition had enough before its planned frames (not a failure)
    output_error: str | None = None  # why the restored frames or tables could not be written
    models: tuple[str, ...] = ()
    refusal_reasons: dict[str, int] = {}
    raw_path: str | None = None
    restored_path: str | None = None
    tables: int = 0  # results that are emitter tables (a localise pipeline's)
    emitters: int = 0  # in all tables
    table_path: str | None = None  # ThunderSTORM CSV
    render_path: str | None = None  # super-resolution render
    smlm: SmlmQuality | None = None  # a localise pipeline's FRC resolution, drift and density at the end
    autofocus: AutofocusReport | None = None  # what the autofocus did, with its focus-loss alarms
    psf: PsfSummary | None = None  # a psf pipeline's tiles, and the last frame's |defocus|
    warnings: tuple[str, ...] = ()  # the server's, on frames unlike its models' training data (each once)
    frames_with_warnings: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_by_client + self.dropped_by_server


def refocuses(pipeline: Sequence[str]) -> bool:
    """Whether a pipeline names a refocusing stage (a model named refocus, or refocus-something):
    only then does a delta-z mean anything."""
    return any(stage_name(stage).startswith("refocus") for stage in pipeline)


def run_acquisition(
    core: CMMCorePlus,
    sequence: useq.MDASequence,
    *,
    server: str | None = None,
    pipeline: Sequence[str] = ("denoise",),
    mode: DeliveryMode = "lossless",
    output: Path | None = None,
    stream: str | None = None,
    max_in_flight: int = 2,
    progress: Callable[[AcquisitionProgress], None] | None = None,
    connect_timeout_s: float = 5.0,
    server_timeout_s: float = 30.0,
    camera: CameraCalibration | None = None,
    render_px_nm: float = 10.0,
    dz_um: float | None = None,
    stop: SmlmStop | None = None,
    autofocus: AutofocusSettings | None = None,
    objective: Objective | None = None,
) -> AcquisitionSummary:
    """Acquire ``sequence``; with ``server``, restore every frame live.

    ``camera`` (ADU -> photons) is sent with every frame; a ``localise`` stage needs it and the
    core's pixel size. ``dz_um`` (µm, the wanted plane's focus minus the frame's) is sent with
    every frame too; a ``refocus`` stage moves the focus by it. With ``output`` run.ome.zarr, a
    pipeline ending in ``localise`` writes run.localise.csv and a render of ``render_px_nm``
    pixels, run.localise.render.ome.tif; any other writes the restored frames to
    run.<stage>.ome.zarr. Existing outputs are replaced. A localise pipeline's table and render are
    corrected for the lateral drift estimated from the localisations.

    ``stop`` (a localise pipeline): the acquisition ends by itself once the FRC resolution reaches
    its target or the emitter density falls below its floor; what was acquired and localised is
    saved as at the planned end, and the summary's ``ended_early`` says why.

    ``objective``: the optics sent with every frame; a pipeline ending in ``psf`` needs it and the
    core's pixel size, and with ``output`` writes each frame's tiles to run.psf.csv.

    ``autofocus``: the focus stage follows the sample between frames (`acquire.autofocus`: frames
    dither about the working plane and their sharpness moves it); the sequence may have no z plan
    and one position. The summary's ``autofocus`` says what it did and lists focus-loss alarms.

    Raises ServerUnreachableError before acquiring anything if the server does not answer. If
    it stops answering later (``server_timeout_s`` with the window full), the acquisition is
    cancelled: what was acquired is saved, and the summary counts the unanswered frames and
    says why it stopped. If the restored frames (or the tables) cannot be written, the
    acquisition is cancelled the same way, and ``output_error`` says why.
    """
    tables = server is not None and gives_tables(pipeline)
    if stop is not None and not tables:
        raise ValueError("a stop rule (FRC resolution, emitter density) needs a pipeline ending in localise")
    psf = server is not None and reads_psf(pipeline)
    if psf and (objective is None or not core.getPixelSizeUm()):
        raise ValueError("a psf stage needs the objective (objective=Objective(...)) and the microscope's pixel size")
    if server is not None and localises(pipeline):
        if camera is None:
            raise ValueError("a localise stage needs the camera's calibration (camera=CameraCalibration(...))")
        if not core.getPixelSizeUm():
            raise ValueError("a localise stage needs the pixel size, and the microscope has none configured")
    focus, events = focused_run(core, sequence, autofocus) if autofocus is not None else (None, sequence)
    total = len(list(sequence.iter_events()))
    state = AcquisitionProgress(total=total)
    t0 = time.perf_counter()
    outputs: list = [str(output)] if output is not None else []
    client = None
    cancel = _Cancel(core)
    if server is not None:
        client = StreamClient(server, stream=stream, pipeline=pipeline, mode=mode,
                              max_in_flight=max_in_flight, camera=camera, dz_um=dz_um, objective=objective)
        try:
            client.connect(timeout_s=connect_timeout_s)
        except Exception:
            client.close(timeout_s=0)
            raise
        streamer = FrameStreamer(client, submit_timeout_s=server_timeout_s)
        streamer.on_error, streamer.focus = cancel, focus
        outputs.insert(0, streamer)
    else:
        counter = _Counter(state, progress, t0, focus)
        outputs.insert(0, counter)

    collector = journal = None
    writer = localisations = psf_tiles = None
    if client is not None:
        stage = stage_name(pipeline[-1])
        if tables:
            table_path, render_path = table_paths(output, stage) if output is not None else (None, None)
            localisations = LocalisationWriter(
                table_path, render_path, frame_shape_px=(core.getImageHeight(), core.getImageWidth()),
                pixel_size_nm=core.getPixelSizeUm() * 1000.0, render_px_nm=render_px_nm,
                source=str(output) if output is not None else "", stop=stop)
            # enough: the same cancel as a failure's (the MDA ends after its current frame), but no error
            localisations.on_enough = lambda reason: cancel(RuntimeError(reason))
        elif psf:
            psf_tiles = PsfTileWriter(table_paths(output, stage)[0] if output is not None else None, objective,
                                      source=str(output) if output is not None else "")
        elif output is not None:
            writer = RestoredWriter(restored_path(output, stage), sequence, core.getPixelSizeUm() or None,
                                    window_adu=(0.0, float(2 ** core.getImageBitDepth() - 1)),
                                    source=str(output), stage=stage)
    if output is not None:
        results = (writer.path if writer is not None else localisations.table_path if localisations
                   else psf_tiles.path if psf_tiles else None)
        journal = RunJournal(output, sequence=sequence.model_dump(mode="json"), frames_planned=total,
                             pipeline=pipeline if client is not None else (), server=server,
                             results_path=results)
        outputs.append(_JournalAcquired(journal))  # after the raw writer: the frame is handed to it
        if writer is not None:
            writer.on_written = journal.restored
    if client is not None:
        collector = _ResultCollector(client, writer, localisations, state, progress, t0, journal)
        collector.focus, collector.psf_tiles = focus, psf_tiles
        collector.on_error = cancel
        collector.start()

    if focus is not None:
        outputs.append(FocusScorer(focus, camera.baseline_adu if camera is not None else None))
    with cancel.quiet():
        core.mda.run(events, output=outputs, overwrite=True)
    t_acquired = time.perf_counter() - t0
    focus_report = focus.report() if focus is not None else None
    for alarm in focus_report.alarms if focus_report is not None else ():
        log.warning("autofocus: %s", alarm)
    acquired = streamer.acquired if client is not None else counter.acquired

    if client is None:
        state.acquired, state.elapsed_s = acquired, t_acquired
        state.follow(focus)
        if progress:
            progress(state)
        return _ended(journal, AcquisitionSummary(frames_acquired=acquired, frames_planned=total,
                                                  acquisition_fps=acquired / t_acquired,
                                                  raw_path=str(output) if output else None,
                                                  autofocus=focus_report))

    client.wait_idle(timeout_s=0 if streamer.error is not None else server_timeout_s)
    collector.finish(client.stats.submitted - client.stats.in_flight - client.stats.queued)
    stats = client.stats
    client.close(timeout_s=0)
    unanswered = stats.in_flight + stats.queued
    stopped = str(streamer.error) if streamer.error is not None else (
        f"the server did not answer {unanswered} frames within {server_timeout_s:g} s"
        if unanswered else None)
    failed = collector.error is not None
    t_total = time.perf_counter() - t0
    lat = np.array(collector.latencies_ms) if collector.latencies_ms else None
    srv = np.array(collector.server_ms) if collector.server_ms else None
    return _ended(journal, AcquisitionSummary(
        frames_acquired=acquired,
        frames_planned=total,
        frames_sent=stats.sent,
        results=stats.results,
        errors=stats.errors,
        dropped_by_client=stats.dropped_by_client,
        dropped_by_server=stats.dropped_by_server,
        acquisition_fps=acquired / t_acquired,
        restored_fps=stats.results / t_total,
        latency_p50_ms=float(np.percentile(lat, 50)) if lat is not None else None,
        latency_p99_ms=float(np.percentile(lat, 99)) if lat is not None else None,
        server_latency_p50_ms=float(np.percentile(srv, 50)) if srv is not None else None,
        unanswered=unanswered,
        not_streamed=acquired - stats.submitted,
        stopped_reason=stopped,
        ended_early=collector.localisations.enough if collector.localisations is not None else None,
        output_error=str(collector.error) if failed else None,
        models=tuple(sorted(collector.models)),
        refusal_reasons=collector.refusal_reasons,
        warnings=tuple(collector.warnings), frames_with_warnings=collector.frames_with_warnings,
        raw_path=str(output) if output else None,
        restored_path=(str(collector.writer.path)
                       if collector.writer and collector.writer.written and not failed else None),
        autofocus=focus_report,
        psf=psf_tiles.summary() if psf_tiles is not None and psf_tiles.frames else None,
        **_table_summary(collector.localisations, failed),
        **({"table_path": str(psf_tiles.path)} if psf_tiles is not None and psf_tiles.path is not None
           and psf_tiles.frames and not failed else {}),
    ))


def _ended(journal: RunJournal | None, summary: AcquisitionSummary) -> AcquisitionSummary:
    if journal is not None:
        journal.end(summary.model_dump(mode="json"))
    return summary


def _table_summary(localisations: LocalisationWriter | None, failed: bool) -> dict:
    if localisations is None:
        return {}
    counted = {"tables": localisations.tables, "emitters": localisations.emitters, "smlm": localisations.quality}
    if failed:
        return counted
    written = dict(zip(("table_path", "render_path"), map(str, localisations.written)))
    return {**counted, **written}


class _Cancel(logging.Filter):
    """Cancels the acquisition for a reason the summary gives (called with that error), and
    keeps pymmcore-plus's warning for that cancel ("MDA Canceled: <the whole sequence>") out of
    the log while ``quiet``."""

    def __init__(self, core: CMMCorePlus) -> None:
        super().__init__()
        self.core = core
        self.cancelled = False

    def __call__(self, error: Exception) -> None:
        self.cancelled = True
        self.core.mda.cancel()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.cancelled and str(record.msg).startswith("MDA Canceled"))

    @contextmanager
    def quiet(self) -> Iterator[None]:
        mda_log = logging.getLogger("pymmcore-plus")
        mda_log.addFilter(self)
        try:
            yield
        finally:
            mda_log.removeFilter(self)


class _Counter:
    """Counts frames where no server answers them, reporting progress (at most every 0.2 s)."""

    def __init__(self, state: AcquisitionProgress, progress: Callable[[AcquisitionProgress], None] | None,
                 t0: float, focus: FocusController | None) -> None:
        self.acquired = 0
        self.state, self.progress, self.t0, self.focus = state, progress, t0, focus
        self._last_report = 0.0

    def frameReady(self, img: np.ndarray, event: useq.MDAEvent, meta: dict) -> None:
        self.acquired += 1
        now = time.perf_counter()
        if self.progress is not None and now - self._last_report > 0.2:
            self._last_report = now
            self.state.acquired, self.state.elapsed_s = self.acquired, now - self.t0
            self.state.follow(self.focus)
            self.progress(self.state)


class _JournalAcquired:
    """Journals each frame as acquired (an MDA output handler, after the raw data's writer)."""

    def __init__(self, journal: RunJournal) -> None:
        self.journal = journal
        self.acquired = 0

    def frameReady(self, img: np.ndarray, event: useq.MDAEvent, meta: dict) -> None:
        self.journal.acquired(self.acquired)
        self.acquired += 1


class _ResultCollector(threading.Thread):
    """Reads outcomes as they arrive: latency, models used, restored frames or emitter tables
    to disk.

    A failure to write (or any other in this thread) is kept in ``error`` and passed to
    ``on_error`` (which cancels the acquisition); the outcomes still arriving are then only
    counted, so that the acquisition winds down as after a server failure.
    """

    def __init__(self, client: StreamClient, writer: RestoredWriter | None,
                 localisations: LocalisationWriter | None, state: AcquisitionProgress,
                 progress: Callable | None, t0: float, journal: RunJournal | None = None) -> None:
        super().__init__(name="livescope-results", daemon=True)
        self.journal = journal
        self.client, self.writer, self.localisations, self.state, self.progress, self.t0 = (
            client, writer, localisations, state, progress, t0)
        self.latencies_ms: list[float] = []
        self.server_ms: list[float] = []
        self.models: set[str] = set()
        self.refusal_reasons: dict[str, int] = {}
        self.warnings: dict[str, None] = {}  # distinct, in order of arrival
        self.frames_with_warnings = 0
        self._expected: int | None = None
        self._seen = 0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.focus: FocusController | None = None  # the autofocus, whose state the progress shows
        self.psf_tiles: PsfTileWriter | None = None  # a psf pipeline's tables
        self.error: Exception | None = None
        self.on_error: Callable[[Exception], None] | None = None

    def finish(self, submitted: int, timeout_s: float = 60.0) -> None:
        """Wait for the ``submitted`` frames' outcomes, then close the writers (where writers
        that write asynchronously report their errors)."""
        with self._lock:
            self._expected = submitted
        self._done.wait(timeout_s)
        self.join(timeout_s)
        for output in (self.writer, self.localisations, self.psf_tiles):
            if output is not None:
                self._guard(output.close)

    def run(self) -> None:
        try:
            self._collect()
        except Exception as e:  # not to die silently: the acquisition stops and says why
            log.debug("reading the results failed", exc_info=e)
            self._fail(RuntimeError(f"reading the results failed: {_one_line(e)}"))
        finally:
            self._done.set()

    def _collect(self) -> None:
        last_report = 0.0
        while True:
            with self._lock:
                if self._expected is not None and self._seen >= self._expected:
                    break
            outcome = self.client.next_outcome(timeout_s=0.1)
            now = time.perf_counter()
            if outcome is not None:
                self._seen += 1
                self._record(outcome)
            if self.progress and (now - last_report > 0.2 or outcome is None):
                last_report = now
                self._report(now)
        self._report(time.perf_counter())

    def _guard(self, write: Callable[[], object]) -> None:
        """Run one write; a failure is kept (the first one) and stops the acquisition."""
        try:
            write()
        except RestoredWriteError as e:
            self._fail(e)
        except Exception as e:  # the tables' writer: a CSV or a render that cannot be written
            log.debug("writing the localisations failed", exc_info=e)
            what, where = (("localisations", self.localisations.table_path) if self.localisations is not None
                           else ("PSF tiles", self.psf_tiles.path) if self.psf_tiles is not None else ("results", None))
            self._fail(RuntimeError(f"cannot write the {what} to {where}: {_one_line(e)}"))

    def _fail(self, e: Exception) -> None:
        if self.error is not None:
            return
        self.error = e
        if self.on_error is not None:
            self.on_error(e)

    def _record(self, outcome: Result | Refusal) -> None:
        if isinstance(outcome, Result):
            self.state.restored += 1
            h = outcome.header
            self.models.add(h.model)
            self.server_ms.append(h.latency.total_ms)
            if h.warnings:
                self.frames_with_warnings += 1
                if len(self.warnings) < 16:  # a stream's warnings repeat: a few distinct ones are kept
                    self.warnings.update(dict.fromkeys(h.warnings[:4]))
            rt = outcome.round_trip_ms
            if rt is not None:
                self.latencies_ms.append(rt)
        else:
            self.state.refused += 1
            self.refusal_reasons[outcome.reason] = self.refusal_reasons.get(outcome.reason, 0) + 1
            if self.journal is not None:
                self.journal.refused(outcome.seq, outcome.reason)
        if self.error is not None:
            return  # nothing more is written after a failure
        if self.writer is not None:
            self._guard(lambda: self.writer.add(outcome))
        if self.psf_tiles is not None and isinstance(outcome, Result):
            self._guard(lambda: self.psf_tiles.add(outcome))
            self.state.psf_abs_defocus_um = self.psf_tiles.latest_median("abs_defocus_um")
        if self.localisations is not None:
            loc = self.localisations
            self._guard(lambda: loc.add(outcome))
            self.state.tables, self.state.emitters = loc.tables, loc.emitters
            self.state.last_frame_emitters = loc.last_frame_emitters
            if loc.quality is not None:
                self.state.frc_resolution_nm = loc.quality.frc_resolution_nm

    def _report(self, now: float) -> None:
        self.state.acquired = self.client.stats.submitted
        self.state.elapsed_s = now - self.t0
        self.state.follow(self.focus)
        if self.latencies_ms:
            self.state.latency_p50_ms = float(np.median(self.latencies_ms[-200:]))
        if self.progress:
            self.progress(self.state)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__

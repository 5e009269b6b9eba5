"""Autofocus in the acquisition loop: one plane kept in focus while the sample drifts axially.

Each frame's focus is scored on the frame itself: the gradient energy of the lightly smoothed frame
above the camera's baseline, divided by its squared mean, so it is highest in focus for any
specimen with detail and does not change with brightness or bleaching. The focus stage dithers
about its working position in cycles of three time points (-step, 0, +step); a cycle's three scores
give, through the Gaussian through three points, where the score peaks, and the working position
moves there (at most ``max_move_um`` a cycle) plus ``target_um``. Where the three scores show no peak
(far from focus the score is flat), the working position climbs towards the better side, and after
``lost_after_cycles`` such cycles in a row the run raises a focus-loss alarm.

The working plane is tracked with an alpha-beta filter: each cycle's peak corrects where the track
expected the plane (``POSITION_GAIN``) and the drift's speed (``VELOCITY_GAIN``), and the next
cycle dithers about where the sample is expected to have drifted to. The stage is moved by the
events themselves (pymmcore-plus runs `FocusedSequence`'s events, each carrying its ``z_pos``), so
every frame is scored at the position it was taken at, however late the frame reaches the scorer
(outputs run on a thread of their own): a cycle whose scores are not all in yet leaves the track
as it is.

Why not the PSF estimation network (`livescope psf`): on optics it was not trained on it reads
|defocus| to 360 nm rms and not its sign, beyond the 300 nm this loop must hold; the score's
three-point fit is precise to tens of nm on the virtual microscope's frames. The score needs
structure above the noise: on a 128 x 128 px field of sparse filaments it is noise and the loop
searches (256 px and up hold).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import useq
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from scipy import ndimage

if TYPE_CHECKING:
    from pymmcore_plus import CMMCorePlus

PHASES = (-1, 0, 1)  # a cycle's time points: working position - step, at it, + step
POSITION_GAIN = 0.6  # weight of a cycle's peak against where the track expected it (alpha of an alpha-beta filter)
VELOCITY_GAIN = 0.2  # weight of a new drift-speed measurement (each is noisy: peaks three frames apart)


class AutofocusSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    target_um: float = Field(default=0.0, description="where to hold the focus, relative to the score's peak")
    step_um: float = Field(default=0.15, gt=0, description="dither about the working position; frames are taken "
                                                            "this far either side of it one time point in three")
    max_move_um: float = Field(default=0.5, gt=0, description="largest correction per cycle")
    max_travel_um: float = Field(default=50.0, gt=0, description="never further than this from the start")
    lost_after_cycles: int = Field(default=3, ge=1, description="cycles without a peak before the alarm")
    smoothing_px: float = Field(default=1.0, ge=0, description="Gaussian sigma before the gradient (noise)")


class AutofocusReport(BaseModel):
    """What the autofocus did over a run (in the acquisition's summary)."""

    model_config = ConfigDict(frozen=True)

    cycles: int
    corrections: int = Field(description="cycles whose three scores showed a peak and moved the focus there")
    searching_cycles: int = Field(description="cycles without a peak: the focus climbed towards the better side")
    start_um: float
    working_um: float = Field(description="the working position at the end")
    largest_correction_um: float
    alarms: tuple[str, ...] = Field(default=(), description="focus-loss alarms, in order")


def focus_score(frame: np.ndarray, baseline_adu: float | None = None, smoothing_px: float = 1.0) -> float:
    """Gradient energy over squared mean of the frame above its baseline (the 1st percentile when
    not given): higher is sharper, independent of brightness."""
    x = np.asarray(frame, np.float32)
    if x.ndim > 2:
        x = x.reshape(-1, *x.shape[-2:])[0]
    base = float(np.percentile(x, 1)) if baseline_adu is None else baseline_adu
    x = x - base
    if smoothing_px > 0:
        x = ndimage.gaussian_filter(x, smoothing_px)
    gy, gx = np.gradient(x)
    mean = float(np.mean(x))
    return float(np.mean(gx * gx + gy * gy)) / max(mean, 1e-6) ** 2


def peak_offset(scores: tuple[float, float, float], step_um: float) -> float | None:
    """Where the Gaussian through (-step, 0, +step) peaks, relative to 0; None where they show no peak."""
    lm, l0, lp = (math.log(max(s, 1e-30)) for s in scores)
    curvature = lp - 2 * l0 + lm
    if curvature >= -1e-3:  # flat or a valley: no peak to fit
        return None
    return step_um * (lm - lp) / (2 * curvature)


class FocusController:
    """The dither cycle's state: which position each time point is taken at, and where to move
    once a cycle's three scores are in. Thread-safe: the MDA thread asks for positions, the
    output thread gives scores."""

    def __init__(self, start_um: float, settings: AutofocusSettings | None = None) -> None:
        self.settings = settings or AutofocusSettings()
        self.start_um = start_um
        self.working_um = start_um
        self._lock = threading.Lock()
        self._planned: dict[int, tuple[int, int]] = {}  # time point -> (cycle, phase)
        self._observed: set[int] = set()
        self._scores: dict[int, dict[int, float]] = {}  # cycle -> phase -> score
        self._centre: dict[int, float] = {}  # time point -> the working position it dithered about
        # an alpha-beta tracker: the working position at time point _t_ref, moving velocity µm per time point
        self._t_ref = 0.0
        self.velocity_um = 0.0
        self._last_peak: tuple[float, float] | None = None  # (time point, position) of the last peak found
        self._cycle_track: dict[int, tuple[float, float, float]] = {}  # cycle -> (working, velocity, t_ref)
        self._cycles = self._corrections = self._searching = self._lost_run = 0
        self._largest = 0.0
        self.alarms: list[str] = []
        self._standing: str | None = None  # the alarm that holds now: focus lost, or at the travel limit

    def position_for(self, t: int) -> float:
        """The focus position for time point ``t`` (asked once per time point, in order)."""
        with self._lock:
            if t in self._planned:
                return self._centre[t] + self._planned[t][1] * self.settings.step_um
            cycle, phase = divmod(t, len(PHASES))
            phase = PHASES[phase]
            # where the sample is expected now, by the track as it stood when the cycle began: its
            # frames sit -step, 0, +step from the plane that drifts with it, so their scores compare
            # like with like even where a conclusion lands mid-cycle
            track = self._cycle_track.setdefault(cycle, (self.working_um, self.velocity_um, self._t_ref))
            self._cycle_track.pop(cycle - 4, None)
            self._centre[t] = track[0] + track[1] * (t - track[2])
            self._planned[t] = (cycle, phase)
            return self._centre[t] + phase * self.settings.step_um

    def observe(self, t: int, score: float) -> None:
        """Frame ``t``'s focus score; a cycle's third moves the working position."""
        with self._lock:
            if t not in self._planned or t in self._observed:
                return
            self._observed.add(t)
            cycle, phase = self._planned[t]
            got = self._scores.setdefault(cycle, {})
            got[phase] = score
            if len(got) == len(PHASES):
                del self._scores[cycle]
                self._conclude(cycle, tuple(got[p] for p in PHASES))
            if t - len(PHASES) * 4 in self._centre:  # bounded memory over a long run
                late = t - len(PHASES) * 4
                self._centre.pop(late, None), self._planned.pop(late, None), self._observed.discard(late)

    def _conclude(self, cycle: int, scores: tuple[float, float, float]) -> None:
        s = self.settings
        self._cycles += 1
        t_mid = float(cycle * len(PHASES) + 1)
        centre = self._centre[cycle * len(PHASES) + 1]
        offset = peak_offset(scores, s.step_um)
        if offset is None:  # no peak: climb towards the better side, and count it
            self._searching += 1
            self._lost_run += 1
            self.velocity_um, self._last_peak = 0.0, None
            # a noisy cycle near focus shows no peak too: step out by the dither, wider each cycle
            move = min(s.step_um * 2 ** (self._lost_run - 1), s.max_move_um)
            new = centre + move * (1 if scores[2] > scores[0] else -1)
            if self._lost_run == s.lost_after_cycles:
                self.alarms.append(f"focus lost at cycle {cycle}: {self._lost_run} cycles without a focus peak "
                                   f"(searching about {centre:.2f} µm)")
            if self._lost_run >= s.lost_after_cycles:
                self._standing = (f"autofocus: no focus peak for {self._lost_run} cycles (searching about "
                                  f"{centre:.2f} µm)")
        else:
            self._corrections += 1
            self._lost_run, self._standing = 0, None
            # beyond the dither the fit extrapolates (and noise dominates it): trust it only that far
            peak = centre + float(np.clip(offset, -min(s.step_um, s.max_move_um), min(s.step_um, s.max_move_um)))
            # one cycle's fit is noisy: move part of the way from where the track expected the plane
            expected = self.working_um - s.target_um + self.velocity_um * (t_mid - self._t_ref)
            if self._last_peak is not None:
                peak = expected + POSITION_GAIN * (peak - expected)
                # the drift's speed, smoothed over a few cycles
                t0, p0 = self._last_peak
                self.velocity_um += VELOCITY_GAIN * ((peak - p0) / (t_mid - t0) - self.velocity_um)
            self._last_peak = (t_mid, peak)
            new = peak + s.target_um
        if abs(new - self.start_um) > s.max_travel_um:
            new = self.start_um + math.copysign(s.max_travel_um, new - self.start_um)
            self.alarms.append(f"focus correction reached its travel limit ({s.max_travel_um:g} µm from the start)")
            self._standing = f"autofocus: at its travel limit ({s.max_travel_um:g} µm from the start)"
        self._largest = max(self._largest, abs(new - centre))
        self.working_um, self._t_ref = new, t_mid

    @property
    def standing_alarm(self) -> str | None:
        """The focus-loss alarm that holds now (no focus peak for the alarm's cycles and since, or the
        correction at its travel limit), for the frames taken meanwhile; None once focus is found."""
        with self._lock:
            return self._standing

    def report(self) -> AutofocusReport:
        with self._lock:
            return AutofocusReport(cycles=self._cycles, corrections=self._corrections,
                                   searching_cycles=self._searching, start_um=self.start_um,
                                   working_um=self.working_um, largest_correction_um=self._largest,
                                   alarms=tuple(self.alarms))


class FocusedSequence(useq.MDASequence):
    """The sequence's events, each at the focus position the controller gives its time point (the
    writers see the sequence's own dimensions; the runner iterates these events)."""

    _controller: FocusController | None = PrivateAttr(default=None)

    @classmethod
    def of(cls, sequence: useq.MDASequence, controller: FocusController) -> FocusedSequence:
        if sequence.z_plan is not None or len(sequence.stage_positions) > 1:
            raise ValueError("autofocus keeps one plane in focus at one position: the sequence has "
                             + ("a z plan" if sequence.z_plan is not None else "several stage positions"))
        focused = cls.model_validate(sequence.model_dump())
        focused._controller = controller
        return focused

    def __iter__(self) -> Iterator[useq.MDAEvent]:  # type: ignore[override]
        for event in self.iter_events():
            t = event.index.get("t", 0)
            yield event.model_copy(update={"z_pos": self._controller.position_for(t)})


def focused_run(core: CMMCorePlus, sequence: useq.MDASequence, settings: AutofocusSettings
                ) -> tuple[FocusController, FocusedSequence]:
    """The controller of an autofocused run starting at the focus stage's position, and the events
    to run; ValueError where there is no focus stage, or the sequence has a z plan or several
    positions (checked before anything is acquired)."""
    if not core.getFocusDevice():
        raise ValueError("autofocus needs a focus stage, and the microscope has none configured (Core-Focus)")
    controller = FocusController(core.getPosition(), settings)
    return controller, FocusedSequence.of(sequence, controller)


class FocusScorer:
    """A pymmcore-plus output handler: scores each time point's first frame and tells the controller."""

    def __init__(self, controller: FocusController, baseline_adu: float | None = None) -> None:
        self.controller = controller
        self.baseline_adu = baseline_adu

    def frameReady(self, img: np.ndarray, event: useq.MDAEvent, meta: dict) -> None:
        if any(v for k, v in event.index.items() if k != "t"):  # one frame per time point: the first channel's
            return
        score = focus_score(img, self.baseline_adu, self.controller.settings.smoothing_px)
        self.controller.observe(event.index.get("t", 0), score)

"""The live ``localise`` stage's memory of each stream: the frames before, and a running render.

A localisation model sees ``context_frames`` consecutive frames and localises the last (causal,
so a live frame's result never waits for the next frame). The worker keeps each stream's last
``context_frames - 1`` frames in photons; a frame whose predecessors are missing (the start of a
stream, or frames dropped in ``latest`` mode) has them replaced by the nearest frame after them,
which at the start of a stream is what offline localisation does (the first frame repeated).

Each stream also grows a super-resolution render (``livescope.render.RunningRender``) as its
tables arrive, and keeps the emitters' frames, positions and uncertainties (20 bytes each, up to
``max_emitters``) so that a render at another pixel size or method can be drawn on request, and
so that the render reply can say how far the stream has got (``livescope.smlm_quality``: FRC
resolution of the drift-corrected halves, RCC drift, density of the latest frames), computed from
a copy of the kept emitters outside the lock.

Written by the worker thread, read by the control thread: one lock guards it all.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from livescope.emitters import EmitterTable
from livescope.frc import FrcCurve
from livescope.protocol import FrameHeader
from livescope.render import RenderGrid, RenderMethod, RunningRender, finest_render_pixel_nm
from livescope.server.context import fill_window
from livescope.server.recent import RecentlyUsed
from livescope.smlm_quality import SmlmQuality, assess

log = logging.getLogger("livescope.server")


RUNNING_RENDER_PIXELS = 2**25  # per stream's running render (256 MB in float64): 8 streams fit in 2 GB
RENDERED_MEMORY = 100_000  # seqs remembered per stream (a few MB) to count each frame once


class RenderSettings(BaseModel):
    """How a stream's super-resolution render is drawn."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pixel_nm: float = Field(default=20.0, gt=0, description="render pixel size")
    method: RenderMethod = "gaussian"


class StreamRender(BaseModel):
    """What a published render shows (sent in the control reply)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stream: str
    model: str = Field(description="the localisation model of the latest frame")
    frames: int = Field(description="frames localised so far")
    last_seq: int
    emitters: int = Field(description="emitters drawn (inside the field)")
    emitters_outside: int
    emitters_not_kept: int = Field(description="beyond the memory cap: in the running render only, "
                                   "lost to a re-render at other settings")
    pixel_nm: float
    method: RenderMethod
    shape: tuple[int, int]
    smlm: SmlmQuality | None = Field(default=None, description="FRC resolution, drift and density of the kept "
                                     "emitters (the render itself is drawn as localised, not drift-corrected)")


@dataclass
class _Stream:
    context: dict[int, np.ndarray] = field(default_factory=dict)  # seq -> frame in photons
    render: RunningRender | None = None
    kept: list[np.ndarray] = field(default_factory=list)  # (n, 5) float32: x, y, sx, sy in nm, frame
    kept_count: int = 0
    not_kept: int = 0
    frames: int = 0
    last_seq: int = -1
    # seqs already in the render (the most recent RENDERED_MEMORY): a frame processed again, for a
    # resend whose result was no longer kept, must not be counted twice
    rendered: set[int] = field(default_factory=set)
    rendered_order: deque[int] = field(default_factory=deque)
    model: str = ""  # the localisation model of the latest table


class LocaliseStreams:
    def __init__(self, *, max_streams: int = 8, max_emitters: int = 20_000_000,
                 default_render: RenderSettings = RenderSettings()) -> None:
        self.max_emitters = max_emitters
        self.default_render = default_render
        self._streams: RecentlyUsed[str, _Stream] = RecentlyUsed(max_streams)
        self._lock = threading.Lock()

    def windows(self, headers: list[FrameHeader], frames_photons: np.ndarray, context: int) -> np.ndarray:
        """(N, context, H, W) float32 windows for the batch's frames, in order; remembers them as
        context for the frames after (frames of one stream may follow each other in a batch)."""
        n, h, w = frames_photons.shape
        out = np.empty((n, context, h, w), np.float32)
        with self._lock:
            for k, header in enumerate(headers):
                fill_window(self._stream(header.stream).context, header.seq,
                            frames_photons[k].astype(np.float32, copy=False), out[k])
        return out

    def add(self, header: FrameHeader, table: EmitterTable, pixel_size_nm: float, model: str) -> None:
        """A frame's emitters into its stream's render (the field is the stream's first frame's), once
        per seq."""
        with self._lock:
            state = self._stream(header.stream)
            if header.seq in state.rendered:
                return
            state.rendered.add(header.seq)
            state.rendered_order.append(header.seq)
            if len(state.rendered_order) > RENDERED_MEMORY:
                state.rendered.discard(state.rendered_order.popleft())
            if state.render is None:
                h, w = header.shape
                width_nm, height_nm = w * pixel_size_nm, h * pixel_size_nm
                # A large field gets coarser render pixels, so that 8 streams' renders fit in memory;
                # the render command draws finer ones on request (up to MAX_RENDER_PIXELS).
                pixel_nm = max(self.default_render.pixel_nm,
                               finest_render_pixel_nm(width_nm, height_nm, RUNNING_RENDER_PIXELS))
                if pixel_nm != self.default_render.pixel_nm:
                    log.warning("stream %s: a %.0f x %.0f µm field is rendered at %g nm, not %g nm (memory)",
                                header.stream, width_nm / 1000, height_nm / 1000, pixel_nm,
                                self.default_render.pixel_nm)
                state.render = RunningRender(RenderGrid(width_nm=width_nm, height_nm=height_nm, pixel_nm=pixel_nm),
                                             self.default_render.method)
            state.render.add(table)
            state.frames += 1
            state.model = model
            state.last_seq = max(state.last_seq, header.seq)
            room = max(0, self.max_emitters - state.kept_count)
            rows = table.rows[:room]
            if len(rows):
                state.kept.append(np.stack([rows["x_nm"], rows["y_nm"], rows["x_uncertainty_nm"],
                                            rows["y_uncertainty_nm"], rows["frame"]], axis=1).astype(np.float32))
                state.kept_count += len(rows)
            state.not_kept += len(table) - len(rows)

    def render(self, stream: str, settings: RenderSettings | None = None, *, quality: bool = True
               ) -> tuple[StreamRender, np.ndarray, FrcCurve | None]:
        """The stream's render now, as float32 (rows, columns); with other ``settings`` than its
        running render's, redrawn from the kept emitters (and kept running at those settings).
        With ``quality``, the info says the kept emitters' FRC resolution, drift and density, the
        render is of the emitters moved back by the drift where one was estimated (the info's
        ``smlm.drift_corrected``), and the FRC curve comes with it."""
        with self._lock:
            state = self._streams.get(stream)
            if state is None or state.render is None:
                known = ", ".join(s for s, st in self._streams.items() if st.render is not None) or "none"
                raise LookupError(f"no localised frames from stream {stream!r} (streams with renders: {known})")
            running = state.render
            settings = settings or RenderSettings(pixel_nm=running.grid.pixel_nm, method=running.method)
            if (settings.pixel_nm, settings.method) != (running.grid.pixel_nm, running.method):
                grid = RenderGrid(width_nm=running.grid.width_nm, height_nm=running.grid.height_nm,
                                  pixel_nm=settings.pixel_nm)  # validated: a render too fine is refused
                running = state.render = RunningRender(grid, settings.method)
                if state.kept:
                    running.add(_as_table(np.concatenate(state.kept)))
            info = StreamRender(stream=stream, model=state.model, frames=state.frames, last_seq=state.last_seq,
                                emitters=running.emitters_inside, emitters_outside=running.emitters_outside,
                                emitters_not_kept=state.not_kept, pixel_nm=running.grid.pixel_nm,
                                method=running.method, shape=running.grid.shape)
            image = running.image()
            kept = np.concatenate(state.kept) if quality and state.kept else None
            last_frame = state.last_seq + 1
        curve = None
        if kept is not None:  # seconds for millions of emitters: the worker goes on meanwhile
            q = assess(_as_table(kept), running.grid.width_nm, running.grid.height_nm, last_frame=last_frame)
            info, curve = info.model_copy(update={"smlm": q.quality}), q.frc
            if q.drift is not None and state.not_kept == 0:  # every emitter kept: redraw them where they were
                corrected = RunningRender(running.grid, running.method)
                corrected.add(q.corrected)
                image = corrected.image()
        return info, image, curve

    def _stream(self, stream: str) -> _Stream:
        return self._streams.use(stream, _Stream)


def _as_table(kept: np.ndarray) -> EmitterTable:
    return EmitterTable.from_columns(frame=kept[:, 4], x_nm=kept[:, 0], y_nm=kept[:, 1], x_uncertainty_nm=kept[:, 2],
                                     y_uncertainty_nm=kept[:, 3])

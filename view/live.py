"""What a live view holds, without Qt: per stream, a bounded ring of recent raw and restored frames,
the recent localisations, a running super-resolution render and the counters the dock shows. Fed
one published `Result` at a time (`LiveState.add`); napari only draws it (`livescope.view.viewer`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from livescope.client import Result
from livescope.emitters import EMITTER_DTYPE, EmitterTable
from livescope.render import RenderGrid, RunningRender

RENDER_PX_NM = 20.0
RAW = "raw"  # the stage the server publishes a watched stream's raw frames as


@dataclass
class StreamView:
    """One stream's recent data and counters."""

    ring: int
    raw: deque = field(default_factory=deque)  # (seq, frame), newest last
    restored: deque = field(default_factory=deque)
    points_px: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))  # (y, x) of the newest table
    render: RunningRender | None = None
    render_px_per_camera_px: float = 1.0
    raw_frames: int = 0
    results: int = 0
    tables: int = 0
    emitters: int = 0
    missed: int = 0  # results the view never saw: gaps in the stream's seq
    model: str = "-"
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=200))
    warnings: tuple[str, ...] = ()
    _last_seq: int = -1

    def __post_init__(self) -> None:
        self.raw = deque(maxlen=self.ring)
        self.restored = deque(maxlen=self.ring)

    @property
    def latency_p50_ms(self) -> float | None:
        return float(np.median(self.latencies_ms)) if self.latencies_ms else None

    def counters(self) -> dict[str, str]:
        p50 = self.latency_p50_ms
        return {"model": self.model, "results": str(self.results), "missed": str(self.missed),
                "raw frames": str(self.raw_frames), "localisations": str(self.emitters),
                "latency p50": "-" if p50 is None else f"{p50:.1f} ms"}

    def add(self, result: Result) -> None:
        h = result.header
        if h.stage == RAW:
            self.raw.append((h.seq, np.array(result.data)))
            self.raw_frames += 1
            return
        if not h.final:
            return  # an intermediate stage's output: the view shows what the pipeline gives
        if self._last_seq >= 0 and h.seq > self._last_seq + 1:
            self.missed += h.seq - self._last_seq - 1
        self._last_seq = max(self._last_seq, h.seq)
        self.results += 1
        self.model = h.model
        self.latencies_ms.append(h.latency.total_ms)
        self.warnings = h.warnings or self.warnings
        if h.kind == "table":
            data = np.asarray(result.data)
            if data.dtype.names == EMITTER_DTYPE.names:  # not a psf stage's tiles
                self._add_table(EmitterTable.from_payload(data), h.pixel_size_um)
        else:
            self.restored.append((h.seq, np.array(result.data)))

    def _add_table(self, table: EmitterTable, pixel_size_um: float | None) -> None:
        self.tables += 1
        self.emitters += len(table)
        if not pixel_size_um:
            return
        px_nm = pixel_size_um * 1000.0
        # emitters are placed from the pixel's corner, napari's pixels from their centre: half a pixel apart
        self.points_px = (np.stack([table.rows["y_nm"] / px_nm, table.rows["x_nm"] / px_nm], axis=1) - 0.5
                          ).astype(np.float32)
        if self.render is None and self.raw:
            h, w = self.raw[-1][1].shape
            self.render = RunningRender(RenderGrid(width_nm=w * px_nm, height_nm=h * px_nm, pixel_nm=RENDER_PX_NM))
            self.render_px_per_camera_px = RENDER_PX_NM / px_nm
        if self.render is not None:
            self.render.add(table)


class LiveState:
    """Every stream seen on the PUB socket, each with its `StreamView`."""

    def __init__(self, ring: int = 16) -> None:
        if ring < 1:
            raise ValueError(f"the ring holds at least one frame, not {ring}")
        self.ring = ring
        self.streams: dict[str, StreamView] = {}

    def add(self, result: Result) -> str:
        """Take one published result; the stream it belongs to."""
        stream = result.header.stream
        view = self.streams.get(stream)
        if view is None:
            view = self.streams[stream] = StreamView(self.ring)
        view.add(result)
        return stream

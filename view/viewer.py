"""The live view in napari: the selected stream's raw and restored frames (a bounded ring of the
most recent, contrast following the data), its newest localisations as points and their running
super-resolution render, and a dock with the stream's counters and a selector of streams.

Messages are read from the server's PUB socket on napari's own event loop (a Qt timer drains what
has arrived, never blocking), and the selected stream is kept ``watch``ed so that the server
publishes its raw frames too.
"""

from __future__ import annotations

import re

import numpy as np

from livescope.client import ResultSubscriber, StreamClient
from livescope.view.live import LiveState, StreamView

POLL_MS = 40
MAX_MESSAGES_PER_POLL = 64
WATCH_LEASE_S = 10.0
WATCH_RENEW_MS = 3000
LAYERS = ("raw", "restored", "localisations", "render")


def results_address(frames: str) -> str:
    """The PUB address of a server at ``frames`` by livescope's convention: the next port."""
    match = re.fullmatch(r"(tcp://.+):(\d+)", frames)
    if match is None:
        raise ValueError(f"{frames}: give the server's frames address as tcp://HOST:PORT")
    return f"{match.group(1)}:{int(match.group(2)) + 1}"


class LiveViewer:
    """Wires a napari ``viewer`` to a running server: call ``close`` when done."""

    def __init__(self, viewer, server: str, *, results: str | None = None, stream: str | None = None,
                 ring: int = 16) -> None:
        from qtpy.QtCore import QTimer

        self.viewer = viewer
        self.state = LiveState(ring)
        self.stream = stream
        self._subscriber = ResultSubscriber(results or results_address(server))
        self._control = StreamClient(server, stream="livescope-view", pipeline=())
        try:
            self._control.connect()
        except BaseException:  # no server there: nothing is left open
            self._control.close(timeout_s=0)
            self._subscriber.close()
            raise
        self._add_layers()
        self.dock = _Dock(self)
        viewer.window.add_dock_widget(self.dock.widget, name="livescope", area="right")
        viewer.canvas.grid.enabled = True  # raw beside restored (and the render)
        self._timer = QTimer()
        self._timer.timeout.connect(self.poll)
        self._timer.start(POLL_MS)
        self._lease = QTimer()
        self._lease.timeout.connect(self.renew_watch)
        self._lease.start(WATCH_RENEW_MS)
        self.renew_watch()

    def _add_layers(self) -> None:
        # each layer is shown from its first data on (the grid holds only those with data)
        empty = np.zeros((1, 8, 8), np.float32)
        self.raw = self.viewer.add_image(empty, name="raw", colormap="gray", visible=False)
        self.restored = self.viewer.add_image(empty, name="restored", colormap="gray", visible=False)
        self.points = self.viewer.add_points(np.zeros((0, 2)), name="localisations", size=3, face_color="yellow",
                                             border_width=0, visible=False)
        self.render = self.viewer.add_image(np.zeros((8, 8), np.float32), name="render", colormap="magma",
                                            visible=False)

    def renew_watch(self) -> None:
        """Keep the selected stream's raw frames published (a lease the server lets lapse)."""
        if self.stream is not None:
            try:
                self._control.control("watch", stream=self.stream, seconds=WATCH_LEASE_S, timeout_s=1.0)
            except Exception:  # a server that went away: the counters stop, the view stays
                pass

    def poll(self) -> int:
        """Take what has arrived (at most MAX_MESSAGES_PER_POLL); redraw if the shown stream changed."""
        changed = False
        for _ in range(MAX_MESSAGES_PER_POLL):
            result = self._subscriber.recv(timeout_s=0)
            if result is None:
                break
            stream = self.state.add(result)
            if self.stream is None:
                self.select(stream)
            changed |= stream == self.stream
        if changed:
            self.redraw()
        self.dock.update()
        return int(changed)

    def select(self, stream: str) -> None:
        self.stream = stream
        self.renew_watch()
        self.redraw()

    @property
    def shown(self) -> StreamView | None:
        return self.state.streams.get(self.stream) if self.stream is not None else None

    def redraw(self) -> None:
        view = self.shown
        if view is None:
            return
        appeared = False
        newest = max(len(view.raw), len(view.restored))
        for layer, frames in ((self.raw, view.raw), (self.restored, view.restored)):
            if frames:
                appeared |= not layer.visible or layer.data.shape[1:] != frames[-1][1].shape
                _show_ring(layer, frames)
                layer.translate = (newest - len(frames), 0, 0)  # each ring's newest frame at the same step
                layer.visible = True
        if newest and len(self.viewer.dims.range) == 3:
            self.viewer.dims.set_current_step(0, newest - 1)
        if view.tables:
            self.points.data = view.points_px
            appeared |= not self.points.visible
            self.points.visible = True
        if view.render is not None:
            image = view.render.image()
            self.render.data = image
            s = view.render_px_per_camera_px
            self.render.scale = (s, s)
            self.render.translate = (0.5 * s - 0.5,) * 2  # render pixel centres onto the camera's grid
            high = float(np.percentile(image, 99.9))
            self.render.contrast_limits = (0.0, high if high > 0 else 1.0)
            appeared |= not self.render.visible
            self.render.visible = True
        if appeared:  # a layer's first data, or a new frame size: frame it all
            self.viewer.reset_view()

    def close(self) -> None:
        self._timer.stop()
        self._lease.stop()
        self._subscriber.close()
        self._control.close(timeout_s=0)


def _show_ring(layer, frames) -> None:
    """The ring as the layer's (n, H, W) data, contrast from the newest frame's 0.5-99.8 percentiles."""
    stack = np.stack([f for _, f in frames])  # the frames' own dtype: a second (float) copy bought nothing
    layer.data = stack
    low, high = np.percentile(stack[-1], (0.5, 99.8))
    layer.contrast_limits = (float(low), float(high) if high > low else float(low) + 1.0)


class _Dock:
    """The counters of the shown stream and the selector of streams."""

    def __init__(self, live: LiveViewer) -> None:
        from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QWidget

        self.live = live
        self.widget = QWidget()
        form = QFormLayout(self.widget)
        self.selector = QComboBox()
        self.selector.currentTextChanged.connect(lambda s: s and s != live.stream and live.select(s))
        form.addRow("stream", self.selector)
        self.labels = {key: QLabel("-") for key in ("model", "results", "missed", "raw frames", "localisations",
                                                    "latency p50")}
        for key, label in self.labels.items():
            form.addRow(key, label)
        self.warning = QLabel("")
        self.warning.setWordWrap(True)
        form.addRow(self.warning)

    def update(self) -> None:
        names = sorted(self.live.state.streams)
        if names != [self.selector.itemText(i) for i in range(self.selector.count())]:
            self.selector.blockSignals(True)
            self.selector.clear()
            self.selector.addItems(names)
            self.selector.blockSignals(False)
        if self.live.stream in names:
            self.selector.setCurrentText(self.live.stream)
        view = self.live.shown
        if view is None:
            return
        for key, value in view.counters().items():
            self.labels[key].setText(value)
        self.warning.setText("; ".join(view.warnings))

"""`livescope view`: a running server's streams live in napari (`livescope.view`)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from livescope.cli._common import DEFAULT_SERVER, ServerOpt, fail


def view(
    server: ServerOpt = DEFAULT_SERVER,
    results: Annotated[Optional[str], typer.Option(
        help="The server's PUB address (default: the frames address's port + 1).")] = None,
    stream: Annotated[Optional[str], typer.Option(help="The stream to show first (default: the first seen).")] = None,
    ring: Annotated[int, typer.Option(min=1, max=1024, help="Recent frames kept per layer.")] = 16,
    screenshot: Annotated[Optional[Path], typer.Option(
        help="Write a PNG of the view once --frames results (and a raw frame) arrived, then exit.")] = None,
    frames: Annotated[int, typer.Option(min=1, help="With --screenshot: results to wait for.")] = 8,
    timeout_s: Annotated[float, typer.Option(
        "--timeout-s", min=1, help="With --screenshot: wait at most this.")] = 60.0,
) -> None:
    """Show a running server's streams in napari: raw and restored frames, localisations, the
    super-resolution render, and the stream's counters."""
    if screenshot is not None and screenshot.suffix.lower() != ".png":
        fail(f"--screenshot {screenshot}: write a .png")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        # Qt would abort the process without one
        fail("no display to show napari on (neither DISPLAY nor WAYLAND_DISPLAY is set): run it on a desktop, "
             "or with --screenshot under xvfb-run")
    import napari

    from livescope.client import ServerUnreachableError
    from livescope.view.viewer import LiveViewer

    # shown even for a screenshot: napari draws a hidden canvas black (measured under Xvfb)
    viewer = napari.Viewer(show=True, title="livescope")
    try:
        live = LiveViewer(viewer, server, results=results, stream=stream, ring=ring)
    except (ValueError, ServerUnreachableError) as e:
        viewer.close()
        fail(str(e))
    if screenshot is None:
        napari.run()
        live.close()
        return
    try:
        _wait_for(live, frames, timeout_s)
        live.redraw()
        viewer.window.resize(1400, 800)  # the canvas beside the dock, whatever the display's size
        viewer.reset_view()
        from qtpy.QtWidgets import QApplication

        QApplication.processEvents()
        viewer.screenshot(str(screenshot), canvas_only=True, flash=False)
    finally:
        live.close()
        viewer.close()
    shown = live.shown
    typer.echo(f"{screenshot}: stream {live.stream}, {shown.results} results of {shown.model}, "
               f"{shown.raw_frames} raw frames")


def _wait_for(live, frames: int, timeout_s: float) -> None:
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        QApplication.processEvents()
        shown = live.shown
        if shown is not None and shown.results >= frames and (shown.raw or shown.tables):
            return
        time.sleep(0.02)
    seen = ", ".join(live.state.streams) or "none"
    fail(f"no {frames} results{' of stream ' + live.stream if live.stream else ''} arrived within {timeout_s:g} s "
         f"(streams seen: {seen}); is a client streaming to the server?")

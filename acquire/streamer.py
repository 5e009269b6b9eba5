"""FrameStreamer: a pymmcore-plus MDA output handler that streams every frame to a server.

Passed as ``core.mda.run(sequence, output=[streamer, ...])``. ``frameReady`` only hands the
frame to the client's I/O thread (zero-copy), so the acquisition thread is never held up by
the network; in lossless mode it waits only when the window of frames in flight is full.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import useq

from livescope.acquire.autofocus import FocusController
from livescope.client import StreamClient

log = logging.getLogger("livescope.acquire")


class FrameStreamer:
    def __init__(self, client: StreamClient, submit_timeout_s: float = 30.0) -> None:
        self.client = client
        self.submit_timeout_s = submit_timeout_s
        self.acquired = 0
        self.error: Exception | None = None
        self.on_error: Any = None  # called once with the exception (e.g. to cancel the MDA)
        self.focus: FocusController | None = None  # the autofocus, whose standing alarm each frame carries

    def frameReady(self, img: np.ndarray, event: useq.MDAEvent, meta: dict) -> None:
        self.acquired += 1
        if self.error is not None:
            return
        try:
            self.client.submit(
                img,
                event_index=dict(event.index),
                z_um=event.z_pos if event.z_pos is not None else meta.get("position", {}).get("z"),
                pixel_size_um=meta.get("pixel_size_um") or None,
                t_acquired_ns=time.time_ns(),
                focus_alarm=self.focus.standing_alarm if self.focus is not None else None,
                timeout_s=self.submit_timeout_s,
            )
        except Exception as e:  # pymmcore-plus would only log it: keep it and stop the run
            self.error = e
            log.error("streaming stopped: %s", e)
            if self.on_error is not None:
                self.on_error(e)

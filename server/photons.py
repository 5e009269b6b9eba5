"""The photon scale of each live stream, for camera-agnostic models (card normalisation ``photons``).

A frame whose header carries its camera is converted with that camera. Otherwise the stream's scale
is estimated from its first frame (``livescope.camera_estimate``) and kept for the stream, so that all
its frames are converted alike; the server logs it once per stream.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from livescope.camera_estimate import FALLBACK_SCALE, PhotonScale, noise_equivalent, photon_scale
from livescope.protocol import FrameHeader
from livescope.server.recent import RecentlyUsed

log = logging.getLogger("livescope.server")


class StreamScales:
    """Each (sender, stream)'s photon scale; the most recent ``max_streams`` kept."""

    def __init__(self, max_streams: int = 256) -> None:
        self._scales: RecentlyUsed[tuple, PhotonScale] = RecentlyUsed(max_streams)
        self._lock = threading.Lock()  # several workers

    def scale(self, key: tuple, header: FrameHeader, frame: np.ndarray) -> PhotonScale:
        if header.camera is not None:
            return noise_equivalent(header.camera)
        def estimate() -> PhotonScale:
            found = photon_scale(frame)
            log.info("stream %s: no camera in its headers; %s", header.stream, found.source)
            return found

        with self._lock:
            known = self._scales.get(key)
        if known is None:
            known = estimate()  # outside the lock: other workers' streams go on meanwhile
        with self._lock:
            self._scales.put(key, self._scales.get(key, known))
            return self._scales[key]

    @staticmethod
    def warnings(scale: PhotonScale) -> tuple[str, ...]:
        """What a result converted with ``scale`` must say (never silently assumed units)."""
        if scale is FALLBACK_SCALE:
            return ("the frame's camera could not be estimated (no pixel noise to measure) and its header gives "
                    "none: converted as 0 ADU baseline and 1 e-/ADU; send the camera in the frame header",)
        return ()

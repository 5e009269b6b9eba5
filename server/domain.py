"""Whether frames look like a model's training data: the checks behind the offline commands'
warnings and the live results' ``warnings`` (never silence on data a model has not seen).

`domain_warnings` compares a stack (or a frame) with what the model's card says of its training
data; `DomainWatch` keeps the live verdict of each sender's stream per model, re-checked now and
then so that it costs the server a few milliseconds per thousand frames, not per frame.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from livescope.camera_estimate import PhotonScale, photon_scale
from livescope.modelcard import ModelCard
from livescope.server.recent import RecentlyUsed

BASELINE_TOLERANCE_ADU = 10.0


def domain_warnings(card: ModelCard, frames: np.ndarray, name: str, advice: str,
                    scale: PhotonScale | None = None) -> tuple[str, ...]:
    """What makes ``frames`` ((N, H, W) or one frame) look unlike the model's training data, in
    words ending with ``advice`` (empty: nothing). A camera-agnostic model's frames are counted in
    photons by ``scale``, the one they are converted with (default: estimated from them).

    A model that normalises in its graph was trained with a camera baseline near its offset (the
    1st percentile of its training frames); frames whose darkest pixels lie far from it (8-bit
    data near 0, a camera with another baseline) are outside what the model has seen."""
    n = card.normalisation
    frames = frames[None] if frames.ndim == 2 else frames
    if n.kind == "photons":
        return _photon_range_warnings(card, frames, name, advice, scale)
    if n.kind != "in_graph" or card.task == "psf":  # the psf graph scales each tile by its own statistics
        return ()
    sample = frames[:: max(1, len(frames) // 16), ::2, ::2]
    darkest = float(np.percentile(sample, 1.0))
    if abs(darkest - n.offset_adu) <= BASELINE_TOLERANCE_ADU + 0.1 * n.offset_adu:
        return ()
    return (f"the darkest 1% of {name} lies at {darkest:g} ADU but {card.ref} was trained on frames whose "
            f"darkest 1% lay at {n.offset_adu:g} ADU (another camera baseline or bit depth): the result "
            f"may be poor; {advice}",)


BRIGHTER_THAN_TRAINED = 2.0  # a camera-agnostic model is warned for above this x its brightest training peak


def _photon_range_warnings(card: ModelCard, frames: np.ndarray, name: str, advice: str,
                           scale: PhotonScale | None) -> tuple[str, ...]:
    """A camera-agnostic model's frames in photons far brighter than any it was trained on."""
    trained = card.trained_for.peak_photons
    if trained is None:
        return ()
    sample = frames[:: max(1, len(frames) // 8)]
    brightest = float(np.percentile((scale or photon_scale(sample)).to_photons(sample), 99.9))
    if brightest <= BRIGHTER_THAN_TRAINED * trained[1]:
        return ()
    return (f"the brightest 0.1% of {name} reach {brightest:.0f} photons/px, but {card.ref} was trained on peaks "
            f"up to {trained[1]:g}: the result may be poor; {advice}",)


class DomainWatch:
    """The warnings of each (sender, stream, model): checked on the stream's first frame for that
    model and every ``check_every`` frames after; the most recent ``max_streams`` kept."""

    def __init__(self, check_every: int = 256, max_streams: int = 256) -> None:
        self.check_every = check_every
        self._seen: RecentlyUsed[tuple, tuple[int, tuple[str, ...]]] = RecentlyUsed(max_streams)
        self._lock = threading.Lock()  # several workers (a stream is one worker's at a time)

    def warnings(self, key: tuple, check: Callable[[], tuple[str, ...]]) -> tuple[str, ...]:
        """``key``'s warnings, running ``check`` when they are due."""
        with self._lock:
            frames, found = self._seen.get(key, (0, ()))
        if frames % self.check_every == 0:
            found = tuple(check())
        with self._lock:
            self._seen.put(key, (frames + 1, found))
        return found

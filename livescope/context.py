"""Frames with their context: the consecutive frames a model sees to answer for the last one.

Models that look back in time (a localiser's 3 frames, a denoiser's context frames) see, for
frame i of a stack, frames i - context + 1 .. i; before a stack's first frame, the first frame
stands in (what the live stages do at the start of a stream). One definition, shared by the
trainers, the offline commands and the tests.
"""

from __future__ import annotations

import numpy as np


def window_indices(frame: int | np.ndarray, context: int) -> np.ndarray:
    """The indices of frame ``frame``'s window (for an array of frames, one row each): frames
    frame-context+1..frame, oldest first, those below 0 clamped to 0."""
    return np.clip(np.asarray(frame)[..., None] + np.arange(-context + 1, 1), 0, None)


def causal_windows(frames: np.ndarray, context: int, start: int, stop: int) -> np.ndarray:
    """(stop - start, context, H, W): the windows of frames start..stop-1."""
    return frames[window_indices(np.arange(start, stop), context)]

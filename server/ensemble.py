"""Geometric self-ensemble: a model's outputs averaged over the 8 flips and quarter turns of its input.

A denoiser trained with every flip and quarter turn of its patches (livescope's are) should give
the same image whichever way up a frame is shown to it; it does not, exactly, and the 8 answers'
errors are partly independent, so their mean is closer to the truth: for a fine-tuned denoiser,
+0.05 dB on FMD's real confocal frames and +0.17-0.21 dB on the bench's foreign series
(bench/denoise_quality.py), for 8x the model's time.
The same trick as EDSR's "self-ensemble" and careamics' ``tta_transforms``. Offline only: live,
the 8x would cost the camera's rate.

Only for tasks whose physics has the symmetry: a denoiser's noise and structure have no preferred
direction, but an astigmatic PSF (refocus, 3-D localisation) changes under a quarter turn.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ENSEMBLE_TASKS = frozenset({"denoise", "identity"})
"""Tasks whose models may be ensembled: their outputs turn with their inputs."""

TRANSFORMS = tuple((turns, flip) for flip in (False, True) for turns in range(4))
"""The 8 symmetries of a square: quarter turns 0-3, each with and without a left-right flip."""

RunFn = Callable[[np.ndarray], np.ndarray]


def transform_count(ensemble: bool) -> int:
    """How many runs each frame's result is the mean of (what an output's provenance records)."""
    return len(TRANSFORMS) if ensemble else 1


def _forward(x: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    y = np.rot90(x, turns, axes=(-2, -1))
    return np.ascontiguousarray(y[..., ::-1] if flip else y)


def _inverse(y: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    return np.rot90(y[..., ::-1] if flip else y, -turns, axes=(-2, -1))


def ensembled(run: RunFn) -> RunFn:
    """``run`` (images in the last two axes, e.g. (N, H, W) or (N, C, H, W) -> (N, H, W)) averaged
    over `TRANSFORMS`: each output turned back before it is added. Frames need not be square (a
    quarter turn swaps H and W; the model takes either)."""

    def mean_of_transforms(x: np.ndarray) -> np.ndarray:
        total: np.ndarray | None = None
        for turns, flip in TRANSFORMS:
            y = _inverse(np.asarray(run(_forward(x, turns, flip)), dtype=np.float32), turns, flip)
            total = y.copy() if total is None else np.add(total, y, out=total)
        assert total is not None
        return total / np.float32(len(TRANSFORMS))

    return mean_of_transforms

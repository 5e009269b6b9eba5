"""Image-quality metrics shared by the trainers' held-out scores and the benchmarks."""

from __future__ import annotations

import math

import numpy as np


def psnr_db(images: np.ndarray, clean: np.ndarray) -> float:
    """PSNR (dB) of ``images`` against ``clean`` (same shape, one frame or a stack).

    Peak = the clean range (max - min), MSE pooled over all pixels of all frames.
    """
    mse = float(np.mean((images.astype(np.float64) - clean) ** 2))
    peak = float(clean.max() - clean.min())
    return psnr_db_from_mse(mse, peak)


def psnr_db_from_mse(mse: float, peak: float) -> float:
    """PSNR (dB) from a pooled mean squared error and the reference's peak (its range), for
    callers that pool the squared error themselves (e.g. over more frames than fit in memory)."""
    return 10.0 * math.log10(peak**2 / mse)

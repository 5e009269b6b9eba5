"""The camera baseline (ADU) of training data from an uncalibrated camera, estimated from the data
itself: the darkest 0.1 % of its pixels (background only) lie at about the baseline."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

DARKEST_PERCENT = 0.1


def darkest_pixels_baseline_adu(images: Iterable[np.ndarray]) -> float:
    """The lowest, over ``images`` (frames or stacks, ADU), of each one's 0.1st percentile."""
    return float(min(np.percentile(image, DARKEST_PERCENT) for image in images))

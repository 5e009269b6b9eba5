"""Random training patches of image pairs (input, target): one crop and one of the 8 flips /
quarter turns, the same for both images of a pair. The random numbers are drawn in a fixed order
(crop row, crop column, turns, flip), which the seeded training runs depend on."""

from __future__ import annotations

import numpy as np


def random_crop(shape: tuple[int, int], patch_px: int, rng: np.random.Generator) -> tuple[slice, slice]:
    """A uniformly placed ``patch_px`` square inside an image of ``shape`` (H, W)."""
    h, w = shape
    y, x = int(rng.integers(h - patch_px + 1)), int(rng.integers(w - patch_px + 1))
    return slice(y, y + patch_px), slice(x, x + patch_px)


def same_random_turn(a: np.ndarray, b: np.ndarray, rng: np.random.Generator,
                     rotate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` (2-D) turned alike: one of the 8 flips / quarter turns uniformly, or with
    ``rotate`` False one of the 2 flips (for optics that a quarter turn changes, e.g. astigmatism)."""
    turns, flip = (int(rng.integers(4)) if rotate else 0), bool(rng.integers(2))
    a, b = np.rot90(a, turns), np.rot90(b, turns)
    if flip:
        a, b = a[:, ::-1], b[:, ::-1]
    return a, b

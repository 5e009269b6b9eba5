"""Where the virtual microscope's training fields are taken: separate stage positions, each the
fullest of a few random candidates (the virtual specimens are sparse: a random field is often
empty). Positions lie on the pixel grid, so every field has the same sub-pixel offset and one
OTF per plane serves them all."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from livescope.acquire.virtual.scene import VirtualScene


def field_centres(n: int, scene: VirtualScene, *, pixel_size_um: float, sensor_shape_px: tuple[int, int],
                  stage_range_um: float, rng: np.random.Generator, candidates: int, min_gap_um: float,
                  tries: int) -> list[tuple[float, float]]:
    """``n`` (x, y) stage positions, µm, within +-``stage_range_um``, at least a field's width plus
    ``min_gap_um`` apart (held-out fields must be unseen); ValueError if they do not fit."""
    p = pixel_size_um
    h, w = sensor_shape_px
    gap = max(h, w) * p + min_gap_um
    centres: list[tuple[float, float]] = []
    for _ in range(n):
        found = []
        for _ in range(tries):
            x, y = p * np.round(rng.uniform(-stage_range_um, stage_range_um, 2) / p)
            if all(max(abs(x - a), abs(y - b)) >= gap for a, b in centres):
                found.append((float(x), float(y)))
                if len(found) == candidates:
                    break
        if not found:
            raise ValueError(f"cannot place {n} separate fields within +-{stage_range_um:g} µm; "
                             "widen stage_range_um or take fewer fields")
        amounts = [float(scene.specimen.render(x - w * p / 2, y - h * p / 2, (h, w), p).sum()) for x, y in found]
        centres.append(found[int(np.argmax(amounts))])
    return centres

"""The virtual microscope's training fields: where they are taken, and snapping them at a signal level.

`field_centres`: separate stage positions, each the fullest of a few random candidates (the
virtual specimens are sparse: a random field is often empty). Positions lie on the pixel grid, so
every field has the same sub-pixel offset and one OTF per plane serves them all.

`snap_at_signal`: a frame at any signal level from one scene set up at 1 photon/ms, so that the
scene's OTF cache (the costly part) serves every level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from livescope.acquire.virtual.optics import Modality
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


def snap_at_signal(scene: VirtualScene, x_um: float, y_um: float, z_um: float, exposure_ms: float,
                   signal_photons_per_ms: float, rng: np.random.Generator,
                   modality: Modality | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(noisy uint16, noise-free float32) ADU: `VirtualScene.snap` as a rig whose signal is
    ``signal_photons_per_ms`` would give it (``modality``: the rig's by default), from a scene set up
    at 1 photon/ms: the signal is linear in the rate, the background is not scaled."""
    from livescope.acquire.virtual.camera import expected_adu, read_out

    if scene.config.signal_photons_per_ms != 1.0:
        raise ValueError("snap_at_signal needs a scene whose rig has signal_photons_per_ms = 1")
    background = np.float32(scene.config.background_photons_per_ms * exposure_ms)
    photons = scene.expected_photons(x_um, y_um, z_um, exposure_ms, modality=modality)
    photons = (photons - background) * np.float32(signal_photons_per_ms) + background
    np.maximum(photons, 0.0, out=photons)
    return read_out(photons, rng, scene.camera), expected_adu(photons, scene.camera)

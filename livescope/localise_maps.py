"""From a localisation network's output maps to an emitter table (numpy only: the server's side).

The network (``models/localise/net.py``) gives per-pixel maps; an emitter whose centre lies near a
pixel border spreads its detection probability over two or four pixels. So, as DECODE does, the
probability is integrated: every local maximum of p (over its 3x3 neighbourhood, ties broken
towards the top-left) with p above ``candidate_p`` collects the p of its 3x3 neighbourhood, and
becomes an emitter when that sum reaches the card's ``threshold``. Its position, photons, z and uncertainties
are those the network predicted at the maximum.
"""

from __future__ import annotations

import numpy as np

from livescope.emitters import LOCALISE_MAP_CHANNELS, EmitterTable
from livescope.modelcard import LocaliseSpec, ModelCard


def local_maxima(p: np.ndarray) -> np.ndarray:
    """Bool (H, W): p >= its 8 neighbours, strictly greater than those above and to the left, so
    that a plateau yields one maximum."""
    h, w = p.shape
    padded = np.pad(p, 1, constant_values=-np.inf)
    peak = np.ones((h, w), bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            neighbour = padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            earlier = dy < 0 or (dy == 0 and dx < 0)
            peak &= (p > neighbour) if earlier else (p >= neighbour)
    return peak


def box_sum_3x3(p: np.ndarray) -> np.ndarray:
    padded = np.pad(p, 1)
    h, w = p.shape
    return sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))


def maps_to_emitters(maps: np.ndarray, pixel_size_nm: float, frame: int, spec: LocaliseSpec) -> EmitterTable:
    """Emitters of one frame from its maps (len(LOCALISE_MAP_CHANNELS), H, W); frame numbered from 1;
    the thresholds are the model card's (``spec``)."""
    if maps.ndim != 3 or maps.shape[0] != len(LOCALISE_MAP_CHANNELS):
        raise ValueError(f"maps must be ({len(LOCALISE_MAP_CHANNELS)}, H, W), got {maps.shape}")
    ch = {name: maps[i] for i, name in enumerate(LOCALISE_MAP_CHANNELS)}
    p = ch["p"]
    integrated = box_sum_3x3(p)
    keep = local_maxima(p) & (p > spec.candidate_p) & (integrated >= spec.threshold)
    rows, cols = np.nonzero(keep)
    at = lambda name: ch[name][rows, cols]  # noqa: E731
    pixel = float(pixel_size_nm)
    return EmitterTable.from_columns(
        frame=np.full(rows.size, frame),
        x_nm=(cols + 0.5 + at("dx")) * pixel,
        y_nm=(rows + 0.5 + at("dy")) * pixel,
        z_nm=at("dz"),
        photons=at("photons"),
        background_photons=at("background"),
        x_uncertainty_nm=at("x_sigma") * pixel,
        y_uncertainty_nm=at("y_sigma") * pixel,
        z_uncertainty_nm=at("z_sigma"),
        probability=np.minimum(integrated[rows, cols], 1.0),
    )


def range_warnings(card: ModelCard, pixel_size_nm: float, frames_photons: np.ndarray) -> tuple[str, ...]:
    """Where the data lie outside what the model's card says it was trained for, in words."""
    warnings = []
    trained = card.trained_for
    if trained.pixel_size_nm is not None:
        low, high = trained.pixel_size_nm
        if not low * 0.95 <= pixel_size_nm <= high * 1.05:
            warnings.append(f"pixel size {pixel_size_nm:g} nm is outside the {low:g}-{high:g} nm {card.ref} "
                            f"was trained for")
    if trained.background_photons_per_px is not None:
        low, high = trained.background_photons_per_px
        sample = frames_photons[:: max(1, len(frames_photons) // 32)]
        background = float(np.median(sample))
        if not low / 2 <= background <= high * 2:
            warnings.append(f"the frames' median level is {background:.3g} photons/px, far outside the "
                            f"background of {low:g}-{high:g} photons/px {card.ref} was trained for: "
                            f"check the camera calibration (baseline, e-/ADU, EM gain)")
    return tuple(warnings)

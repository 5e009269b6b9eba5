"""From a localisation network's output maps to an emitter table (numpy only: the server's side).

The network (``models/localise_net.py``) gives per-pixel maps; an emitter whose centre lies near a
pixel border spreads its detection probability over two or four pixels. So, as DECODE does, the
probability is integrated: every local maximum of p (over its 3x3 neighbourhood, ties broken
towards the top-left) with p above ``candidate_p`` collects the p of its 3x3 neighbourhood, and
becomes an emitter when that sum reaches the card's ``threshold``. Its position, photons, z and uncertainties
are those the network predicted at the maximum.
"""

from __future__ import annotations

import numpy as np

from livescope.emitters import LOCALISE_MAP_CHANNELS, EmitterTable
from livescope.modelcard import LocaliseSpec


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

"""The scoring of bench/refocus_quality.py: the delta-z grid, PSNR pooled per group of plane pairs
(as ``psnr_db`` on the stacked frames), SSIM per frame, and the issue's target checks."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from livescope.models.metrics import psnr_db_from_mse
from livescope.models.refocus.data import ZStack

try:  # scikit-image (the `bench` extra): SSIM; without it only PSNR is reported
    from skimage.metrics import structural_similarity
except ImportError:
    structural_similarity = None

TARGET_GAIN_DB, TARGET_DZ_UM = 3.0, 1.0
SSIM_SIGMA_PX = 1.5  # Wang et al. 2004, as bench/denoise_quality.py
UNCHANGED = "unchanged"

# (N, H, W) uint16 ADU frames, (N,) delta-z µm -> (N, H, W) float32 ADU
Refocuser = Callable[[np.ndarray, np.ndarray], np.ndarray]


def dz_grid(low_um: float, high_um: float, step_um: float) -> np.ndarray:
    """Multiples of ``step_um`` within [low, high] (0 included)."""
    first, last = math.ceil(low_um / step_um - 1e-6), math.floor(high_um / step_um + 1e-6)
    return np.round(step_um * np.arange(first, last + 1), 6) + 0.0  # + 0.0: no -0.0 in the JSON


def frame_ssim(images: np.ndarray, truths: np.ndarray) -> list[float]:
    """SSIM of each frame against its target, data range = that target's range."""
    if structural_similarity is None:
        return []
    return [float(structural_similarity(
        image.astype(np.float64), truth.astype(np.float64), data_range=max(float(truth.max() - truth.min()), 1e-6),
        gaussian_weights=True, sigma=SSIM_SIGMA_PX, use_sample_covariance=False))
        for image, truth in zip(images, truths)]


@dataclasses.dataclass
class _Pool:
    """One group's pairs: enough to pool PSNR exactly as `psnr_db` on the stacked frames does."""

    pairs: int = 0
    pixels: int = 0
    t_max: float = -math.inf
    t_min: float = math.inf
    sse: dict[str, float] = dataclasses.field(default_factory=lambda: defaultdict(float))
    ssim: dict[str, list[float]] = dataclasses.field(default_factory=lambda: defaultdict(list))

    def add_truths(self, truths: np.ndarray) -> None:
        self.pairs += len(truths)
        self.pixels += truths.size
        self.t_max, self.t_min = max(self.t_max, float(truths.max())), min(self.t_min, float(truths.min()))

    def row(self, methods: Sequence[str]) -> dict:
        peak = self.t_max - self.t_min
        row: dict = {"pairs": self.pairs}
        for name in [*methods, UNCHANGED]:
            if name not in self.sse:
                continue  # outside that model's delta-z range
            mse = self.sse[name] / self.pixels
            row[f"psnr_db_{name}"] = round(psnr_db_from_mse(mse, peak), 3)
            if self.ssim[name]:
                row[f"ssim_{name}"] = round(float(np.mean(self.ssim[name])), 4)
        for name in methods:
            if f"psnr_db_{name}" in row:
                row[f"gain_db_{name}"] = round(row[f"psnr_db_{name}"] - row[f"psnr_db_{UNCHANGED}"], 3)
        return row


def evaluate(methods: dict[str, tuple[Refocuser, tuple[float, float]]], stacks: Sequence[ZStack],
             specimens: Sequence[str], grid: np.ndarray) -> dict:
    """Every plane pair of every stack with delta-z on ``grid``: each method (within its delta-z
    range) and the unchanged input against the noise-free target plane.

    Returns per signed delta-z over all stacks (``per_dz``), per |delta-z| over both signs
    (``per_abs_dz``, as the card's metrics pool) and, with several specimens, per specimen."""
    pools: dict[tuple[str, float], _Pool] = defaultdict(_Pool)
    for stack, specimen in zip(stacks, specimens):
        if stack.clean_adu is None:
            raise ValueError(f"{stack.source}: no noise-free planes to score against")
        step, n = stack.z_step_um, stack.n_planes
        for dz in grid:
            k = int(round(dz / step))
            if abs(k) >= n or not math.isclose(k * step, dz, abs_tol=1e-3):
                continue
            i = np.arange(max(0, -k), n - max(0, k))
            inputs, truths = stack.planes_adu[i], stack.clean_adu[i + k]
            outputs = {UNCHANGED: inputs.astype(np.float32)}
            for name, (run, (low, high)) in methods.items():
                if low - 1e-9 <= dz <= high + 1e-9:
                    outputs[name] = run(inputs, np.full(len(i), dz, np.float32))
            keys = [(specimen, float(dz)), ("all", float(dz)), ("abs", abs(float(dz)))]
            for key in keys:
                pools[key].add_truths(truths)
            for name, out in outputs.items():
                sse = float(np.sum((out.astype(np.float64) - truths) ** 2))
                ssims = frame_ssim(out, truths)
                for key in keys:
                    pools[key].sse[name] += sse
                    pools[key].ssim[name].extend(ssims)

    names = list(methods)

    def rows(group: str, label: str) -> list[dict]:
        return [{label: dz, **pool.row(names)} for (g, dz), pool in sorted(pools.items()) if g == group]

    result = {"per_dz": rows("all", "dz_um"), "per_abs_dz": rows("abs", "abs_dz_um")}
    if len(set(specimens)) > 1:
        result["per_specimen"] = {s: rows(s, "dz_um") for s in dict.fromkeys(specimens)}
    return result


def target_checks(per_dz: list[dict], method: str) -> dict:
    """The issue's targets for ``method``: >= 3 dB over unchanged at delta-z -1 and +1 µm, and
    better than unchanged (PSNR) at every delta-z it was scored at."""
    by_dz = {row["dz_um"]: row for row in per_dz if f"psnr_db_{method}" in row}
    gains = {sign: by_dz.get(sign * TARGET_DZ_UM, {}).get(f"gain_db_{method}") for sign in (-1, 1)}
    not_better = [dz for dz, row in by_dz.items() if row[f"gain_db_{method}"] <= 0]
    ssim_not_better = [dz for dz, row in by_dz.items()
                       if f"ssim_{method}" in row and row[f"ssim_{method}"] <= row[f"ssim_{UNCHANGED}"]]
    at_1 = all(g is not None and g >= TARGET_GAIN_DB for g in gains.values())
    return {
        "gain_db_at_minus_1_um": gains[-1], "gain_db_at_plus_1_um": gains[1],
        "gain_at_1_um_at_least_3_db": at_1,
        "better_than_unchanged_at_every_dz": bool(by_dz) and not not_better,
        "dz_um_not_better": not_better,
        "ssim_better_than_unchanged_at_every_dz": bool(by_dz) and not ssim_not_better,
        "dz_scored_um": [min(by_dz), max(by_dz)] if by_dz else None,
        "met": at_1 and bool(by_dz) and not not_better,
    }

"""Super-resolution render speed: a whole table at once, and a live stream's frames one by one.

On a 2048 x 2048 render (10 nm pixels over 20.48 µm): the Gaussian render of 100,000 emitters, and
500 frames of 10 emitters added to a `RunningRender` one by one (what a live ``localise``
acquisition does per frame), beside one pass over the image (a float64 copy of it: what a render
that redrew the image per frame would cost at the least). Medians of ``--repeats``, alternating.
Prints JSON.

    python bench/render.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
from _common import median

from livescope.emitters import EmitterTable
from livescope.render import RenderGrid, RunningRender, gaussian

GRID = RenderGrid(width_nm=20480.0, height_nm=20480.0, pixel_nm=10.0)


def scattered(n: int, seed: int) -> EmitterTable:
    rng = np.random.default_rng(seed)
    sd = rng.uniform(5.0, 40.0, n)
    return EmitterTable.from_columns(frame=np.ones(n, np.int64), x_nm=rng.uniform(0, GRID.width_nm, n),
                                     y_nm=rng.uniform(0, GRID.height_nm, n), x_uncertainty_nm=sd, y_uncertainty_nm=sd)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    table = scattered(100_000, 7)
    frames = [scattered(10, seed) for seed in range(500)]
    image = np.zeros(GRID.shape, np.float64)

    def live() -> None:
        running = RunningRender(GRID, "gaussian")
        for frame in frames:
            running.add(frame)

    gaussian(table, GRID)  # warm up
    whole, adds, passes = [], [], []
    for _ in range(args.repeats):
        whole.append(timed(lambda: gaussian(table, GRID)))
        adds.append(timed(live) / len(frames))
        passes.append(timed(lambda: image.copy()))
    print(json.dumps({
        "benchmark": "render", "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "render_px": list(GRID.shape), "repeats": args.repeats,
        "gaussian_100k_emitters_s": round(median(whole), 3),
        "live_add_ms_per_frame_of_10": round(median(adds) * 1e3, 3),
        "one_image_pass_ms": round(median(passes) * 1e3, 3),
        "live_add_vs_one_image_pass": round(median(adds) / median(passes), 4),
    }, indent=1))


if __name__ == "__main__":
    main()

"""Virtual camera speed: frames/s of the virtual microscope's physics, widefield, default rig.

Two cases per sensor size, each timed over ``--seconds`` after a warm-up frame:

- ``live``: the stage stands still (a live view): the noise-free image is cached, every frame
  draws fresh shot and read noise (what a live camera at rest costs);
- ``panning``: the stage moves by a whole pixel every frame: every frame renders the specimen
  window and convolves it with the (cached) PSF by FFT, then draws the noise.

Targets on a 2-core CPU: >= 50 frames/s at 512x512 and >= 4 at 2048x2048 (live). Prints JSON.

    python bench/virtual_camera.py [--sizes 512 2048] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from livescope.acquire.virtual import VirtualRigConfig, VirtualScene

TARGET_FPS = {512: 50.0, 2048: 4.0}


def frames_per_s(scene: VirtualScene, *, panning: bool, seconds: float) -> float:
    rng = np.random.default_rng(0)
    p = scene.pixel_size_um
    scene.snap(0.0, 0.0, 0.0, 10.0, rng)  # warm-up: tiles and PSF
    if panning:
        scene.snap(p, 0.0, 0.0, 10.0, rng)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        x = (n + 2) * p if panning else 0.0
        scene.snap(x, 0.0, 0.0, 10.0, rng)
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()

    results = []
    for size in args.sizes:
        rig = VirtualRigConfig(sensor_shape_px=(size, size))
        scene = VirtualScene(rig)
        t0 = time.perf_counter()
        scene.expected_photons(0.0, 0.0, 0.0, 10.0)
        first_ms = (time.perf_counter() - t0) * 1e3
        live = frames_per_s(scene, panning=False, seconds=args.seconds)
        panning = frames_per_s(scene, panning=True, seconds=args.seconds)
        target = TARGET_FPS.get(size)
        results.append({"size_px": size, "first_frame_ms": round(first_ms, 1),
                        "live_fps": round(live, 1), "panning_fps": round(panning, 1),
                        "target_fps": target, "meets_target": None if target is None else live >= target})
    report = {"benchmark": "virtual_camera", "modality": "widefield", "psf_model": "pupil",
              "cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
              "results": results}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Autofocus in the loop: focus error over a drifting acquisition, with and without `--autofocus`.

The virtual microscope (512 x 512 px, NA 1.4, 520 nm, the default 0.07 waves of spherical
aberration) acquires 200 frames while the sample drifts 2 µm axially (10 nm per frame); the camera's
ground truth gives, frame by frame, where the focus sat relative to the sample. Printed as JSON, per
specimen and seed, with and without autofocus:

  every_frame: max and rms |focus error| over all frames (the dithered ones, +-0.15 µm about the
               working plane one frame in three, included);
  working_plane: the same over the undithered frames (what the working plane itself tracked);
  searching_cycles / alarms: cycles with no focus peak, focus-loss alarms.

    python bench/autofocus.py [--frames 200] [--size 512] [--seeds 1 2] [--specimens filaments cells]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import useq

from livescope.acquire.autofocus import AutofocusSettings, FocusController, FocusedSequence, FocusScorer
from livescope.acquire.microscope import open_microscope
from livescope.acquire.virtual import VirtualRigConfig


def run(specimen: str, seed: int, frames: int, size: int, drift_um: float, autofocus: bool) -> dict:
    rig = VirtualRigConfig(sensor_shape_px=(size, size), specimen=specimen, seed=seed,
                           drift_um_per_frame=(0.0, 0.0, drift_um / frames))
    core = open_microscope(rig=rig)
    errors: list[float] = []

    class Truth:
        def frameReady(self, img, event, meta):
            t = core.virtual_camera.truth_of(img)
            errors.append(t.defocus_um - t.drift_um[2])

    seq = useq.MDASequence(time_plan={"interval": 0, "loops": frames})
    t0 = time.perf_counter()
    report = None
    if autofocus:
        ctl = FocusController(core.getPosition(), AutofocusSettings())
        core.mda.run(FocusedSequence.of(seq, ctl), output=[FocusScorer(ctl, rig.camera.baseline_adu), Truth()])
        report = ctl.report()
    else:
        core.mda.run(seq, output=[Truth()])
    e = np.abs(np.asarray(errors))
    centre = e[1::3] if autofocus else e

    def stats(x: np.ndarray) -> dict:
        return {"max_um": round(float(x.max()), 3), "rms_um": round(float(np.sqrt(np.mean(x**2))), 3)}

    return {"specimen": specimen, "seed": seed, "autofocus": autofocus, "frames": len(e),
            "every_frame": stats(e), "working_plane": stats(centre),
            "within_0_3_um": bool(e.max() < 0.3),
            "searching_cycles": report.searching_cycles if report else None,
            "alarms": list(report.alarms) if report else None, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--drift-um", type=float, default=2.0, help="axial drift over the whole run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--specimens", nargs="+", default=["filaments", "cells"])
    args = ap.parse_args()
    runs = [run(sp, seed, args.frames, args.size, args.drift_um, af)
            for sp in args.specimens for seed in args.seeds for af in (True, False)]
    print(json.dumps({"frames": args.frames, "size_px": args.size, "drift_um": args.drift_um, "runs": runs},
                     indent=2))


if __name__ == "__main__":
    main()

"""SMLM that knows when it has enough: FRC resolution against frames, and drift with and without correction.

A virtual SMLM acquisition (the virtual microscope's blinking filaments, 128 x 128 px of 108 nm,
dense blinking, the sample drifting 0.5 nm per frame along x and 0.2 nm along y plus a 0.3 nm
random walk) is localised by the classical fitter (``models/localise/classical.py``, so that the
figures do not depend on a trained network); the simulator gives each frame's true emitters and
drift. Printed as JSON:

  frc: per number of frames N, the FRC resolution (livescope.frc, 1/7, halves by blocks of 10
       frames, 10 nm histograms) of the first N frames' localisations as localised, after the RCC
       drift correction (livescope.drift), and of the ground truth (the true emitters of the same
       frames at their undrifted positions): what the data could show with perfect localisation;
  drift: rms over frames of the error in the lateral drift, without correction (the drift itself)
       and with the RCC estimate, and the true and estimated drift of the last frame.

    python bench/smlm_stop.py [--frames 400] [--seed 2]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from livescope.acquire.microscope import open_microscope
from livescope.acquire.virtual import VirtualRigConfig
from livescope.acquire.virtual.specimen import EmitterKinetics
from livescope.drift import estimate_drift
from livescope.emitters import EmitterTable
from livescope.frc import table_frc
from livescope.models.localise.classical import localise_classical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    t0 = time.perf_counter()
    rig = VirtualRigConfig(sensor_shape_px=(128, 128), specimen="smlm", seed=args.seed,
                           drift_um_per_frame=(0.0005, 0.0002, 0.0), drift_jitter_um=0.0003,
                           kinetics=EmitterKinetics(on_rate_per_s=10.0, bleach_rate_per_s=0.5))
    core = open_microscope(rig=rig)
    cam, pixel_nm = rig.camera, rig.pixel_size_um * 1000.0
    frames, truths, drifts = [], [], []
    for _ in range(args.frames):
        img = core.snap()
        truth = core.virtual_camera.truth_of(img)
        frames.append((img.astype(np.float32) - cam.baseline_adu) * cam.e_per_adu / cam.em_gain)
        truths.append(truth.emitters)
        drifts.append(np.array(truth.drift_um[:2]) * 1000.0)
    simulated_s = time.perf_counter() - t0
    found = localise_classical(np.stack(frames), pixel_nm, rig.optics.sigma0_um * 1000.0)
    localised_s = time.perf_counter() - t0 - simulated_s
    true_drift = np.array(drifts) - drifts[0]  # from the first frame, as the estimate
    truth = EmitterTable.concatenate(truths)
    undrifted = truth.rows.copy()
    k = undrifted["frame"].astype(np.int64) - 1
    # a truth emitter's frame position carries the drift since the first frame plus that first offset
    undrifted["x_nm"] -= true_drift[k, 0]
    undrifted["y_nm"] -= true_drift[k, 1]
    truth = EmitterTable(undrifted)
    width = height = 128 * pixel_nm

    rows = []
    for n in [n for n in (50, 100, 200, 300, 400, 600, 800) if n <= args.frames]:
        first = found.select(found["frame"] <= n)
        drift = estimate_drift(first, width, height)
        corrected = drift.corrected(first) if drift is not None else first

        def res(table: EmitterTable) -> float | None:
            curve = table_frc(table, width, height)
            return None if curve is None or curve.resolution_nm is None else round(curve.resolution_nm, 1)

        rows.append({"frames": n, "emitters": len(first), "frc_nm_as_localised": res(first),
                     "frc_nm_drift_corrected": res(corrected),
                     "frc_nm_ground_truth": res(truth.select(truth["frame"] <= n))})

    drift = estimate_drift(found, width, height)
    est = np.stack([drift.x_nm, drift.y_nm], axis=1)[: args.frames] if drift is not None else None
    span = slice(drift.first_frame - 1, None) if drift is not None else slice(None)
    rms = lambda e: round(float(np.sqrt(np.mean(np.sum(e**2, axis=1)))), 2)  # noqa: E731
    result = {
        "condition": {"frames": args.frames, "field_px": 128, "pixel_nm": round(pixel_nm, 2), "seed": args.seed,
                      "localiser": "classical (models/localise/classical.py)", "emitters": len(found),
                      "true_emitters": len(truth)},
        "frc": rows,
        "drift": {"rms_error_nm_without_correction": rms(true_drift[span]),
                  "rms_error_nm_with_rcc": rms(est - true_drift[span][: len(est)]) if est is not None else None,
                  "true_last_frame_nm": [round(float(v), 1) for v in true_drift[-1]],
                  "estimated_last_frame_nm": [round(v, 1) for v in drift.final_nm] if drift is not None else None,
                  "segments": drift.segments if drift is not None else None},
        "seconds": {"simulate": round(simulated_s, 1), "localise": round(localised_s, 1),
                    "total": round(time.perf_counter() - t0, 1)},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

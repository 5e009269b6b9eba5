"""SMLM that knows when it has enough: FRC resolution against frames next to what ideal localisation
would give, and drift with and without correction.

A virtual SMLM acquisition (the virtual microscope's blinking filaments, 128 x 128 px of 108 nm,
dense blinking, the sample drifting 0.5 nm per frame along x and 0.2 nm along y plus a 0.3 nm
random walk) is localised by the shipped network (``localise``, as `acquire --pipeline localise`
and `livescope localise` run it) and, for comparison, the classical fitter
(``models/localise/classical.py``); the simulator gives each frame's true emitters and drift.
Printed as JSON:

  frc: per number of frames N, the FRC resolution (livescope.frc: 1/7, halves by blocks of 10
       frames, histograms of --frc-pixel-nm; None: finer than 2 histogram pixels) of the first N frames'
       localisations as localised, after the RCC drift correction (livescope.drift), and of the
       ideal localisations: every true emitter of those frames, once per frame it is on, at its
       undrifted position displaced by its own localisation precision (Mortensen et al. 2010: its
       photons, the background, the PSF width and the pixel; an EMCCD's excess noise counted). The
       truth itself cannot be the reference: a molecule blinking in both halves sits at exactly
       the same place in each, so its halves agree at every frequency;
  detected: localisations against true emitter appearances;
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
from livescope.repository import ModelRepository, shipped_models_root
from livescope.server.models import LoadedModel
from livescope.server.offline_localise import localise_frames
from livescope.server.providers import RuntimeOptions


def mortensen_precision_nm(photons: np.ndarray, background_per_px: float, sigma_nm: float, pixel_nm: float,
                           excess: float) -> np.ndarray:
    """Lateral precision of a least-squares fit (Mortensen et al., Nat Methods 2010, eq. 6), per axis."""
    sa2 = sigma_nm**2 + pixel_nm**2 / 12.0
    n = np.maximum(photons, 1.0)
    return np.sqrt(excess * sa2 / n * (16.0 / 9.0 + 8.0 * np.pi * sa2 * background_per_px / (n * pixel_nm**2)))


def matched_fraction(found: EmitterTable, truth: EmitterTable, radius_nm: float = 100.0) -> float:
    """Share of true emitter appearances with a localisation of the same frame within ``radius_nm``."""
    from scipy.spatial import cKDTree

    hits = 0
    for frame in np.unique(truth["frame"]):
        t, f = truth.in_frame(int(frame)), found.in_frame(int(frame))
        if len(f) and len(t):
            d, _ = cKDTree(np.c_[f["x_nm"], f["y_nm"]]).query(np.c_[t["x_nm"], t["y_nm"]])
            hits += int(np.sum(d <= radius_nm))
    return hits / max(len(truth), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--frc-pixel-nm", type=float, default=5.0,
                        help="FRC histogram pixel (the finest resolution it can show is twice it; a field too "
                             "large for it gets coarser pixels: livescope.frc.FRC_MAX_PIXELS)")
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
    stack = np.stack(frames)
    model = LoadedModel.load(ModelRepository([shipped_models_root()]).resolve("localise", None),
                             RuntimeOptions(provider="cpu"))
    found = {"network": localise_frames(model, stack, pixel_nm),
             "classical": localise_classical(stack, pixel_nm, rig.optics.sigma0_um * 1000.0)}
    localised_s = time.perf_counter() - t0 - simulated_s
    true_drift = np.array(drifts) - drifts[0]  # from the first frame, as the estimate
    truth = EmitterTable.concatenate(truths)
    width = height = 128 * pixel_nm

    # the ideal localisations: each true appearance, undrifted, displaced by its own precision
    ideal = truth.rows.copy()
    k = ideal["frame"].astype(np.int64) - 1
    ideal["x_nm"] -= true_drift[k, 0]  # a frame's position carries the drift since the first frame
    ideal["y_nm"] -= true_drift[k, 1]
    excess = 2.0 if cam.em_gain > 1 else 1.0
    background = rig.background_photons_per_ms * rig.exposure_ms * rig.qe
    precision = mortensen_precision_nm(ideal["photons"].astype(np.float64) * rig.qe, background,
                                       rig.optics.sigma0_um * 1000.0, pixel_nm, excess)
    rng = np.random.default_rng(args.seed)
    ideal["x_nm"] += rng.normal(0.0, precision)
    ideal["y_nm"] += rng.normal(0.0, precision)
    ideal = EmitterTable(ideal)

    frc_pixel = [args.frc_pixel_nm]

    def res(table: EmitterTable) -> float | None:
        curve = table_frc(table, width, height, pixel_nm=args.frc_pixel_nm)
        frc_pixel[0] = curve.pixel_nm if curve is not None else frc_pixel[0]
        return None if curve is None or curve.resolution_nm is None else round(curve.resolution_nm, 1)

    rows = []
    for n in [n for n in (50, 100, 200, 300, 400, 600, 800) if n <= args.frames]:
        row: dict = {"frames": n, "frc_nm_ideal": res(ideal.select(ideal["frame"] <= n))}
        for name, table in found.items():
            first = table.select(table["frame"] <= n)
            drift = estimate_drift(first, width, height)
            corrected = drift.corrected(first) if drift is not None else first
            row[name] = {"emitters": len(first), "frc_nm_as_localised": res(first),
                         "frc_nm_drift_corrected": res(corrected)}
        rows.append(row)

    drift = estimate_drift(found["network"], width, height)
    est = np.stack([drift.x_nm, drift.y_nm], axis=1)[: args.frames] if drift is not None else None
    span = slice(drift.first_frame - 1, None) if drift is not None else slice(None)
    rms = lambda e: round(float(np.sqrt(np.mean(np.sum(e**2, axis=1)))), 2)  # noqa: E731
    result = {
        "condition": {"frames": args.frames, "field_px": 128, "pixel_nm": round(pixel_nm, 2), "seed": args.seed,
                      "true_appearances": len(truth),
                      "ideal_precision_nm_median": round(float(np.median(precision)), 1),
                      "frc_pixel_nm": round(frc_pixel[0], 2),
                      "resolution_note": "None: finer than 2 FRC pixels (no crossing of 1/7)"},
        "detected": {name: {"localisations": len(t), "true_found_within_100_nm": round(matched_fraction(t, truth), 3)}
                     for name, t in found.items()},
        "frc": rows,
        "drift_network": {
            "rms_error_nm_without_correction": rms(true_drift[span]),
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

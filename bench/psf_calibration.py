"""Bead calibration of the PSF (models/psf/calibration.py): recovered pupil parameters against truth,
and how well the fitted model describes public bead data. Prints JSON.

Part 1, the virtual microscope: beads (``specimen="beads"``) on a rig with known astigmatism and
spherical aberration, z-stacks acquired through pymmcore-plus (`VirtualMicroscope`, a useq
sequence over ``--positions`` stage positions, 128x128 px, 41 planes from -0.8 to +0.8 µm), then
`calibrate_psf`: recovered vs true astigmatism / spherical aberration; each plane of each bead
localised alone with the calibrated model (`localise_planes`) against its true z; and the PSF a
`LocaliseSimulation` built from `simulation_fields()` renders against the calibration's own.

Part 2, EPFL SMLM Challenge 2016 beads (Sage et al., Nat Methods 2019; ../shared/data/epfl2016_beads):
``beads_AS_zstack.tif`` (astigmatic, simulated from experimental PSFs; 100 nm pixels, 151 planes
-750..+750 nm; camera baseline 100 ADU, EM gain 300, 45 e-/ADU; NA 1.49, 660 nm). Calibrated on
every ``--epfl-step``-th plane, taking the stack's z as the focus position (the convention only
flips the signs of both aberrations: the scalar PSF with even Zernike terms at -defocus and
-aberrations is the same image point-reflected). Fitted bead positions vs ``beads_gt.csv`` (a common
offset, then the scatter about it); every plane of every bead localised alone vs the ground
truth's z (after one common offset: the model's paraxial focus vs the challenge's z origin).

Part 3, a real astigmatic bead (Li et al., Nat Methods 2018, fit3Dcspline; ../shared/data/
ries_astig_bead/single_bead.tif: 201 planes 10 nm apart, 21x21 px, offset 400 ADU). Pixel size,
NA and wavelength are not stated: NA 1.49 oil, 670 nm and the pixel sizes in ``--ries-pixels-nm``
are assumptions; reported: residual and reduced chi^2 per assumed pixel size, the fitted
parameters, and sigma_x / sigma_y (second moments, px) against z for the data and the model.

Missing data folders are skipped (reported as such).

    python bench/psf_calibration.py [--positions N] [--epfl-step K] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from livescope.models.psf.beads import second_moments
from livescope.models.psf.calibration import PsfCalibration, PsfCalibrationError, calibrate_psf, localise_planes

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def virtual_bead_stacks(rig, positions_um: list[tuple[float, float]], z_um: np.ndarray) -> list[np.ndarray]:
    """(Z, H, W) uint16 stacks of ``rig`` (beads) at each stage position, through pymmcore-plus."""
    import useq

    from livescope.acquire.microscope import open_microscope

    core = open_microscope(rig=rig)
    frames: list[np.ndarray] = []
    core.mda.events.frameReady.connect(lambda img, event, meta=None: frames.append(np.array(img)))
    try:
        core.mda.run(useq.MDASequence(stage_positions=[(x, y, 0.0) for x, y in positions_um],
                                      z_plan={"relative": [float(v) for v in z_um]}, axis_order="pz"))
    finally:
        core.unloadAllDevices()
    n = len(z_um)
    return [np.stack(frames[i * n:(i + 1) * n]) for i in range(len(positions_um))]


def _params(cal: PsfCalibration) -> dict:
    return {"astigmatism_waves": round(cal.astigmatism_waves, 5), "astigmatism_waves_sd": round(cal.astigmatism_waves_sd, 5),
            "spherical_waves": round(cal.spherical_waves, 5), "spherical_waves_sd": round(cal.spherical_waves_sd, 5),
            "na": round(cal.na, 4), "blur_sigma_nm": round(cal.blur_sigma_nm, 1),
            "focus_offset_um": round(cal.focus_offset_um, 4), "focus_spread_um": round(cal.focus_spread_um, 4),
            "residual_relative": round(cal.residual_relative, 4), "reduced_chi2": round(cal.reduced_chi2, 3),
            "beads_used": len(cal.beads), "beads_rejected": [r.reason for r in cal.rejected],
            "z_range_nm": [round(v) for v in cal.z_range_nm], "evaluations": cal.evaluations}


def _z_errors(found_nm: np.ndarray, true_nm: np.ndarray, within_nm: float) -> dict:
    keep = np.abs(true_nm) <= within_nm
    err = found_nm[keep] - true_nm[keep]
    return {"within_nm": within_nm, "n": int(keep.sum()), "bias_nm": round(float(err.mean()), 1),
            "rms_nm": round(float(np.sqrt((err**2).mean())), 1),
            "p95_abs_nm": round(float(np.percentile(np.abs(err), 95)), 1)}


def _rois(stack: np.ndarray, cal: PsfCalibration, bead, half: int) -> np.ndarray:
    p = cal.pixel_size_nm
    row, col = int(bead.y_nm // p), int(bead.x_nm // p)
    return stack[:, row - half:row + half + 1, col - half:col + half + 1].astype(np.float64)


def virtual_part(positions: int, astigmatism: float, spherical: float) -> dict:
    from livescope.acquire.virtual import VirtualRigConfig
    from livescope.models.localise.data import LocaliseSimulation, render_emitters

    rig = VirtualRigConfig(specimen="beads", sensor_shape_px=(128, 128), field_um=100.0, signal_photons_per_ms=200.0,
                           astigmatism_waves=astigmatism, spherical_waves=spherical, seed=1)
    z = np.round(np.linspace(-0.8, 0.8, 41), 4)
    grid = [(14.0 * (i % 3), 14.0 * (i // 3)) for i in range(positions)]
    t0 = time.perf_counter()
    stacks = virtual_bead_stacks(rig, grid, z)
    acquired = time.perf_counter() - t0
    p_nm = rig.pixel_size_um * 1e3
    t0 = time.perf_counter()
    cal = calibrate_psf(stacks, z, pixel_size_nm=p_nm, baseline_adu=rig.baseline_adu, e_per_adu=rig.e_per_adu,
                        read_noise_e=rig.read_noise_e, emission_nm=rig.emission_nm, na=rig.na,
                        immersion_index=rig.immersion_index)
    fitted = time.perf_counter() - t0
    # Every plane of every bead alone: its z from the calibrated model vs the truth (beads at z = 0:
    # emitter z = -stage z).
    half = 8
    found, truth = [], []
    for bead in cal.beads:
        rois = (_rois(stacks[bead.stack], cal, bead, half) - rig.baseline_adu) * rig.e_per_adu
        found.append(localise_planes(cal, rois, read_noise_e=rig.read_noise_e)[:, 2])
        truth.append(-z * 1e3)
    found_nm, true_nm = np.concatenate(found), np.concatenate(truth)
    # The PSF that training data gets: LocaliseSimulation(**simulation_fields()) vs the calibration's
    # pupil PSF (no blur: molecules are points), at a few z, centred on a pixel.
    sim = LocaliseSimulation(**cal.simulation_fields())
    match = []
    for z_nm in (-600.0, -300.0, 0.0, 300.0, 600.0):
        shape = 2 * half + 1
        centre_nm = (half + 0.5) * p_nm
        rendered = render_emitters(sim, (shape, shape), [centre_nm], [centre_nm], [1.0], p_nm, z_nm=[z_nm])
        model = cal.psf(np.array([-z_nm * 1e-3]), half_px=half, blur=False)[0]
        rendered = rendered / rendered.sum() * model.sum()  # the simulation keeps 95 % of the light
        match.append(float(np.abs(rendered - model).max() / model.max()))
    return {"truth": {"astigmatism_waves": astigmatism, "spherical_waves": spherical},
            "recovered": _params(cal),
            "error": {"astigmatism_waves": round(cal.astigmatism_waves - astigmatism, 5),
                      "spherical_waves": round(cal.spherical_waves - spherical, 5)},
            "stacks": len(stacks), "planes": int(z.size), "pixel_size_nm": round(p_nm, 2),
            "acquire_s": round(acquired, 1), "fit_s": round(fitted, 1),
            "plane_z_vs_truth": [_z_errors(found_nm, true_nm, w) for w in (400.0, 600.0, 800.0)],
            "simulation_psf_max_rel_diff": round(max(match), 4)}


def epfl_part(step: int) -> dict:
    import tifffile

    folder = DATA / "epfl2016_beads"
    if not (folder / "beads_AS_zstack.tif").is_file():
        return {"skipped": f"{folder} not found"}
    stack = tifffile.imread(folder / "beads_AS_zstack.tif")
    with open(folder / "beads_gt.csv") as f:
        rows = list(csv.DictReader(f))
    z_all = np.arange(stack.shape[0]) * 0.01 - 0.75
    camera = dict(baseline_adu=100.0, e_per_adu=45.0, em_gain=300.0, read_noise_e=0.0)
    t0 = time.perf_counter()
    cal = calibrate_psf([stack[::step]], z_all[::step], pixel_size_nm=100.0, emission_nm=660.0, na=1.49,
                        immersion_index=1.518, **camera)
    fitted = time.perf_counter() - t0
    truth = {}
    for r in rows:
        truth.setdefault(r["bead"], (float(r["x_nm"]), float(r["y_nm"])))
    z_gt = {int(r["frame"]): float(r["z_nm"]) for r in rows}  # the same for every bead
    z_truth_nm = np.array([z_gt[f + 1] for f in range(stack.shape[0])])
    pairs = []
    for bead in cal.beads:
        nearest = min(truth.values(), key=lambda t: (t[0] - bead.x_nm) ** 2 + (t[1] - bead.y_nm) ** 2)
        pairs.append((bead.x_nm - nearest[0], bead.y_nm - nearest[1]))
    d = np.array(pairs)
    offset = d.mean(axis=0)
    scatter = float(np.sqrt(((d - offset) ** 2).sum(axis=1).mean()))
    found = []
    for bead in cal.beads:
        rois = (_rois(stack, cal, bead, 12) - 100.0) * 45.0 / 300.0
        found.append(localise_planes(cal, rois, excess=2.0)[:, 2])
    found_nm = np.concatenate(found)
    # The stack's z is taken as the focus position, so the emitter's z from the focal plane is
    # -(ground-truth z); the model's z origin (its paraxial focus) differs from the challenge's by
    # one common offset (spherical aberration moves the best focus): the fitted focus.
    true_nm = np.tile(-z_truth_nm, len(cal.beads))
    common = 1e3 * cal.focus_offset_um
    return {"recovered": _params(cal), "fit_s": round(fitted, 1), "planes_fitted": int(len(z_all[::step])),
            "xy_vs_gt": {"common_offset_nm": [round(float(v), 1) for v in offset],
                         "rms_about_offset_nm": round(scatter, 2), "beads": len(pairs)},
            "plane_z_vs_gt_z": {"z_origin_offset_nm": round(common, 1),
                                "after_offset": [_z_errors(found_nm - common, true_nm, w) for w in (300.0, 500.0, 750.0)]}}


def ries_part(pixels_nm: list[float], step: int) -> dict:
    import tifffile

    path = DATA / "ries_astig_bead" / "single_bead.tif"
    if not path.is_file():
        return {"skipped": f"{path} not found"}
    stack = tifffile.imread(path)
    z = (np.arange(stack.shape[0]) - 100) * 0.01
    baseline = float(np.percentile(stack, 5))  # the stated 400 ADU offset sits below the dark level
    out: dict = {"assumed": {"na": 1.49, "emission_nm": 670.0, "immersion_index": 1.518, "e_per_adu": 0.1,
                             "baseline_adu": baseline}, "per_pixel_size": {}}
    best = None
    for p in pixels_nm:
        try:
            cal = calibrate_psf([stack[::step]], z[::step], pixel_size_nm=p, baseline_adu=baseline, e_per_adu=0.1,
                                read_noise_e=1.0, emission_nm=670.0, na=1.49, immersion_index=1.518, roi_half_px=9,
                                min_snr=5.0)
        except PsfCalibrationError as e:
            out["per_pixel_size"][str(p)] = {"error": str(e)}
            continue
        out["per_pixel_size"][str(p)] = _params(cal)
        if best is None or cal.residual_relative < best[1].residual_relative:
            best = (p, cal)
    if best is None:
        return out
    p, cal = best
    bead = cal.beads[0]
    rois = _rois(stack, cal, bead, 9) - baseline
    vx, vy = second_moments(rois)
    centre = [bead.y_nm / p - 0.5 - int(bead.y_nm // p), bead.x_nm / p - 0.5 - int(bead.x_nm // p)]
    model = cal.psf(z - bead.focus_um, np.tile([centre], (z.size, 1)), half_px=9)
    mx, my = second_moments(model)
    every = slice(0, z.size, 20)
    out["best_pixel_size_nm"] = p
    out["sigma_curves_px"] = {"z_um": [round(float(v), 2) for v in z[every]],
                              "data_sigma_x": [round(float(v), 2) for v in np.sqrt(np.clip(vx[every], 0, None))],
                              "data_sigma_y": [round(float(v), 2) for v in np.sqrt(np.clip(vy[every], 0, None))],
                              "model_sigma_x": [round(float(v), 2) for v in np.sqrt(np.clip(mx[every], 0, None))],
                              "model_sigma_y": [round(float(v), 2) for v in np.sqrt(np.clip(my[every], 0, None))]}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--positions", type=int, default=4, help="virtual stage positions (128x128 px each)")
    ap.add_argument("--epfl-step", type=int, default=3, help="calibrate on every K-th EPFL plane")
    ap.add_argument("--ries-step", type=int, default=4, help="calibrate on every K-th plane of the Ries bead")
    ap.add_argument("--ries-pixels-nm", type=float, nargs="+", default=[100.0, 117.0, 127.0])
    ap.add_argument("--quick", action="store_true", help="one virtual case, coarse public data")
    args = ap.parse_args(argv)
    cases = [(0.1, 0.07)] if args.quick else [(0.1, 0.07), (-0.15, -0.03), (0.05, 0.0)]
    result = {"virtual": [virtual_part(args.positions, a, s) for a, s in cases],
              "epfl2016_AS": epfl_part(args.epfl_step * (2 if args.quick else 1)),
              "ries_astig_bead": ries_part(args.ries_pixels_nm, args.ries_step * (2 if args.quick else 1))}
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()

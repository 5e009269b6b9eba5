"""PSF estimation network (issue 20): defocus error against the truth, and the uncertainty's
calibration, on data it was not trained on. Prints JSON.

Part 1, held-out optics: focal series (-1 to +1 µm, 0.1 µm steps) imaged with `Optics.psf` (the
virtual microscope's exact pupil PSF, not the training simulator's periodic one) of optics in the
region the training never drew (NA 1.05-1.25 x emission 560-640 nm) with aberrations of both signs,
specimens of the virtual microscope (filaments, beads, cells), an sCMOS at 200 photons peak: |defocus|
rms error (nm), the fraction of errors within 1 and 2 predicted sigma, and where the astigmatism is
strong, the signed defocus (sign from the rig's astigmatism sign, which such a rig knows).

Part 1b, training optics: the same focal series with optics the training did draw (NA 1.4 oil 520 nm,
0.9 air 500 nm, 1.0 water 680 nm), to tell a miss on unseen optics from a miss on any optics.

Part 2, EPFL SMLM Challenge 2016 beads (../shared/data/epfl2016_beads, as bench/psf_calibration.py
reads them: 151 planes -750..+750 nm, 100 nm pixels, NA 1.49, 660 nm, oil): a 64 px tile about each
bead of each plane (beads_gt.csv), 2D and astigmatic stacks; |defocus| against |z| (z = 0: the
challenge's focus), and the signed defocus of the astigmatic stack with the one sign bit of its
astigmatism taken as the better of the two (a calibration of one bit, stated as such).

    python bench/psf_estimate.py [--model psf] [--models DIR] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import tifffile

from livescope.acquire.virtual.optics import Optics, convolve, otf
from livescope.acquire.virtual.specimen import make_specimen
from livescope.psf_estimate import PsfOptics, tile_estimates
from livescope.repository import ModelRepository, shipped_models_root
from livescope.server.models import LoadedModel

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
TILE = 64
# Held-out optics (inside the region training never drew): (NA, emission nm, immersion, astig, spherical)
HELD_OUT = ((1.1, 580.0, 1.33, 0.10, 0.0), (1.2, 620.0, 1.33, -0.08, 0.05), (1.22, 600.0, 1.515, 0.12, -0.06),
            (1.15, 570.0, 1.33, 0.0, 0.08))
# Optics the training did draw, imaged the same way: whether a miss is about unseen optics or not
TRAINING_OPTICS = ((1.4, 520.0, 1.515, 0.10, 0.0), (0.9, 500.0, 1.0, -0.08, 0.05), (1.0, 680.0, 1.33, 0.0, 0.08))


def scores(abs_est: np.ndarray, sd: np.ndarray, z: np.ndarray) -> dict:
    err = abs_est - np.abs(z)
    return {"n": int(len(z)), "abs_defocus_rms_nm": round(float(np.sqrt(np.mean(err**2)) * 1e3), 1),
            "abs_defocus_bias_nm": round(float(np.mean(err) * 1e3), 1),
            # the floor: one constant guess (these tiles' mean |z|) for every tile, scored the same way
            "constant_guess_rms_nm": round(float(np.std(np.abs(z)) * 1e3), 1),
            "within_1_sigma": round(float(np.mean(np.abs(err) <= sd)), 3),
            "within_2_sigma": round(float(np.mean(np.abs(err) <= 2 * sd)), 3)}


def signed(est: dict, z: np.ndarray, sign: float) -> dict:
    s = np.where(est["p_defocus_positive"] >= 0.5, 1.0, -1.0) * sign
    z_hat = s * est["abs_defocus_um"]
    sure = ~np.isnan(est["defocus_um"])
    return {"signed_defocus_rms_nm": round(float(np.sqrt(np.mean((z_hat - z) ** 2)) * 1e3), 1),
            "sign_correct_fraction": round(float(np.mean(np.sign(z_hat) == np.sign(z))), 3),
            "sign_sure_fraction": round(float(np.mean(sure)), 3)}


def run(model: LoadedModel, tiles: np.ndarray, optics: PsfOptics) -> dict:
    x = np.empty((len(tiles), 5, TILE, TILE), np.float32)
    x[:, 0] = tiles
    x[:, 1:] = optics.channels()[:, None, None]
    out = np.concatenate([model.run_windows(x[i:i + 64]) for i in range(0, len(x), 64)])
    return tile_estimates(out)


def focal_series_part(model: LoadedModel, quick: bool,
                      optics_list: tuple[tuple[float, ...], ...] = HELD_OUT) -> dict:
    rng = np.random.default_rng(7)
    z_planes = np.round(np.arange(-1.0, 1.0001, 0.2 if quick else 0.1), 3)
    pixel_um, side = 0.1, 192  # the tile is the middle 64 px of a 192 px field (no wrap-around reaches it)
    results, all_est, all_z = [], [], []
    for na, em, n, ast, sph in optics_list:
        optics = Optics(na=na, emission_nm=em, immersion_index=n, astigmatism_waves=ast, spherical_waves=sph)
        tiles, zs = [], []
        for kind in ("filaments", "beads", "cells"):
            spec = make_specimen(kind, 40.0, 11)
            for _ in range(1 if quick else 2):
                for _ in range(20):
                    field = spec.render(rng.uniform(0, 20), rng.uniform(0, 20), (side, side), pixel_um)
                    if field[64:128, 64:128].max() > 0:
                        break
                for z in z_planes:
                    image = convolve(field, otf(optics.psf((side, side), pixel_um, float(z))))[64:128, 64:128]
                    image = np.maximum(image, 0) / max(float(image.max()), 1e-12) * 200.0 + 10.0
                    adu = rng.poisson(image) / 0.5 + rng.normal(100, 3, image.shape)  # sCMOS: 0.5 e-/ADU
                    tiles.append(np.clip(np.rint(adu), 0, 65535))
                    zs.append(z)
        tiles, zs = np.array(tiles, np.float32), np.array(zs)
        est = run(model, tiles, PsfOptics(na=na, emission_nm=em, pixel_size_nm=pixel_um * 1e3, immersion_index=n))
        row = {"na": na, "emission_nm": em, "immersion_index": n, "astigmatism_waves": ast, "spherical_waves": sph,
               **scores(est["abs_defocus_um"], est["abs_defocus_sd_um"], zs)}
        if abs(ast) >= 0.05:
            row |= signed(est, zs, np.sign(ast))
        results.append(row)
        all_est.append(est)
        all_z.append(zs)
    pooled = {k: np.concatenate([e[k] for e in all_est]) for k in all_est[0]}
    z = np.concatenate(all_z)
    return {"series": results, "pooled": scores(pooled["abs_defocus_um"], pooled["abs_defocus_sd_um"], z),
            "z_um": [float(z_planes[0]), float(z_planes[-1])], "specimens": ["filaments", "beads", "cells"],
            "peak_photons": 200, "camera": "sCMOS 0.5 e-/ADU, baseline 100 ADU, read noise 1.5 e-"}


def epfl_part(model: LoadedModel, quick: bool) -> dict:
    folder = DATA / "epfl2016_beads"
    if not (folder / "beads_gt.csv").is_file():
        return {"skipped": f"{folder} not found"}
    with open(folder / "beads_gt.csv", newline="") as f:
        gt = [r for r in csv.DictReader(f)]
    optics = PsfOptics(na=1.49, emission_nm=660, pixel_size_nm=100, immersion_index=1.518)
    out = {}
    for name in ("2D", "AS"):
        stack = tifffile.imread(folder / f"beads_{name}_zstack.tif").astype(np.float32)
        tiles, zs = [], []
        for r in gt:
            frame = int(r["frame"]) - 1
            if quick and frame % 5:
                continue
            z = float(r["z_nm"]) * 1e-3
            cy, cx = float(r["y_nm"]) / 100.0, float(r["x_nm"]) / 100.0
            h, w = stack.shape[1:]
            y0 = int(np.clip(round(cy) - TILE // 2, 0, h - TILE))
            x0 = int(np.clip(round(cx) - TILE // 2, 0, w - TILE))
            tiles.append(stack[frame, y0:y0 + TILE, x0:x0 + TILE])
            zs.append(z)
        zs = np.array(zs)
        est = run(model, np.array(tiles), optics)
        row = scores(est["abs_defocus_um"], est["abs_defocus_sd_um"], zs)
        if name == "AS":
            both = {sign: signed(est, zs, sign) for sign in (1.0, -1.0)}
            best = min(both, key=lambda s: both[s]["signed_defocus_rms_nm"])
            row |= both[best] | {"astigmatism_sign_taken": best}
        out[name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="psf", help="NAME[@VERSION]; NAME alone: its default, else its newest "
                                                     "version (a candidate is measured too)")
    ap.add_argument("--models", type=Path, default=None, help="a repository searched after the shipped models")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    name, _, version = args.model.partition("@")
    roots = [shipped_models_root()] + ([args.models] if args.models else [])
    repository = ModelRepository(roots)
    found = (repository.resolve(name, int(version)) if version
             else repository.default(name) or repository.versions(name)[-1])
    model = LoadedModel.load(found)
    result = {"model": found.ref, "trained_for": found.card.trained_for.model_dump(mode="json"),
              "held_out_optics": focal_series_part(model, args.quick),
              "training_optics": focal_series_part(model, args.quick, TRAINING_OPTICS),
              "epfl2016_beads": epfl_part(model, args.quick)}
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()

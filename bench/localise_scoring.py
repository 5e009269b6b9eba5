"""The scores and bounds of bench/localise_quality.py: the challenge's scores (full frame, interior,
isolated emitters; 2-D and 3-D), z agreement, and the lateral and z-averaged 3-D Cramér-Rao bounds."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from localise_movies import PIXEL_NM, Z_STEP_NM, Movie
from scipy.spatial import cKDTree

from livescope.emitters import EmitterTable
from livescope.models.localise.metrics import (
    LocalisationScores,
    SigmaOfZ,
    crlb_astigmatic,
    crlb_gaussian_2d,
    match_emitters,
    score_localisations,
)

ISOLATION_NM = 500.0  # 2 x the pairing tolerance: no neighbour can be confused with the emitter
INTERIOR_MARGIN_PX = 4  # > the fitters' 3 px half box: both skip candidates nearer the edge
AXIAL_TOLERANCE_NM = 500.0  # the challenge's (score_localisations' default)


def interior(table: EmitterTable, movie: Movie) -> EmitterTable:
    h, w = movie.frames.shape[1:]
    m = INTERIOR_MARGIN_PX * movie.pixel_nm
    x, y = table["x_nm"], table["y_nm"]
    return table.select((x >= m) & (x < w * movie.pixel_nm - m) & (y >= m) & (y < h * movie.pixel_nm - m))


def isolated(truth: EmitterTable) -> np.ndarray:
    """Bool per true emitter: no other true emitter within ISOLATION_NM laterally in its frame
    (whatever their z: astigmatic spots overlap laterally)."""
    # Frames 10 * ISOLATION_NM apart in a third coordinate: neighbours only within a frame.
    points = np.column_stack([truth["x_nm"], truth["y_nm"], truth["frame"] * 10.0 * ISOLATION_NM]).astype(np.float64)
    nearest = cKDTree(points).query(points, k=2)[0][:, 1] if len(truth) > 1 else np.full(len(truth), np.inf)
    return nearest > ISOLATION_NM


def isolated_rmse_nm(found: EmitterTable, truth: EmitterTable) -> tuple[float | None, int]:
    """Lateral RMSE over the pairs whose true emitter has no other true emitter within
    ISOLATION_NM in its frame, and their number. The challenge RMSE pools every pair inside the
    250 nm disc, so two unresolved emitters fitted as one add ~100 nm errors that dominate it even
    at low density; the Cramér-Rao bound is a single-emitter bound, met only by isolated ones."""
    pairs = match_emitters(found, truth)
    if len(truth) < 1 or pairs.truth_index.size == 0:
        return None, 0
    alone = isolated(truth)[pairs.truth_index]
    dx = found["x_nm"][pairs.found_index][alone].astype(np.float64) - truth["x_nm"][pairs.truth_index][alone]
    dy = found["y_nm"][pairs.found_index][alone].astype(np.float64) - truth["y_nm"][pairs.truth_index][alone]
    n = int(alone.sum())
    return (round(float(np.sqrt(np.mean(dx * dx + dy * dy))), 3) if n else None), n


def scores(found: EmitterTable, movie: Movie) -> dict:
    """Challenge scores over the full frame and over the interior (lateral: the 2-D methods give no z), and
    the interior RMSE of isolated emitters."""
    keys = ("jaccard", "recall", "precision", "rmse_lateral_nm", "efficiency_percent", "bias_x_nm", "bias_y_nm",
            "true_positives", "false_positives", "false_negatives")

    def pick(s) -> dict:
        d = s.model_dump()
        return {k: round(d[k], 4) if isinstance(d[k], float) else d[k] for k in keys}

    inner_found, inner_truth = interior(found, movie), interior(movie.truth, movie)
    rmse, n = isolated_rmse_nm(inner_found, inner_truth)
    return {"full": pick(score_localisations(found, movie.truth)),
            "interior": {**pick(score_localisations(inner_found, inner_truth)),
                         "rmse_lateral_isolated_nm": rmse, "isolated_pairs": n}}


def crlb_lateral_nm(photons_e: float, background_e: float, sigma_nm: float, read_noise_e: float,
                    excess_noise: float = 1.0) -> dict:
    b = crlb_gaussian_2d(photons=photons_e, background_photons=background_e, sigma_nm=sigma_nm, pixel_nm=PIXEL_NM,
                         read_noise_photons=read_noise_e, excess_noise=excess_noise)
    return {"x_nm": round(b.x_nm, 2), "y_nm": round(b.y_nm, 2), "lateral_nm": round(float(np.hypot(b.x_nm, b.y_nm)), 2)}


def rmse_over(method: dict, bound: dict) -> dict:
    """Interior lateral RMSE (all pairs; isolated emitters) / the lateral bound; None without pairs
    (the RMSE is then a placeholder)."""
    s = method["interior"]
    iso = s["rmse_lateral_isolated_nm"]
    return {"all_pairs": round(s["rmse_lateral_nm"] / bound["lateral_nm"], 3) if s["true_positives"] else None,
            "isolated": round(iso / bound["lateral_nm"], 3) if iso is not None else None}


def _rounded(s: LocalisationScores, keys: tuple[str, ...]) -> dict:
    d = s.model_dump()
    return {k: round(d[k], 4) if isinstance(d[k], float) else d[k] for k in keys}


SCORE_KEYS_3D = ("jaccard", "recall", "precision", "rmse_lateral_nm", "rmse_axial_nm", "efficiency_percent",
                 "efficiency_lateral_percent", "efficiency_axial_percent", "bias_x_nm", "bias_y_nm", "bias_z_nm",
                 "true_positives", "false_positives", "false_negatives", "axial_tolerance_nm")
SCORE_KEYS_LATERAL = ("jaccard", "recall", "precision", "rmse_lateral_nm", "efficiency_percent", "true_positives",
                      "false_positives", "false_negatives")


def isolated_rmse_3d_nm(found: EmitterTable, truth: EmitterTable) -> tuple[float | None, float | None, int]:
    """Lateral and axial RMSE over the 3-D pairs (the challenge's, within AXIAL_TOLERANCE_NM in z)
    whose true emitter is isolated (``isolated``), and their number."""
    pairs = match_emitters(found, truth, axial_tolerance_nm=AXIAL_TOLERANCE_NM)
    if pairs.truth_index.size == 0:
        return None, None, 0
    alone = isolated(truth)[pairs.truth_index]
    n = int(alone.sum())
    if not n:
        return None, None, 0
    d = {k: found[k][pairs.found_index][alone].astype(np.float64) - truth[k][pairs.truth_index][alone]
         for k in ("x_nm", "y_nm", "z_nm")}
    lateral = float(np.sqrt(np.mean(d["x_nm"] ** 2 + d["y_nm"] ** 2)))
    return round(lateral, 3), round(float(np.sqrt(np.mean(d["z_nm"] ** 2))), 3), n


def z_agreement(found: EmitterTable, truth: EmitterTable) -> dict:
    """How found z follows true z over the LATERAL pairs (250 nm disc, any z, so that z errors
    beyond the axial tolerance show): a least-squares line found = slope x true + intercept and the
    correlation. slope ~ 1 and intercept ~ 0: the model's z scale and origin match the data's;
    slope ~ -1: opposite sign conventions; |r| ~ 0: no z information recovered."""
    pairs = match_emitters(found, truth)
    n = int(pairs.found_index.size)
    out: dict = {"lateral_pairs": n, "slope": None, "intercept_nm": None, "pearson_r": None,
                 "rmse_axial_lateral_pairs_nm": None}
    if n < 3:
        return out
    zf = found["z_nm"][pairs.found_index].astype(np.float64)
    zt = truth["z_nm"][pairs.truth_index].astype(np.float64)
    out["rmse_axial_lateral_pairs_nm"] = round(float(np.sqrt(np.mean((zf - zt) ** 2))), 2)
    if np.std(zt) > 0 and np.std(zf) > 0:
        slope, intercept = np.polyfit(zt, zf, 1)
        out.update(slope=round(float(slope), 4), intercept_nm=round(float(intercept), 2),
                   pearson_r=round(float(np.corrcoef(zt, zf)[0, 1]), 4))
    return out


def scores_3d(found: EmitterTable, movie: Movie) -> dict:
    """3-D challenge scores (pairs within 250 nm laterally AND AXIAL_TOLERANCE_NM in z; lateral
    and axial RMSE; efficiency the mean of the lateral and axial ones) over the full frame and the
    interior, with the interior's isolated-emitter RMSEs; the interior's lateral-only scores (for
    comparison with the 2-D methods), and ``z_agreement`` on the interior."""
    inner_found, inner_truth = interior(found, movie), interior(movie.truth, movie)
    lateral, axial, n = isolated_rmse_3d_nm(inner_found, inner_truth)
    return {"full": _rounded(score_localisations(found, movie.truth, axial_tolerance_nm=AXIAL_TOLERANCE_NM,
                                                 three_d=True), SCORE_KEYS_3D),
            "interior": {**_rounded(score_localisations(inner_found, inner_truth, axial_tolerance_nm=AXIAL_TOLERANCE_NM,
                                                        three_d=True), SCORE_KEYS_3D),
                         "rmse_lateral_isolated_nm": lateral, "rmse_axial_isolated_nm": axial, "isolated_pairs": n},
            "interior_lateral_only": _rounded(score_localisations(inner_found, inner_truth), SCORE_KEYS_LATERAL),
            "z_agreement": z_agreement(inner_found, inner_truth)}


def crlb_3d_nm(widths: tuple[SigmaOfZ, SigmaOfZ], z_range_nm: tuple[float, float], photons: float,
               background: float, read_noise: float, light: Callable[[float], float] | None = None) -> dict:
    """The 3-D bound (x, y, z, N, b of an elliptical Gaussian of widths ``widths(z)``, emitter at a
    pixel centre; ``crlb_astigmatic``) averaged over z uniform in ``z_range_nm`` (Z_STEP_NM grid):
    the root-mean-square of the per-z bounds, because an unbiased localiser's mean squared error
    over emitters uniform in z is at least the mean of the per-z variances. ``light(z)``: the
    fraction of ``photons`` in the Gaussian (1 if None)."""
    lo, hi = z_range_nm
    zs = np.linspace(lo, hi, max(int(round((hi - lo) / Z_STEP_NM)) + 1, 1))
    bounds = [crlb_astigmatic(z_nm=float(z), photons=photons * (light(float(z)) if light else 1.0),
                              background_photons=background, pixel_nm=PIXEL_NM, psf=widths,
                              read_noise_photons=read_noise) for z in zs]
    x, y, z = (np.array([getattr(b, k) for b in bounds]) for k in ("x_nm", "y_nm", "z_nm"))
    lateral = np.hypot(x, y)
    rms = lambda v: round(float(np.sqrt(np.mean(v * v))), 2)  # noqa: E731
    return {"x_nm": rms(x), "y_nm": rms(y), "lateral_nm": rms(lateral), "z_nm": rms(z),
            "lateral_nm_min_max": [round(float(lateral.min()), 2), round(float(lateral.max()), 2)],
            "z_nm_min_max": [round(float(z.min()), 2), round(float(z.max()), 2)],
            "z_nm_at_min": round(float(zs[np.argmin(z)]), 1),
            "averaging": f"rms over {zs.size} z from {lo:g} to {hi:g} nm (z uniform)"}


def rmse_over_3d(method: dict, bound: dict) -> dict:
    """Interior lateral and axial RMSE (all 3-D pairs; isolated emitters) / the averaged bounds."""
    s = method["interior"]
    ratio = lambda v, b: round(v / b, 3) if v is not None and s["true_positives"] else None  # noqa: E731
    return {"lateral": {"all_pairs": ratio(s["rmse_lateral_nm"], bound["lateral_nm"]),
                        "isolated": ratio(s["rmse_lateral_isolated_nm"], bound["lateral_nm"])},
            "axial": {"all_pairs": ratio(s["rmse_axial_nm"], bound["z_nm"]),
                      "isolated": ratio(s["rmse_axial_isolated_nm"], bound["z_nm"])}}

"""How good a set of localisations is: challenge scores against a ground truth, and the
Cramér-Rao lower bound that no unbiased localiser can beat.

Scores follow the 2016 SMLM challenge (Sage et al., "Super-resolution fight club", Nat Methods 16,
387 (2019)): per frame, found emitters are paired one-to-one with true ones (optimal assignment,
only within a lateral tolerance disc and, in 3-D, an axial tolerance); unpaired found emitters are
false positives, unpaired true ones false negatives. Jaccard = TP / (TP + FP + FN); RMSEs are over
the pairs; the efficiency, in percent,

    E = 100 - sqrt((100 - 100 Jaccard)^2 + alpha^2 RMSE^2),  alpha = 1 /nm lateral, 0.5 /nm axial,

is 100 for a perfect localiser and can be negative; the 3-D efficiency is the mean of the two.

The bound: the Fisher information of a pixelated PSF model mu_k = N P_k(theta) + b with Poisson
noise, read noise added to the variance as in Huang et al., Nat Methods 10, 653 (2013), and an
EMCCD's excess noise factor dividing the information (Mortensen et al., Nat Methods 7, 377 (2010)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from scipy.special import erf

from livescope.emitters import EmitterTable

LATERAL_ALPHA_PER_NM = 1.0
AXIAL_ALPHA_PER_NM = 0.5

# -- scores against a ground truth ------------------------------------------------------------------


class LocalisationScores(BaseModel):
    """Challenge scores of found emitters against the ground truth (all frames pooled).

    With no pairs the RMSEs and biases are 0 (``true_positives`` says there was nothing to average);
    with nothing found and nothing true, Jaccard, recall, precision and efficiency are 0."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    true_positives: int = Field(ge=0)
    false_positives: int = Field(ge=0)
    false_negatives: int = Field(ge=0)
    jaccard: float = Field(ge=0, le=1, description="TP / (TP + FP + FN)")
    recall: float = Field(ge=0, le=1, description="TP / (TP + FN)")
    precision: float = Field(ge=0, le=1, description="TP / (TP + FP)")
    rmse_lateral_nm: float = Field(ge=0, description="sqrt(mean(dx^2 + dy^2)) over the pairs")
    rmse_axial_nm: float | None = Field(description="sqrt(mean(dz^2)) over the pairs; None for 2-D scoring")
    bias_x_nm: float = Field(description="mean(found x - true x) over the pairs")
    bias_y_nm: float
    bias_z_nm: float | None
    efficiency_lateral_percent: float
    efficiency_axial_percent: float | None
    efficiency_percent: float = Field(description="lateral in 2-D; the mean of lateral and axial in 3-D")
    lateral_tolerance_nm: float
    axial_tolerance_nm: float | None


@dataclass(frozen=True)
class Matching:
    """Which found emitter (row index) is paired with which true one; the rest are unpaired."""

    found_index: np.ndarray  # int64, one per pair, ascending
    truth_index: np.ndarray  # int64, same length


def efficiency_percent(jaccard: float, rmse_nm: float, alpha_per_nm: float) -> float:
    """The challenge's efficiency: 100 - sqrt((100 - 100 Jaccard)^2 + alpha^2 RMSE^2)."""
    return 100.0 - float(np.hypot(100.0 - 100.0 * jaccard, alpha_per_nm * rmse_nm))


def match_emitters(found: EmitterTable, truth: EmitterTable, *, lateral_tolerance_nm: float = 250.0,
                   axial_tolerance_nm: float | None = None) -> Matching:
    """One-to-one pairs in the same frame, within ``lateral_tolerance_nm`` (a disc, inclusive) and,
    when given, ``axial_tolerance_nm`` in |dz|.

    The assignment pairs as many as possible, and among those minimises the sum of squared
    distances normalised by the tolerances, (d_lat / tol_lat)^2 + (dz / tol_ax)^2. Found rows with
    non-finite coordinates are never paired."""
    if lateral_tolerance_nm <= 0 or (axial_tolerance_nm is not None and axial_tolerance_nm <= 0):
        raise ValueError("tolerances must be positive")
    fi, ti = _candidate_pairs(found, truth, lateral_tolerance_nm)
    f, t = found.rows, truth.rows
    dx = f["x_nm"][fi].astype(np.float64) - t["x_nm"][ti]
    dy = f["y_nm"][fi].astype(np.float64) - t["y_nm"][ti]
    cost = (dx * dx + dy * dy) / lateral_tolerance_nm**2
    if axial_tolerance_nm is not None:
        dz = f["z_nm"][fi].astype(np.float64) - t["z_nm"][ti]
        inside = np.abs(dz) <= axial_tolerance_nm
        fi, ti, cost = fi[inside], ti[inside], cost[inside] + (dz[inside] / axial_tolerance_nm) ** 2
    return _assign(fi, ti, cost, len(found), len(truth))


def score_localisations(found: EmitterTable, truth: EmitterTable, *, lateral_tolerance_nm: float = 250.0,
                        axial_tolerance_nm: float = 500.0, three_d: bool = False) -> LocalisationScores:
    """Challenge scores of ``found`` against ``truth``; with ``three_d`` pairs must also lie within
    ``axial_tolerance_nm`` in z, and the axial RMSE, bias and efficiency are reported."""
    axial = axial_tolerance_nm if three_d else None
    m = match_emitters(found, truth, lateral_tolerance_nm=lateral_tolerance_nm, axial_tolerance_nm=axial)
    tp = int(m.found_index.size)
    fp, fn = len(found) - tp, len(truth) - tp
    f, t = found.rows, truth.rows

    def differences(name: str) -> np.ndarray:
        return f[name][m.found_index].astype(np.float64) - t[name][m.truth_index]

    def mean(v: np.ndarray) -> float:
        return float(v.mean()) if v.size else 0.0

    dx, dy, dz = differences("x_nm"), differences("y_nm"), differences("z_nm")
    jaccard = tp / (tp + fp + fn) if tp + fp + fn else 0.0
    rmse_lateral = float(np.sqrt(mean(dx * dx + dy * dy)))
    e_lateral = efficiency_percent(jaccard, rmse_lateral, LATERAL_ALPHA_PER_NM)
    rmse_axial = e_axial = bias_z = None
    efficiency = e_lateral
    if three_d:
        rmse_axial = float(np.sqrt(mean(dz * dz)))
        e_axial = efficiency_percent(jaccard, rmse_axial, AXIAL_ALPHA_PER_NM)
        bias_z = mean(dz)
        efficiency = (e_lateral + e_axial) / 2.0
    return LocalisationScores(
        true_positives=tp, false_positives=fp, false_negatives=fn, jaccard=jaccard,
        recall=tp / (tp + fn) if tp + fn else 0.0, precision=tp / (tp + fp) if tp + fp else 0.0,
        rmse_lateral_nm=rmse_lateral, rmse_axial_nm=rmse_axial, bias_x_nm=mean(dx), bias_y_nm=mean(dy),
        bias_z_nm=bias_z, efficiency_lateral_percent=e_lateral, efficiency_axial_percent=e_axial,
        efficiency_percent=efficiency, lateral_tolerance_nm=lateral_tolerance_nm,
        axial_tolerance_nm=axial)


def _candidate_pairs(found: EmitterTable, truth: EmitterTable, tolerance_nm: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(found, truth) row indices of all same-frame pairs within the lateral tolerance.

    One KD-tree query over all frames: the frame number becomes a third coordinate, 4 tolerances
    apart, so that emitters of different frames are never within the tolerance of each other."""
    empty = np.zeros(0, np.int64)
    if len(found) == 0 or len(truth) == 0:
        return empty, empty

    def points(table: EmitterTable) -> np.ndarray:
        r = table.rows
        return np.column_stack([r["x_nm"].astype(np.float64), r["y_nm"].astype(np.float64),
                                r["frame"].astype(np.float64) * (4.0 * tolerance_nm)])

    fp, tp = points(found), points(truth)
    finite_f, finite_t = np.isfinite(fp).all(axis=1), np.isfinite(tp).all(axis=1)
    f_rows, t_rows = np.flatnonzero(finite_f), np.flatnonzero(finite_t)
    if f_rows.size == 0 or t_rows.size == 0:
        return empty, empty
    pairs = cKDTree(fp[f_rows]).sparse_distance_matrix(cKDTree(tp[t_rows]), tolerance_nm,
                                                       output_type="ndarray")
    return f_rows[pairs["i"].astype(np.int64)], t_rows[pairs["j"].astype(np.int64)]


def _assign(fi: np.ndarray, ti: np.ndarray, cost: np.ndarray, n_found: int, n_truth: int) -> Matching:
    """Optimal one-to-one assignment, solved separately on each connected group of candidates;
    most groups are a single found-truth pair, which needs no solver."""
    if fi.size == 0:
        return Matching(found_index=np.zeros(0, np.int64), truth_index=np.zeros(0, np.int64))
    # Bipartite graph: found rows are nodes 0..n_found-1, truth rows n_found.., edges the candidates.
    n = n_found + n_truth
    graph = coo_matrix((np.ones(fi.size), (fi, ti + n_found)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    edge_group = label[fi]
    f_degree = np.bincount(fi, minlength=n_found)
    t_degree = np.bincount(ti, minlength=n_truth)
    lone = (f_degree[fi] == 1) & (t_degree[ti] == 1)
    out_f, out_t = [fi[lone]], [ti[lone]]
    rest = np.flatnonzero(~lone)
    rest = rest[np.argsort(edge_group[rest], kind="stable")]
    groups = edge_group[rest]
    bounds = np.flatnonzero(np.diff(groups)) + 1
    for edges in np.split(rest, bounds) if rest.size else []:
        gf, f_local = np.unique(fi[edges], return_inverse=True)
        gt, t_local = np.unique(ti[edges], return_inverse=True)
        # A forbidden pair costs more than any full set of allowed ones (each <= 2), so the solver
        # first maximises the number of allowed pairs, then minimises their cost.
        forbidden = 2.0 * min(gf.size, gt.size) + 1.0
        matrix = np.full((gf.size, gt.size), forbidden)
        matrix[f_local, t_local] = cost[edges]
        r, c = linear_sum_assignment(matrix)
        allowed = matrix[r, c] < forbidden
        out_f.append(gf[r[allowed]])
        out_t.append(gt[c[allowed]])
    found_index = np.concatenate(out_f).astype(np.int64)
    truth_index = np.concatenate(out_t).astype(np.int64)
    order = np.argsort(found_index, kind="stable")
    return Matching(found_index=found_index[order], truth_index=truth_index[order])


# -- the Cramér-Rao lower bound --------------------------------------------------------------------


class CramerRaoBound(BaseModel):
    """The smallest standard deviations an unbiased estimator can reach (sqrt of the diagonal of
    the inverse Fisher information). A parameter the data say nothing about has an infinite bound."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    x_nm: float
    y_nm: float
    z_nm: float | None = None
    photons: float
    background_photons: float


class AstigmaticCalibration(BaseModel):
    """The usual defocus model of an astigmatic PSF (Huang et al., Science 319, 810 (2008)):
    sigma(z) = sigma0 sqrt(1 + u^2 + A u^3 + B u^4), u = (z - c) / d, separately for x and y."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sigma0_x_nm: float = Field(gt=0, description="in-focus width along x")
    sigma0_y_nm: float = Field(gt=0)
    focus_x_nm: float = Field(description="c_x: z of the x focus")
    focus_y_nm: float = Field(description="c_y: z of the y focus")
    depth_x_nm: float = Field(gt=0, description="d_x: focal depth")
    depth_y_nm: float = Field(gt=0)
    a_x: float = 0.0
    b_x: float = 0.0
    a_y: float = 0.0
    b_y: float = 0.0

    def sigma_x_nm(self, z_nm: float) -> float:
        return _defocus(z_nm, self.sigma0_x_nm, self.focus_x_nm, self.depth_x_nm, self.a_x, self.b_x)

    def sigma_y_nm(self, z_nm: float) -> float:
        return _defocus(z_nm, self.sigma0_y_nm, self.focus_y_nm, self.depth_y_nm, self.a_y, self.b_y)


def _defocus(z: float, sigma0: float, c: float, d: float, a: float, b: float) -> float:
    u = (z - c) / d
    return sigma0 * float(np.sqrt(1.0 + u**2 + a * u**3 + b * u**4))


SigmaOfZ = Callable[[float], float]


def crlb_gaussian_2d(*, photons: float, background_photons: float, sigma_nm: float, pixel_nm: float,
                     read_noise_photons: float = 0.0, excess_noise: float = 1.0,
                     roi_px: int | None = None) -> CramerRaoBound:
    """The bound for (x, y, N, b) of a pixel-integrated symmetric Gaussian PSF, the emitter at the
    centre of the centre pixel of a square ROI (``roi_px``, odd; by default wide enough to hold
    +-5 sigma). ``background_photons`` per pixel; ``read_noise_photons`` rms, in photoelectrons;
    ``excess_noise`` 2 for an EMCCD."""
    mu, (dx, dy, _, _, dn, db) = _derivatives(photons, background_photons, sigma_nm, sigma_nm, 0.0, 0.0,
                                              pixel_nm, _roi(roi_px, sigma_nm, sigma_nm, pixel_nm))
    sd = _bound(mu, [dx, dy, dn, db], read_noise_photons, excess_noise)
    return CramerRaoBound(x_nm=sd[0], y_nm=sd[1], photons=sd[2], background_photons=sd[3])


def crlb_astigmatic(*, z_nm: float, photons: float, background_photons: float, pixel_nm: float,
                    psf: AstigmaticCalibration | tuple[SigmaOfZ, SigmaOfZ],
                    read_noise_photons: float = 0.0, excess_noise: float = 1.0, roi_px: int | None = None,
                    dz_nm: float = 0.01) -> CramerRaoBound:
    """The bound for (x, y, z, N, b) of an elliptical Gaussian whose widths depend on z: ``psf`` is
    a calibration or a pair of callables (sigma_x_nm(z), sigma_y_nm(z)). d sigma / dz is a central
    difference over ``dz_nm``; the rest is analytic. Same geometry and noise as ``crlb_gaussian_2d``."""
    sx_of, sy_of = (psf.sigma_x_nm, psf.sigma_y_nm) if isinstance(psf, AstigmaticCalibration) else psf
    sx, sy = float(sx_of(z_nm)), float(sy_of(z_nm))
    dsx_dz = (float(sx_of(z_nm + dz_nm)) - float(sx_of(z_nm - dz_nm))) / (2.0 * dz_nm)
    dsy_dz = (float(sy_of(z_nm + dz_nm)) - float(sy_of(z_nm - dz_nm))) / (2.0 * dz_nm)
    mu, (dx, dy, dsx, dsy, dn, db) = _derivatives(photons, background_photons, sx, sy, 0.0, 0.0, pixel_nm,
                                                  _roi(roi_px, sx, sy, pixel_nm))
    dz = dsx * dsx_dz + dsy * dsy_dz
    sd = _bound(mu, [dx, dy, dz, dn, db], read_noise_photons, excess_noise)
    return CramerRaoBound(x_nm=sd[0], y_nm=sd[1], z_nm=sd[2], photons=sd[3], background_photons=sd[4])


def _roi(roi_px: int | None, sigma_x_nm: float, sigma_y_nm: float, pixel_nm: float) -> int:
    if roi_px is None:
        half = int(np.ceil(5.0 * max(sigma_x_nm, sigma_y_nm) / pixel_nm)) + 1
        return 2 * half + 1
    if roi_px < 3 or roi_px % 2 == 0:
        raise ValueError(f"roi_px must be odd and at least 3, got {roi_px}")
    return roi_px


def _derivatives(n: float, b: float, sx: float, sy: float, ox: float, oy: float, pixel_nm: float, roi: int
                 ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """mu (roi, roi) and its derivatives by x, y, sigma_x, sigma_y, N, b; the emitter at
    (ox, oy) nm from the centre of the centre pixel. Rows are y, columns x."""
    edges = (np.arange(roi + 1) - roi / 2.0) * pixel_nm  # pixel edges relative to the ROI centre

    def axis(offset: float, s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = edges - offset
        cdf = 0.5 * erf(u / (np.sqrt(2.0) * s))
        pdf = np.exp(-0.5 * (u / s) ** 2) / (np.sqrt(2.0 * np.pi) * s)
        p = np.diff(cdf)  # the Gaussian's integral over each pixel
        dp_doffset = -np.diff(pdf)  # moving the emitter by +1 shifts the integrand by -1
        dp_dsigma = np.diff(-(u / s) * pdf)
        return p, dp_doffset, dp_dsigma

    px, dpx, dpsx = axis(ox, sx)
    py, dpy, dpsy = axis(oy, sy)
    p = np.outer(py, px)
    mu = n * p + b
    return mu, (n * np.outer(py, dpx), n * np.outer(dpy, px), n * np.outer(py, dpsx), n * np.outer(dpsy, px),
                p, np.ones_like(p))


def _bound(mu: np.ndarray, derivatives: list[np.ndarray], read_noise_photons: float, excess_noise: float
           ) -> list[float]:
    """sqrt(diag(I^-1)) with I_ij = sum_k d_i mu_k d_j mu_k / (mu_k + r^2) / excess_noise; pixels
    with no variance (far out, no background, no read noise) carry no information and are left out."""
    if excess_noise < 1.0:
        raise ValueError(f"excess_noise must be >= 1, got {excess_noise}")
    variance = (mu + read_noise_photons**2).ravel()
    use = variance > 1e-300
    g = np.stack([d.ravel()[use] for d in derivatives])
    info = (g / variance[use]) @ g.T / excess_noise
    sd = np.full(len(derivatives), np.inf)
    informative = np.diag(info) > 0
    sub = info[np.ix_(informative, informative)]
    sd[informative] = np.sqrt(np.diag(np.linalg.inv(sub)))
    return [float(v) for v in sd]

"""The virtual microscope's PSFs against optics theory (not against themselves): Airy widths,
the on-axis Debye integral, Parseval, confocal and STED resolution formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import j1

from livescope.acquire.virtual.optics import Optics, profile_fwhm

OIL = dict(na=1.4, emission_nm=520.0, immersion_index=1.515)


def lateral_fwhm_um(optics: Optics, pixel_size_um: float, defocus_um: float = 0.0) -> float:
    """FWHM along x through the centre of the PSF sampled at ``pixel_size_um``."""
    k = 2 * optics.support_px(pixel_size_um, defocus_um) + 1
    psf = optics.psf((k, k), pixel_size_um, defocus_um)
    return profile_fwhm(psf[k // 2], k // 2) * pixel_size_um


def airy_half_max_v(power: int) -> float:
    """Where (2 J1(v) / v)^power falls to 1/2: the Airy pattern's half width in optical units."""
    return brentq(lambda v: (2 * j1(v) / v) ** power - 0.5, 0.1, 3.8)


def on_axis_fwhm_um(values: np.ndarray, zs: np.ndarray) -> float:
    return profile_fwhm(values, int(np.argmax(values))) * float(zs[1] - zs[0])


# -- widefield ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("na", "emission_nm", "immersion_index"), [
    (1.4, 520.0, 1.515),  # oil
    (1.2, 680.0, 1.333),  # water
    (0.8, 450.0, 1.0),  # air
])
def test_the_in_focus_widefield_psf_is_0_51_lambda_over_na_wide(na, emission_nm, immersion_index):
    optics = Optics(na=na, emission_nm=emission_nm, immersion_index=immersion_index)
    lam_over_na = emission_nm * 1e-3 / na
    fwhm = lateral_fwhm_um(optics, pixel_size_um=lam_over_na / 40)
    assert fwhm == pytest.approx(0.51 * lam_over_na, rel=0.05)
    # And, finer: the Airy disc's own FWHM, 2 v_half / (2 pi NA / lambda).
    assert fwhm == pytest.approx(2 * airy_half_max_v(2) / (2 * math.pi) * lam_over_na, rel=0.01)


def test_the_axial_widefield_profile_is_the_debye_integral_on_axis():
    optics = Optics(**OIL)
    n, na, lam = 1.515, 1.4, 0.520
    zs = np.linspace(-1.2, 1.2, 49)
    p = 0.03
    centre = []
    for z in zs:
        k = 2 * optics.support_px(p, z) + 1
        centre.append(optics.psf((k, k), p, float(z))[k // 2, k // 2])
    measured = on_axis_fwhm_um(np.array(centre), zs)

    # Theory, by quadrature: the on-axis field of a uniform pupil is
    # integral_0^NA exp(i k z sqrt(n^2 - s^2)) s ds  (s = n sin theta).
    s = np.linspace(0.0, na, 4001)
    field = [np.trapezoid(np.exp(2j * np.pi / lam * z * np.sqrt(n * n - s * s)) * s, s) for z in zs]
    theory = on_axis_fwhm_um(np.abs(np.array(field)) ** 2, zs)
    assert measured == pytest.approx(theory, rel=0.02)
    # The textbook high-NA estimate 0.88 lambda / (n - sqrt(n^2 - NA^2)).
    assert measured == pytest.approx(0.88 * lam / (n - math.sqrt(n * n - na * na)), rel=0.10)


@pytest.mark.parametrize("model", ["pupil", "gaussian"])
def test_defocus_spreads_the_widefield_psf_but_keeps_its_energy(model):
    optics = Optics(**OIL, psf_model=model)
    peaks = []
    for z in (0.0, 0.5, 1.0, 2.0, 4.0):
        psf = optics.psf((256, 256), 0.108, z, offset_px=(0.3, -0.2))
        assert psf.sum() == pytest.approx(1.0, abs=1e-4)
        peaks.append(psf.max())
    assert peaks == sorted(peaks, reverse=True) and peaks[-1] < peaks[0] / 50


def test_an_offset_moves_the_psf_whole_pixels_like_a_shift_and_half_a_pixel_onto_a_pixel_edge():
    optics = Optics(**OIL)
    shape, c = (129, 129), 64
    centred = optics.psf(shape, 0.108, 0.3)
    moved = optics.psf(shape, 0.108, 0.3, offset_px=(1.0, -2.0))
    np.testing.assert_allclose(moved[c - 20:c + 20, c - 20:c + 20], centred[c - 21:c + 19, c - 18:c + 22],
                               rtol=1e-4, atol=1e-7)
    half = optics.psf(shape, 0.108, 0.3, offset_px=(0.5, 0.0))  # centre between rows c and c + 1
    np.testing.assert_allclose(half[c + 1:c + 21, c], half[c:c - 20:-1, c], rtol=1e-4, atol=1e-7)
    rows = np.arange(shape[0])[:, None]
    quarter = optics.psf(shape, 0.108, 0.3, offset_px=(0.25, 0.0)).astype(np.float64)
    assert (quarter * rows).sum() / quarter.sum() == pytest.approx(c + 0.25, abs=0.02)


def test_without_aberrations_the_psf_is_symmetric_about_focus_and_spherical_aberration_breaks_that():
    p, k = 0.05, 151

    def centre(optics: Optics, z: float) -> float:
        return float(optics.psf((k, k), p, z)[k // 2, k // 2])

    ideal = Optics(**OIL)
    assert centre(ideal, 0.5) == pytest.approx(centre(ideal, -0.5), rel=1e-4)
    aberrated = Optics(**OIL, spherical_waves=0.1)
    assert abs(centre(aberrated, 0.5) / centre(aberrated, -0.5) - 1) > 0.3


def test_astigmatism_stretches_the_psf_along_x_on_one_side_of_focus_and_along_y_on_the_other():
    optics = Optics(**OIL, astigmatism_waves=0.08)
    p, k = 0.02, 201
    widths = {}
    for z in (-0.3, 0.0, 0.3):
        psf = optics.psf((k, k), p, z)
        widths[z] = (profile_fwhm(psf[k // 2], k // 2), profile_fwhm(psf[:, k // 2], k // 2))  # (x, y)
    assert widths[0.0][0] == pytest.approx(widths[0.0][1], rel=1e-3)
    assert widths[-0.3][0] > 1.3 * widths[-0.3][1] and widths[0.3][1] > 1.3 * widths[0.3][0]
    assert widths[-0.3][0] == pytest.approx(widths[0.3][1], rel=1e-3)  # mirror images


# -- confocal and STED ----------------------------------------------------------------------------


def test_a_confocal_psf_with_a_closed_pinhole_is_the_squared_airy_pattern():
    # Same excitation and emission wavelength, point pinhole: h = h_em^2, narrower than the
    # widefield Airy disc by v_half(Airy^2) / v_half(Airy) ~ 0.72.
    widefield = Optics(**OIL, excitation_nm=520.0)
    confocal = widefield.model_copy(update={"modality": "confocal", "pinhole_au": 0.0})
    p = 0.52 / 1.4 / 40
    ratio = lateral_fwhm_um(confocal, p) / lateral_fwhm_um(widefield, p)
    assert ratio == pytest.approx(airy_half_max_v(4) / airy_half_max_v(2), rel=0.02)


def test_opening_the_pinhole_moves_the_confocal_width_towards_the_widefield_one():
    p = 0.52 / 1.4 / 40
    widths = [lateral_fwhm_um(Optics(**OIL, modality="confocal", pinhole_au=au), p) for au in (0.0, 1.0, 3.0)]
    widefield = lateral_fwhm_um(Optics(**OIL), p)
    assert widths == sorted(widths) and widths[-1] < widefield


def test_a_confocal_psf_sections_optically_losing_signal_with_defocus():
    confocal = Optics(**OIL, modality="confocal")
    sums = [confocal.psf((256, 256), 0.108, z).sum() for z in (0.0, 0.5, 1.0)]
    assert sums[0] == pytest.approx(1.0, rel=1e-4)
    assert sums[0] > 3 * sums[1] > 3 * sums[2]


@pytest.mark.parametrize("saturation", [3.0, 15.0])
def test_the_sted_width_follows_the_saturation_formula(saturation):
    p = 0.005
    confocal = Optics(**OIL, modality="confocal")
    d_c = lateral_fwhm_um(confocal, p)
    sted = confocal.model_copy(update={"modality": "sted", "sted_saturation": saturation})
    d = lateral_fwhm_um(sted, p)
    assert d == pytest.approx(d_c / math.sqrt(1 + saturation), rel=0.03)
    # The form, with the confocal width approximated by lambda / (2 NA).
    assert d == pytest.approx(0.520 / (2 * 1.4 * math.sqrt(1 + saturation)), rel=0.10)


def test_optics_refuse_an_na_above_the_immersion_index_and_confocal_without_the_pupil_model():
    with pytest.raises(ValueError, match="immersion index"):
        Optics(na=1.6, emission_nm=520.0, immersion_index=1.515)
    with pytest.raises(ValueError, match="pupil"):
        Optics(**OIL, modality="confocal", psf_model="gaussian")

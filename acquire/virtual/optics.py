"""Imaging optics: point-spread functions (widefield, confocal, STED) and FFT convolution.

`Optics.psf` is the PSF a camera records: the intensity at the sample plane, integrated over
each camera pixel, for a point source ``defocus_um`` from the focal plane. Models
(``psf_model``):

- ``"pupil"`` (default): scalar Debye/Born & Wolf model from the pupil function. The field in
  the focal region is the Fourier transform of a uniform circular pupil of radius NA/λ; defocus
  is the exact high-NA phase 2π z sqrt(n² - (λ f)²) / λ; optional Zernike aberrations (primary
  spherical, as a refractive-index mismatch gives — it makes the PSF asymmetric about focus —,
  and astigmatism, as a cylindrical lens gives for 3-D SMLM) add to the phase. Defocus is a
  pure phase, so a defocused PSF keeps all its energy (Parseval).
- ``"gaussian"``: the 3-D Gaussian approximation (in-focus σ = 0.21 λ/NA, widening like a
  Gaussian beam whose axial FWHM is the widefield one).

Modalities (``modality``):

- ``"widefield"``: the emission PSF above.
- ``"confocal"``: excitation PSF (at ``excitation_nm``) x emission PSF convolved with the
  pinhole (diameter ``pinhole_au`` Airy units, 1 AU = 1.22 λ_em / NA at the sample).
- ``"sted"``: the confocal PSF times the fraction of molecules the depletion doughnut leaves
  on, exp(-ζ · 4 ln2 · r² / d_c²), with ζ = I/I_sat (``sted_saturation``) and d_c the confocal
  lateral FWHM: the doughnut's intensity is parabolic near its zero, which gives Harke et al.'s
  (2008) d = d_c / sqrt(1 + I/I_sat) (≈ λ / (2 NA sqrt(1 + I/I_sat)) with d_c ≈ λ / (2 NA)).
  The doughnut is 2-D: the axial extent stays the confocal one; away from focus it spreads like
  a beam (I ~ r² / w(z)⁴ near its zero, w(z) the Gaussian width below), so ζ falls as
  1 / (1 + (z / z_R)²)² and a defocused STED PSF tends to the confocal one.

Every PSF is normalised so that its in-focus, centred version sums to 1: a widefield PSF sums
to 1 at any defocus; confocal and STED ones lose signal with defocus (optical sectioning).

The pupil PSF is computed on a grid finer than the camera pixels (fine enough to sample the
intensity without aliasing), integrated over pixels exactly in Fourier space (x sinc), and
sampled at the pixel centres; a sub-pixel ``offset_px`` is a phase ramp across the pupil, so
it is exact too.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Literal

import numpy as np
import scipy.fft as sfft
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.special import j1

Modality = Literal["widefield", "confocal", "sted"]
PsfModel = Literal["pupil", "gaussian"]

_TAIL_AIRY_WIDTHS = 8.0  # PSF support beyond the geometric blur, in λ/NA
_MAX_FINE_GRID = 2048  # samples across the fine grid before it falls back to one per pixel


class Optics(BaseModel):
    """Objective, wavelengths, aberrations and modality: what sets the PSF."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    na: float = Field(gt=0, description="numerical aperture of the objective")
    emission_nm: float = Field(gt=0, description="emission wavelength in nm")
    immersion_index: float = Field(gt=0, description="refractive index of the immersion medium")
    excitation_nm: float = Field(default=488.0, gt=0, description="excitation wavelength (confocal, STED), nm")
    psf_model: PsfModel = "pupil"
    modality: Modality = "widefield"
    pinhole_au: float = Field(default=1.0, ge=0, description="confocal pinhole diameter, Airy units")
    sted_saturation: float = Field(default=10.0, ge=0, description="STED depletion intensity / I_sat")
    spherical_waves: float = Field(default=0.0, description="primary spherical aberration Z(4,0), waves rms")
    astigmatism_waves: float = Field(default=0.0, description="astigmatism Z(2,2) (x vs y), waves rms")

    @model_validator(mode="after")
    def _na_below_index(self) -> Optics:
        if self.na >= self.immersion_index:
            raise ValueError(f"na {self.na} must be below the immersion index {self.immersion_index}")
        if self.modality != "widefield" and self.psf_model != "pupil":
            raise ValueError(f"the {self.modality} PSF needs psf_model 'pupil'")
        return self

    # -- the Gaussian approximation -----------------------------------------------------------

    @property
    def sigma0_um(self) -> float:
        """Lateral standard deviation of the in-focus PSF, µm (Gaussian fit to the Airy disc)."""
        return 0.21 * self.emission_nm * 1e-3 / self.na

    @property
    def rayleigh_range_um(self) -> float:
        """Defocus at which the Gaussian PSF's width has grown by sqrt(2), µm: half the widefield
        axial FWHM 0.88 λ / (n - sqrt(n^2 - NA^2))."""
        n, na = self.immersion_index, self.na
        return 0.44 * self.emission_nm * 1e-3 / (n - math.sqrt(n * n - na * na))

    def sigma_um(self, defocus_um: float) -> float:
        """Lateral standard deviation of the Gaussian PSF at ``defocus_um`` from focus, µm."""
        return self.sigma0_um * math.sqrt(1.0 + (defocus_um / self.rayleigh_range_um) ** 2)

    # -- the PSF ------------------------------------------------------------------------------

    def psf(self, shape: tuple[int, int], pixel_size_um: float, defocus_um: float,
            offset_px: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        """The PSF integrated over camera pixels, centred at ``shape // 2 + offset_px`` (rows,
        cols); float32 of ``shape``. Light beyond ``shape`` wraps around (as in a circular
        convolution), so a widefield PSF sums to 1 whatever the shape. The pupil PSF is computed
        over `support_px` (the geometric blur plus 8 λ/NA); the faint Airy tails beyond wrap
        into it (~1 % of the light)."""
        if self.psf_model == "gaussian":
            sigma_px = self.sigma_um(defocus_um) / pixel_size_um
            rows = _pixel_integrated_gaussian(shape[0], sigma_px, offset_px[0])
            cols = _pixel_integrated_gaussian(shape[1], sigma_px, offset_px[1])
            return np.outer(rows, cols).astype(np.float32)
        k = 2 * self.support_px(pixel_size_um, defocus_um) + 1
        kernel = self._pupil_psf(k, pixel_size_um, float(defocus_um), offset_px)
        kernel *= self._norm(pixel_size_um)
        return _fold_centred(kernel, shape).astype(np.float32)

    def support_px(self, pixel_size_um: float, defocus_um: float) -> int:
        """Half-width in pixels beyond which the PSF holds a negligible fraction of its energy."""
        if self.psf_model == "gaussian":
            return math.ceil(4.0 * self.sigma_um(defocus_um) / pixel_size_um) + 1
        return math.ceil(self._radius_um(defocus_um) / pixel_size_um) + 1

    def fwhm_um(self, defocus_um: float = 0.0, pixel_size_um: float = 0.005, half_px: int = 150) -> float:
        """Lateral FWHM of the PSF along x, measured on a fine grid, µm."""
        psf = self.psf((2 * half_px + 1, 2 * half_px + 1), pixel_size_um, defocus_um)
        return profile_fwhm(psf[half_px], half_px) * pixel_size_um

    # -- internals ----------------------------------------------------------------------------

    def _radius_um(self, defocus_um: float) -> float:
        n, na = self.immersion_index, self.na
        lam = max(self.emission_nm, self.excitation_nm) * 1e-3
        geometric = abs(defocus_um) * na / math.sqrt(n * n - na * na)  # |z| tan(theta_max)
        return geometric + _TAIL_AIRY_WIDTHS * lam / na + 2.0 * abs(self.astigmatism_waves) * lam / na

    def _bandwidth(self) -> float:
        """Highest spatial frequency of the intensity PSF (cycles/µm), for the fine grid."""
        em, ex = self.na / (self.emission_nm * 1e-3), self.na / (self.excitation_nm * 1e-3)
        if self.modality == "widefield":
            return 2 * em
        band = 2 * em + 2 * ex
        if self.modality == "sted" and self.sted_saturation > 0:
            sigma = self._confocal_fwhm_um() / (2.3548 * math.sqrt(self.sted_saturation))
            band += 3.0 / (2 * math.pi * sigma)
        return band

    def _pupil_psf(self, k: int, pixel_size_um: float, defocus_um: float,
                   offset_px: tuple[float, float]) -> np.ndarray:
        """Un-normalised PSF of the modality on a k x k pixel grid, centre at k // 2 + offset."""
        s = max(1, math.ceil(2.2 * pixel_size_um * self._bandwidth()))  # fine samples per pixel
        if k * s > _MAX_FINE_GRID:
            s = 1  # far out of focus: the OTF is ~0 near the cut-off, so pixels sample it well enough
        while fast_fft_len(k * s) != k * s:  # a grid whose FFTs are fast
            k += 1
        m = k * s
        dx = pixel_size_um / s
        shift_um = (offset_px[0] * pixel_size_um, offset_px[1] * pixel_size_um)
        em = self._intensity(m, dx, self.emission_nm, defocus_um, shift_um)
        if self.modality == "widefield":
            fine = em
        else:
            ex = self._intensity(m, dx, self.excitation_nm, defocus_um, shift_um)
            fine = ex * self._through_pinhole(em, dx) * m * m
            if self.modality == "sted" and self.sted_saturation > 0:
                y, x = _periodic_coords(m, dx)
                r2 = (y[:, None] - shift_um[0]) ** 2 + (x[None, :] - shift_um[1]) ** 2
                # The doughnut spreads with defocus like a beam: I ~ r^2 / w(z)^4 near its zero.
                zeta = self.sted_saturation / (1 + (defocus_um / self.rayleigh_range_um) ** 2) ** 2
                fine *= np.exp(-zeta * 4 * math.log(2) * r2 / self._confocal_fwhm_um() ** 2)
        # Integrate over pixels (x sinc in Fourier space), then sample the pixel centres.
        f = np.fft.fftfreq(m, dx)
        box = np.sinc(f * pixel_size_um)
        pixels = sfft.ifft2(sfft.fft2(fine) * box[:, None] * box[None, :]).real[::s, ::s] * s * s
        return np.roll(pixels, (k // 2, k // 2), axis=(0, 1))

    def _intensity(self, m: int, dx: float, wavelength_nm: float, defocus_um: float,
                   shift_um: tuple[float, float]) -> np.ndarray:
        """|field|^2 on the m x m fine grid (origin at index 0, periodic); sums to 1 per sample
        in focus (Parseval: the pupil's energy)."""
        lam = wavelength_nm * 1e-3
        n, na = self.immersion_index, self.na
        f = np.fft.fftfreq(m, dx)
        fy, fx = f[:, None], f[None, :]
        rho2 = (fx * fx + fy * fy) * (lam / na) ** 2  # normalised pupil radius squared
        inside = rho2 <= 1.0
        phase = 2 * math.pi / lam * defocus_um * np.sqrt(np.maximum(n * n - rho2 * na * na, 0.0))
        phase -= 2 * math.pi * (fy * shift_um[0] + fx * shift_um[1])
        if self.spherical_waves:
            phase += 2 * math.pi * self.spherical_waves * math.sqrt(5) * (6 * rho2**2 - 6 * rho2 + 1)
        if self.astigmatism_waves:
            cos2 = np.where(rho2 > 0, (fx * fx - fy * fy) / np.maximum(fx * fx + fy * fy, 1e-30), 0.0)
            phase += 2 * math.pi * self.astigmatism_waves * math.sqrt(6) * rho2 * cos2
        pupil = np.where(inside, np.exp(1j * phase), 0.0)
        field = sfft.ifft2(pupil)
        return (field.real**2 + field.imag**2) * (m * m / inside.sum())

    def _through_pinhole(self, intensity: np.ndarray, dx: float) -> np.ndarray:
        """``intensity`` convolved with the pinhole disc (unit area; a point for 0 AU)."""
        if self.pinhole_au == 0:
            return intensity
        radius = self.pinhole_au * 0.61 * self.emission_nm * 1e-3 / self.na
        m = intensity.shape[0]
        f = np.fft.fftfreq(m, dx)
        q = 2 * math.pi * radius * np.hypot(f[:, None], f[None, :])
        disc = np.where(q > 0, 2 * j1(q) / np.maximum(q, 1e-30), 1.0)  # FT of a unit-area disc
        return sfft.ifft2(sfft.fft2(intensity) * disc).real

    def _norm(self, pixel_size_um: float) -> float:
        return _in_focus_norm(self, pixel_size_um)

    def _confocal_fwhm_um(self) -> float:
        return _confocal_fwhm(self)


WidefieldOptics = Optics
"""The name of `Optics` before confocal and STED (kept for existing callers)."""


@lru_cache(maxsize=64)
def _in_focus_norm(optics: Optics, pixel_size_um: float) -> float:
    """1 / sum of the in-focus centred PSF (1 for widefield: Parseval)."""
    if optics.modality == "widefield":
        return 1.0
    k = 2 * optics.support_px(pixel_size_um, 0.0) + 1
    return 1.0 / float(optics._pupil_psf(k, pixel_size_um, 0.0, (0.0, 0.0)).sum())


@lru_cache(maxsize=16)
def _confocal_fwhm(optics: Optics) -> float:
    confocal = optics.model_copy(update={"modality": "confocal"})
    return confocal.fwhm_um(0.0, pixel_size_um=0.005, half_px=100)


def profile_fwhm(profile: np.ndarray, centre: int) -> float:
    """Full width at half maximum (in samples) of a peaked 1-D profile, by linear interpolation."""
    half = profile[centre] / 2.0
    right = centre
    while profile[right + 1] > half:
        right += 1
    left = centre
    while profile[left - 1] > half:
        left -= 1
    r = right + (profile[right] - half) / (profile[right] - profile[right + 1])
    l_ = left - (profile[left] - half) / (profile[left] - profile[left - 1])
    return float(r - l_)


def _periodic_coords(m: int, dx: float) -> tuple[np.ndarray, np.ndarray]:
    c = np.fft.fftfreq(m, 1.0 / (m * dx))  # 0, dx, ..., then negative: distances on the ring
    return c, c


def _fold_centred(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Place a square kernel (centre k // 2) into ``shape`` centred at shape // 2, wrapping."""
    k = kernel.shape[0]
    if k <= shape[0] and k <= shape[1]:
        out = np.zeros(shape, np.float64)
        r0, c0 = shape[0] // 2 - k // 2, shape[1] // 2 - k // 2
        out[r0:r0 + k, c0:c0 + k] = kernel
        return out
    rows = (np.arange(k) - k // 2 + shape[0] // 2) % shape[0]
    cols = (np.arange(k) - k // 2 + shape[1] // 2) % shape[1]
    out = np.zeros(shape, np.float64)
    np.add.at(out, (rows[:, None], cols[None, :]), kernel)
    return out


def _pixel_integrated_gaussian(n: int, sigma_px: float, offset_px: float) -> np.ndarray:
    """1-D Gaussian centred at n // 2 + offset_px, integrated over each pixel, normalised to 1."""
    edges = np.arange(n + 1, dtype=np.float64) - n // 2 - 0.5 - offset_px
    cdf = np.array([math.erf(e / (math.sqrt(2.0) * sigma_px)) for e in edges])
    weights = 0.5 * np.diff(cdf)
    return weights / weights.sum()


# -- FFT convolution ------------------------------------------------------------------------------


def fast_fft_len(n: int) -> int:
    """The smallest length >= n whose only prime factors are 2, 3 and 5 (fast for FFTs)."""
    m = max(int(n), 1)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def otf(psf: np.ndarray) -> np.ndarray:
    """Optical transfer function (real FFT) of a PSF centred at ``shape // 2``."""
    return np.fft.rfft2(np.fft.ifftshift(psf))


def convolve(image: np.ndarray, transfer: np.ndarray) -> np.ndarray:
    """Circular convolution of ``image`` with the PSF whose `otf` is ``transfer``; float32.

    Pad ``image`` so that what wraps around does not matter.
    """
    workers = os.cpu_count() or 1
    spectrum = sfft.rfft2(image, workers=workers)
    spectrum *= transfer
    return sfft.irfft2(spectrum, s=image.shape, workers=workers).astype(np.float32, copy=False)

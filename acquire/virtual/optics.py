"""Widefield imaging optics: the point-spread function and FFT convolution with it.

The PSF is a Gaussian approximation of the widefield PSF: its in-focus width is the usual
0.21 λ/NA, and it widens with defocus like a Gaussian beam whose axial extent matches the
widefield PSF's axial FWHM. It is energy-conserving at every defocus (each PSF sums to 1), so
defocus redistributes photons, never loses them. Everything else asks for a PSF only through
`WidefieldOptics.psf`, so a pupil-function model can replace the Gaussian without touching the
callers.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class WidefieldOptics(BaseModel):
    """Objective and emission: what sets the PSF."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    na: float = Field(gt=0, description="numerical aperture of the objective")
    emission_nm: float = Field(gt=0, description="emission wavelength in nm")
    immersion_index: float = Field(gt=0, description="refractive index of the immersion medium")

    @model_validator(mode="after")
    def _na_below_index(self) -> WidefieldOptics:
        if self.na >= self.immersion_index:
            raise ValueError(f"na {self.na} must be below the immersion index {self.immersion_index}")
        return self

    @property
    def sigma0_um(self) -> float:
        """Lateral standard deviation of the in-focus PSF, µm (Gaussian fit to the Airy disc)."""
        return 0.21 * self.emission_nm * 1e-3 / self.na

    @property
    def rayleigh_range_um(self) -> float:
        """Defocus at which the PSF's width has grown by sqrt(2), µm.

        Chosen so the Gaussian's peak falls to half at +-z_R, i.e. its axial FWHM (2 z_R) equals
        the widefield PSF's axial FWHM 0.88 λ / (n - sqrt(n^2 - NA^2)).
        """
        n, na = self.immersion_index, self.na
        return 0.44 * self.emission_nm * 1e-3 / (n - math.sqrt(n * n - na * na))

    def sigma_um(self, defocus_um: float) -> float:
        """Lateral standard deviation of the PSF at ``defocus_um`` from focus, µm."""
        return self.sigma0_um * math.sqrt(1.0 + (defocus_um / self.rayleigh_range_um) ** 2)

    def psf(self, shape: tuple[int, int], pixel_size_um: float, defocus_um: float,
            offset_px: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        """The PSF integrated over camera pixels, centred at ``shape // 2 + offset_px``; sums to 1.

        float32 of ``shape``. Integrating over the pixel (rather than sampling its centre) is
        what a camera pixel does, and keeps the sum right even when sigma is below a pixel.
        A sub-pixel ``offset_px`` (rows, cols) is exact here, where shifting the sampled image in
        Fourier space would ring: the in-focus PSF is not band-limited to the pixel grid.
        """
        sigma_px = self.sigma_um(defocus_um) / pixel_size_um
        rows = _pixel_integrated_gaussian(shape[0], sigma_px, offset_px[0])
        cols = _pixel_integrated_gaussian(shape[1], sigma_px, offset_px[1])
        return np.outer(rows, cols).astype(np.float32)

    def support_px(self, pixel_size_um: float, defocus_um: float) -> int:
        """Half-width in pixels beyond which the PSF holds a negligible fraction of its energy."""
        return math.ceil(4.0 * self.sigma_um(defocus_um) / pixel_size_um) + 1


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
    spectrum = np.fft.rfft2(image)
    spectrum *= transfer
    return np.fft.irfft2(spectrum, s=image.shape).astype(np.float32, copy=False)

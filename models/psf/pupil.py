"""The PSF model the bead calibration fits: `Optics`' scalar pupil PSF (acquire/virtual/optics.py),
the one `LocaliseSimulation` renders astigmatic emitters with -- a pupil of radius NA / lambda, the
exact high-NA defocus phase, Zernike astigmatism Z(2,2) and primary spherical aberration Z(4,0),
the intensity integrated over camera pixels -- plus a lateral Gaussian blur.

`PupilModel` evaluates it for many (bead, plane) pairs at once: the same formulas as
`Optics._intensity` / `Optics._pupil_psf`, vectorised over the batch and evaluated only at the
pupil samples inside the aperture. `PupilGrids` puts each image on the grid `Optics.psf` would use.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft as sfft

from livescope.acquire.virtual.optics import _MAX_FINE_GRID, Optics, fast_fft_len

_CHUNK = 24  # (bead, plane) images per FFT batch: small batches stay in cache


class PupilModel:
    """`Optics`' widefield pupil PSF, pixel-integrated, for a batch of (defocus, sub-pixel offset)
    pairs on a ``k`` x ``k`` pixel grid centred at ``k // 2`` (light beyond wraps round), the grid
    `Optics.psf` computes it on: its pupil sampling (1 / (k pixels)) sets the PSF to ~1-3 %, so the
    fit uses the virtual microscope's own grid per defocus (`PupilGrids`)."""

    def __init__(self, emission_nm: float, immersion_index: float, pixel_size_um: float, k: int,
                 na_max: float) -> None:
        self.lam = emission_nm * 1e-3
        self.n = immersion_index
        self.p = pixel_size_um
        # Fine samples per pixel as `Optics._pupil_psf` takes them (for the largest NA fitted).
        s = max(1, math.ceil(2.2 * pixel_size_um * 2 * na_max / self.lam))
        if k * s > _MAX_FINE_GRID:
            s = 1
        while fast_fft_len(k * s) != k * s:
            k += 1
        self.k, self.s, self.m = k, s, k * s
        dx = pixel_size_um / s
        f = np.fft.fftfreq(self.m, dx)
        fy, fx = np.meshgrid(f, f, indexing="ij")
        self.fy, self.fx = fy.ravel(), fx.ravel()
        fr = np.fft.rfftfreq(self.m, dx)
        self.box = np.sinc(f * pixel_size_um)[:, None] * np.sinc(fr * pixel_size_um)[None, :]  # rfft2 layout
        self.f2r = f[:, None] ** 2 + fr[None, :] ** 2
        self._na: float | None = None

    def _aperture(self, na: float) -> None:
        if self._na == na:
            return
        rho2 = (self.fx * self.fx + self.fy * self.fy) * (self.lam / na) ** 2
        inside = np.flatnonzero(rho2 <= 1.0)
        r2 = rho2[inside]
        fx, fy = self.fx[inside], self.fy[inside]
        self.inside, self.count = inside, inside.size
        self.kz = np.sqrt(np.maximum(self.n**2 - r2 * na * na, 0.0))
        self.sph = math.sqrt(5) * (6 * r2**2 - 6 * r2 + 1)
        cos2 = np.where(r2 > 0, (fx * fx - fy * fy) / np.maximum(fx * fx + fy * fy, 1e-30), 0.0)
        self.ast = math.sqrt(6) * r2 * cos2
        self.pfx, self.pfy = fx, fy
        self._na = na

    def images(self, na: float, astigmatism: float, spherical: float, blur_um: float, defocus_um: np.ndarray,
               offset_px: np.ndarray, half: int) -> np.ndarray:
        """(B, 2 half + 1, 2 half + 1): the middle of the PSFs at ``defocus_um`` (B,) centred at
        k // 2 + ``offset_px`` (B, 2: rows, cols); a whole PSF sums to 1 (widefield)."""
        self._aperture(na)
        two_pi = 2 * math.pi
        out = np.empty((len(defocus_um), 2 * half + 1, 2 * half + 1))
        aberration = two_pi * (astigmatism * self.ast + spherical * self.sph)
        transfer = self.box * np.exp(-2 * math.pi**2 * blur_um**2 * self.f2r) if blur_um > 0 else self.box
        m, s = self.m, self.s
        rows = np.arange(-half, half + 1) % self.k  # the ROI: pixels about the centre (index 0, as unrolled)
        for a in range(0, len(defocus_um), _CHUNK):
            d = np.asarray(defocus_um[a:a + _CHUNK], np.float64)
            o = np.asarray(offset_px[a:a + _CHUNK], np.float64) * self.p
            phase = (two_pi / self.lam) * d[:, None] * self.kz[None, :] + aberration[None, :]
            phase -= two_pi * (o[:, :1] * self.pfy[None, :] + o[:, 1:] * self.pfx[None, :])
            pupil = np.zeros((d.size, m * m), np.complex128)
            pupil[:, self.inside] = np.exp(1j * phase)
            field = sfft.ifft2(pupil.reshape(-1, m, m), axes=(1, 2))
            fine = (field.real**2 + field.imag**2) * (m * m / self.count)
            spectrum = sfft.rfft2(fine, axes=(1, 2))
            spectrum *= transfer
            pixels = sfft.irfft2(spectrum, s=(m, m), axes=(1, 2))[:, ::s, ::s]
            out[a:a + d.size] = pixels[:, rows[:, None], rows[None, :]] * (s * s)
        return out


class PupilGrids:
    """One `PupilModel` per grid size: each (bead, plane) image on the grid `Optics.psf` would use at
    its defocus (fixed at the start, so that the model is smooth in the fitted parameters)."""

    def __init__(self, optics: Optics, pixel_size_um: float, na_max: float) -> None:
        self.optics, self.p, self.na_max = optics, pixel_size_um, na_max
        self._models: dict[int, PupilModel] = {}

    def sizes(self, defocus_um: np.ndarray) -> np.ndarray:
        """The grid (pixels) of each defocus: `Optics.support_px`'s."""
        return np.array([2 * self.optics.support_px(self.p, float(d)) + 1 for d in defocus_um])

    def images(self, na: float, astigmatism: float, spherical: float, blur_um: float, defocus_um: np.ndarray,
               offset_px: np.ndarray, sizes: np.ndarray, half: int) -> np.ndarray:
        out = np.empty((len(defocus_um), 2 * half + 1, 2 * half + 1))
        for k in np.unique(sizes):
            k = int(max(k, 2 * half + 1))
            model = self._models.get(k)
            if model is None:
                o = self.optics
                model = self._models[k] = PupilModel(o.emission_nm, o.immersion_index, self.p, k, self.na_max)
            mine = np.flatnonzero(np.maximum(sizes, 2 * half + 1) == k)
            out[mine] = model.images(na, astigmatism, spherical, blur_um, defocus_um[mine], offset_px[mine], half)
        return out

"""Point emitters imaged one by one: each the optics' pixel-integrated PSF at its own position.

Convolving a pixel raster with the PSF (how the scene images extended specimens) needs each
point spread over its 4 nearest pixels first, which widens its image by up to ~0.4 px in
quadrature and makes its shape depend on where it sits in its pixel. A single molecule's image
is the measurement a localiser makes, so the scene draws molecules with `SpotImager` instead:
`Optics.psf` at the molecule's sub-pixel offset, which is exact (a phase ramp across the
pupil, see optics.py).

Computing a PSF costs ~1 ms, so PSFs are computed on a grid of sub-pixel offsets
(``1 / STEPS_PER_PX``), kept, and blended bilinearly between the 4 around the molecule. The
blend's centroid is the molecule's position exactly (it is linear in the weights) and it is
wider than the PSF by at most step^2 / 4 in variance: 0.4 % of the in-focus sigma at 108 nm
pixels, and less for wider PSFs.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np

from .optics import Optics

STEPS_PER_PX = 8
_CACHE_PSFS = 2048  # ~15 KB each in focus at 108 nm pixels (59 x 59 px)


class SpotImager:
    """Adds point emitters' images to a frame; keeps the PSFs it computed (thread-safe)."""

    def __init__(self, pixel_size_um: float) -> None:
        self.pixel_size_um = pixel_size_um
        self._psfs: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def support_px(self, optics: Optics, defocus_um: float) -> int:
        """How far from an emitter, in pixels, its light reaches (so emitters that far outside a
        frame still add to it)."""
        return optics.support_px(self.pixel_size_um, defocus_um)

    def add(self, frame: np.ndarray, row_px: np.ndarray, col_px: np.ndarray, photons: np.ndarray,
            optics: Optics, defocus_um: float) -> None:
        """Add emitters of ``photons`` each at (``row_px``, ``col_px``) -- continuous pixel
        coordinates of ``frame`` with pixel centres at integers -- imaged at ``defocus_um``.
        Light falling outside ``frame`` is lost."""
        h, w = frame.shape
        half = self.support_px(optics, defocus_um)
        dz = round(float(defocus_um), 6)
        for r, c, n in zip(np.asarray(row_px, np.float64), np.asarray(col_px, np.float64), photons):
            r0, c0 = math.floor(r), math.floor(c)
            # The offset from pixel (r0, c0) in grid steps: the 4 PSFs around it and their weights.
            gr, gc = (r - r0) * STEPS_PER_PX, (c - c0) * STEPS_PER_PX
            ir, ic = min(int(gr), STEPS_PER_PX - 1), min(int(gc), STEPS_PER_PX - 1)
            fr, fc = gr - ir, gc - ic
            spot = ((1 - fr) * (1 - fc)) * self._psf(optics, dz, ir, ic)
            spot += ((1 - fr) * fc) * self._psf(optics, dz, ir, ic + 1)
            spot += (fr * (1 - fc)) * self._psf(optics, dz, ir + 1, ic)
            spot += (fr * fc) * self._psf(optics, dz, ir + 1, ic + 1)
            spot *= np.float32(n)
            # The PSF's centre pixel (half, half) goes on pixel (r0, c0); clip to the frame.
            top, left = r0 - half, c0 - half
            a, b = max(top, 0), min(top + spot.shape[0], h)
            d, e = max(left, 0), min(left + spot.shape[1], w)
            if a < b and d < e:
                frame[a:b, d:e] += spot[a - top:b - top, d - left:e - left]

    def _psf(self, optics: Optics, defocus_um: float, step_row: int, step_col: int) -> np.ndarray:
        """The PSF over (2 support + 1)^2 pixels, centred at the middle pixel plus (step_row,
        step_col) / STEPS_PER_PX."""
        key = (optics, self.pixel_size_um, defocus_um, step_row, step_col)
        with self._lock:
            psf = self._psfs.get(key)
            if psf is not None:
                self._psfs.move_to_end(key)
                return psf
        k = 2 * self.support_px(optics, defocus_um) + 1
        psf = optics.psf((k, k), self.pixel_size_um, defocus_um,
                         (step_row / STEPS_PER_PX, step_col / STEPS_PER_PX))
        psf.flags.writeable = False
        with self._lock:
            self._psfs[key] = psf
            while len(self._psfs) > _CACHE_PSFS:
                self._psfs.popitem(last=False)
        return psf

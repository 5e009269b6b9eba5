"""Training data for the camera-agnostic denoiser: noisy/clean pairs in photo-electrons, drawn fresh
for every batch from a wide simulator (nothing is seen twice, so nothing is learnt by heart).

The domain is deliberately wider than any one rig (issue 17): structures from puncta, filaments,
membranes, nuclei and dense tissue to generic textures (fractal noise, everyday photographs: the seed's
authors found networks trained on such textures transfer to microscopy) blurred by Gaussian PSFs of
0.7-4 px; widefield haze, flat and light-sheet-like striped backgrounds; peak signals of 1-1,000
photons; sCMOS (read noise, any gain), EMCCD (excess noise) and coarse 8-bit quantisation.

Everything is expressed in *noise-equivalent* photo-electrons, the units the served model takes:
counts whose variance equals their mean (read noise counted as extra background, EM excess noise
folded into the gain: ``livescope.camera_estimate``). A camera's conversion is estimated from data and
can be off, so the conversion gain is also perturbed by up to ``gain_error`` either way: the network
learns to read the noise level from the image rather than trust the units blindly.
"""

from __future__ import annotations

import functools

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

STRUCTURES = ("puncta", "filaments", "membranes", "nuclei", "tissue", "texture", "photograph")
CAMERAS = ("scmos", "emccd", "8bit")
# scikit-image's bundled greyscale-able photographs (no download). Its Hubble deep field is left out:
# bench/denoise_quality.py's foreign simulator uses it, and the bench must stay data nobody trained on.
PHOTOGRAPHS = ("astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "grass", "gravel",
               "horse", "moon", "page", "retina", "rocket", "text", "microaneurysms", "immunohistochemistry")
MARGIN_PX = 12  # drawn larger and cropped, so blur and haze have no edge effects


class BroadDenoiseData(BaseModel):
    """The simulator's ranges: each drawn per patch, log-uniformly where they span decades."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    peak_photons: tuple[float, float] = Field(default=(1.0, 1000.0), description="in-focus peak, photons/px")
    psf_sigma_px: tuple[float, float] = Field(default=(0.7, 4.0), description="Gaussian PSF sigma, px")
    background_fraction: tuple[float, float] = Field(
        default=(0.0, 0.5), description="uniform background, x peak (plus haze and stripes)")
    read_noise_e: tuple[float, float] = Field(default=(0.3, 3.0), description="sCMOS read noise, e- rms")
    e_per_adu: tuple[float, float] = Field(default=(0.1, 2.5), description="sCMOS conversion gain (quantisation)")
    gain_error: float = Field(default=1.4, ge=1.0, description="noise-equivalent gain off by up to this factor")
    structures: tuple[str, ...] = STRUCTURES
    cameras: tuple[str, ...] = CAMERAS

    def describe(self) -> str:
        return (f"simulated on the fly: {', '.join(self.structures)}; Gaussian PSF sigma "
                f"{self.psf_sigma_px[0]:g}-{self.psf_sigma_px[1]:g} px; peak {self.peak_photons[0]:g}-"
                f"{self.peak_photons[1]:g} photons/px; backgrounds 0-{self.background_fraction[1]:g} x peak with "
                f"widefield haze and light-sheet stripes; {', '.join(self.cameras)} cameras (read noise "
                f"{self.read_noise_e[0]:g}-{self.read_noise_e[1]:g} e-); noise-equivalent gain off by up to "
                f"x{self.gain_error:g}")


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _splat(shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Point sources at sub-pixel positions, shared bilinearly among their four pixels."""
    image = np.zeros(shape, np.float64)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0 + dy, x0 + dx
        inside = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
        np.add.at(image, (yy[inside], xx[inside]), (weights * w)[inside])
    return image


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px)
    return field / max(float(field.std()), 1e-12)


def _fractal(rng: np.random.Generator, shape: tuple[int, int], beta: float) -> np.ndarray:
    """Noise with a 1/f^beta power spectrum, unit variance."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    radius = np.hypot(fy, fx)
    radius[0, 0] = 1.0
    spectrum = (rng.standard_normal(radius.shape) + 1j * rng.standard_normal(radius.shape)) * radius ** (-beta / 2)
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=shape)
    return field / max(float(field.std()), 1e-12)


def _ellipses(rng: np.random.Generator, shape: tuple[int, int], count: int, axes_px: tuple[float, float]
              ) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    image = np.zeros(shape)
    for _ in range(count):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        a, b = rng.uniform(*axes_px, 2)
        angle = rng.uniform(0, np.pi)
        u = ((yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)) / a
        v = (-(yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)) / b
        inside = 1.0 / (1.0 + np.exp(np.minimum((np.hypot(u, v) - 1.0) * rng.uniform(4, 15), 50.0)))  # soft edge
        image += rng.uniform(0.2, 1.0) * inside
    return image


@functools.lru_cache(maxsize=None)
def _photograph(name: str) -> np.ndarray:
    from skimage import color, data

    image = getattr(data, name)()
    if image.ndim == 3:
        image = color.rgb2gray(image[..., :3])
    image = image.astype(np.float64)
    return (image - image.min()) / max(float(np.ptp(image)), 1e-12)


def structure(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Fluorophore density (>= 0, brightest about 1) of one ``kind`` (``STRUCTURES``), before the PSF."""
    h, w = shape
    area = h * w / 64.0**2
    if kind == "puncta":
        n = max(1, int(rng.integers(2, 80) * area))
        return _splat(shape, rng.uniform(0, h, n), rng.uniform(0, w, n), rng.lognormal(0.0, 0.5, n))
    if kind == "filaments":
        ys, xs, ws = [], [], []
        for _ in range(max(1, int(rng.integers(1, 14) * area))):
            steps = int(rng.uniform(0.5, 2.5) * max(h, w) / 0.5)
            angle = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, rng.uniform(0.01, 0.12), steps))
            y = rng.uniform(0, h) + np.cumsum(0.5 * np.sin(angle))
            x = rng.uniform(0, w) + np.cumsum(0.5 * np.cos(angle))
            ys.append(y)
            xs.append(x)
            ws.append(np.full(steps, 0.5 * rng.uniform(0.2, 1.0)))
        return _splat(shape, np.concatenate(ys), np.concatenate(xs), np.concatenate(ws))
    if kind == "membranes":
        # level sets of a smooth random field: closed, winding outlines of cells of many sizes
        field = _smooth_field(rng, shape, rng.uniform(3.0, 12.0))
        gy, gx = np.gradient(field)
        width = rng.uniform(0.4, 1.5)
        outline = np.exp(-0.5 * (field / (width * np.hypot(gy, gx) + 1e-6)) ** 2)
        return outline * (0.5 + 0.5 * np.clip(_smooth_field(rng, shape, 8.0), -1, 1))
    if kind == "nuclei":
        body = _ellipses(rng, shape, max(1, int(rng.integers(1, 6) * area)), (5.0, 22.0))
        return body * (1.0 - rng.uniform(0.0, 0.7) * np.clip(0.5 + 0.3 * _fractal(rng, shape, 2.5), 0, 1))
    if kind == "tissue":
        body = _ellipses(rng, shape, max(4, int(rng.integers(10, 40) * area)), (2.0, 10.0))
        return body * np.clip(1.0 + 0.3 * _fractal(rng, shape, rng.uniform(1.5, 3.0)), 0, None)
    if kind == "texture":
        field = _fractal(rng, shape, rng.uniform(1.0, 3.5))
        if rng.random() < 0.5:
            return np.exp(rng.uniform(0.5, 2.0) * field)  # bright sparse highlights
        return np.maximum(field - rng.uniform(-1.0, 1.5), 0.0)  # islands on black
    if kind == "photograph":
        image = _photograph(PHOTOGRAPHS[int(rng.integers(len(PHOTOGRAPHS)))])
        zoom = rng.uniform(0.5, 1.5)
        ch, cw = min(image.shape[0], int(h / zoom) + 2), min(image.shape[1], int(w / zoom) + 2)
        y0, x0 = rng.integers(0, image.shape[0] - ch + 1), rng.integers(0, image.shape[1] - cw + 1)
        crop = ndimage.zoom(image[y0 : y0 + ch, x0 : x0 + cw], (h / ch, w / cw), order=1)[:h, :w]
        crop = np.pad(crop, ((0, h - crop.shape[0]), (0, w - crop.shape[1])), mode="edge")
        crop = 1.0 - crop if rng.random() < 0.5 else crop  # dark or bright objects
        return np.rot90(crop, int(rng.integers(4))) ** rng.uniform(0.5, 3.0)
    raise ValueError(f"unknown structure {kind!r}; one of {', '.join(STRUCTURES)}")


def _unit_peak(image: np.ndarray) -> np.ndarray:
    return image / max(float(image.max()), 1e-12)


def clean_photons(spec: BroadDenoiseData, side_px: int, rng: np.random.Generator) -> np.ndarray:
    """One noise-free patch (side_px x side_px, photons/px): a structure (sometimes two overlaid)
    through a Gaussian PSF, scaled to a peak, with haze, background and sometimes stripes."""
    shape = (side_px + 2 * MARGIN_PX,) * 2
    kinds = [spec.structures[int(rng.integers(len(spec.structures)))] for _ in range(1 + (rng.random() < 0.3))]
    density = sum(rng.uniform(0.3, 1.0) * _unit_peak(structure(kind, shape, rng)) for kind in kinds)
    sigma = _log_uniform(rng, *spec.psf_sigma_px)
    sigmas = (sigma, sigma * rng.uniform(0.8, 1.25))  # slightly astigmatic or anisotropic at times
    image = ndimage.gaussian_filter(density, sigmas[:: 1 if rng.random() < 0.5 else -1])
    image = _unit_peak(image)
    if rng.random() < 0.5:  # widefield: out-of-focus light from the same structure
        haze = ndimage.gaussian_filter(density, sigma * rng.uniform(3.0, 8.0))
        image = image + rng.uniform(0.05, 0.8) * _unit_peak(haze)
    background = rng.uniform(*spec.background_fraction)
    if rng.random() < 0.15:  # light-sheet-like: stripes along one axis
        stripes = 1.0 + 0.5 * np.sin(np.linspace(0, rng.uniform(2, 12), shape[0]) + rng.uniform(0, 6.3))
        image = image + background * (stripes[:, None] if rng.random() < 0.5 else stripes[None, :])
    else:
        image = image + background
    peak = _log_uniform(rng, *spec.peak_photons)
    m = MARGIN_PX
    return peak * image[m:-m, m:-m] / max(float(image[m:-m, m:-m].max()), 1e-12) * rng.uniform(0.8, 1.0)


def noisy_pair(spec: BroadDenoiseData, photons: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, target) in noise-equivalent photo-electrons for ``photons`` through a random camera:
    what the served model receives after the ADU -> photons conversion, and the mean it should give."""
    camera = spec.cameras[int(rng.integers(len(spec.cameras)))]
    counts = rng.poisson(photons).astype(np.float64)
    if camera == "emccd":
        # the gain register: n electrons out as Gamma(n, 1) (x gain); variance 2x the mean in all
        amplified = np.where(counts > 0, rng.gamma(np.maximum(counts, 1e-9), 1.0), 0.0)
        amplified += rng.normal(0.0, 0.1, photons.shape)  # read noise / EM gain: negligible
        noisy, target = amplified / 2.0, photons / 2.0
    else:
        read = _log_uniform(rng, *spec.read_noise_e) if camera == "scmos" else rng.uniform(0.0, 1.0)
        signal = counts + rng.normal(0.0, read, photons.shape)
        if camera == "scmos":
            step = _log_uniform(rng, *spec.e_per_adu)
        else:  # 8-bit: the brightest pixel near the top of 255 levels
            step = max(float(photons.max()) * rng.uniform(1.1, 2.0) / 255.0, 1e-3)
        noisy = np.round(signal / step) * step + read**2
        target = photons + read**2
    gain = _log_uniform(rng, 1.0 / spec.gain_error, spec.gain_error)
    return (noisy * gain).astype(np.float32), (target * gain).astype(np.float32)


def broad_batch(spec: BroadDenoiseData, count: int, side_px: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """``count`` fresh (noisy, target) patches, each (1, side_px, side_px): float32 (N, 1, S, S) twice."""
    pairs = [noisy_pair(spec, clean_photons(spec, side_px, rng), rng) for _ in range(count)]
    return (np.stack([p[0] for p in pairs])[:, None], np.stack([p[1] for p in pairs])[:, None])


def held_out_set(spec: BroadDenoiseData, peaks_photons: tuple[float, ...], per_level: int, side_px: int,
                 seed: int) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """Fixed held-out patches per peak level (the spec's other ranges drawn as in training, from
    ``seed``): {peak: (noisy, target)}, float32 (N, 1, S, S)."""
    out = {}
    for k, peak in enumerate(peaks_photons):
        level = spec.model_copy(update={"peak_photons": (peak, peak)})
        out[peak] = broad_batch(level, per_level, side_px, np.random.default_rng([seed, k]))
    return out

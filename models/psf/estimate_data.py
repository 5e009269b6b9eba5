"""Training data of the PSF estimator, by simulation only: textures imaged through `Optics`' scalar
pupil PSF at a random defocus, aberrations and optics, then through a camera.

Each patch is drawn fresh (nothing is seen twice):

- **Texture** (the mix, equal parts, `TEXTURES`): ``fractal`` noise (power spectrum 1/f^beta, beta
  1-3, exponentiated: not microscopy at all, as the seed's authors trained on), ``puncta`` (sparse
  points and beads, 20-200 nm, 1-40 per patch), ``lines`` (filament-like segments and curves),
  ``virtual`` (windows of the virtual microscope's filaments, beads and cell nuclei,
  acquire/virtual/specimen.py).
- **Optics** (`PsfSimulation`): immersion air (NA 0.7-0.95), water (1.0-1.25) or oil (1.2-1.49);
  emission 450-700 nm; pixel 60-160 nm at the sample; defocus uniform in +-1 µm (the range the estimate is
  judged over: what a network cannot read from a tile it guesses near the trained range's mean |z|,
  which over a wider trained range is a bias, measured with bench/psf_learning.py); astigmatism and
  spherical aberration each uniform in +-0.15 waves rms (Zernike Z(2,2), Z(4,0), `Optics`'
  convention); one region of the (NA, emission) plane is never drawn (``held_out``) so that the
  benchmark can test optics the network has not seen.
- **Imaging**, exact for a periodic specimen: the pupil function (`Optics._intensity`'s formula) on
  a grid of half-pixels, |field|^2 -> OTF, times the specimen's spectrum and the pixel's sinc
  (integration over the pixel), sampled at pixel centres; the specimen repeats every 128 px, so
  a PSF wider than that folds back exactly as a periodic specimen's image does. The 64 px patch is
  a window of it.
- **Camera** (`livescope.camera`): peak signal 30-3000 photons/px, background 0-50 % of it, shot
  noise, sCMOS (read noise 0.5-3 e-) or EMCCD (gain 50-300, its excess noise), conversion gain
  0.2-5 e-/ADU, baseline 0-500 ADU, rounded to ADU. The graph normalises each patch, so none of
  these needs to be known when it is used.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from livescope.camera import photons_to_adu

TEXTURES = ("fractal", "puncta", "lines", "virtual")
PERIOD_PX = 128  # the specimen repeats with this period; the patch is a window of one period
TEXTURE_REUSE = 4
FINE = 2  # samples per pixel of the optical grid: the intensity's band (2 NA / lambda) fits below 1 / pixel
IMMERSIONS = ((1.0, (0.7, 0.95)), (1.33, (1.0, 1.25)), (1.515, (1.2, 1.49)))  # index, NA range


class PsfSimulation(BaseModel):
    """The ranges of the training data (drawn uniformly, photon levels log-uniformly)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patch_px: int = Field(default=64, ge=16, le=PERIOD_PX)
    defocus_um: tuple[float, float] = (-1.0, 1.0)
    astigmatism_waves: tuple[float, float] = (-0.15, 0.15)
    spherical_waves: tuple[float, float] = (-0.15, 0.15)
    emission_nm: tuple[float, float] = (450.0, 700.0)
    pixel_size_nm: tuple[float, float] = (60.0, 160.0)
    peak_photons: tuple[float, float] = (30.0, 3000.0)
    held_out_na: tuple[float, float] = Field(default=(1.05, 1.25), description="with held_out_emission_nm: "
                                             "a region of optics never drawn, kept for the benchmark")
    held_out_emission_nm: tuple[float, float] = (560.0, 640.0)
    textures: tuple[str, ...] = TEXTURES

    def held_out(self, na: float, emission_nm: float) -> bool:
        return (self.held_out_na[0] <= na <= self.held_out_na[1]
                and self.held_out_emission_nm[0] <= emission_nm <= self.held_out_emission_nm[1])

    def describe(self) -> str:
        return (f"simulated only: textures {', '.join(self.textures)} (equal parts) through the scalar pupil PSF "
                f"(defocus {self.defocus_um[0]:g} to {self.defocus_um[1]:g} µm, astigmatism and spherical "
                f"aberration {self.astigmatism_waves[1]:g} waves rms either way; air NA 0.7-0.95, water 1.0-1.25, "
                f"oil 1.2-1.49; emission {self.emission_nm[0]:g}-{self.emission_nm[1]:g} nm; pixel "
                f"{self.pixel_size_nm[0]:g}-{self.pixel_size_nm[1]:g} nm; NA {self.held_out_na[0]:g}-"
                f"{self.held_out_na[1]:g} x emission {self.held_out_emission_nm[0]:g}-"
                f"{self.held_out_emission_nm[1]:g} nm held out), peak {self.peak_photons[0]:g}-"
                f"{self.peak_photons[1]:g} photons/px, sCMOS or EMCCD noise; {self.patch_px} px patches")


class PsfBatch(BaseModel):
    """A batch of simulated patches and their truth (arrays are numpy, float32)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    adu: np.ndarray  # (N, P, P) camera counts, baseline included
    optics: np.ndarray  # (N, 4) in OPTICS_CHANNELS' units
    defocus_um: np.ndarray  # (N,)
    astigmatism_waves: np.ndarray
    spherical_waves: np.ndarray
    texture: tuple[str, ...]


def draw_optics(sim: PsfSimulation, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """(na, emission_nm, pixel_size_nm, immersion_index), outside the held-out region."""
    while True:
        index, (lo, hi) = IMMERSIONS[rng.integers(len(IMMERSIONS))]
        na, em = rng.uniform(lo, hi), rng.uniform(*sim.emission_nm)
        if not sim.held_out(na, em):
            return float(na), float(em), float(rng.uniform(*sim.pixel_size_nm)), index


def otfs(na: np.ndarray, emission_nm: np.ndarray, pixel_size_nm: np.ndarray, immersion: np.ndarray,
         defocus_um: np.ndarray, astigmatism: np.ndarray, spherical: np.ndarray) -> torch.Tensor:
    """(N, M, M//2+1) complex64: each PSF's transfer function on the half-pixel grid (M = FINE x
    PERIOD_PX), pixel integration included, normalised to 1 at zero frequency (energy kept)."""
    m = FINE * PERIOD_PX

    def col(v: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(v, np.float64), dtype=torch.float32)[:, None, None]

    f = torch.fft.fftfreq(m)  # cycles per fine sample
    fy, fx = f[None, :, None], f[None, None, :]
    dx = col(pixel_size_nm) * 1e-3 / FINE
    lam, n, a = col(emission_nm) * 1e-3, col(immersion), col(na)
    f2 = (fx * fx + fy * fy) / dx**2  # (cycles / µm)^2
    rho2 = f2 * (lam / a) ** 2  # the pupil's normalised radius, squared
    phase = 2 * math.pi / lam * col(defocus_um) * torch.sqrt(torch.clamp(n * n - rho2 * a * a, min=0.0))
    phase = phase + 2 * math.pi * col(spherical) * math.sqrt(5) * (6 * rho2**2 - 6 * rho2 + 1)
    r2 = fx * fx + fy * fy
    cos2 = torch.where(r2 > 0, (fx * fx - fy * fy) / torch.clamp(r2, min=1e-30), torch.zeros(()))
    phase = phase + 2 * math.pi * col(astigmatism) * math.sqrt(6) * rho2 * cos2
    pupil = torch.polar((rho2 <= 1.0).to(torch.float32), phase)
    field = torch.fft.ifft2(pupil)
    otf = torch.fft.rfft2(field.real**2 + field.imag**2)
    otf = otf / otf[:, :1, :1].real
    box = torch.sinc(f * FINE)[:, None] * torch.sinc(torch.fft.rfftfreq(m) * FINE)[None, :]  # a pixel = FINE samples
    return otf * box


@lru_cache(maxsize=1)
def _virtual_fields() -> tuple:
    from livescope.acquire.virtual.specimen import make_specimen

    return tuple(make_specimen(kind, 40.0, seed) for kind in ("filaments", "beads", "cells") for seed in (1, 2))


def texture(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A periodic specimen on the fine grid (M x M, M = FINE x PERIOD_PX), float32, max 1."""
    m = FINE * PERIOD_PX
    if kind == "fractal":
        f = np.hypot(np.fft.fftfreq(m)[:, None], np.fft.fftfreq(m)[None, :])
        amp = np.where(f > 0, np.maximum(f, 1.0 / m) ** (-rng.uniform(1.0, 3.0) / 2), 0.0)
        noise = np.fft.ifft2(amp * np.exp(2j * np.pi * rng.random((m, m)))).real
        noise = (noise - noise.mean()) / (noise.std() + 1e-12)
        img = np.exp(rng.uniform(0.3, 1.5) * noise)
    elif kind == "puncta":
        img = np.zeros((m, m))
        k = int(rng.integers(1, 41))
        np.add.at(img, (rng.integers(0, m, k), rng.integers(0, m, k)), rng.uniform(0.3, 1.0, k))
        img = _blur_periodic(img, rng.uniform(0.2, 2.0))
    elif kind == "lines":
        img = np.zeros((m, m))
        for _ in range(int(rng.integers(1, 12))):
            t = np.linspace(0, 1, 4 * m)
            y0, x0, ang, length = rng.uniform(0, m), rng.uniform(0, m), rng.uniform(0, np.pi), rng.uniform(0.2, 1.5) * m
            bend = rng.normal(0, 0.5)
            theta = ang + bend * t
            y = (y0 + np.cumsum(np.sin(theta)) * length / len(t)).astype(int) % m
            x = (x0 + np.cumsum(np.cos(theta)) * length / len(t)).astype(int) % m
            np.add.at(img, (y, x), rng.uniform(0.3, 1.0) / 4)
        img = _blur_periodic(img, rng.uniform(0.3, 1.5))
    else:
        fields = _virtual_fields()
        for _ in range(20):  # a window with something in it
            spec = fields[rng.integers(len(fields))]
            half = spec.render(rng.uniform(0, 30), rng.uniform(0, 30), (m // 2, m // 2), 0.03)
            if half.max() > 0:
                break
        # Mirrored into a period, so the periodic specimen has no seams.
        img = np.block([[half, half[:, ::-1]], [half[::-1], half[::-1, ::-1]]]).astype(np.float64)
        img = _blur_periodic(img, 0.5)
    img = img + rng.uniform(0.0, 0.05) * img.max()  # some out-of-plane haze: rarely pure black
    return (img / max(img.max(), 1e-12)).astype(np.float32)


def _blur_periodic(img: np.ndarray, sigma: float) -> np.ndarray:
    f2 = np.fft.fftfreq(img.shape[0])[:, None] ** 2 + np.fft.rfftfreq(img.shape[1])[None, :] ** 2
    return np.fft.irfft2(np.fft.rfft2(img) * np.exp(-2 * np.pi**2 * sigma**2 * f2), s=img.shape)


def camera_noise(photons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photons per pixel -> ADU of a random sCMOS or EMCCD (shot, EM excess and read noise)."""
    electrons = rng.poisson(np.maximum(photons, 0)).astype(np.float64)
    emccd = rng.random() < 0.3
    gain = rng.uniform(50.0, 300.0) if emccd else 1.0
    if emccd:
        electrons = rng.gamma(np.maximum(electrons, 1e-9), gain) * (electrons > 0)
    electrons += rng.normal(0.0, rng.uniform(0.5, 3.0) * gain, photons.shape)
    e_per_adu = rng.uniform(0.2, 5.0) * gain
    adu = photons_to_adu(electrons, rng.uniform(0.0, 500.0), e_per_adu)
    return np.clip(np.rint(adu), 0, 65535).astype(np.float32)


def draw_held_out_optics(sim: PsfSimulation, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Optics inside the held-out region (water, or oil where the NA allows it)."""
    na, em = rng.uniform(*sim.held_out_na), rng.uniform(*sim.held_out_emission_nm)
    index = 1.515 if na >= IMMERSIONS[2][1][0] and rng.random() < 0.5 else 1.33
    return float(na), float(em), float(rng.uniform(*sim.pixel_size_nm)), index


def simulate(sim: PsfSimulation, n: int, rng: np.random.Generator, held_out: bool = False) -> PsfBatch:
    """``n`` patches with their truth; ``held_out``: with optics of the held-out region only."""
    draw = draw_held_out_optics if held_out else draw_optics
    optics = np.array([draw(sim, rng) for _ in range(n)])  # na, em, px, n
    z = rng.uniform(*sim.defocus_um, n)
    ast = rng.uniform(*sim.astigmatism_waves, n)
    sph = rng.uniform(*sim.spherical_waves, n)
    # Each texture is imaged TEXTURE_REUSE times, shifted (textures cost as much as the imaging).
    distinct = -(-n // TEXTURE_REUSE)
    kinds = tuple(sim.textures[i] for i in rng.integers(len(sim.textures), size=distinct))
    m = FINE * PERIOD_PX
    specimens = torch.from_numpy(np.stack([np.roll(texture(k, rng), tuple(rng.integers(0, m, 2)), (0, 1))
                                           for k in kinds for _ in range(TEXTURE_REUSE)][:n]))
    kinds = tuple(k for k in kinds for _ in range(TEXTURE_REUSE))[:n]
    transfer = otfs(optics[:, 0], optics[:, 1], optics[:, 2], optics[:, 3], z, ast, sph)
    images = torch.fft.irfft2(torch.fft.rfft2(specimens) * transfer, s=specimens.shape[-2:])
    p = sim.patch_px
    images = images[:, ::FINE, ::FINE][:, :p, :p].numpy().astype(np.float64)
    adu = np.empty((n, p, p), np.float32)
    for i in range(n):
        img = np.maximum(images[i], 0.0)
        peak = math.exp(rng.uniform(*np.log(sim.peak_photons)))
        photons = img / max(img.max(), 1e-12) * peak + rng.uniform(0.0, 0.5) * peak
        adu[i] = camera_noise(photons, rng)
    chan = np.stack([optics[:, 0], optics[:, 1] * 1e-3, optics[:, 2] * 1e-3, optics[:, 3]], 1).astype(np.float32)
    return PsfBatch(adu=adu, optics=chan, defocus_um=z.astype(np.float32), astigmatism_waves=ast.astype(np.float32),
                    spherical_waves=sph.astype(np.float32), texture=kinds)

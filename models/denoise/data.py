"""Training data for denoising: frames from the virtual microscope, and patches cut from frames.

The virtual microscope (``livescope.acquire.virtual``) gives each noisy frame together with its
clean (noise-free) expectation. Training uses the noisy frames only; the clean ones are kept for
held-out metrics.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from livescope.context import window_indices

Specimen = str  # "filaments" | "cells" | "beads"
Modality = str  # "widefield" | "confocal" | "sted"


class VirtualDenoiseData(BaseModel):
    """A set of virtual-microscope frames: every modality x specimen x signal level."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    modalities: tuple[Modality, ...] = ("widefield", "confocal")
    specimens: tuple[Specimen, ...] = ("filaments", "cells", "beads")
    signal_photons_per_ms: tuple[float, ...] = Field(
        default=(0.5, 1.5, 5.0, 15.0, 50.0),
        description="peak signal rates, low to high SNR (x exposure: 5 to 500 photons at 10 ms)",
    )
    frames_per_condition: int = Field(default=4, ge=1, description="frames per condition")
    sensor_shape_px: tuple[int, int] = (256, 256)
    exposure_ms: float = Field(default=10.0, gt=0)
    stage_range_um: float = Field(default=150.0, ge=0, description="x, y uniform in +- this")
    max_defocus_um: float = Field(default=1.0, ge=0, description="z uniform in +- this")
    # the rig's optics before its default gained spherical aberration: denoise@2's command repeats it
    spherical_waves: float = Field(default=0.0, description="the rig's primary spherical aberration, waves rms")
    seed: int = 0

    def describe(self) -> str:
        return (
            f"virtual microscope ({', '.join(self.modalities)}; {', '.join(self.specimens)}), signal "
            f"{', '.join(f'{s:g}' for s in self.signal_photons_per_ms)} photons/ms, "
            f"{self.frames_per_condition} frames each of {self.sensor_shape_px[0]}x"
            f"{self.sensor_shape_px[1]} px, {self.exposure_ms:g} ms, stage +-{self.stage_range_um:g} um,"
            f" defocus +-{self.max_defocus_um:g} um, seed {self.seed}"
        )


@dataclass(frozen=True)
class FrameSet:
    noisy_adu: np.ndarray  # (T, H, W) uint16, as the camera gives it
    clean_adu: np.ndarray  # (T, H, W) float32, the noise-free expectation
    modality: tuple[Modality, ...]  # (T,)
    specimen: tuple[Specimen, ...]  # (T,)
    peak_photons: np.ndarray  # (T,) peak signal of an in-focus structure: rate x exposure

    def hash(self) -> str:
        """sha256 of the noisy frames (what training saw)."""
        return "sha256:" + hashlib.sha256(np.ascontiguousarray(self.noisy_adu).tobytes()).hexdigest()


def virtual_frames(spec: VirtualDenoiseData) -> FrameSet:
    """Snap ``spec``'s frames at random stage positions and small defocus; seeded."""
    from livescope.acquire.virtual import VirtualRigConfig, VirtualScene

    rng = np.random.default_rng(spec.seed)
    noisy, clean, modalities, specimens, signals = [], [], [], [], []
    conditions = [(m, s, level) for m in spec.modalities for s in spec.specimens
                  for level in spec.signal_photons_per_ms]
    for modality, specimen, signal in conditions:
        config = VirtualRigConfig(
            sensor_shape_px=spec.sensor_shape_px,
            modality=modality,
            specimen=specimen,
            signal_photons_per_ms=signal,
            exposure_ms=spec.exposure_ms,
            spherical_waves=spec.spherical_waves,
            seed=int(rng.integers(2**31)),
        )
        scene = VirtualScene(config)
        for _ in range(spec.frames_per_condition):
            x_um, y_um = rng.uniform(-spec.stage_range_um, spec.stage_range_um, 2)
            z_um = rng.uniform(-spec.max_defocus_um, spec.max_defocus_um)
            frame, expected = scene.snap(x_um, y_um, z_um, spec.exposure_ms, rng)
            noisy.append(frame)
            clean.append(expected)
            modalities.append(modality)
            specimens.append(specimen)
            signals.append(signal)
    return FrameSet(
        noisy_adu=np.stack(noisy).astype(np.uint16),
        clean_adu=np.stack(clean).astype(np.float32),
        modality=tuple(modalities),
        specimen=tuple(specimens),
        peak_photons=np.asarray(signals, dtype=np.float64) * spec.exposure_ms,
    )


def random_patches(
    frames: torch.Tensor, patch_px: int, batch_size: int, generator: torch.Generator
) -> torch.Tensor:
    """``batch_size`` random square crops of ``frames`` (T, H, W), randomly flipped and rotated.

    Returns (batch_size, 1, patch_px, patch_px).
    """
    return random_windows(frames, patch_px, batch_size, generator, context_frames=1)


def random_windows(
    frames: torch.Tensor, patch_px: int, batch_size: int, generator: torch.Generator, *, context_frames: int
) -> torch.Tensor:
    """``batch_size`` random square crops of ``frames`` (T, H, W), each the same crop of
    ``context_frames`` consecutive frames ending at a random one (frames before the first repeat
    it: ``livescope.context.window_indices``), flipped and rotated together.

    Returns (batch_size, context_frames, patch_px, patch_px), oldest frame first.
    """
    t, h, w = frames.shape
    if patch_px > min(h, w):
        raise ValueError(f"patch {patch_px} px is larger than the frames ({h}x{w} px)")
    index = torch.randint(0, t, (batch_size,), generator=generator)
    ys = torch.randint(0, h - patch_px + 1, (batch_size,), generator=generator)
    xs = torch.randint(0, w - patch_px + 1, (batch_size,), generator=generator)
    turns = torch.randint(0, 4, (batch_size,), generator=generator)
    flips = torch.randint(0, 2, (batch_size,), generator=generator)
    windows = []
    for i, y, x, k, f in zip(index, ys, xs, turns, flips):
        window = frames[window_indices(int(i), context_frames), y : y + patch_px, x : x + patch_px]
        window = torch.rot90(window, int(k), (1, 2))
        windows.append(window.flip(2) if f else window)
    return torch.stack(windows)


"""The PSF estimator's network: a small CNN from a camera tile and its optics to |defocus|, the
aberrations' magnitudes, each with a log-variance, and two sign logits (livescope/psf_estimate.py).

The served graph normalises each tile itself ((tile - mean) / std), so any camera, baseline, gain
or photon level goes in as it is, and takes the optics as constant channels beside the tile (a
blur of so many pixels is another defocus at another NA, wavelength or pixel size).
"""

from __future__ import annotations

import torch
from torch import nn

from livescope.psf_estimate import OPTICS_CHANNELS, OUTPUT_CHANNELS

# Optics channels -> about zero mean, unit spread over the trained ranges (in OPTICS_CHANNELS' order).
_OPTICS_CENTRE = (1.1, 0.575, 0.11, 1.3)
_OPTICS_SCALE = (0.25, 0.075, 0.03, 0.2)


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class PsfEstimator(nn.Module):
    """float32 [N, 1 + len(OPTICS_CHANNELS), H, W] (tile in ADU, optics constants) -> [N, 8, 1, 1]."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(1, w, 1), _block(w, w, 2),  # 32
            _block(w, 2 * w, 1), _block(2 * w, 2 * w, 2),  # 16
            _block(2 * w, 3 * w, 1), _block(3 * w, 3 * w, 2),  # 8
            _block(3 * w, 4 * w, 1),
        )
        self.head = nn.Sequential(nn.Linear(8 * w + len(OPTICS_CHANNELS), 128), nn.ReLU(inplace=True),
                                  nn.Linear(128, 128), nn.ReLU(inplace=True), nn.Linear(128, len(OUTPUT_CHANNELS)))
        self.register_buffer("optics_centre", torch.tensor(_OPTICS_CENTRE))
        self.register_buffer("optics_scale", torch.tensor(_OPTICS_SCALE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tile = x[:, :1]
        mean = tile.mean(dim=(2, 3), keepdim=True)
        std = torch.sqrt(((tile - mean) ** 2).mean(dim=(2, 3), keepdim=True) + 1e-6)
        f = self.features((tile - mean) / std)
        # mean and spread of each feature over the tile: texture statistics, wherever they are
        f_mean = f.mean(dim=(2, 3))
        f_std = torch.sqrt(((f - f_mean[:, :, None, None]) ** 2).mean(dim=(2, 3)) + 1e-6)
        optics = (x[:, 1:].mean(dim=(2, 3)) - self.optics_centre) / self.optics_scale
        out = self.head(torch.cat([f_mean, f_std, optics], dim=1))
        return out[:, :, None, None]

"""Virtual refocusing (Deep-Z style): a UNet conditioned on the wanted defocus.

The network sees two channels: the frame, and a per-pixel map of delta-z (the wanted plane's focus
position minus the frame's, µm; Wu et al.'s "digital propagation matrix"), so one model refocuses
to a uniform plane, a tilted plane or a curved surface. CARE-style UNet (with the full-resolution
skip connection: unlike self-supervised denoising, nothing forbids copying the input), predicting
the change from the input (residual), so delta-z = 0 is the identity it learns first.

Intensities: a widefield PSF keeps all its light at any defocus (the pupil model is pure phase),
so the mean of a field above the camera baseline does not change with focus. The served graph
divides the frame (minus the baseline) by its own mean and multiplies the output back: the network
works at unit brightness whatever the exposure or labelling, and refocusing keeps the total light.
``RefocusGraph`` is that served contract: float32 [N, 2, H, W] (ADU, delta-z µm) -> [N, 1, H, W] ADU.
"""

from __future__ import annotations

import torch
from torch import nn

from livescope.models.unet import UNet, UNetConfig

INPUT_NAME = "frame_dz"
OUTPUT_NAME = "refocused"
_MIN_MEAN_ADU = 1.0  # a dark (or baseline-only) frame is scaled as if its mean were 1 ADU


class RefocusGraph(nn.Module):
    """The served model: frame (ADU) + delta-z map (µm) -> the frame at delta-z (ADU)."""

    def __init__(self, net: UNet, *, baseline_adu: float, dz_scale_um: float) -> None:
        super().__init__()
        if net.config.in_channels != 2:
            raise ValueError(f"a refocusing UNet takes 2 channels, this one {net.config.in_channels}")
        self.net = net
        self.baseline_adu = float(baseline_adu)
        self.dz_scale_um = float(dz_scale_um)  # delta-z in network units: about -1..1 over the range

    def scale(self, frame_adu: torch.Tensor) -> torch.Tensor:
        """Each frame's mean above the baseline, [N, 1, 1, 1]."""
        mean = (frame_adu - self.baseline_adu).mean(dim=(2, 3), keepdim=True)
        return torch.clamp(mean, min=_MIN_MEAN_ADU)

    def forward(self, frame_dz: torch.Tensor) -> torch.Tensor:
        frame, dz = frame_dz[:, :1], frame_dz[:, 1:2]
        scale = self.scale(frame)
        x = (frame - self.baseline_adu) / scale
        y = x + self.net(torch.cat([x, dz / self.dz_scale_um], dim=1))
        return y * scale + self.baseline_adu


def refocus_unet(depth: int, base_channels: int) -> UNet:
    return UNet(UNetConfig(depth=depth, base_channels=base_channels, in_channels=2, top_skip=True))

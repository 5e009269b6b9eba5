"""Cross-modality restoration (confocal -> STED, Wang et al. 2019): a CARE-style UNet.

The network sees the low-resolution image (confocal) and predicts the high-resolution one (STED)
of the same field. CARE UNet with the full-resolution skip connection (copying the input is
allowed here, unlike self-supervised denoising), predicting the change from the input
(residual), so it starts from the identity.

Intensities: the two modalities collect different numbers of photons (STED depletes most of the
excited molecules; its exposure and detector differ), so there is no one ADU scale to map to.
The output is the high modality's image *at the input's brightness*: its mean above the baseline
equals the input's. The served graph divides the frame (minus the baseline) by its own mean and
multiplies the output back, so any exposure or labelling works, and training pairs are brought to
that contract by scaling each high image to its low image's mean (`restore_data`).
``RestoreGraph`` is the served contract of every image model: the camera's uint16 [N, 1, H, W]
ADU (cast inside the graph; float frames work in training) -> float32 [N, 1, H, W] ADU, baseline
included, intensities as just said.
"""

from __future__ import annotations

import torch
from torch import nn

from livescope.models.unet import UNet, UNetConfig

INPUT_NAME = "raw"
OUTPUT_NAME = "restored"
MIN_MEAN_ADU = 1.0  # a dark (or baseline-only) frame is scaled as if its mean were 1 ADU

OUTPUT_UNITS = ("ADU, baseline included: the high modality's image scaled to the input's brightness "
                "(its mean above the baseline equals the input frame's)")


class RestoreGraph(nn.Module):
    """The served model: low-modality frame (ADU) -> the high-modality frame at its brightness (ADU)."""

    def __init__(self, net: UNet, *, baseline_adu: float) -> None:
        super().__init__()
        if net.config.in_channels != 1:
            raise ValueError(f"a restoring UNet takes 1 channel, this one {net.config.in_channels}")
        self.net = net
        self.baseline_adu = float(baseline_adu)

    def scale(self, frame_adu: torch.Tensor) -> torch.Tensor:
        """Each frame's mean above the baseline, [N, 1, 1, 1]."""
        mean = (frame_adu - self.baseline_adu).mean(dim=(2, 3), keepdim=True)
        return torch.clamp(mean, min=MIN_MEAN_ADU)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        raw = raw.to(torch.float32)
        scale = self.scale(raw)
        x = (raw - self.baseline_adu) / scale
        return (x + self.net(x)) * scale + self.baseline_adu


def restore_unet(depth: int, base_channels: int) -> UNet:
    return UNet(UNetConfig(depth=depth, base_channels=base_channels, in_channels=1, top_skip=True))

"""A small UNet for image restoration, N2V2 style.

N2V2 (Höck et al., 2022) removes the checkerboard artefacts of Noise2Void by two changes to the
CARE UNet, both kept here: downsampling by max-blur-pooling instead of max-pooling, and no skip
connection at the top (full-resolution) level, so the output cannot copy the input pixel grid.

``UNet`` works in network units (normalised intensities); ``InGraphNormalised`` wraps it into the
served contract: uint16 camera ADU in, float32 ADU out, the intensity transform inside the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from livescope.models.intensity import IntensityTransform


@dataclass(frozen=True)
class UNetConfig:
    depth: int = 2
    """number of downsamplings: H and W must be multiples of 2**depth"""
    base_channels: int = 16
    """channels at full resolution; doubled at every level down"""
    in_channels: int = 1
    """input channels (the image, and e.g. a defocus map)"""
    top_skip: bool = False
    """a skip connection at full resolution (CARE); off for N2V2, which must not copy pixels"""

    @property
    def size_multiple_px(self) -> int:
        return 2**self.depth

    @property
    def halo_px(self) -> int:
        """Receptive-field radius in input pixels (two 3x3 convs per level, pool and blur)."""
        radius, step = 0, 1
        for _ in range(self.depth):  # encoder level: two 3x3 convs, max 2x2, blur 3x3 / 2
            radius += 2 * step + step + step
            step *= 2
        radius += 2 * step  # bottleneck: two 3x3 convs
        for _ in range(self.depth):  # decoder level: nearest upsampling (<= 1 px), two 3x3 convs
            radius += step
            step //= 2
            radius += 2 * step
        return radius


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="zeros"),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, padding_mode="zeros"),
        nn.LeakyReLU(0.1, inplace=True),
    )


class MaxBlurPool(nn.Module):
    """Max over 2x2 (stride 1), then a binomial [1,2,1]^2 blur with stride 2 (anti-aliased)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        kernel = (k[:, None] * k[None, :]) / 16.0
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).contiguous())
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), kernel_size=2, stride=1)
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        return F.conv2d(x, self.kernel, stride=2, groups=self.channels)


class UNet(nn.Module):
    """``in_channels`` in, 1 channel out, same H and W (multiples of 2**depth)."""

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        self.config = config
        widths = [config.base_channels * 2**level for level in range(config.depth + 1)]
        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        c_in = config.in_channels
        for w in widths[:-1]:
            self.encoders.append(_double_conv(c_in, w))
            self.pools.append(MaxBlurPool(w))
            c_in = w
        self.bottleneck = _double_conv(c_in, widths[-1])
        self.decoders = nn.ModuleList()
        for level in reversed(range(config.depth)):
            below = widths[level + 1]
            skip = widths[level] if level > 0 or config.top_skip else 0  # N2V2: none at the top
            self.decoders.append(_double_conv(below + skip, widths[level]))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder, pool in zip(self.encoders, self.pools):
            x = encoder(x)
            skips.append(x)
            x = pool(x)
        x = self.bottleneck(x)
        for level, decoder in zip(reversed(range(self.config.depth)), self.decoders):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            if level > 0 or self.config.top_skip:
                x = torch.cat([x, skips[level]], dim=1)
            x = decoder(x)
        return self.head(x)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class InGraphNormalised(nn.Module):
    """The served model: uint16 ADU ``raw`` -> float32 ADU ``restored``; the intensity transform
    (``models.intensity``) is part of the graph."""

    def __init__(self, net: nn.Module, transform: IntensityTransform) -> None:
        super().__init__()
        self.net = net
        self.transform = transform

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.transform.to_adu(self.net(self.transform.to_network(raw)))

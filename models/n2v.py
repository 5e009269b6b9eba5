"""Noise2Void blind-spot training, N2V2 style (Krull et al. 2019; Höck et al. 2022).

A few pixels per patch are masked: their input value is replaced by the median of their
neighbourhood (centre excluded), and the loss is taken on those pixels only, against their own
noisy value. With pixel-wise independent noise the network cannot predict a masked pixel's noise
from its neighbours, so it learns the expected clean value: self-supervised, noisy frames only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def blind_spot_mask(shape: tuple[int, ...], box_px: int, generator: torch.Generator) -> torch.Tensor:
    """One masked pixel per ``box_px`` x ``box_px`` box at a random place in it (stratified).

    ``shape`` is (N, 1, H, W) with H and W multiples of ``box_px``; returns a bool tensor of it.
    """
    n, c, h, w = shape
    if h % box_px or w % box_px:
        raise ValueError(f"patch {h}x{w} px is not a multiple of the mask box {box_px} px")
    boxes_y, boxes_x = h // box_px, w // box_px
    dy = torch.randint(0, box_px, (n, c, boxes_y, boxes_x), generator=generator)
    dx = torch.randint(0, box_px, (n, c, boxes_y, boxes_x), generator=generator)
    onehot_y = F.one_hot(dy, box_px).bool()  # (n, c, by, bx, box)
    onehot_x = F.one_hot(dx, box_px).bool()
    boxes = onehot_y[..., :, None] & onehot_x[..., None, :]  # (n, c, by, bx, box, box)
    return boxes.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def neighbourhood_median(x: torch.Tensor, radius_px: int = 2) -> torch.Tensor:
    """Median of each pixel's (2r+1)^2 neighbourhood without the pixel itself (reflect padding)."""
    n, c, h, w = x.shape
    size = 2 * radius_px + 1
    padded = F.pad(x, (radius_px,) * 4, mode="reflect")
    patches = F.unfold(padded, size).view(n, c, size * size, h * w)
    centre = (size * size) // 2
    others = torch.cat([patches[:, :, :centre], patches[:, :, centre + 1 :]], dim=2)
    return others.median(dim=2).values.view(n, c, h, w)


def apply_blind_spots(x: torch.Tensor, mask: torch.Tensor, radius_px: int = 2) -> torch.Tensor:
    """``x`` with the masked pixels replaced by their neighbourhood median; others untouched."""
    return torch.where(mask, neighbourhood_median(x, radius_px), x)


def masked_mse(prediction: torch.Tensor, noisy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked pixels only."""
    weight = mask.to(prediction.dtype)
    return ((prediction - noisy) ** 2 * weight).sum() / weight.sum().clamp(min=1.0)

"""Noise2Void blind-spot training, N2V2 style (Krull et al. 2019; Höck et al. 2022), with
structN2V masks (Broaddus et al. 2020) as an option.

A few pixels per patch are masked: their input value is replaced by the median of their
neighbourhood (centre excluded), and the loss is taken on those pixels only, against their own
noisy value. With pixel-wise independent noise the network cannot predict a masked pixel's noise
from its neighbours, so it learns the expected clean value: self-supervised, noisy frames only.

Camera noise is not always pixel-independent: sCMOS read-out adds noise correlated along rows
(or columns). Then a masked pixel's neighbours in its row carry part of its noise and the network
learns to reproduce the stripes. structN2V also hides those neighbours: the ``span_px`` pixels
either side of each masked pixel along the correlated axis get values drawn from elsewhere in the
patch, and the centre's median fill leaves that line out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

StructAxis = Literal["none", "row", "column"]
"""Axis along which the noise is correlated: 'row' hides neighbours left and right of a masked
pixel (horizontal stripes), 'column' those above and below."""


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


def neighbourhood_median(x: torch.Tensor, radius_px: int = 2, exclude: StructAxis = "none") -> torch.Tensor:
    """Median of each pixel's (2r+1)^2 neighbourhood without the pixel itself (reflect padding).

    ``exclude`` 'row' / 'column' also leaves out the pixel's own row / column of the window.
    """
    n, c, h, w = x.shape
    size = 2 * radius_px + 1
    padded = F.pad(x, (radius_px,) * 4, mode="reflect")
    patches = F.unfold(padded, size).view(n, c, size * size, h * w)
    keep = torch.ones(size, size, dtype=torch.bool)
    keep[radius_px, radius_px] = False
    if exclude == "row":
        keep[radius_px, :] = False
    elif exclude == "column":
        keep[:, radius_px] = False
    others = patches[:, :, keep.flatten()]
    return others.median(dim=2).values.view(n, c, h, w)


def struct_neighbours(mask: torch.Tensor, axis: StructAxis, span_px: int) -> torch.Tensor:
    """The pixels within ``span_px`` of a masked pixel along ``axis`` (masked pixels excluded)."""
    if axis == "none" or span_px == 0:
        return torch.zeros_like(mask)
    dim = 3 if axis == "row" else 2
    size = mask.shape[dim]
    out = torch.zeros_like(mask)
    for offset in range(1, span_px + 1):
        if offset >= size:
            break
        ahead = mask.narrow(dim, 0, size - offset)
        behind = mask.narrow(dim, offset, size - offset)
        out.narrow(dim, offset, size - offset).logical_or_(ahead)
        out.narrow(dim, 0, size - offset).logical_or_(behind)
    return out & ~mask


@dataclass(frozen=True)
class BlindSpotMasking:
    """How a training patch is masked: one blind spot per ``box_px``^2, filled with the median of
    its ``median_radius_px`` neighbourhood; with ``struct_axis`` 'row' or 'column', the
    ``struct_span_px`` neighbours either side along that axis are scrambled too (structN2V)."""

    box_px: int = 8
    median_radius_px: int = 2
    struct_axis: StructAxis = "none"
    struct_span_px: int = 0

    def __call__(self, patches: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input, mask) for ``patches`` (N, 1, H, W); the loss belongs on ``mask`` only."""
        mask = blind_spot_mask(patches.shape, self.box_px, generator)
        exclude: StructAxis = self.struct_axis if self.struct_span_px else "none"
        masked = torch.where(mask, neighbourhood_median(patches, self.median_radius_px, exclude), patches)
        hidden = struct_neighbours(mask, self.struct_axis, self.struct_span_px)
        if hidden.any():
            masked = torch.where(hidden, _values_from_same_patch(patches, generator), masked)
        return masked, mask


def _values_from_same_patch(patches: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each pixel replaced by a random pixel of its own patch: in range, uncorrelated with it."""
    n, c, h, w = patches.shape
    flat = patches.reshape(n, c, h * w)
    index = torch.randint(0, h * w, (n, c, h * w), generator=generator)
    return flat.gather(2, index).view(n, c, h, w)


def masked_mse(prediction: torch.Tensor, noisy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked pixels only."""
    weight = mask.to(prediction.dtype)
    return ((prediction - noisy) ** 2 * weight).sum() / weight.sum().clamp(min=1.0)

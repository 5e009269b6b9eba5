"""A DECODE-style single-molecule localisation network (Speiser et al., Nat Methods 2021).

The input is a short window of consecutive frames in photons, (N, context, H, W); the network
localises emitters in the LAST frame of the window. Live, that frame is the one that just
arrived, so a result needs no future frame and adds no latency (DECODE centres its window; a
causal window is what an acquisition loop can use).

A frame module (a small UNet, shared by all frames of the window) turns each frame into
features; a temporal module (another UNet) combines the window's features; 1x1 heads give, for
every pixel of the last frame:

  p                detection probability: an emitter's centre lies in this pixel
  photons          its detected photons
  dx, dy           sub-pixel offset of its centre from the pixel centre, px in (-1, 1)
  dz               its z, nm (3-D models; 0 otherwise)
  *_sigma          the predicted standard deviations of photons, x, y (px) and z (nm)
  background       photons per pixel

Training (``mixture_loss``) learns the uncertainties: every true emitter is scored by the
likelihood of its (x, y, [z], photons) under a Gaussian mixture whose components are the pixels,
weighted by p, centred on the predicted values with the predicted sigmas; the number of
emitters by a Gaussian approximation of the Poisson-binomial sum of p; the background by MSE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from livescope.emitters import LOCALISE_MAP_CHANNELS


@dataclass(frozen=True)
class LocaliseNetConfig:
    context_frames: int = 3
    frame_channels: int = 24
    temporal_channels: int = 32
    depth: int = 2
    three_d: bool = False
    z_range_nm: tuple[float, float] = (-600.0, 600.0)
    photons_max: float = 15_000.0
    background_max_photons: float = 300.0
    input_scale_photons: float = 100.0
    """inputs are divided by this: photons per pixel of SMLM frames span about 5 to 1000"""

    @property
    def size_multiple_px(self) -> int:
        return 2**self.depth

    @property
    def halo_px(self) -> int:
        """Receptive-field radius of both UNets together (two 3x3 convs per level and the
        bottleneck, pooling and upsampling), in input pixels; tiles need at least this margin."""
        def radius(depth: int) -> int:
            r, step = 0, 1
            for _ in range(depth):
                r += 2 * step + step  # two 3x3 convs, then 2x2 max pool (<= 1 px more)
                step *= 2
            r += 2 * step
            for _ in range(depth):
                r += step
                step //= 2
                r += 2 * step
            return r
        return 2 * radius(self.depth)


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.ELU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.ELU(inplace=True),
    )


class _UNet(nn.Module):
    """A plain UNet with skips at every level (localisation needs full-resolution detail)."""

    def __init__(self, c_in: int, width: int, depth: int) -> None:
        super().__init__()
        widths = [width * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList()
        c = c_in
        for w in widths[:-1]:
            self.down.append(_double_conv(c, w))
            c = w
        self.bottom = _double_conv(c, widths[-1])
        self.up = nn.ModuleList(_double_conv(widths[level + 1] + widths[level], widths[level])
                                for level in reversed(range(depth)))
        self.out_channels = widths[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        return x


class LocaliseNet(nn.Module):
    """(N, context, H, W) photons -> (N, len(LOCALISE_MAP_CHANNELS), H, W) maps, H and W multiples of
    2**depth."""

    def __init__(self, config: LocaliseNetConfig = LocaliseNetConfig()) -> None:
        super().__init__()
        self.config = config
        self.frame_module = _UNet(1, config.frame_channels, config.depth)
        self.temporal_module = _UNet(config.context_frames * config.frame_channels,
                                     config.temporal_channels, config.depth)
        self.head = nn.Conv2d(self.temporal_module.out_channels, len(LOCALISE_MAP_CHANNELS), 1)
        with torch.no_grad():  # start from "almost no emitters": p ~ 0.007 per pixel
            self.head.bias[LOCALISE_MAP_CHANNELS.index("p")] = -5.0

    def forward(self, frames_photons: torch.Tensor) -> torch.Tensor:
        c = self.config
        n, t, h, w = frames_photons.shape
        x = frames_photons.to(torch.float32) / c.input_scale_photons
        features = self.frame_module(x.reshape(n * t, 1, h, w)).reshape(n, t * c.frame_channels, h, w)
        raw = self.head(self.temporal_module(features))
        z_low, z_high = c.z_range_nm
        z_mid, z_half = (z_low + z_high) / 2.0, (z_high - z_low) / 2.0
        p, photons, dx, dy, dz, s_photons, s_x, s_y, s_z, background = raw.unbind(dim=1)
        three_d = 1.0 if c.three_d else 0.0
        maps = [
            torch.sigmoid(p),
            torch.sigmoid(photons) * c.photons_max,
            torch.tanh(dx),
            torch.tanh(dy),
            (torch.tanh(dz) * z_half + z_mid) * three_d,
            torch.sigmoid(s_photons) * c.photons_max * 0.5 + 1.0,
            torch.sigmoid(s_x) * 0.5 + 1e-3,  # px: an uncertainty beyond half a pixel is no localisation
            torch.sigmoid(s_y) * 0.5 + 1e-3,
            torch.sigmoid(s_z) * z_half + 1.0,
            torch.sigmoid(background) * c.background_max_photons,
        ]
        return torch.stack(maps, dim=1)


# -- the loss --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Targets:
    """The truth for a batch, padded: ``mask`` (N, E) says which of the E slots hold an emitter.

    Positions in px of the last frame, pixel-corner origin (pixel i spans [i, i + 1)); z in nm;
    ``background`` (N,) photons per pixel."""

    x_px: torch.Tensor
    y_px: torch.Tensor
    z_nm: torch.Tensor
    photons: torch.Tensor
    mask: torch.Tensor
    background: torch.Tensor


def mixture_loss(maps: torch.Tensor, targets: Targets, three_d: bool) -> dict[str, torch.Tensor]:
    """DECODE's loss: count + Gaussian-mixture localisation + background, each averaged over the
    batch; ``total`` is their sum."""
    n, _, h, w = maps.shape
    ch = {name: maps[:, i] for i, name in enumerate(LOCALISE_MAP_CHANNELS)}
    p = ch["p"].reshape(n, -1)  # (N, K)
    counts = targets.mask.sum(dim=1).to(maps.dtype)
    mean = p.sum(dim=1)
    var = (p * (1.0 - p)).sum(dim=1).clamp(min=1e-3)
    count_loss = 0.5 * (counts - mean) ** 2 / var + 0.5 * torch.log(2 * math.pi * var)

    ys, xs = torch.meshgrid(torch.arange(h, dtype=maps.dtype), torch.arange(w, dtype=maps.dtype),
                            indexing="ij")
    centre_x = (xs + 0.5).reshape(1, -1) + ch["dx"].reshape(n, -1)  # (N, K) px
    centre_y = (ys + 0.5).reshape(1, -1) + ch["dy"].reshape(n, -1)
    means = [centre_x, centre_y, ch["photons"].reshape(n, -1)]
    sigmas = [ch["x_sigma"].reshape(n, -1), ch["y_sigma"].reshape(n, -1), ch["photons_sigma"].reshape(n, -1)]
    truth = [targets.x_px, targets.y_px, targets.photons]
    if three_d:
        means.append(ch["dz"].reshape(n, -1))
        sigmas.append(ch["z_sigma"].reshape(n, -1))
        truth.append(targets.z_nm)
    # log N(truth_e | mean_k, sigma_k) summed over the dimensions: (N, E, K)
    log_density = torch.zeros(n, targets.mask.shape[1], h * w, dtype=maps.dtype)
    for mu, sigma, value in zip(means, sigmas, truth):
        z = (value[:, :, None] - mu[:, None, :]) / sigma[:, None, :]
        log_density = log_density - 0.5 * z**2 - torch.log(sigma[:, None, :]) - 0.5 * math.log(2 * math.pi)
    log_weight = torch.log(p.clamp(min=1e-8)) - torch.log(mean.clamp(min=1e-8))[:, None]  # (N, K)
    per_emitter = -torch.logsumexp(log_density + log_weight[:, None, :], dim=2)  # (N, E)
    mask = targets.mask.to(maps.dtype)
    localisation_loss = (per_emitter * mask).sum(dim=1)

    background_loss = ((ch["background"] - targets.background[:, None, None]) ** 2).mean(dim=(1, 2)) / 100.0
    losses = {"count": count_loss.mean(), "localisation": localisation_loss.mean(),
              "background": background_loss.mean()}
    losses["total"] = losses["count"] + losses["localisation"] + losses["background"]
    return losses

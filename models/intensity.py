"""How camera counts (ADU) become network units and back, inside the served graph.

``linear``: (ADU - offset) / scale. Fine when the data span a modest range of signals.

``sqrt``: a variance-stabilising, range-compressing map, sign(d) (sqrt(|d| + 1) - 1) / scale with
d = ADU - offset (odd, so that counts below the offset keep their information), for one model that
must serve 5 to 500-photon frames: shot noise grows as sqrt(signal), so in
this domain the noise is about the same at every level, and a 100x range of signals becomes 10x.
Squaring the network's estimate of E[sqrt(x)] underestimates E[x] by about Var(sqrt(x))
(Jensen), a near-constant for Poisson-dominated counts; ``bias_adu``, measured on the training
frames after training, puts that back.

Both maps are pixel-wise, so a tiled frame gives the same result as a whole one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

TransformKind = Literal["linear", "sqrt"]


@dataclass(frozen=True)
class IntensityTransform:
    kind: TransformKind
    offset_adu: float
    scale: float  # network units per ADU (linear) or per sqrt(ADU) (sqrt); > 0
    bias_adu: float = 0.0

    @classmethod
    def fit(cls, kind: TransformKind, frames: np.ndarray) -> IntensityTransform:
        """Offset at the 1st percentile (about the camera baseline), and a scale that maps the
        99.8th percentile to 1."""
        sample = frames[:, ::2, ::2].astype(np.float64)
        low, high = np.percentile(sample, [1.0, 99.8])
        span = max(float(high - low), 1.0)
        scale = span if kind == "linear" else np.sqrt(span + 1.0) - 1.0
        return cls(kind, round(float(low), 3), round(float(scale), 6))

    def to_network(self, adu: torch.Tensor) -> torch.Tensor:
        x = adu.to(torch.float32) - self.offset_adu
        if self.kind == "linear":
            return x / self.scale
        return torch.sign(x) * (torch.sqrt(torch.abs(x) + 1.0) - 1.0) / self.scale

    def to_adu(self, network: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            x = network * self.scale
        else:
            u = network * self.scale
            x = torch.sign(u) * (torch.square(torch.abs(u) + 1.0) - 1.0)
        return x + (self.offset_adu + self.bias_adu)

    def with_bias(self, bias_adu: float) -> IntensityTransform:
        return replace(self, bias_adu=round(float(bias_adu), 4))

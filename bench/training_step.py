"""A training step of livescope's networks on the CPU, weights in the channels-last memory format
(as `models.training_loop.fit` trains them) against the default (contiguous) format: the same
arithmetic, another layout for oneDNN's convolutions. Runs alternate (A B A B ...) and medians are
compared, so drifting machine load hits both alike. Prints JSON.

    python bench/training_step.py [--repeats 5] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import onnx
import torch
from _common import median
from torch import nn

from livescope.models.denoise.broad import PhotonDenoiser, anscombe
from livescope.models.localise.net import LocaliseNet
from livescope.models.psf.estimate_net import PsfEstimator
from livescope.models.unet import UNet, UNetConfig
from livescope.repository import ModelRepository, shipped_models_root

Case = tuple[Callable[[], nn.Module], torch.Tensor, Callable[[nn.Module, torch.Tensor], torch.Tensor]]


def cases() -> dict[str, Case]:
    """name -> (a fresh network, a batch as its trainer draws it, its loss on the batch)."""
    g = torch.Generator().manual_seed(0)
    shipped = ModelRepository([shipped_models_root()]).resolve("denoise", None)
    photons = torch.rand((16, 1, 64, 64), generator=g) * 30
    return {
        # livescope train denoise --from denoise@3 (fine-tuning): 16 patches of 64 px
        "denoise@3 fine-tune": (lambda: PhotonDenoiser.from_onnx(onnx.load(shipped.onnx_path)), photons,
                                lambda m, x: torch.mean((m.stabilised(x) - anscombe(x)) ** 2)),
        # livescope train denoise --data (Noise2Void from scratch): 64 patches of 32 px
        "n2v unet": (lambda: UNet(UNetConfig(depth=2, base_channels=16)), torch.rand((64, 1, 32, 32), generator=g),
                     lambda m, x: torch.mean((m(x) - x) ** 2)),
        "localise net": (lambda: LocaliseNet(), torch.rand((8, 3, 64, 64), generator=g) * 5,
                         lambda m, x: torch.mean(m(x) ** 2)),
        "psf estimator": (lambda: PsfEstimator(), torch.rand((32, 5, 64, 64), generator=g),
                          lambda m, x: torch.mean(m(x) ** 2)),
    }


def step_ms(model: nn.Module, optimiser: torch.optim.Optimizer, x: torch.Tensor,
            loss: Callable[[nn.Module, torch.Tensor], torch.Tensor], steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        value = loss(model, x)
        optimiser.zero_grad(set_to_none=True)
        value.backward()
        optimiser.step()
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8, help="steps per timed run")
    args = ap.parse_args()
    report: dict = {"benchmark": "training_step", "machine": f"{platform.machine()}", "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "networks": {}}
    for name, (make, x, loss) in cases().items():
        runs: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
        trained = {}
        for layout in runs:
            model = make().train()
            if layout == "channels_last":
                model.to(memory_format=torch.channels_last)
            optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
            step_ms(model, optimiser, x, loss, 2)  # warm-up: oneDNN picks its kernels
            trained[layout] = (model, optimiser)
        for _ in range(args.repeats):
            for layout, (model, optimiser) in trained.items():
                runs[layout].append(step_ms(model, optimiser, x, loss, args.steps))
        ms = {k: median(v) for k, v in runs.items()}
        report["networks"][name] = {
            "batch": list(x.shape), **{f"{k}_ms_per_step": round(v, 1) for k, v in ms.items()},
            "channels_last_speedup": round(ms["contiguous"] / ms["channels_last"], 3),
            "speedup_per_repeat": [round(a / b, 3) for a, b in zip(runs["contiguous"], runs["channels_last"])],
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

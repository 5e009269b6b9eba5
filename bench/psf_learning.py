"""Does the PSF estimator's network learn defocus at all, and how fast? (issue 20). Prints JSON.

Trains the shipped estimator's architecture (models/psf/estimate_net.py) on |defocus| alone with a
plain squared error, in the trainer's own loop and optimiser settings (models/training_loop.py: AdamW,
warm-up, cosine decay), on fresh simulated patches every step (models/psf/estimate_data.py: nothing seen
twice), and scores it along the way on two fixed sets of fresh patches: optics the training draws
(in-distribution) and the held-out optics region it never draws. Each score is the rms |defocus|
error against the best constant for those patches (their own mean |z|), over the whole trained range
(`PsfSimulation.defocus_um`: +-1 µm; +-1.5 µm when the README's probe ran) and over the issue's +-1 µm,
overall and per texture. What it tells apart:

- held-out optics scoring like in-distribution: the miss is not about unseen optics;
- the full-range error falling while the +-1 µm one does not (a trained range wider than +-1 µm): the
  network is learning, and what it cannot yet read it guesses near the trained range's mean |z|, a bias
  over +-1 µm (why the range is now +-1 µm);
- how the error falls with steps: what more compute (a GPU) would buy.

It publishes nothing. ``--workers N`` simulates in N processes (the simulation, not the network, is
most of a step's time on a CPU).

    python bench/psf_learning.py [--steps 4500] [--evaluate-every 500] [--workers 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from livescope.models.psf.estimate_data import PsfBatch, PsfSimulation, simulate
from livescope.models.psf.estimate_net import PsfEstimator
from livescope.models.psf.estimate_train import WITHIN_UM, constant_guess_rms_nm, inputs_of
from livescope.models.training_loop import LoopSettings, fit


class FreshPatches(torch.utils.data.IterableDataset):
    """An endless stream of simulated batches; each worker draws from its own seed."""

    def __init__(self, sim: PsfSimulation, batch: int, seed: int) -> None:
        self.sim, self.batch, self.seed = sim, batch, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, 1, 0 if info is None else info.id])
        while True:
            b = simulate(self.sim, self.batch, rng)
            yield inputs_of(b), torch.from_numpy(np.abs(b.defocus_um))


def predict(net: torch.nn.Module, x: torch.Tensor, device: torch.device) -> np.ndarray:
    """|defocus| (µm) of each input; the training loop has put ``net`` in eval mode without gradients."""
    return torch.cat([net(x[i:i + 256].to(device))[:, 0, 0, 0].cpu() for i in range(0, len(x), 256)]).numpy()


def scores(pred: np.ndarray, batch: PsfBatch) -> dict:
    z = np.abs(batch.defocus_um)
    tex = np.array(batch.texture)
    within = z <= WITHIN_UM

    def rms(keep: np.ndarray) -> float:
        return float(np.sqrt(np.mean((pred[keep] - z[keep]) ** 2)) * 1e3)

    every = np.ones_like(within)
    return {"rms_nm": round(rms(every)), "constant_rms_nm": round(float(z.std() * 1e3)),
            "within_1um_rms_nm": round(rms(within)),
            "within_1um_constant_rms_nm": round(constant_guess_rms_nm(batch.defocus_um)),
            "within_1um_bias_nm": round(float(np.mean(pred[within] - z[within]) * 1e3)),
            "rms_over_constant_by_texture": {t: round(rms(tex == t) / float(z[tex == t].std() * 1e3), 3)
                                             for t in sorted(set(batch.texture))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4500)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--evaluate-every", type=int, default=500)
    ap.add_argument("--evaluation-patches", type=int, default=1536, help="each set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0, help="simulation processes (0: in the training process)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    sim = PsfSimulation()
    sets = {"in_distribution": simulate(sim, args.evaluation_patches, np.random.default_rng([args.seed, 2])),
            "held_out_optics": simulate(sim, args.evaluation_patches, np.random.default_rng([args.seed, 3]),
                                        held_out=True)}
    inputs = {k: inputs_of(b) for k, b in sets.items()}
    net = PsfEstimator().to(device)
    batches = iter(torch.utils.data.DataLoader(FreshPatches(sim, args.batch, args.seed), batch_size=None,
                                               num_workers=args.workers))
    steps_done, curve, t0 = 0, [], time.perf_counter()

    def train_loss(g: torch.nn.Module) -> torch.Tensor:
        nonlocal steps_done
        steps_done += 1
        x, z = next(batches)
        return ((g(x.to(device))[:, 0, 0, 0] - z.to(device)) ** 2).mean()

    def evaluate(g: torch.nn.Module) -> float:
        predicted = {k: predict(g, inputs[k], device) for k in sets}
        point = {"step": steps_done, "seconds": round(time.perf_counter() - t0)}
        point |= {k: scores(predicted[k], sets[k]) for k in sets}
        curve.append(point)
        print(json.dumps(point), flush=True)
        return float(np.mean((predicted["in_distribution"] - np.abs(sets["in_distribution"].defocus_um)) ** 2))

    # The trainer's own loop and optimiser settings (models/psf/estimate_train.py), this loss
    trained = fit(net, train_loss, evaluate, LoopSettings(learning_rate=args.learning_rate, steps=args.steps,
                                                          budget_seconds=None, validate_every_steps=args.evaluate_every,
                                                          weight_decay=1e-4, clip_grad_norm=5.0))
    for point, (_, train_mse) in zip(curve, trained.curve.train):
        point["train_mse_um2"] = round(train_mse, 4)
    print(json.dumps({"benchmark": "psf_learning", "machine": f"{platform.machine()} {torch.get_num_threads()} "
                      f"threads, {args.device}", "loss": "squared error on |defocus| (µm)", "batch": args.batch,
                      "learning_rate": args.learning_rate, "seed": args.seed, "trained_range_um": sim.defocus_um,
                      "curve": curve}, indent=1))


if __name__ == "__main__":
    main()

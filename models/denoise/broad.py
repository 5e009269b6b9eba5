"""The camera-agnostic denoiser: trained once, broadly, on simulated pairs (`broad_data`), served
for any camera.

It works in noise-equivalent photo-electrons (the card's normalisation ``photons``): the server and the
offline commands convert each frame with its camera (the frame header's or the command's calibration,
else one estimated from the data: ``livescope.camera_estimate``) and convert the result back. Inside
the graph the Anscombe transform makes the noise unit-variance at every level, and the UNet predicts
the stabilised clean image as a correction of its input (residual); the algebraic inverse gives the
photons back. Trained supervised against the simulator's noise-free images, the squared error in the
stabilised domain (every signal level weighs alike).

``livescope train denoise --broad`` is the command (`train_and_publish_broad`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from pydantic import Field
from scipy import ndimage
from torch import nn

from livescope.modelcard import ModelCard, Normalisation, TensorSpec, Tiling, TrainedFor
from livescope.models import export
from livescope.models.budget import TrainProgress
from livescope.models.compare import CLASSICAL_SUFFIX
from livescope.models.denoise.broad_data import BroadDenoiseData, broad_batch, held_out_set
from livescope.models.metrics import psnr_db
from livescope.models.publish import TrainingRecord, publish_version
from livescope.models.supervised import SupervisedTrainConfig, fit_supervised
from livescope.models.training_loop import TrainedGraph
from livescope.models.unet import UNet, UNetConfig, parameter_count
from livescope.repository import ModelVersion

STABILISED_SCALE = 8.0  # Anscombe units -> network units: 1000 photons is about 8
HELD_OUT_PEAKS_PHOTONS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
HELD_OUT_PER_LEVEL = 12
HELD_OUT_SIDE_PX = 96
LOOP_HELD_OUT_PER_LEVEL = 4  # patches per level scored at each validation during training
CLASSICAL_SIGMAS_PX = (0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0)
CLASSICAL_METHOD = (f"a Gaussian filter, its sigma chosen against the truth per signal level (of "
                    f"{', '.join(f'{s:g}' for s in CLASSICAL_SIGMAS_PX)} px)")


class BroadDenoiseConfig(SupervisedTrainConfig):
    """A deeper, wider UNet than the self-supervised one: it must cover PSFs up to 4 px and a single
    photon per pixel, which needs a wide receptive field."""

    depth: int = Field(default=3, ge=1, le=4)
    base_channels: int = Field(default=16, ge=4)
    validate_every_steps: int = Field(default=200, ge=1)
    patience_validations: int = Field(default=0, ge=0)


def anscombe(photons: torch.Tensor) -> torch.Tensor:
    """Poisson counts -> unit variance (at a few counts and above)."""
    return 2.0 * torch.sqrt(torch.clamp(photons, min=0.0) + 0.375)


def inverse_anscombe(stabilised: torch.Tensor) -> torch.Tensor:
    """The algebraic inverse: the network's estimate is the stabilised *clean* image, not the mean
    of stabilised noisy ones, so no bias correction is due."""
    return torch.clamp(stabilised * 0.5, min=math.sqrt(0.375)) ** 2 - 0.375


class PhotonDenoiser(nn.Module):
    """The served graph: float32 noise-equivalent photo-electrons in, the same units out."""

    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net

    def stabilised(self, photons: torch.Tensor) -> torch.Tensor:
        a = anscombe(photons)
        return a + STABILISED_SCALE * self.net(a / STABILISED_SCALE)

    def forward(self, photons: torch.Tensor) -> torch.Tensor:
        return inverse_anscombe(self.stabilised(photons))

    @classmethod
    def from_onnx(cls, proto: onnx.ModelProto) -> PhotonDenoiser:
        """The trainable graph of an exported version (its weights are the ONNX initializers, named as
        in the state dict): the start of a fine-tuning. Raises ValueError for another kind of graph."""
        weights = {i.name.removeprefix("net."): torch.from_numpy(numpy_helper.to_array(i).copy())
                   for i in proto.graph.initializer if i.name.startswith("net.")}
        try:
            depth = sum(1 for k in weights if k.startswith("encoders.") and k.endswith(".0.weight"))
            first, last = weights["encoders.0.0.weight"], weights[f"decoders.{depth - 1}.0.weight"]
            base = int(first.shape[0])
            config = UNetConfig(depth=depth, base_channels=base, in_channels=int(first.shape[1]),
                                top_skip=int(last.shape[1]) == 3 * base)
            graph = cls(UNet(config))
            graph.net.load_state_dict(weights, strict=True)
        except (KeyError, RuntimeError) as e:
            raise ValueError(f"not a camera-agnostic denoiser's graph (its weights do not fit one): {e}") from None
        return graph


def _loss(graph: PhotonDenoiser, noisy: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((graph.stabilised(noisy) - anscombe(target)) ** 2)


def _loop_held_out(spec: BroadDenoiseData, config: BroadDenoiseConfig) -> tuple[np.ndarray, np.ndarray]:
    held = held_out_set(spec, HELD_OUT_PEAKS_PHOTONS, LOOP_HELD_OUT_PER_LEVEL, config.patch_px, config.seed + 1)
    return (np.concatenate([noisy for noisy, _ in held.values()]),
            np.concatenate([target for _, target in held.values()]))


def train_broad(spec: BroadDenoiseData, config: BroadDenoiseConfig,
                progress: Callable[[TrainProgress], None] | None = None) -> TrainedGraph:
    """Train on fresh simulated batches; keep the weights best on fixed patches of every level."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = UNet(UNetConfig(depth=config.depth, base_channels=config.base_channels, top_skip=True))
    with torch.no_grad():  # start as the identity: the residual is zero until trained
        net.head.weight.zero_()
        net.head.bias.zero_()
    def next_batch() -> tuple[np.ndarray, np.ndarray]:
        return broad_batch(spec, config.batch_size, config.patch_px, rng)

    return fit_supervised(PhotonDenoiser(net), _loss, next_batch, _loop_held_out(spec, config), config, progress)


def export_photon_denoiser(graph: PhotonDenoiser, example_photons: np.ndarray) -> onnx.ModelProto:
    """ONNX (float32 photons [N, 1, H, W] -> float32 [N, 1, H, W]), contract and parity checked on
    crops of ``example_photons`` ((N, H, W)) of several shapes."""
    multiple = graph.net.config.size_multiple_px
    side = 4 * multiple
    proto = export.export_graph(graph, torch.full((2, 1, side, side), 10.0), export.INPUT_NAME, export.OUTPUT_NAME)
    export.check_contract(proto, input_dtype=onnx.TensorProto.FLOAT)
    for x in export.parity_inputs(example_photons.astype(np.float32), multiple, np.random.default_rng(0)):
        export.check_parity(graph, proto, x.astype(np.float32))
    return proto


def served_card_fields(unet: UNetConfig) -> dict:
    """The card fields of every camera-agnostic version: its tensors, units and tiling."""
    return dict(inputs=(TensorSpec(name=export.INPUT_NAME, dtype="float32", axes="NCYX"),),
                outputs=(TensorSpec(name=export.OUTPUT_NAME, dtype="float32", axes="NCYX"),),
                normalisation=Normalisation(kind="photons", transform="sqrt"),
                tiling=Tiling(size_multiple_px=unet.size_multiple_px, halo_px=unet.halo_px))


def photon_denoiser(proto: onnx.ModelProto) -> Callable[[np.ndarray], np.ndarray]:
    """(N, 1, H, W) photons -> (N, 1, H, W), through onnxruntime on the CPU."""
    session = export.cpu_session(proto)
    return lambda x: session.run([export.OUTPUT_NAME], {export.INPUT_NAME: np.ascontiguousarray(x, np.float32)})[0]


def held_out_metrics(denoise: Callable[[np.ndarray], np.ndarray],
                     held_out: dict[float, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """PSNR (dB, pooled per level) of the noisy input, the model and the best Gaussian (sigma chosen
    against the truth: `CLASSICAL_METHOD`) against the noise-free targets, per peak level; their means
    (``psnr_db_denoised_mean`` and its ``_classical``: the quality gate's)."""
    metrics: dict[str, float] = {}
    for peak, (noisy, target) in held_out.items():
        denoised = np.concatenate([denoise(noisy[i : i + 4]) for i in range(0, len(noisy), 4)])
        metrics[f"psnr_noisy_db_at_{peak:g}_photons"] = round(psnr_db(noisy, target), 3)
        metrics[f"psnr_denoised_db_at_{peak:g}_photons"] = round(psnr_db(denoised, target), 3)
        metrics[f"psnr_gaussian_db_at_{peak:g}_photons"] = round(max(
            psnr_db(ndimage.gaussian_filter(noisy.astype(np.float64), (0, 0, s, s)), target)
            for s in CLASSICAL_SIGMAS_PX), 3)
    for kind, key in (("denoised", "psnr_db_denoised_mean"), ("gaussian", "psnr_db_denoised_mean" + CLASSICAL_SUFFIX)):
        metrics[key] = round(float(np.mean([metrics[f"psnr_{kind}_db_at_{p:g}_photons"] for p in held_out])), 3)
    return metrics


def train_and_publish_broad(
    repository: Path, *, name: str = "denoise", spec: BroadDenoiseData = BroadDenoiseData(),
    config: BroadDenoiseConfig = BroadDenoiseConfig(steps=4000), command: str = "livescope train denoise --broad",
    progress: Callable[[TrainProgress], None] | None = None, compare_with: ModelVersion | None = None,
) -> tuple[Path, ModelCard]:
    """Train, export, check parity, score the held-out levels, write the next version atomically.
    ``compare_with`` (the default version): scored on the same held-out patches if it also takes
    photons (a model that takes ADU of one camera cannot be scored on them: the deploy gate then
    asks for --force)."""
    held_out = held_out_set(spec, HELD_OUT_PEAKS_PHOTONS, HELD_OUT_PER_LEVEL, HELD_OUT_SIDE_PX, config.seed + 2)
    trained = train_broad(spec, config, progress)
    graph: PhotonDenoiser = trained.graph  # type: ignore[assignment]
    proto = export_photon_denoiser(graph, held_out[HELD_OUT_PEAKS_PHOTONS[3]][0][:, 0])
    metrics = held_out_metrics(photon_denoiser(proto), held_out)
    unet = graph.net.config

    def score_active(active: onnx.ModelProto, card: ModelCard) -> dict[str, float] | None:
        if card.normalisation.kind != "photons":
            return None
        return held_out_metrics(photon_denoiser(active), held_out)

    record = TrainingRecord(command, f"train: {spec.describe()}; held out: {HELD_OUT_PER_LEVEL} patches of "
                            f"{HELD_OUT_SIDE_PX} px per peak level {HELD_OUT_PEAKS_PHOTONS}, seed {config.seed + 2}",
                            config.seed, trained.train_seconds, curve=trained.curve)
    card_fields = dict(
        description=(
            f"Camera-agnostic denoiser: UNet (residual, Anscombe-stabilised), depth {unet.depth}, "
            f"{unet.base_channels} base channels, {parameter_count(graph.net)} parameters; supervised on "
            f"simulated pairs drawn fresh each step ({trained.steps} steps of {config.batch_size} patches of "
            f"{config.patch_px} px, stopped by {trained.stopped_because}"
            + (f"; kept the weights of step {trained.best_step}" if trained.best_step else "")
            + "). Input and output: noise-equivalent photo-electrons (the server and the offline commands "
            "convert with the frame's camera, or one estimated from the data); train config: "
            f"{config.model_dump_json(exclude_none=True)}"),
        **served_card_fields(unet),
        trained_for=TrainedFor(peak_photons=spec.peak_photons, psf_sigma_px=spec.psf_sigma_px,
                               modalities=("widefield", "confocal", "sted", "light-sheet")),
    )
    return publish_version(repository, proto, name=name, task="denoise", card_fields=card_fields, metrics=metrics,
                           record=record, compare_with=compare_with, score_active=score_active,
                           classical_method=CLASSICAL_METHOD)

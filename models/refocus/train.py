"""Train a refocusing network on axial stacks and publish it as a model version.

Pairs come from z-stacks of the same field (``models.refocus.data``): the plane at z_i with the
map delta-z = z_j - z_i in, the plane at z_j out; from the virtual microscope (with its noise-free
planes as targets) or from a calibration session's stacks (noisy targets: the noise of two planes
is independent, so the squared error trains towards the expected image, as in Noise2Noise).
Whole fields are held out; the held-out loss is measured every ``validate_every_steps`` on fixed
pairs and the best weights are kept (early stop after ``patience_validations`` without gain).
Then the served graph (``models.refocus.net.RefocusGraph``) is exported to ONNX, checked against
torch, and scored on the held-out fields through onnxruntime: PSNR of the refocused frame against
the true plane, next to the input left unchanged, at several delta-z. The input left unchanged is
also the classical reference of the quality gate (``..._classical``: ``CLASSICAL_METHOD``): no
classical method refocuses a single widefield frame by a delta-z.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from pydantic import Field

from livescope.modelcard import ModelCard, Normalisation, RefocusSpec, TensorSpec, Tiling, TrainedFor
from livescope.models import export
from livescope.models.budget import TrainProgress
from livescope.models.compare import CLASSICAL_SUFFIX
from livescope.models.metrics import psnr_db
from livescope.models.publish import TrainingRecord, publish_version
from livescope.models.refocus.data import ZStack, sample_pairs
from livescope.models.refocus.net import INPUT_NAME, OUTPUT_NAME, RefocusGraph, refocus_unet
from livescope.models.supervised import SupervisedTrainConfig, fit_supervised
from livescope.models.training_loop import TrainedGraph
from livescope.models.unet import parameter_count
from livescope.repository import ModelVersion

HELD_OUT_PAIRS = 64
FINE_TUNE_LEARNING_RATE = 3e-4  # starting from a trained model: smaller steps keep what it knows
METRIC_DZ_UM = (0.5, 1.0, 2.0, 3.0)  # |delta-z| at which the card reports PSNR (those in range)
CLASSICAL_METHOD = "the input frame unchanged (no classical refocusing)"


class RefocusTrainConfig(SupervisedTrainConfig):
    depth: int = Field(default=3, ge=1, le=4, description="a 2 µm defocus blurs over ~40 px: depth 3 sees it")
    dz_max_um: float = Field(default=2.0, gt=0, description="trained |delta-z| range")


def _loss(graph: RefocusGraph, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared error in units of each frame's mean brightness (what the network works in)."""
    scale = graph.scale(inputs[:, :1])
    return torch.mean(((graph(inputs) - targets) / scale) ** 2)


def architecture_of(proto: onnx.ModelProto) -> tuple[int, int]:
    """(depth, base channels) of an exported refocusing UNet, read from its weights' shapes."""
    shapes = {init.name: tuple(init.dims) for init in proto.graph.initializer}
    first = shapes.get("net.encoders.0.0.weight")
    if first is None:
        raise export.WeightsMismatchError("not a refocusing UNet exported by livescope (no net.encoders.0)")
    depth = sum(f"net.encoders.{i}.0.weight" in shapes for i in range(8))
    return depth, int(first[0])


def train_refocus(stacks: Sequence[ZStack], held_out: Sequence[ZStack], config: RefocusTrainConfig,
                  baseline_adu: float, progress: Callable[[TrainProgress], None] | None = None,
                  init: onnx.ModelProto | None = None, dz_scale_um: float | None = None
                  ) -> TrainedGraph:
    """Train on pairs from ``stacks``; keep the weights best on pairs from ``held_out``.

    ``init``: a served refocusing graph to start from (fine-tuning; ``config`` must name its
    depth and channels: ``architecture_of``), with ``dz_scale_um`` the delta-z its network input
    was scaled by (its own range: the weights expect it)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    graph = RefocusGraph(refocus_unet(config.depth, config.base_channels), baseline_adu=baseline_adu,
                         dz_scale_um=dz_scale_um or config.dz_max_um)
    if init is not None:
        export.load_weights(graph, init, "the model to start from")
    held = sample_pairs(held_out, HELD_OUT_PAIRS, config.patch_px, config.dz_max_um,
                        np.random.default_rng(config.seed + 1), target=config.target)
    return fit_supervised(graph, _loss, lambda: sample_pairs(stacks, config.batch_size, config.patch_px,
                                                             config.dz_max_um, rng, target=config.target),
                          held, config, progress)


def export_refocuser(graph: RefocusGraph, example_stack: ZStack) -> onnx.ModelProto:
    """ONNX of the served graph, its contract checked and its parity with torch on real planes."""
    multiple = graph.net.config.size_multiple_px
    side = 4 * multiple
    example = torch.zeros((2, 2, side, side), dtype=torch.float32)
    proto = export.export_graph(graph, example, INPUT_NAME, OUTPUT_NAME)
    export.check_contract(proto, INPUT_NAME, OUTPUT_NAME, input_channels=2, output_channels=1,
                          input_dtype=onnx.TensorProto.FLOAT)
    rng = np.random.default_rng(0)
    for raw in export.parity_inputs(example_stack.planes_adu, multiple, rng):
        dz = rng.uniform(-1.0, 1.0, (len(raw), 1, 1, 1)) * np.ones_like(raw, dtype=np.float32)
        x = np.concatenate([raw.astype(np.float32), dz.astype(np.float32)], axis=1)
        export.check_parity(graph, proto, x, INPUT_NAME, OUTPUT_NAME)
    return proto


def refocus_with(proto: onnx.ModelProto) -> Callable[[np.ndarray, float], np.ndarray]:
    """(H, W) ADU frame, uniform delta-z µm -> refocused (H, W), through onnxruntime on the CPU;
    crops to the model's size multiple are the caller's business (the stacks' sizes are)."""
    session = export.cpu_session(proto)

    def run(frame: np.ndarray, dz_um: float) -> np.ndarray:
        x = np.stack([frame.astype(np.float32), np.full(frame.shape, dz_um, np.float32)])[None]
        return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0][0, 0]

    return run


def held_out_metrics(refocus: Callable[[np.ndarray, float], np.ndarray], stacks: Sequence[ZStack],
                     dz_max_um: float, target: str) -> dict[str, float]:
    """PSNR (dB) of refocused whole frames against the true plane, and of the input left
    unchanged, pooled over the held-out fields and both signs of delta-z, per |delta-z|; the
    unchanged input's is also the classical reference (``psnr_db_refocused_at_{dz}_um_classical``)."""
    metrics: dict[str, float] = {}
    for dz in (d for d in METRIC_DZ_UM if d <= dz_max_um + 1e-9):
        outs, ins, truths = [], [], []
        for stack in stacks:
            reference = stack.clean_adu if target == "clean" and stack.clean_adu is not None else stack.planes_adu
            for sign in (1.0, -1.0):
                for i, z in enumerate(stack.z_um):
                    j = np.flatnonzero(np.isclose(stack.z_um, z + sign * dz, atol=1e-3))
                    if j.size == 0:
                        continue
                    frame = stack.planes_adu[i]
                    outs.append(refocus(frame, sign * dz))
                    ins.append(frame.astype(np.float32))
                    truths.append(reference[j[0]].astype(np.float32))
        if not truths:
            continue
        truth = np.stack(truths)
        metrics[f"psnr_db_refocused_at_{dz:g}_um"] = round(psnr_db(np.stack(outs), truth), 3)
        metrics[f"psnr_db_unchanged_at_{dz:g}_um"] = round(psnr_db(np.stack(ins), truth), 3)
        metrics[f"psnr_db_refocused_at_{dz:g}_um{CLASSICAL_SUFFIX}"] = metrics[f"psnr_db_unchanged_at_{dz:g}_um"]
    return metrics


def train_and_publish_refocuser(
    repository: Path, *, name: str, stacks: Sequence[ZStack], held_out: Sequence[ZStack],
    config: RefocusTrainConfig, baseline_adu: float, data_description: str, command: str,
    trained_for: TrainedFor = TrainedFor(), spherical_waves: float | None = None,
    session_ids: tuple[str, ...] = (), compare_with: ModelVersion | None = None,
    start_from: ModelVersion | None = None, progress: Callable[[TrainProgress], None] | None = None,
) -> tuple[Path, ModelCard]:
    """Train, export, check parity, score the held-out fields, write the next version atomically.

    ``compare_with`` (the version active in the server): scored on the same held-out fields, over
    the delta-z range both were trained for; the card records the comparison (the deploy gate)."""
    init = dz_scale = None
    if start_from is not None:
        init = onnx.load(start_from.onnx_path)
        depth, channels = architecture_of(init)
        config = config.model_copy(update={"depth": depth, "base_channels": channels})
        dz_scale = max(abs(d) for d in start_from.card.refocus.dz_range_um)
    trained = train_refocus(stacks, held_out, config, baseline_adu, progress, init=init, dz_scale_um=dz_scale)
    proto = export_refocuser(trained.graph, held_out[0])
    metrics = held_out_metrics(refocus_with(proto), held_out, config.dz_max_um, config.target)

    def score_active(active: onnx.ModelProto, card: ModelCard) -> dict[str, float]:
        """Over the delta-z range both versions were trained for."""
        active_range = card.refocus.dz_range_um if card.refocus else (0.0, 0.0)
        shared_dz = min(config.dz_max_um, -active_range[0], active_range[1])
        return held_out_metrics(refocus_with(active), held_out, shared_dz, config.target)

    unet = trained.graph.net.config
    z_step = float(np.median([s.z_step_um for s in stacks]))
    record = TrainingRecord(command, data_description, config.seed, trained.train_seconds, session_ids=session_ids,
                            curve=trained.curve)
    card_fields = dict(
        description=(
            f"Deep-Z-style refocusing UNet (delta-z map as a second channel, residual), depth {unet.depth}, "
            f"{unet.base_channels} base channels, {parameter_count(trained.graph.net)} parameters; "
            f"{trained.steps} steps of {config.batch_size} pairs of {config.patch_px} px (stopped by "
            f"{trained.stopped_because}"
            + (f"; kept the weights of step {trained.best_step}" if trained.best_step else "")
            + (f"; fine-tuned from {start_from.ref}" if start_from is not None else "")
            + f"); train config: {config.model_dump_json(exclude_none=True)}"),
        inputs=(TensorSpec(name=INPUT_NAME, dtype="float32", axes="NCYX"),),
        outputs=(TensorSpec(name=OUTPUT_NAME, dtype="float32", axes="NCYX"),),
        normalisation=Normalisation(kind="in_graph", transform="linear", offset_adu=baseline_adu),
        tiling=Tiling(size_multiple_px=unet.size_multiple_px, halo_px=unet.halo_px),
        trained_for=trained_for,
        refocus=RefocusSpec(dz_range_um=(-config.dz_max_um, config.dz_max_um), z_step_um=z_step,
                            spherical_waves=spherical_waves),
    )
    return publish_version(repository, proto, name=name, task="refocus", card_fields=card_fields, metrics=metrics,
                           record=record, compare_with=compare_with, score_active=score_active,
                           classical_method=CLASSICAL_METHOD)

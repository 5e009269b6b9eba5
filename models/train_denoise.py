"""Train the denoiser (Noise2Void, self-supervised) and publish it as a model version.

    python -m livescope.models.train_denoise --repository DIR --budget-minutes M --seed S

trains on virtual-microscope frames (noisy only), exports to ONNX, checks torch/onnxruntime
parity, measures held-out PSNR against the scene's clean frames, and writes
``DIR/denoise/<next version>/`` atomically. It prints ``denoise@<version>``.

``train_and_publish_own_data`` does the same on the user's own noisy stacks (``livescope train
denoise --data STACK``; read and checked by ``models/user_data.py``); with no clean images, its
held-out metric is the Noise2Void loss on a held-out part of the stacks.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

import livescope
from livescope.acquire.virtual import VirtualRigConfig
from livescope.modelcard import (
    MODEL_FILE,
    ModelCard,
    Normalisation,
    Provenance,
    TensorSpec,
    Tiling,
    TrainedFor,
)
from livescope.models import export
from livescope.models.data import FrameSet, VirtualDenoiseData, random_patches, virtual_frames
from livescope.models.n2v import apply_blind_spots, blind_spot_mask, masked_mse
from livescope.models.repository_write import write_version
from livescope.models.unet import InGraphNormalised, UNet, UNetConfig, parameter_count
from livescope.models.user_data import UserTrainingData


class DenoiseTrainConfig(BaseModel):
    """How to train: network size, N2V masking, optimiser, and when to stop."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    depth: int = Field(default=2, ge=1, le=4)
    base_channels: int = Field(default=16, ge=4)
    patch_px: int = Field(default=32, ge=8, description="square training patches")
    batch_size: int = Field(default=64, ge=1)
    mask_box_px: int = Field(default=8, ge=2, description="one blind spot per box x box pixels")
    median_radius_px: int = Field(default=2, ge=1, description="blind spot fill neighbourhood")
    learning_rate: float = Field(default=2e-3, gt=0, description="peak; cosine decay to 1%")
    steps: int | None = Field(default=None, ge=1, description="stop after this many steps")
    budget_seconds: float | None = Field(default=None, gt=0, description="or after this long")
    seed: int = 0

    @model_validator(mode="after")
    def _patches_fit(self) -> DenoiseTrainConfig:
        multiple = math.lcm(2**self.depth, self.mask_box_px)
        if self.patch_px % multiple:
            raise ValueError(
                f"patch_px {self.patch_px} must be a multiple of 2**depth and of mask_box_px "
                f"({multiple})"
            )
        return self


@dataclass(frozen=True)
class TrainProgress:
    step: int
    fraction: float  # of the steps or of the time budget, whichever is further
    loss: float
    elapsed_s: float


@dataclass(frozen=True)
class TrainedDenoiser:
    net: UNet
    offset_adu: float
    scale_adu: float
    steps: int
    train_seconds: float
    final_loss: float

    def served(self) -> InGraphNormalised:
        """The model as served: uint16 ADU in, float32 ADU out."""
        return InGraphNormalised(self.net, self.offset_adu, self.scale_adu).eval()


def normalisation_constants(frames: np.ndarray) -> tuple[float, float]:
    """(offset_adu, scale_adu): the 1st percentile (about the baseline) and the 99.8th above it."""
    sample = frames[:, ::2, ::2].astype(np.float64)
    low, high = np.percentile(sample, [1.0, 99.8])
    return round(float(low), 3), round(float(max(high - low, 1.0)), 3)


WARMUP_STEPS = 20
"""Linear learning-rate warm-up; a time budget is turned into a step count at its end."""


def train_denoise(
    frames: np.ndarray,
    config: DenoiseTrainConfig,
    progress: Callable[[TrainProgress], None] | None = None,
) -> TrainedDenoiser:
    """Noise2Void training on noisy frames (T, H, W) uint16, for config.steps or budget_seconds.

    A time budget becomes a step count after the warm-up (the steps that fit at the measured
    speed), so the schedule depends on the step count only: a run is reproduced exactly by
    the same seed with ``steps`` set to the count it reports.
    """
    if config.steps is None and config.budget_seconds is None:
        raise ValueError("give steps or budget_seconds (or both) to say when training stops")
    if frames.ndim != 3:
        raise ValueError(f"frames must be (T, H, W), got shape {frames.shape}")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    offset_adu, scale_adu = normalisation_constants(frames)
    data = (torch.from_numpy(frames.astype(np.float32)) - offset_adu) / scale_adu
    net = UNet(UNetConfig(config.depth, config.base_channels))
    optimiser = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    net.train()
    total = config.steps
    start, step, loss_avg = time.monotonic(), 0, float("nan")
    while total is None or step < total:
        for group in optimiser.param_groups:
            group["lr"] = config.learning_rate * _schedule(step, total)
        patches = random_patches(data, config.patch_px, config.batch_size, generator)
        mask = blind_spot_mask(patches.shape, config.mask_box_px, generator)
        prediction = net(apply_blind_spots(patches, mask, config.median_radius_px))
        loss = masked_mse(prediction, patches, mask)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        value = float(loss.detach())
        loss_avg = value if math.isnan(loss_avg) else 0.98 * loss_avg + 0.02 * value
        elapsed = time.monotonic() - start
        if step == WARMUP_STEPS and config.budget_seconds is not None:
            fitting = int(config.budget_seconds / (elapsed / step))
            total = max(step, fitting if config.steps is None else min(config.steps, fitting))
        if progress is not None:
            fraction = step / total if total else elapsed / config.budget_seconds
            progress(TrainProgress(step, min(fraction, 1.0), loss_avg, elapsed))
    net.eval()
    return TrainedDenoiser(net, offset_adu, scale_adu, step, time.monotonic() - start, loss_avg)


def _schedule(step: int, total: int | None) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 1% at ``total`` steps."""
    if step < WARMUP_STEPS or total is None:
        return min(1.0, (step + 1) / WARMUP_STEPS)
    fraction = (step - WARMUP_STEPS) / max(total - WARMUP_STEPS, 1)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(fraction, 1.0)))


def psnr_db(images: np.ndarray, clean: np.ndarray) -> float:
    """PSNR (dB) of ``images`` against ``clean`` (same shape, one frame or a stack).

    Peak = the clean range (max - min), MSE pooled over all pixels of all frames.
    """
    mse = float(np.mean((images.astype(np.float64) - clean) ** 2))
    peak = float(clean.max() - clean.min())
    return 10.0 * math.log10(peak**2 / mse)


def held_out_metrics(denoise: Callable[[np.ndarray], np.ndarray], held_out: FrameSet) -> dict[str, float]:
    """PSNR (dB) of the noisy and the denoised held-out frames against clean, per signal level.

    All specimens of a level are pooled (see ``psnr_db``), so that nearly empty frames (a few
    dim beads) do not dominate, as they would in a mean of per-frame PSNRs.
    """
    metrics: dict[str, float] = {}
    for level in np.unique(held_out.signal_photons_per_ms):
        frames = np.flatnonzero(held_out.signal_photons_per_ms == level)
        noisy, clean = held_out.noisy_adu[frames], held_out.clean_adu[frames]
        denoised = np.concatenate([denoise(frame[None, None]) for frame in noisy])
        for label, images in (("noisy", noisy), ("denoised", denoised)):
            metrics[f"psnr_{label}_db_at_{level:g}_photons_per_ms"] = round(psnr_db(images, clean), 3)
    return metrics


def _ort_denoiser(proto) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda raw: session.run([export.OUTPUT_NAME], {export.INPUT_NAME: raw})[0][:, 0]


def _train_and_export(
    frames: np.ndarray, held_out: np.ndarray, config: DenoiseTrainConfig,
    progress: Callable[[TrainProgress], None] | None,
) -> tuple[TrainedDenoiser, onnx.ModelProto]:
    """Train, export to ONNX, and check torch/onnxruntime parity on held-out frames (raises
    ExportError, so nothing is written, when they disagree)."""
    trained = train_denoise(frames, config, progress)
    served = trained.served()
    unet = trained.net.config
    proto = export.to_onnx(served, unet.size_multiple_px)
    rng = np.random.default_rng(config.seed)
    for raw in export.parity_inputs(held_out, unet.size_multiple_px, rng):
        export.check_parity(served, proto, raw)
    return trained, proto


def train_and_publish(
    repository: Path,
    *,
    name: str = "denoise",
    data: VirtualDenoiseData = VirtualDenoiseData(),
    held_out: VirtualDenoiseData | None = None,
    config: DenoiseTrainConfig = DenoiseTrainConfig(budget_seconds=420.0),
    command: str = "livescope.models.train_denoise.train_and_publish()",
    progress: Callable[[TrainProgress], None] | None = None,
) -> tuple[Path, ModelCard]:
    """Train on ``data``, export, check parity, measure on ``held_out``, write the next version.

    ``held_out`` defaults to 2 frames per condition of ``data`` with another seed. Returns the
    version folder and its card; nothing is written if export or parity fails.
    """
    if held_out is None:
        held_out = data.model_copy(update={"frames_per_condition": 2, "seed": data.seed + 10_000})
    frames, held_out_frames = virtual_frames(data), virtual_frames(held_out)
    trained, proto = _train_and_export(frames.noisy_adu, held_out_frames.noisy_adu, config,
                                       progress)
    metrics = held_out_metrics(_ort_denoiser(proto), held_out_frames)
    rig = VirtualRigConfig()  # the optics and camera the data were simulated with

    def fill(folder: Path, version: int) -> ModelCard:
        export.save(proto, folder / MODEL_FILE)
        return ModelCard(
            **_served_card_fields(name, version, trained, config),
            trained_for=TrainedFor(
                pixel_size_nm=(rig.pixel_size_um * 1e3,) * 2,
                na=(rig.na,) * 2,
                emission_nm=(rig.emission_nm,) * 2,
                peak_photons=(
                    min(data.signal_photons_per_ms) * data.exposure_ms,
                    max(data.signal_photons_per_ms) * data.exposure_ms,
                ),
                modalities=("widefield",),
            ),
            provenance=Provenance(
                command=command,
                code_version=livescope.__version__,
                data=f"train: {data.describe()}; held out: {held_out.describe()}",
                data_hash=frames.hash(),
                seed=config.seed,
                trained_at=datetime.now(timezone.utc).replace(microsecond=0),
                train_seconds=round(trained.train_seconds, 1),
            ),
            metrics=metrics,
        )

    return write_version(repository, name, fill)


def _served_card_fields(name: str, version: int, trained: TrainedDenoiser,
                        config: DenoiseTrainConfig) -> dict:
    """The card fields every denoiser version has: what it is, its tensors, units and tiling."""
    unet = trained.net.config
    return dict(
        name=name,
        version=version,
        task="denoise",
        description=(
            f"Noise2Void (N2V2) UNet, depth {unet.depth}, {unet.base_channels} base channels, "
            f"{parameter_count(trained.net)} parameters; self-supervised on noisy frames only; "
            f"{trained.steps} steps of {config.batch_size} patches of {config.patch_px} px "
            f"(reproduce exactly with --steps {trained.steps} and the seed); train config: "
            f"{config.model_dump_json(exclude_none=True)}"
        ),
        inputs=(TensorSpec(name=export.INPUT_NAME, dtype="uint16", axes="NCYX"),),
        outputs=(TensorSpec(name=export.OUTPUT_NAME, dtype="float32", axes="NCYX"),),
        normalisation=Normalisation(
            kind="in_graph", offset_adu=trained.offset_adu, scale_adu=trained.scale_adu
        ),
        tiling=Tiling(size_multiple_px=unet.size_multiple_px, halo_px=unet.halo_px),
    )


# -- training on the user's own stacks -----------------------------------------------------------

MAX_VALIDATION_PATCHES = 256


def validation_patches(frames: np.ndarray, patch_px: int, seed: int) -> np.ndarray:
    """Non-overlapping patches (N, patch, patch) tiled from ``frames`` (T, H, W); a seeded choice
    of at most MAX_VALIDATION_PATCHES."""
    t, h, w = frames.shape
    patches = np.stack([frames[i, y : y + patch_px, x : x + patch_px]
                        for i in range(t)
                        for y in range(0, h - patch_px + 1, patch_px)
                        for x in range(0, w - patch_px + 1, patch_px)])
    if len(patches) > MAX_VALIDATION_PATCHES:
        pick = np.random.default_rng(seed).choice(len(patches), MAX_VALIDATION_PATCHES, replace=False)
        patches = patches[np.sort(pick)]
    return patches


def n2v_validation_mse_adu2(trained: TrainedDenoiser, held_out_adu: np.ndarray,
                            config: DenoiseTrainConfig) -> dict[str, float]:
    """The Noise2Void loss on held-out frames, in ADU^2: the MSE between each blind-spot pixel's
    prediction and its own noisy value, over seeded masks of held-out patches.

    With independent noise this is the error against the clean image plus the noise variance, so
    only differences matter; ``..._median_filter`` is the same loss for the blind-spot fill alone
    (the neighbourhood median), a baseline the trained network should beat.
    """
    patches = validation_patches(held_out_adu, config.patch_px, config.seed)
    data = (torch.from_numpy(patches.astype(np.float32))[:, None] - trained.offset_adu) / trained.scale_adu
    generator = torch.Generator().manual_seed(config.seed + 1)
    model_sum = median_sum = count = 0.0
    trained.net.eval()
    with torch.no_grad():
        for batch in data.split(config.batch_size):
            mask = blind_spot_mask(batch.shape, config.mask_box_px, generator)
            masked = apply_blind_spots(batch, mask, config.median_radius_px)
            n = float(mask.sum())
            model_sum += float(masked_mse(trained.net(masked), batch, mask)) * n
            median_sum += float(masked_mse(masked, batch, mask)) * n
            count += n
    scale2 = trained.scale_adu**2
    return {
        "n2v_validation_mse_adu2": round(model_sum / count * scale2, 4),
        "n2v_validation_mse_adu2_median_filter": round(median_sum / count * scale2, 4),
        "n2v_validation_patches": float(len(patches)),
    }


def steps_per_epoch(frames: np.ndarray, config: DenoiseTrainConfig) -> int:
    """Steps that draw as many patches as ``frames`` hold without overlap (one epoch)."""
    t, h, w = frames.shape
    return max(1, math.ceil(t * (h // config.patch_px) * (w // config.patch_px) / config.batch_size))


def train_and_publish_own_data(
    repository: Path,
    data: UserTrainingData,
    *,
    name: str = "denoise",
    config: DenoiseTrainConfig = DenoiseTrainConfig(budget_seconds=420.0),
    command: str = "livescope.models.train_denoise.train_and_publish_own_data()",
    progress: Callable[[TrainProgress], None] | None = None,
) -> tuple[Path, ModelCard]:
    """Train on the user's stacks (``models.user_data.load_training_stacks``), export, check
    parity, measure the N2V validation loss on the held-out part, write the next version.

    No clean images exist, so the held-out metric is the self-supervised loss itself.
    """
    trained, proto = _train_and_export(data.train_adu, data.held_out_adu, config, progress)
    metrics = n2v_validation_mse_adu2(trained, data.held_out_adu, config)
    metrics["n2v_train_loss_final"] = round(trained.final_loss, 6)

    def fill(folder: Path, version: int) -> ModelCard:
        export.save(proto, folder / MODEL_FILE)
        return ModelCard(
            **_served_card_fields(name, version, trained, config),
            trained_for=TrainedFor(pixel_size_nm=data.pixel_size_nm),
            provenance=Provenance(
                command=command,
                code_version=livescope.__version__,
                data=data.describe(),
                data_hash=data.data_hash,
                seed=config.seed,
                trained_at=datetime.now(timezone.utc).replace(microsecond=0),
                train_seconds=round(trained.train_seconds, 1),
            ),
            metrics=metrics,
        )

    return write_version(repository, name, fill)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m livescope.models.train_denoise", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--repository", type=Path, required=True, help="model repository folder")
    parser.add_argument("--budget-minutes", type=float, default=7.0, help="training time budget")
    parser.add_argument("--steps", type=int, default=None,
                        help="train exactly this many steps instead (reproduces a card's run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="denoise", help="model name in the repository")
    parser.add_argument("--frames-per-condition", type=int, default=8,
                        help="training frames per specimen and signal level")
    args = parser.parse_args(argv)
    config = DenoiseTrainConfig(
        steps=args.steps,
        budget_seconds=None if args.steps else args.budget_minutes * 60.0,
        seed=args.seed,
    )
    data = VirtualDenoiseData(frames_per_condition=args.frames_per_condition, seed=args.seed)
    command = shlex.join(["python", "-m", "livescope.models.train_denoise", *argv])
    last = [0.0]

    def report(p: TrainProgress) -> None:
        if p.elapsed_s - last[0] >= 15.0:
            last[0] = p.elapsed_s
            print(f"  step {p.step:6d}  {100 * p.fraction:5.1f}%  loss {p.loss:.5f}", file=sys.stderr)

    try:
        folder, card = train_and_publish(
            args.repository, name=args.name, data=data, config=config, command=command, progress=report
        )
    except export.ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for key, value in card.metrics.items():
        print(f"  {key}: {value}", file=sys.stderr)
    print(card.ref)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

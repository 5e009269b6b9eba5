"""Train the denoiser (Noise2Void, self-supervised) and publish it as a model version.

``livescope train denoise`` (``livescope.cli.train``) is the command. Without ``--data``,
``train_and_publish`` trains on virtual-microscope frames (noisy only), exports to ONNX, checks
torch/onnxruntime parity, measures held-out PSNR against the scene's clean frames, and writes
``<repository>/denoise/<next version>/`` atomically.

``train_and_publish_own_data`` does the same on the user's own noisy stacks (``livescope train
denoise --data STACK``; read and checked by ``models/denoise/user_data.py``); with no clean images, its
held-out metric is the Noise2Void loss on a held-out part of the stacks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from livescope.acquire.virtual import VirtualRigConfig
from livescope.camera_estimate import photon_scale
from livescope.modelcard import DenoiseSpec, ModelCard, Normalisation, TensorSpec, Tiling, TrainedFor
from livescope.models import export
from livescope.models.budget import TrainProgress
from livescope.models.compare import CLASSICAL_SUFFIX
from livescope.context import window_indices
from livescope.models.denoise.data import FrameSet, VirtualDenoiseData, random_windows, virtual_frames
from livescope.models.denoise.n2v import BlindSpotMasking, StructAxis, masked_mse
from livescope.models.denoise.user_data import UserTrainingData
from livescope.models.intensity import IntensityTransform, TransformKind
from livescope.models.metrics import psnr_db
from livescope.models.publish import TrainingRecord, publish_version
from livescope.models.training_loop import LoopSettings, TrainingCurve, fit
from livescope.models.unet import InGraphNormalised, UNet, UNetConfig, parameter_count
from livescope.repository import ModelVersion


class DenoiseTrainConfig(BaseModel):
    """How to train: network size, N2V masking, optimiser, and when to stop."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # depth 2 x 16 channels (116k parameters) beat depth 3 (485k) at the 2- to 5-minute CPU
    # budgets users train with; both are a flag away (see the README's measurements)
    depth: int = Field(default=2, ge=1, le=4)
    base_channels: int = Field(default=16, ge=4)
    patch_px: int = Field(default=32, ge=8, description="square training patches")
    batch_size: int = Field(default=64, ge=1)
    mask_box_px: int = Field(default=8, ge=2, description="one blind spot per box x box pixels")
    median_radius_px: int = Field(default=2, ge=1, description="blind spot fill neighbourhood")
    intensity: TransformKind = Field(
        default="sqrt", description="ADU -> network units: 'linear', or 'sqrt' for wide signal ranges")
    struct_axis: StructAxis = Field(default="none", description="structN2V: axis of correlated noise")
    struct_span_px: int = Field(default=0, ge=0, description="structN2V: neighbours hidden either side")
    # Frames before the one denoised, seen as they are (their noise is independent of its): in a
    # time series they carry most of what the blind spot hides (as DeepCAD-RT and SUPPORT use them).
    context_frames: int = Field(default=1, ge=1, le=9, description="consecutive frames per input, the last denoised")
    learning_rate: float = Field(default=2e-3, gt=0, description="peak; cosine decay to 1%")
    steps: int | None = Field(default=None, ge=1, description="stop after this many steps")
    budget_seconds: float | None = Field(default=None, gt=0, description="or after this long")
    validate_every_steps: int = Field(default=100, ge=1, description="held-out loss this often")
    patience_validations: int = Field(
        default=8, ge=0, description="early stop after this many validations without improvement (0: never)")
    seed: int = 0

    @model_validator(mode="after")
    def _patches_fit(self) -> DenoiseTrainConfig:
        multiple = math.lcm(2**self.depth, self.mask_box_px)
        if self.patch_px % multiple:
            raise ValueError(
                f"patch_px {self.patch_px} must be a multiple of 2**depth and of mask_box_px "
                f"({multiple})"
            )
        if (self.struct_axis == "none") != (self.struct_span_px == 0):
            raise ValueError("structN2V needs both struct_axis ('row' or 'column') and struct_span_px > 0")
        return self

    @property
    def masking(self) -> BlindSpotMasking:
        return BlindSpotMasking(self.mask_box_px, self.median_radius_px, self.struct_axis,
                                self.struct_span_px)

    def loop_settings(self) -> LoopSettings:
        """The training loop's settings: Adam, early stop on a small relative gain, validation
        before counting each step (`models.training_loop`)."""
        return LoopSettings(learning_rate=self.learning_rate, steps=self.steps, budget_seconds=self.budget_seconds,
                            validate_every_steps=self.validate_every_steps,
                            patience_validations=self.patience_validations,
                            min_relative_improvement=MIN_RELATIVE_IMPROVEMENT, validate_before_counting=True)


@dataclass(frozen=True)
class TrainedDenoiser:
    net: UNet
    transform: IntensityTransform
    steps: int
    train_seconds: float
    final_loss: float
    stopped_because: str  # "steps", "budget" or "early stop"
    best_step: int | None = None  # the step whose weights were kept (lowest held-out loss)
    best_validation_loss: float | None = None
    curve: TrainingCurve | None = None

    def served(self) -> InGraphNormalised:
        """The model as served: uint16 ADU in, float32 ADU out."""
        return InGraphNormalised(self.net, self.transform).eval()


MAX_VALIDATION_PATCHES = 256
"""Held-out patches the final validation metric is measured on."""
VALIDATION_PATCHES_IN_LOOP = 64
"""Held-out patches scored at each validation during training (the final metric uses more)."""
MIN_RELATIVE_IMPROVEMENT = 1e-4
"""A validation loss counts as better than the best so far when it is lower by this fraction
(small: the N2V loss includes the noise variance, so real gains are small fractions of it)."""


BASELINE_GAUSSIAN_SIGMAS_PX = (0.5, 0.7, 1.0, 1.5, 2.0, 3.0)


def gaussian_filter(images: torch.Tensor, sigma_px: float, *, blind_spot: bool = False) -> torch.Tensor:
    """Each channel of ``images`` (N, C, H, W) Gaussian-filtered (reflect padding); with
    ``blind_spot``, each pixel is the Gaussian-weighted mean of its neighbours, itself left out."""
    radius = max(1, math.ceil(3 * sigma_px))
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma_px**2))
    if blind_spot:
        g[radius, radius] = 0.0
    c = images.shape[1]
    kernel = (g / g.sum()).expand(c, 1, -1, -1).contiguous()
    return F.conv2d(F.pad(images, (radius,) * 4, mode="reflect"), kernel, groups=c)


def blind_spot_gaussian(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Each pixel of ``images`` (N, C, H, W) predicted as the Gaussian-weighted mean of its
    neighbours, itself left out (reflect padding)."""
    return gaussian_filter(images, sigma_px, blind_spot=True)


class HeldOutLoss:
    """The N2V loss on fixed held-out patches with fixed masks: comparable between steps."""

    def __init__(self, frames_adu: np.ndarray, transform: IntensityTransform,
                 config: DenoiseTrainConfig, patches: int) -> None:
        picked = validation_windows(frames_adu, config.patch_px, config.seed, patches, config.context_frames)
        generator = torch.Generator().manual_seed(config.seed + 1)
        windows_adu = torch.from_numpy(picked.astype(np.float32))
        self.context_adu = windows_adu[:, :-1]  # the frames before (empty for a single-frame model)
        self.targets_adu = windows_adu[:, -1:]
        self.targets = transform.to_network(self.targets_adu)
        masked, self.masks = config.masking(self.targets, generator)
        self.inputs = torch.cat([transform.to_network(self.context_adu), masked], dim=1)
        self.transform = transform
        self.batch_size = max(config.batch_size, 16)

    def __call__(self, net: nn.Module) -> float:
        """The loss in network units (what training minimises)."""
        return self._mean(net, lambda out, i: masked_mse(out, self.targets[i], self.masks[i]))

    def mse_adu2(self, net: nn.Module, transform: IntensityTransform | None = None) -> float:
        """The same loss on the served output, in ADU^2 (``transform``: with its bias)."""
        t = transform or self.transform
        return self._mean(net, lambda out, i: masked_mse(t.to_adu(out), self.targets_adu[i], self.masks[i]))

    def served_mse_adu2(self, denoise: Callable[[np.ndarray], np.ndarray], context_frames: int = 1) -> float:
        """The same loss for any served version (uint16 ADU in, ADU out; e.g. through
        onnxruntime), fed the same masked patches in ADU: versions trained with other intensity
        transforms are compared on equal terms. ``denoise`` takes (N, context_frames, H, W): the
        last frame masked, and as many of the frames before as it sees (a single-frame version
        sees none of them; one with more context than was held out sees the oldest repeated)."""
        fill = self.transform.to_adu(self.inputs[:, -1:]) - self.transform.bias_adu
        masked = np.clip(np.rint(fill.numpy()), 0, np.iinfo(np.uint16).max).astype(np.uint16)
        before = np.clip(np.rint(self.context_adu.numpy()), 0, np.iinfo(np.uint16).max).astype(np.uint16)
        have = np.concatenate([before, masked], axis=1)
        pick = np.clip(np.arange(have.shape[1] - context_frames, have.shape[1]), 0, None)
        raw = np.ascontiguousarray(have[:, pick])
        total = count = 0.0
        for start in range(0, len(raw), self.batch_size):
            i = slice(start, start + self.batch_size)
            out = torch.from_numpy(np.asarray(denoise(raw[i]), dtype=np.float32))[:, None]
            n = float(self.masks[i].sum())
            total += float(masked_mse(out, self.targets_adu[i], self.masks[i])) * n
            count += n
        return total / max(count, 1.0)

    def median_fill_mse_adu2(self) -> float:
        """The loss of the blind-spot fill itself (the neighbourhood median), in ADU^2: a
        baseline. The transform is monotonic, so the median commutes with it."""
        fill = self.transform.to_adu(self.inputs[:, -1:]) - self.transform.bias_adu
        return float(masked_mse(fill, self.targets_adu, self.masks))

    def classical_mse_adu2(self) -> tuple[float, str]:
        """The lowest loss a classical filter reaches on the same blind spots, in ADU^2, and the
        filter: the neighbourhood median (the blind-spot fill) or a Gaussian of the pixel's
        neighbours (centre left out, so it sees no more than the network) at the best of a few
        widths, chosen on these very pixels: the baseline a model must beat to be served."""
        best = (self.median_fill_mse_adu2(), "the neighbourhood median (5x5, blind spot)")
        for sigma_px in BASELINE_GAUSSIAN_SIGMAS_PX:
            if math.ceil(3 * sigma_px) >= min(self.targets_adu.shape[-2:]):
                continue  # wider than the patch
            predicted = blind_spot_gaussian(self.targets_adu, sigma_px)
            loss = float(masked_mse(predicted, self.targets_adu, self.masks))
            if loss < best[0]:
                best = (loss, f"a Gaussian filter of sigma {sigma_px:g} px (blind spot, best of "
                              f"{', '.join(f'{s:g}' for s in BASELINE_GAUSSIAN_SIGMAS_PX)} px)")
        if self.context_adu.shape[1]:  # a temporal model: so is its anchor
            best = min(best, self._temporal_mean_mse_adu2())
        return best

    def _temporal_mean_mse_adu2(self) -> tuple[float, str]:
        """The classical anchor of a model with context frames: the mean over the window of each
        frame before, Gaussian-filtered, and the blind-spot Gaussian of the frame itself, at the
        best width (0: the frames before unfiltered) chosen on these very pixels."""
        k = self.context_adu.shape[1] + 1
        best = (math.inf, "")
        for sigma_px in (0.0, *BASELINE_GAUSSIAN_SIGMAS_PX):
            if math.ceil(3 * sigma_px) >= min(self.targets_adu.shape[-2:]):
                continue
            before = self.context_adu if sigma_px == 0 else gaussian_filter(self.context_adu, sigma_px)
            current = blind_spot_gaussian(self.targets_adu, max(sigma_px, BASELINE_GAUSSIAN_SIGMAS_PX[0]))
            predicted = (before.sum(dim=1, keepdim=True) + current) / k
            loss = float(masked_mse(predicted, self.targets_adu, self.masks))
            if loss < best[0]:
                best = (loss, f"the mean of the {k} frames of the window, each Gaussian-filtered at sigma "
                              f"{sigma_px:g} px (the frame itself blind-spot), best of 0, "
                              f"{', '.join(f'{s:g}' for s in BASELINE_GAUSSIAN_SIGMAS_PX)} px")
        return best

    def _mean(self, net: nn.Module, loss: Callable[[torch.Tensor, slice], torch.Tensor]) -> float:
        was_training = net.training
        net.eval()
        total = count = 0.0
        with torch.no_grad():
            for start in range(0, len(self.inputs), self.batch_size):
                i = slice(start, start + self.batch_size)
                n = float(self.masks[i].sum())
                total += float(loss(net(self.inputs[i]), i)) * n
                count += n
        net.train(was_training)
        return total / max(count, 1.0)


def train_denoise(
    frames: np.ndarray,
    config: DenoiseTrainConfig,
    progress: Callable[[TrainProgress], None] | None = None,
    held_out: np.ndarray | None = None,
) -> TrainedDenoiser:
    """Noise2Void training on noisy frames (T, H, W) uint16, for config.steps or budget_seconds.

    With ``held_out`` frames, the N2V loss on them is measured every ``validate_every_steps``;
    the weights with the lowest one are kept, and training stops early after
    ``patience_validations`` validations without improvement.

    A time budget becomes a step count after the warm-up, re-estimated from the recent speed at
    every validation (so a slow start does not cut training short) and never past the budget.
    A ``steps`` run is exactly reproducible by its seed; a budget run trains the step count it
    reports, with a schedule that adapted to the machine's speed.
    """
    if frames.ndim != 3:
        raise ValueError(f"frames must be (T, H, W), got shape {frames.shape}")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    transform = IntensityTransform.fit(config.intensity, frames)
    data = transform.to_network(torch.from_numpy(frames.astype(np.float32)))
    validate = (HeldOutLoss(held_out, transform, config, VALIDATION_PATCHES_IN_LOOP)
                if held_out is not None else None)
    net = UNet(UNetConfig(config.depth, config.base_channels, in_channels=config.context_frames))

    def train_loss(graph: nn.Module) -> torch.Tensor:
        windows = random_windows(data, config.patch_px, config.batch_size, generator,
                                 context_frames=config.context_frames)
        current = windows[:, -1:]
        masked, mask = config.masking(current, generator)  # only the frame denoised is masked
        return masked_mse(graph(torch.cat([windows[:, :-1], masked], dim=1)), current, mask)

    trained = fit(net, train_loss, validate, config.loop_settings(), progress)
    if config.intensity != "linear":
        transform = transform.with_bias(_mean_bias_adu(net, transform, frames, config.seed))
    return TrainedDenoiser(net, transform, trained.steps, trained.train_seconds, trained.final_loss,
                           trained.stopped_because, trained.best_step, trained.best_validation_loss, trained.curve)


BIAS_FRAMES = 16


def _mean_bias_adu(net: nn.Module, transform: IntensityTransform, frames: np.ndarray, seed: int) -> float:
    """Mean ADU lost by the non-linear transform's round trip (Jensen), over up to BIAS_FRAMES
    training frames: mean(input) - mean(output). Noise2Void's estimate is unbiased in network
    units; this makes the mean of the served output equal the mean of its input."""
    pick = np.sort(np.random.default_rng(seed).permutation(len(frames))[:BIAS_FRAMES])
    m = net.config.size_multiple_px
    crop = frames[:, : frames.shape[1] // m * m, : frames.shape[2] // m * m]
    raw = torch.from_numpy(crop[window_indices(pick, net.config.in_channels)].astype(np.float32))
    with torch.no_grad():
        out = torch.cat([InGraphNormalised(net, transform)(r[None]) for r in raw])
    return float(raw[:, -1:].double().mean() - out.double().mean())


def held_out_metrics(denoise: Callable[[np.ndarray], np.ndarray], held_out: FrameSet) -> dict[str, float]:
    """PSNR (dB) of the noisy and the denoised held-out frames against clean, per modality and
    peak signal (photons); their mean over conditions, and the same mean for the classical anchor
    (``psnr_db_denoised_mean_classical``: `VIRTUAL_CLASSICAL_METHOD`).

    All specimens of a condition are pooled (see ``psnr_db``), so that nearly empty frames (a few
    dim beads) do not dominate, as they would in a mean of per-frame PSNRs.
    """
    from scipy.ndimage import gaussian_filter

    metrics: dict[str, float] = {}
    modality = np.asarray(held_out.modality)
    denoised_db, classical_db = [], []
    for kind in dict.fromkeys(held_out.modality):
        for photons in np.unique(held_out.peak_photons):
            frames = np.flatnonzero((modality == kind) & (held_out.peak_photons == photons))
            noisy, clean = held_out.noisy_adu[frames], held_out.clean_adu[frames]
            denoised = np.concatenate([denoise(frame[None, None]) for frame in noisy])
            for label, images in (("noisy", noisy), ("denoised", denoised)):
                key = f"psnr_{label}_db_{kind}_at_{photons:g}_photons"
                metrics[key] = round(psnr_db(images, clean), 3)
            denoised_db.append(metrics[f"psnr_denoised_db_{kind}_at_{photons:g}_photons"])
            # The classical anchor: a Gaussian filter with its width chosen against the truth,
            # per condition (better than a user could tune it).
            classical_db.append(max(
                psnr_db(np.stack([gaussian_filter(f.astype(np.float64), s) for f in noisy]), clean)
                for s in BASELINE_GAUSSIAN_SIGMAS_PX))
    metrics["psnr_db_denoised_mean"] = round(float(np.mean(denoised_db)), 3)
    metrics["psnr_db_denoised_mean" + CLASSICAL_SUFFIX] = round(float(np.mean(classical_db)), 3)
    return metrics


VIRTUAL_CLASSICAL_METHOD = (f"a Gaussian filter, its sigma chosen against the truth per condition (of "
                            f"{', '.join(f'{s:g}' for s in BASELINE_GAUSSIAN_SIGMAS_PX)} px)")


def _ort_denoiser(proto, card: ModelCard | None = None, frames_adu: np.ndarray | None = None
                  ) -> Callable[[np.ndarray], np.ndarray]:
    """The exported graph through onnxruntime: (N, H, W) frames, or (N, C, H, W) windows, -> (N, H, W).
    A camera-agnostic version (``card``: the default one a new version is compared with) gets its
    input in photons by the camera estimated from ``frames_adu`` (whole frames: the held-out data), as
    the offline commands would convert them."""
    session = export.cpu_session(proto)
    scale = None
    if card is not None and card.normalisation.kind == "photons":
        scale = photon_scale(np.asarray(frames_adu).reshape(-1, *np.shape(frames_adu)[-2:]))

    def run(x: np.ndarray) -> np.ndarray:
        return session.run([export.OUTPUT_NAME], {export.INPUT_NAME: np.ascontiguousarray(x)})[0][:, 0]

    in_adu = run if scale is None else scale.around(run)
    return lambda raw: in_adu(raw[:, None] if raw.ndim == 3 else raw)


def _train_and_export(
    frames: np.ndarray, held_out: np.ndarray, config: DenoiseTrainConfig,
    progress: Callable[[TrainProgress], None] | None,
) -> tuple[TrainedDenoiser, onnx.ModelProto]:
    """Train, export to ONNX, and check torch/onnxruntime parity on held-out frames (raises
    ExportError, so nothing is written, when they disagree)."""
    trained = train_denoise(frames, config, progress, held_out)
    served = trained.served()
    unet = trained.net.config
    proto = export.to_onnx(served, unet.size_multiple_px, channels=config.context_frames)
    rng = np.random.default_rng(config.seed)
    for raw in export.parity_inputs(held_out, unet.size_multiple_px, rng, channels=config.context_frames):
        export.check_parity(served, proto, raw)
    return trained, proto


def train_and_publish(
    repository: Path,
    *,
    name: str = "denoise",
    data: VirtualDenoiseData = VirtualDenoiseData(),
    held_out: VirtualDenoiseData | None = None,
    config: DenoiseTrainConfig = DenoiseTrainConfig(budget_seconds=420.0),
    command: str = "livescope.models.denoise.train.train_and_publish()",
    progress: Callable[[TrainProgress], None] | None = None,
    compare_with: ModelVersion | None = None,
) -> tuple[Path, ModelCard]:
    """Train on ``data``, export, check parity, measure on ``held_out``, write the next version.

    ``held_out`` defaults to 2 frames per condition of ``data`` with another seed; ``compare_with``
    (the default version) is measured on the same frames. Returns the version folder and its
    card; nothing is written if export or parity fails.
    """
    if config.context_frames > 1:
        raise ValueError("context frames need a time series: train on your own stacks (--data); "
                         "the virtual microscope's training frames are independent")
    if held_out is None:
        held_out = data.model_copy(update={"frames_per_condition": 2, "seed": data.seed + 10_000})
    frames, held_out_frames = virtual_frames(data), virtual_frames(held_out)
    trained, proto = _train_and_export(frames.noisy_adu, held_out_frames.noisy_adu, config,
                                       progress)
    metrics = held_out_metrics(_ort_denoiser(proto), held_out_frames)
    rig = VirtualRigConfig()  # the optics and camera the data were simulated with
    trained_for = TrainedFor(
        pixel_size_nm=(rig.pixel_size_um * 1e3,) * 2,
        na=(rig.na,) * 2,
        emission_nm=(rig.emission_nm,) * 2,
        peak_photons=(
            min(data.signal_photons_per_ms) * data.exposure_ms,
            max(data.signal_photons_per_ms) * data.exposure_ms,
        ),
        modalities=data.modalities,
    )
    record = TrainingRecord(command, f"train: {data.describe()}; held out: {held_out.describe()}", config.seed,
                            trained.train_seconds, data_hash=frames.hash(), curve=trained.curve,
                            examples=example_crops(held_out_frames.noisy_adu, config))
    return publish_version(repository, proto, name=name, task="denoise",
                           card_fields=_served_card_fields(trained, config) | {"trained_for": trained_for},
                           metrics=metrics, record=record, classical_method=VIRTUAL_CLASSICAL_METHOD,
                           compare_with=compare_with,
                           score_active=lambda graph, card: held_out_metrics(
                               _ort_denoiser(graph, card, held_out_frames.noisy_adu), held_out_frames))


def _served_card_fields(trained: TrainedDenoiser, config: DenoiseTrainConfig) -> dict:
    """The card fields every denoiser version has: what it is, its tensors, units and tiling."""
    unet = trained.net.config
    return dict(
        description=(
            f"Noise2Void (N2V2) UNet, depth {unet.depth}, {unet.base_channels} base channels, "
            f"{parameter_count(trained.net)} parameters; self-supervised on noisy frames only; "
            f"{trained.steps} steps of {config.batch_size} patches of {config.patch_px} px "
            f"(stopped by {trained.stopped_because}"
            + (f"; kept the weights of step {trained.best_step}, lowest held-out loss"
               if trained.best_step is not None else "")
            + ("; its command repeats it exactly" if config.budget_seconds is None else
               f"; a time budget: --steps {trained.steps} repeats it closely, not exactly")
            + "); train config: "
            f"{config.model_dump_json(exclude_none=True)}"
        ),
        inputs=(TensorSpec(name=export.INPUT_NAME, dtype="uint16", axes="NCYX"),),
        outputs=(TensorSpec(name=export.OUTPUT_NAME, dtype="float32", axes="NCYX"),),
        normalisation=Normalisation(
            kind="in_graph", transform=trained.transform.kind, offset_adu=trained.transform.offset_adu,
            scale=trained.transform.scale, bias_adu=trained.transform.bias_adu,
        ),
        tiling=Tiling(size_multiple_px=unet.size_multiple_px, halo_px=unet.halo_px),
    ) | ({"denoise": DenoiseSpec(context_frames=config.context_frames)} if config.context_frames > 1 else {})


# -- training on the user's own stacks -----------------------------------------------------------

def validation_windows(frames: np.ndarray, patch_px: int, seed: int,
                       limit: int = MAX_VALIDATION_PATCHES, context_frames: int = 1) -> np.ndarray:
    """Non-overlapping patches tiled from ``frames`` (T, H, W), each with the same patch of the
    ``context_frames - 1`` frames before (causal windows): (N, context_frames, patch, patch); a
    seeded choice of at most ``limit``."""
    t, h, w = frames.shape
    places = [(i, y, x) for i in range(t)
              for y in range(0, h - patch_px + 1, patch_px)
              for x in range(0, w - patch_px + 1, patch_px)]
    if len(places) > limit:
        pick = np.random.default_rng(seed).choice(len(places), limit, replace=False)
        places = [places[j] for j in np.sort(pick)]
    return np.stack([frames[window_indices(i, context_frames), y : y + patch_px, x : x + patch_px]
                     for i, y, x in places])


def n2v_validation_mse_adu2(trained: TrainedDenoiser, held_out_adu: np.ndarray,
                            config: DenoiseTrainConfig) -> tuple[dict[str, float], str]:
    """The Noise2Void loss on held-out frames, in ADU^2: the MSE between each blind-spot pixel's
    prediction and its own noisy value, over seeded masks of held-out patches.

    With independent noise this is the error against the clean image plus the noise variance, so
    only differences matter; ``..._classical`` is the same loss for the best classical filter
    (named by the second value returned), the baseline the quality gate holds the network to;
    ``..._median_filter`` the blind-spot fill's alone.
    """
    held_out = HeldOutLoss(held_out_adu, trained.transform, config, MAX_VALIDATION_PATCHES)
    classical, method = held_out.classical_mse_adu2()
    return {
        "n2v_validation_mse_adu2": round(held_out.mse_adu2(trained.net), 4),
        "n2v_validation_mse_adu2" + CLASSICAL_SUFFIX: round(classical, 4),
        "n2v_validation_mse_adu2_median_filter": round(held_out.median_fill_mse_adu2(), 4),
        "n2v_validation_patches": float(len(held_out.targets)),
    }, method



def example_crops(frames_adu: np.ndarray, config: DenoiseTrainConfig, n: int = 3,
                  side_px: int = 96) -> np.ndarray | None:
    """Centre crops of up to ``n`` held-out frames, spread over them, to show beside the new version's
    output (a single-frame model's: one with context frames takes windows, not frames)."""
    if config.context_frames > 1 or not len(frames_adu):
        return None
    t, h, w = frames_adu.shape
    side = min(side_px, h, w) // 8 * 8
    if side < 16:
        return None
    y0, x0 = (h - side) // 2, (w - side) // 2
    picked = np.linspace(0, t - 1, min(n, t)).round().astype(int)
    return frames_adu[picked, y0:y0 + side, x0:x0 + side]


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
    command: str = "livescope.models.denoise.train.train_and_publish_own_data()",
    session_ids: tuple[str, ...] = (), compare_with: ModelVersion | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
) -> tuple[Path, ModelCard]:
    """Train on the user's stacks (``models.denoise.user_data.load_training_stacks``), export, check
    parity, measure the N2V validation loss on the held-out part, write the next version.

    No clean images exist, so the held-out metric is the self-supervised loss itself.
    """
    trained, proto = _train_and_export(data.train_adu, data.held_out_adu, config, progress)
    metrics, classical_method = n2v_validation_mse_adu2(trained, data.held_out_adu, config)
    metrics["n2v_train_loss_final"] = round(trained.final_loss, 6)
    # The comparison: both versions through onnxruntime, on the same masked held-out patches (the
    # card's metric is the trained network's in torch).
    compared = score_active = None
    if compare_with is not None:
        held_out = HeldOutLoss(data.held_out_adu, trained.transform, config, MAX_VALIDATION_PATCHES)

        def served_loss(graph: onnx.ModelProto, card: ModelCard | None = None) -> dict[str, float]:
            context = card.context_frames if card is not None else config.context_frames
            served = _ort_denoiser(graph, card, data.held_out_adu)
            return {"n2v_validation_mse_adu2": round(held_out.served_mse_adu2(served, context), 4)}

        compared, score_active = served_loss(proto), served_loss
    record = TrainingRecord(command, data.describe(), config.seed, trained.train_seconds,
                            data_hash=data.data_hash, session_ids=session_ids, curve=trained.curve,
                            examples=example_crops(data.held_out_adu, config))
    return publish_version(repository, proto, name=name, task="denoise",
                           card_fields=_served_card_fields(trained, config)
                           | {"trained_for": TrainedFor(pixel_size_nm=data.pixel_size_nm)},
                           metrics=metrics, record=record, compare_with=compare_with, score_active=score_active,
                           compared_metrics=compared, classical_method=classical_method)

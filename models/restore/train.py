"""Train a cross-modality restoration network (confocal -> STED) and publish it as a model version.

Pairs come from ``models.restore.data``: from the virtual microscope (noise-free STED targets) or
from a calibration session (noisy STED targets: their noise is independent of the confocal
input's, so the squared error trains towards the expected STED image, as in Noise2Noise).
Whole fields are held out; the held-out loss is measured every ``validate_every_steps`` on fixed
patches and the best weights are kept (early stop after ``patience_validations`` without gain).
Then the served graph (``models.restore.net.RestoreGraph``) is exported to ONNX, checked against
torch, and scored on the held-out fields through onnxruntime:

- PSNR (dB) of the restored frame against the high image (noise-free where there is one), next
  to the input left unchanged (it is at the same brightness: the pairs are scaled so);
- a resolution figure: the period (px, and nm when the pixel size is known) at which the Fourier
  ring correlation of the frame with the high image falls below 0.5 (`frc_resolution_px`), for
  the restored frame and the unchanged one: the finest detail in which the frame agrees with the
  truth. (FRC ignores a pure blur -- it is normalised per ring --, but not what a blur does to
  noisy data: beyond the confocal pass band the confocal frame is noise only, uncorrelated.)
- the classical reference of the quality gate (``psnr_db_restored_classical``,
  `classical_held_out_psnr`): the better of the input unchanged and a Richardson-Lucy
  deconvolution of it whose Gaussian PSF and iteration count are chosen against the held-out
  targets themselves (a best case for the classical method).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from pydantic import Field

from livescope.modelcard import ModelCard, Normalisation, TensorSpec, Tiling, TrainedFor
from livescope.models import export
from livescope.models.budget import TrainProgress
from livescope.models.compare import CLASSICAL_SUFFIX
from livescope.models.metrics import psnr_db
from livescope.models.publish import TrainingRecord, publish_version
from livescope.models.restore.data import RestorePair, require_fields, sample_patches
from livescope.models.restore.net import INPUT_NAME, OUTPUT_NAME, OUTPUT_UNITS, RestoreGraph, restore_unet
from livescope.models.supervised import SupervisedTrainConfig, fit_supervised
from livescope.models.training_loop import TrainedGraph
from livescope.models.unet import parameter_count
from livescope.repository import ModelVersion

HELD_OUT_PATCHES = 64
FRC_THRESHOLD = 0.5  # agreement with a known reference (not the 1/7 of two noisy halves)
# Richardson-Lucy settings tried against the held-out targets (the best is the classical score): the
# Gaussian PSF's sigma (px; the virtual confocal PSF is ~2.5 px at 30 nm pixels) and iteration counts.
CLASSICAL_SIGMAS_PX = (0.7, 1.0, 1.5, 2.0, 2.5, 3.0)
CLASSICAL_ITERATIONS = (5, 10, 20, 30, 50)


class RestoreTrainConfig(SupervisedTrainConfig):
    depth: int = Field(default=2, ge=1, le=4, description="depth 2 sees +-32 px: ~5 confocal FWHM at 30 nm")


def _loss(graph: RestoreGraph, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared error in units of each patch's mean brightness (what the network works in)."""
    return torch.mean(((graph(inputs) - targets) / graph.scale(inputs)) ** 2)


def train_restore(pairs: Sequence[RestorePair], held_out: Sequence[RestorePair], config: RestoreTrainConfig,
                  baseline_adu: float, progress: Callable[[TrainProgress], None] | None = None
                  ) -> TrainedGraph:
    """Train on patches of ``pairs``; keep the weights best on fixed patches of ``held_out``."""
    require_fields([*pairs, *held_out], config.patch_px)
    if not held_out:
        raise ValueError("no held-out pairs: hold out at least one field (split_fields)")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    graph = RestoreGraph(restore_unet(config.depth, config.base_channels), baseline_adu=baseline_adu)
    held = sample_patches(held_out, HELD_OUT_PATCHES, config.patch_px, np.random.default_rng(config.seed + 1),
                          config.target)
    return fit_supervised(graph, _loss,
                          lambda: sample_patches(pairs, config.batch_size, config.patch_px, rng, config.target),
                          held, config, progress)


def export_restorer(graph: RestoreGraph, example: RestorePair) -> onnx.ModelProto:
    """ONNX of the served graph (the camera's uint16 in, as every image model), its contract
    checked and its parity with torch on a real frame (a batch of 2 square crops and one
    non-square crop)."""
    multiple = graph.net.config.size_multiple_px
    proto = export.to_onnx(graph, multiple)
    frames = np.clip(np.rint(example.low_adu), 0, 65535)[None]
    for x in export.parity_inputs(frames, multiple, np.random.default_rng(0)):
        export.check_parity(graph, proto, x, INPUT_NAME, OUTPUT_NAME)
    return proto


def restore_with(proto: onnx.ModelProto) -> Callable[[np.ndarray], np.ndarray]:
    """(H, W) ADU frame -> restored (H, W), through onnxruntime on the CPU (H, W multiples of the
    model's size multiple: the caller crops)."""
    session = export.cpu_session(proto)

    def run(frame: np.ndarray) -> np.ndarray:
        raw = np.clip(np.rint(frame), 0, 65535).astype(np.uint16)
        return session.run([OUTPUT_NAME], {INPUT_NAME: raw[None, None]})[0][0, 0]

    return run


def frc_resolution_px(images: Sequence[np.ndarray], references: Sequence[np.ndarray],
                      threshold: float = FRC_THRESHOLD) -> float:
    """The period (px) at which the Fourier ring correlation of ``images`` with ``references``
    (pooled over the pairs; each mean-removed and Hann-windowed) first falls below ``threshold``;
    2 px (Nyquist) if it never does. Rings are 1 / (the smallest side) wide, in cycles/px."""
    side = min(min(a.shape) for a in images)
    edges = np.arange(0.0, 0.5 + 1e-9, 1.0 / side)
    cross = np.zeros(len(edges) - 1)
    power_a, power_b = np.zeros_like(cross), np.zeros_like(cross)
    for a, b in zip(images, references):
        h, w = a.shape
        window = np.outer(np.hanning(h), np.hanning(w))
        fa = np.fft.fft2((a - a.mean()) * window)
        fb = np.fft.fft2((b - b.mean()) * window)
        radius = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
        ring = np.digitize(radius, edges) - 1
        inside = (ring >= 0) & (ring < len(cross))
        cross += np.bincount(ring[inside], (fa * np.conj(fb)).real[inside], len(cross))
        power_a += np.bincount(ring[inside], (np.abs(fa) ** 2)[inside], len(cross))
        power_b += np.bincount(ring[inside], (np.abs(fb) ** 2)[inside], len(cross))
    frc = cross / np.sqrt(np.maximum(power_a * power_b, 1e-30))
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.flatnonzero((frc < threshold) & (centres > 0))
    if below.size == 0:
        return 2.0
    i = int(below[0])
    if i == 0:
        return float(1.0 / centres[0])
    # Linear interpolation between the last ring above and the first below.
    f0, f1, c0, c1 = centres[i - 1], centres[i], frc[i - 1], frc[i]
    f = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0)
    return float(1.0 / f)


def _held_out_frames(pairs: Sequence[RestorePair], target: str, size_multiple_px: int
                     ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The held-out inputs and their high images, cropped to the size multiple (whole frames)."""
    ins, truths = [], []
    m = size_multiple_px
    for pair in pairs:
        h, w = pair.shape
        crop = (slice(0, h // m * m), slice(0, w // m * m))
        ins.append(pair.low_adu[crop])
        truths.append(pair.target(target)[crop])  # noise-free where there is one and target says so
    return ins, truths


def _pooled_psnr_db(images: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    return psnr_db(np.concatenate([a.ravel() for a in images]), np.concatenate([t.ravel() for t in truths]))


def held_out_metrics(restore: Callable[[np.ndarray], np.ndarray], pairs: Sequence[RestorePair], target: str,
                     size_multiple_px: int, pixel_size_um: float | None = None) -> dict[str, float]:
    """PSNR (dB, pooled over the held-out fields: see ``psnr_db``) and FRC resolution of the
    restored whole frames and of the unchanged inputs, against the high images."""
    ins, truths = _held_out_frames(pairs, target, size_multiple_px)
    outs = [restore(frame) for frame in ins]
    metrics: dict[str, float] = {}
    for kind, images in (("restored", outs), ("unchanged", ins)):
        metrics[f"psnr_db_{kind}"] = round(_pooled_psnr_db(images, truths), 3)
    for kind, images in (("restored", outs), ("unchanged", ins)):
        period = frc_resolution_px(images, truths)
        metrics[f"frc_resolution_px_{kind}"] = round(period, 3)
        if pixel_size_um:
            metrics[f"frc_resolution_nm_{kind}"] = round(period * pixel_size_um * 1e3, 1)
    return metrics


def gaussian_psf(sigma_px: float) -> np.ndarray:
    """A normalised 2-D Gaussian kernel, +- 4 sigma."""
    radius = max(math.ceil(4.0 * sigma_px), 1)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-x * x / (2.0 * sigma_px * sigma_px))
    kernel = np.outer(g, g)
    return kernel / kernel.sum()


def richardson_lucy_deconvolved(frame: np.ndarray, baseline_adu: float, sigma_px: float, iterations: int
                                ) -> np.ndarray:
    """Richardson-Lucy deconvolution (``skimage.restoration.richardson_lucy``) of an ADU frame with
    a Gaussian PSF: of the signal above the baseline (clipped at 0: RL needs it non-negative), the
    frame mirrored at its edges for the convolutions, the baseline added back; float32 ADU."""
    from skimage.restoration import richardson_lucy

    psf = gaussian_psf(sigma_px)
    pad = psf.shape[0] // 2 + 1
    signal = np.pad(np.maximum(frame.astype(np.float64) - baseline_adu, 0.0), pad, mode="symmetric")
    out = richardson_lucy(signal, psf, num_iter=iterations, clip=False)
    return (out[pad:-pad, pad:-pad] + baseline_adu).astype(np.float32)


def classical_held_out_psnr(pairs: Sequence[RestorePair], target: str, size_multiple_px: int,
                            baseline_adu: float) -> tuple[float, str]:
    """The classical reference's PSNR on the frames ``held_out_metrics`` scores, and the method in
    words: the better of the input unchanged and Richardson-Lucy deconvolution with the
    ``CLASSICAL_SIGMAS_PX`` x ``CLASSICAL_ITERATIONS`` setting best against the held-out high images
    themselves (a best case for the classical method, so a model that beats it beats it fairly)."""
    ins, truths = _held_out_frames(pairs, target, size_multiple_px)
    best_db, best_method = _pooled_psnr_db(ins, truths), "the input frame unchanged"
    for sigma in CLASSICAL_SIGMAS_PX:
        for iterations in CLASSICAL_ITERATIONS:
            db = _pooled_psnr_db([richardson_lucy_deconvolved(f, baseline_adu, sigma, iterations) for f in ins],
                                 truths)
            if db > best_db:
                best_db = db
                best_method = f"Richardson-Lucy deconvolution, Gaussian PSF sigma {sigma:g} px, {iterations} iterations"
    tried = (f"the best of the input unchanged and Richardson-Lucy with sigma {CLASSICAL_SIGMAS_PX[0]:g}-"
             f"{CLASSICAL_SIGMAS_PX[-1]:g} px x {CLASSICAL_ITERATIONS[0]}-{CLASSICAL_ITERATIONS[-1]} iterations "
             f"against these held-out targets")
    return best_db, f"{best_method} ({tried})"


def train_and_publish_restorer(
    repository: Path, *, name: str, pairs: Sequence[RestorePair], held_out: Sequence[RestorePair],
    config: RestoreTrainConfig, baseline_adu: float, data_description: str, command: str,
    trained_for: TrainedFor = TrainedFor(), pixel_size_um: float | None = None,
    session_ids: tuple[str, ...] = (), compare_with: ModelVersion | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
) -> tuple[Path, ModelCard]:
    """Train, export, check parity, score the held-out fields, write the next version atomically.

    ``compare_with`` (the version active in the server): scored on the same held-out fields; the
    card records the comparison (the deploy gate)."""
    trained = train_restore(pairs, held_out, config, baseline_adu, progress)
    proto = export_restorer(trained.graph, held_out[0])
    unet = trained.graph.net.config
    metrics = held_out_metrics(restore_with(proto), held_out, config.target, unet.size_multiple_px, pixel_size_um)
    classical_db, classical_method = classical_held_out_psnr(held_out, config.target, unet.size_multiple_px,
                                                             baseline_adu)
    metrics["psnr_db_restored" + CLASSICAL_SUFFIX] = round(classical_db, 3)

    def score_active(active: onnx.ModelProto, card: ModelCard) -> dict[str, float]:
        """On crops that both versions' size multiples divide."""
        multiple = math.lcm(card.tiling.size_multiple_px, unet.size_multiple_px)
        return held_out_metrics(restore_with(active), held_out, config.target, multiple, pixel_size_um)

    record = TrainingRecord(command, data_description, config.seed, trained.train_seconds, session_ids=session_ids,
                            curve=trained.curve)
    card_fields = dict(
        description=(
            f"Cross-modality restoration (confocal -> STED, CARE-style UNet, residual), depth {unet.depth}, "
            f"{unet.base_channels} base channels, {parameter_count(trained.graph.net)} parameters. Input: the "
            f"low-resolution (confocal) frame, the camera's uint16 ADU. Output: {OUTPUT_UNITS}. "
            f"{trained.steps} steps of {config.batch_size} patches of {config.patch_px} px (stopped by "
            f"{trained.stopped_because}"
            + (f"; kept the weights of step {trained.best_step}" if trained.best_step else "")
            + f"); train config: {config.model_dump_json(exclude_none=True)}"),
        inputs=(TensorSpec(name=INPUT_NAME, dtype="uint16", axes="NCYX"),),
        outputs=(TensorSpec(name=OUTPUT_NAME, dtype="float32", axes="NCYX"),),
        normalisation=Normalisation(kind="in_graph", transform="linear", offset_adu=baseline_adu),
        tiling=Tiling(size_multiple_px=unet.size_multiple_px, halo_px=unet.halo_px),
        trained_for=trained_for,
    )
    return publish_version(repository, proto, name=name, task="restore", card_fields=card_fields, metrics=metrics,
                           record=record, compare_with=compare_with, score_active=score_active,
                           classical_method=classical_method)

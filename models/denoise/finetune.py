"""Fine-tune the camera-agnostic denoiser on the user's own time series: Noise2Noise on neighbouring
frames, starting from the shipped model.

Two consecutive frames of a time series show nearly the same sample with independent noise, so
each is a noisy target for the other (Noise2Noise, Lehtinen et al. 2018; DeepCAD-RT trains on
adjacent frames the same way). Global drift between them is registered out first (phase
correlation, sub-pixel, shifted by the Fourier shift theorem), which leaves the target's noise
independent of the input's. Starting from the camera-agnostic model (a prior trained broadly on
simulation, `broad`), a few minutes adapt it to this sample and to this camera's real noise:
e.g. noise correlated between neighbouring pixels, which blind-spot training cannot remove and
the simulator did not have.

The held-out score is the same loss on held-out frame pairs. Its expectation is the error against
the clean frame plus the target's noise variance, which is the same for every model, so it ranks
models fairly: the starting model (scored before the first step: when no step beats it, nothing is
written), the version that is the default now, and a Gaussian filter (the classical anchor), each
through onnxruntime as served.

``livescope train denoise --data STACK --fine-tune`` is the command (`fine_tune_and_publish`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from pydantic import Field
from scipy import ndimage
from skimage.filters import window
from skimage.registration import phase_cross_correlation

from livescope.camera_estimate import PhotonScale, photon_scale
from livescope.modelcard import ModelCard
from livescope.models.budget import TrainProgress
from livescope.models.compare import CLASSICAL_SUFFIX
from livescope.models.denoise.broad import (
    PhotonDenoiser,
    anscombe,
    export_photon_denoiser,
    photon_denoiser,
    served_card_fields,
)
from livescope.models.denoise.user_data import UserTrainingData
from livescope.models.publish import TrainingRecord, publish_version
from livescope.models.supervised import SupervisedTrainConfig
from livescope.models.training_loop import TrainingCurve, fit
from livescope.repository import ModelVersion

METRIC = "n2n_validation_mse_stabilised"
"""The held-out score (lower is better): the squared difference, in Anscombe units of the frames'
photons, between a model's output for a held-out frame and its registered neighbour."""
MAX_DRIFT_PX = 16.0  # a neighbour further off than this shows another field: the pair is left out
MAX_PAIR_PIXELS = 2**26  # frames x pixels of pairs kept: 0.5 GB of float32 inputs and targets
CAMERA_FRAMES = 16  # frames, evenly spread, the camera is estimated from
HELD_OUT_PATCHES = 256
LOOP_HELD_OUT_PATCHES = 128
CLASSICAL_SIGMAS_PX = (0.5, 0.7, 1.0, 1.4, 2.0, 2.8)


class FineTuneConfig(SupervisedTrainConfig):
    """A small learning rate: the start is already a good denoiser, and the noisy targets' gradients
    are noisy; a step count or a budget as for every trainer."""

    learning_rate: float = Field(default=3e-4, gt=0)
    patch_px: int = Field(default=64, ge=16)
    target: str = Field(default="noisy", pattern="^noisy$")
    patience_validations: int = Field(default=0, ge=0)


class FineTuneError(ValueError):
    """The data or the starting model cannot be fine-tuned on; the message says why."""


class NoImprovement(FineTuneError):
    """Fine-tuning never beat the starting model on the held-out pairs: nothing is written."""


@dataclass(frozen=True)
class NeighbourPairs:
    """Frames (photons) and, for each, its neighbours registered onto it and averaged: (N, H, W) each,
    valid inside ``margin_px`` of the border (the Fourier shift wraps around)."""

    inputs: np.ndarray
    targets: np.ndarray
    margin_px: int
    drift_px: float  # the largest drift registered out

    def __len__(self) -> int:
        return len(self.inputs)


def neighbour_pairs(frames: np.ndarray, series: np.ndarray, scale: PhotonScale | None = None,
                    max_pixels: int = MAX_PAIR_PIXELS) -> NeighbourPairs:
    """Frames with a neighbour in their series (``series``: a label per frame) and, as each one's
    target, the mean of its neighbours before and after, each registered onto it (two noisy targets
    averaged: half the noise to learn through); photons by ``scale`` (None: ``frames`` are photons).
    At most ``max_pixels`` pixels of such frames, evenly spread over the series (a long series of
    large frames holds far more than a few minutes of training see). Raises FineTuneError if no
    frame has a neighbour."""
    t, h, w = frames.shape
    same = np.asarray(series[1:]) == np.asarray(series[:-1])  # frame i and i + 1 are of one series
    linked = [i for i in range(t) if (i > 0 and same[i - 1]) or (i + 1 < t and same[i])]
    keep = max(1, max_pixels // (h * w))
    if len(linked) > keep:
        linked = [linked[k] for k in np.linspace(0, len(linked) - 1, keep).round().astype(int)]
    hann = window("hann", (h, w))
    seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # frame -> (photons, structure), while a neighbour needs it
    shifts: dict[int, np.ndarray] = {}  # i -> the shift that registers frame i + 1 onto frame i

    def frame(i: int) -> tuple[np.ndarray, np.ndarray]:
        # The structure, not the noise, registers: smoothed, and plain cross-correlation (phase
        # normalisation whitens the noise back up); a Hann window, so that the frame's edges (which
        # do not move) do not pull the shift to zero.
        if i not in seen:
            p = frames[i].astype(np.float32) if scale is None else scale.to_photons(frames[i])
            g = ndimage.gaussian_filter(p, 1.5)
            seen[i] = p, ((g - g.mean()) * hann).astype(np.float32)
        return seen[i]

    def shift_onto(i: int, u: int) -> np.ndarray:
        """The shift registering neighbour ``u`` onto frame ``i`` (each pair registered once)."""
        first = min(i, u)
        if first not in shifts:
            shifts[first] = phase_cross_correlation(frame(first)[1], frame(first + 1)[1], upsample_factor=20,
                                                    normalization=None)[0]
        return shifts[first] if u > i else -shifts[first]

    inputs, targets, drifts = [], [], []
    for i in linked:
        near = []
        for u in (i - 1, i + 1):
            if 0 <= u < t and series[u] == series[i]:
                shift = shift_onto(i, u)
                if np.abs(shift).max() <= MAX_DRIFT_PX:
                    near.append(_shifted(frame(u)[0], shift))
                    drifts.append(float(np.abs(shift).max()))
        if near:
            inputs.append(frame(i)[0])
            targets.append(np.mean(near, axis=0).astype(np.float32))
        for k in [k for k in seen if k < i]:
            del seen[k]  # only frame i and those after it are needed again
    if not inputs:
        raise FineTuneError("no two consecutive frames of one series show the same field (drift above "
                            f"{MAX_DRIFT_PX:g} px, or single frames): fine-tuning needs a time series")
    drift = max(drifts)
    return NeighbourPairs(np.stack(inputs), np.stack(targets), math.ceil(drift) + 2, drift)


def _shifted(frame: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``frame`` moved by ``shift`` (px, sub-pixel) by the Fourier shift theorem: no interpolation
    smooths it, so its noise stays pixel-independent (it wraps around at the border)."""
    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(frame), shift)).real


Patches = tuple[np.ndarray, np.ndarray]  # (inputs, targets), photons, (N, 1, side, side) each


def patches(pairs: NeighbourPairs, n: int, side_px: int, rng: np.random.Generator) -> Patches:
    """``n`` random (input, target) patches, (n, 1, side, side) each, inside the valid margin; a
    random quarter turn each."""
    _, h, w = pairs.inputs.shape
    m = pairs.margin_px
    if min(h, w) - 2 * m < side_px:
        raise FineTuneError(f"frames of {h}x{w} px leave no {side_px} px patch inside the {m} px drift margin")
    i = rng.integers(0, len(pairs), n)
    y = rng.integers(m, h - m - side_px + 1, n)
    x = rng.integers(m, w - m - side_px + 1, n)
    turns = rng.integers(0, 4, n)
    cut = lambda a: np.stack([np.rot90(a[k, r : r + side_px, c : c + side_px], q)  # noqa: E731
                              for k, r, c, q in zip(i, y, x, turns)])[:, None]
    return cut(pairs.inputs), cut(pairs.targets)


def _loss(graph: PhotonDenoiser, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.mean((graph.stabilised(inputs) - anscombe(targets)) ** 2)


def stabilised_mse(outputs_photons: np.ndarray, targets_photons: np.ndarray) -> float:
    """`METRIC` of outputs against their registered neighbours."""
    stabilised = lambda x: anscombe(torch.as_tensor(np.asarray(x), dtype=torch.float64))  # noqa: E731
    return float(torch.mean((stabilised(outputs_photons) - stabilised(targets_photons)) ** 2))


@dataclass(frozen=True)
class FineTuned:
    graph: PhotonDenoiser
    scale: PhotonScale
    steps: int
    train_seconds: float
    stopped_because: str
    best_step: int | None
    best_loss: float | None
    drift_px: float
    curve: TrainingCurve | None = None


def fine_tune(start: PhotonDenoiser, data: UserTrainingData, config: FineTuneConfig,
              progress: Callable[[TrainProgress], None] | None = None) -> tuple[FineTuned, Patches]:
    """Fine-tune ``start`` on ``data``'s neighbour pairs (train part); keep the weights, the start's
    included, with the lowest loss on fixed patches of the held-out part's pairs. Also returns the
    held-out patches (photons: inputs, targets) the final score uses."""
    spread = np.linspace(0, len(data.train_adu) - 1, min(CAMERA_FRAMES, len(data.train_adu))).round().astype(int)
    scale = photon_scale(data.train_adu[spread])
    train = neighbour_pairs(data.train_adu, data.train_series, scale)
    held = neighbour_pairs(data.held_out_adu, data.held_out_series, scale)
    rng = np.random.default_rng(config.seed)
    held_patches = patches(held, HELD_OUT_PATCHES, config.patch_px, np.random.default_rng(config.seed + 1))
    loop_in, loop_target = (torch.from_numpy(a[:LOOP_HELD_OUT_PATCHES]) for a in held_patches)
    torch.manual_seed(config.seed)
    settings = dataclasses.replace(config.loop_settings(), validate_at_start=True)
    trained = fit(start, lambda g: _loss(g, *(torch.from_numpy(a) for a in
                                               patches(train, config.batch_size, config.patch_px, rng))),
                  lambda g: float(_loss(g, loop_in, loop_target)), settings, progress)
    return FineTuned(start, scale, trained.steps, trained.train_seconds, trained.stopped_because,
                     trained.best_step, trained.best_validation_loss, max(train.drift_px, held.drift_px),
                     trained.curve), held_patches


def _score(denoise_photons: Callable[[np.ndarray], np.ndarray], held: Patches) -> float:
    inputs, targets = held
    out = np.concatenate([denoise_photons(inputs[i : i + 16]) for i in range(0, len(inputs), 16)])
    return stabilised_mse(out, targets)


def classical_score(held: Patches) -> tuple[float, str]:
    """The best Gaussian filter's `METRIC` (sigma chosen on these very patches), and the method."""
    best = min((_score(lambda x, s=s: ndimage.gaussian_filter(x, (0, 0, s, s)), held), s) for s in CLASSICAL_SIGMAS_PX)
    return best[0], (f"a Gaussian filter of sigma {best[1]:g} px (best of "
                     f"{', '.join(f'{s:g}' for s in CLASSICAL_SIGMAS_PX)} px on the held-out pairs)")


def fine_tune_and_publish(
    repository: Path, data: UserTrainingData, start: ModelVersion, *, name: str = "denoise",
    config: FineTuneConfig = FineTuneConfig(budget_seconds=180.0), command: str = "fine_tune_and_publish()",
    session_ids: tuple[str, ...] = (), compare_with: ModelVersion | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
) -> tuple[Path, ModelCard]:
    """Fine-tune the camera-agnostic version ``start`` on ``data`` (a time series), export, check parity,
    score it, the default (``compare_with``) and the classical anchor on the same held-out pairs,
    write the next version of ``name``. Raises FineTuneError when ``start`` is not camera-agnostic or the
    data hold no neighbour pairs."""
    if start.card.normalisation.kind != "photons":
        raise FineTuneError(f"{start.ref} takes one camera's ADU, not photo-electrons: fine-tuning starts from a "
                         "camera-agnostic denoiser (e.g. the shipped denoise@3)")
    try:
        graph = PhotonDenoiser.from_onnx(onnx.load(start.onnx_path))
    except ValueError as e:
        raise FineTuneError(f"{start.ref}: {e}") from None
    tuned, held = fine_tune(graph, data, config, progress)
    if tuned.best_step == 0:
        raise NoImprovement(f"fine-tuning for {tuned.steps} steps did not improve on {start.ref}'s held-out score "
                            f"({METRIC} {tuned.best_loss:.4g} on {LOOP_HELD_OUT_PATCHES} patches of neighbouring "
                            f"frames); nothing written: {start.ref} stays as it is")
    proto = export_photon_denoiser(tuned.graph, held[0][:4, 0])
    classical, method = classical_score(held)
    metrics = {METRIC: round(_score(photon_denoiser(proto), held), 5), METRIC + CLASSICAL_SUFFIX: round(classical, 5),
               "n2n_validation_patches": float(len(held[0]))}

    def score_active(active: onnx.ModelProto, card: ModelCard) -> dict[str, float] | None:
        if card.normalisation.kind != "photons":
            return None  # an ADU model of one camera: not comparable on photons (the gate then asks for --force)
        return {METRIC: round(_score(photon_denoiser(active), held), 5)}

    record = TrainingRecord(command, f"{data.describe()}; pairs of consecutive frames, drift up to "
                            f"{tuned.drift_px:.1f} px registered out; camera: {tuned.scale.source}",
                            config.seed, tuned.train_seconds, data_hash=data.data_hash, session_ids=session_ids,
                            curve=tuned.curve, examples=held[0][:3, 0])
    card_fields = dict(
        description=(f"{start.ref} fine-tuned on your time series (Noise2Noise on registered neighbouring frames; "
                     f"{tuned.steps} steps of {config.batch_size} patches of {config.patch_px} px, stopped by "
                     f"{tuned.stopped_because}; kept the weights of step {tuned.best_step}). Input and output: "
                     f"noise-equivalent photo-electrons, as {start.ref}'s; train config: "
                     f"{config.model_dump_json(exclude_none=True)}"),
        **served_card_fields(tuned.graph.net.config),
        trained_for=start.card.trained_for,
    )
    return publish_version(repository, proto, name=name, task="denoise", card_fields=card_fields, metrics=metrics,
                           record=record, compare_with=compare_with, score_active=score_active,
                           classical_method=method)

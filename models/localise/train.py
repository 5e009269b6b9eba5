"""Train a localisation network on simulation only, and publish it as a model version.

Every step draws a fresh batch from ``models.localise.data`` (nothing is stored: the simulator is
the dataset), so the network never sees the same frame twice. The window's last frame is the one
to localise (``models.localise.net``: causal, for the live stream). A fixed held-out set (another
seed) is scored every ``validate_every_steps``; the best weights are kept. Then the network is
exported to ONNX (input ``frames``: float32 [N, context, H, W] photons; output ``maps``), checked
against torch, scored on the held-out set through onnxruntime and the server's post-processing
(Jaccard, RMSE, efficiency as in the 2016 SMLM challenge) and written atomically. The quality gate
(``models.compare.quality_gate``) compares its Jaccard with the classical ThunderSTORM-like fitter's
(``models.localise.classical``) on the same held-out frames (``classical_held_out_jaccard``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from livescope.emitters import LOCALISE_MAP_CHANNELS, EmitterTable
from livescope.modelcard import LocaliseSpec, ModelCard, Normalisation, TensorSpec, Tiling, TrainedFor
from livescope.models import export
from livescope.models.budget import TrainProgress
from livescope.models.compare import CLASSICAL_SUFFIX
from livescope.models.localise.classical import localise_classical
from livescope.models.localise.data import LocaliseBatch, LocalisePsf, LocaliseSimulation, simulate_batch
from livescope.models.localise.metrics import score_localisations
from livescope.models.localise.net import LocaliseNet, LocaliseNetConfig, Targets, mixture_loss
from livescope.models.publish import TrainingRecord, publish_version
from livescope.models.training_loop import LoopSettings, TrainedGraph, fit
from livescope.models.unet import parameter_count
from livescope.repository import ModelVersion

INPUT_NAME = "frames"
OUTPUT_NAME = "maps"
# The classical fitter's settings tried on the held-out frames (the best Jaccard is its score):
# detection thresholds (multiples of std(F1); ThunderSTORM's default 1.0, lower ones find more of the
# simulator's dim emitters) and fitting radii (px; ThunderSTORM's 3, 2 fits crowded frames and edges better).
CLASSICAL_THRESHOLDS = (0.25, 0.5, 1.0, 2.0)
CLASSICAL_ROI_PX = (2, 3)
# A 2-D fitter's sigma range for astigmatic spots: any width its fit allows (0.25-4 x the initial sigma),
# less a degenerate narrow end; the default 0.5-2 x rejects the defocused ones.
CLASSICAL_SIGMA_RANGE_3D = (0.5, 4.0)


class LocaliseTrainConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    psf: LocalisePsf = "gaussian"
    # 16/24 channels (393k parameters) train ~1.7x faster per step on a CPU than 24/32 (757k)
    frame_channels: int = Field(default=16, ge=4)
    temporal_channels: int = Field(default=24, ge=4)
    depth: int = Field(default=2, ge=1, le=3)
    frame_px: int = Field(default=40, ge=16, description="simulated frames are this square")
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=6e-4, gt=0, description="peak (DECODE's); cosine decay to 1%")
    steps: int | None = Field(default=None, ge=1)
    budget_seconds: float | None = Field(default=None, gt=0)
    validate_every_steps: int = Field(default=200, ge=1)
    held_out_samples: int = Field(default=256, ge=8)
    seed: int = 0

    def net_config(self, simulation: LocaliseSimulation) -> LocaliseNetConfig:
        three_d = self.psf == "astigmatic"
        return LocaliseNetConfig(
            context_frames=simulation.context_frames, frame_channels=self.frame_channels,
            temporal_channels=self.temporal_channels, depth=self.depth, three_d=three_d,
            z_range_nm=simulation.z_range_nm, photons_max=1.5 * simulation.photons[1],
            background_max_photons=1.5 * simulation.background_photons_per_px[1])

    def loop_settings(self) -> LoopSettings:
        """The training loop's settings: AdamW (DECODE's), clipped gradients, the best weights kept
        without early stop, validation before counting each step (`models.training_loop`)."""
        return LoopSettings(learning_rate=self.learning_rate, steps=self.steps, budget_seconds=self.budget_seconds,
                            validate_every_steps=self.validate_every_steps, weight_decay=0.1,
                            clip_grad_norm=10.0,  # a rare dense batch must not blow up
                            validate_before_counting=True)


def targets_of(batch: LocaliseBatch) -> Targets:
    """The last context frame's emitters inside the frame, in px, padded per sample; photons and
    background as photo-electrons (see ``network_input``)."""
    truth, inside = batch.truth, batch.inside
    rows = truth.rows[inside]
    n = batch.frames_adu.shape[0]
    sample = rows["frame"].astype(np.int64) - 1
    counts = np.bincount(sample, minlength=n)
    width = max(int(counts.max(initial=0)), 1)
    order = np.argsort(sample, kind="stable")
    rows, sample = rows[order], sample[order]
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    pixel = batch.pixel_size_nm[sample]
    qe = batch.qe[sample]

    def padded(values: np.ndarray) -> torch.Tensor:
        out = np.zeros((n, width), np.float32)
        out[sample, slot] = values
        return torch.from_numpy(out)

    mask = np.zeros((n, width), bool)
    mask[sample, slot] = True
    return Targets(x_px=padded(rows["x_nm"] / pixel), y_px=padded(rows["y_nm"] / pixel),
                   z_nm=padded(rows["z_nm"]), photons=padded(rows["photons"] * qe),
                   mask=torch.from_numpy(mask),
                   background=torch.from_numpy((batch.background_photons * batch.qe).astype(np.float32)))


def network_input(batch: LocaliseBatch) -> np.ndarray:
    """The frames as the network takes them: photo-electrons, (ADU - baseline) x e-/ADU / EM gain.

    That is what a user's camera calibration gives (no QE needed) and what ThunderSTORM calls
    photons; the simulator's photons are those reaching the camera, QE times more."""
    return np.ascontiguousarray(batch.photo_electrons())


def _inputs(batch: LocaliseBatch) -> torch.Tensor:
    return torch.from_numpy(network_input(batch))


def train_localise(simulation: LocaliseSimulation, config: LocaliseTrainConfig,
                   progress: Callable[[TrainProgress], None] | None = None) -> TrainedGraph:
    """Train on fresh simulated batches; keep the weights best on a fixed held-out batch."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    held_out = simulate_batch(simulation, config.held_out_samples, np.random.default_rng(config.seed + 10_000))
    held_inputs, held_targets = _inputs(held_out), targets_of(held_out)
    net = LocaliseNet(config.net_config(simulation))
    three_d = net.config.three_d

    def train_loss(graph: nn.Module) -> torch.Tensor:
        batch = simulate_batch(simulation, config.batch_size, rng)
        return mixture_loss(graph(_inputs(batch)), targets_of(batch), three_d)["total"]

    def held_out_loss(graph: nn.Module) -> float:
        total = 0.0
        for start in range(0, config.held_out_samples, 64):
            part = slice(start, start + 64)
            sub = Targets(*(getattr(held_targets, f)[part] for f in Targets.__dataclass_fields__))
            total += float(mixture_loss(graph(held_inputs[part]), sub, three_d)["total"]) * sub.mask.shape[0]
        return total / config.held_out_samples

    return fit(net, train_loss, held_out_loss, config.loop_settings(), progress)


def export_localiser(net: LocaliseNet, parity_batch: LocaliseBatch) -> onnx.ModelProto:
    """ONNX of ``net`` (frames float32 [N, C, H, W] photons -> maps), parity-checked on a batch
    and on a larger single field."""
    c, m = net.config, net.config.size_multiple_px
    example = torch.full((2, c.context_frames, 4 * m, 4 * m), 20.0)
    proto = export.export_graph(net, example, INPUT_NAME, OUTPUT_NAME)
    export.check_contract(proto, INPUT_NAME, OUTPUT_NAME, c.context_frames, len(LOCALISE_MAP_CHANNELS),
                          onnx.TensorProto.FLOAT)
    x = network_input(parity_batch)
    h, w = x.shape[2] // m * m, x.shape[3] // m * m
    export.check_parity(net, proto, np.ascontiguousarray(x[:4, :, :h, :w]), INPUT_NAME, OUTPUT_NAME)
    return proto


def held_out_scores(proto: onnx.ModelProto, held_out: LocaliseBatch, spec: LocaliseSpec) -> dict[str, float]:
    """Jaccard, RMSE and efficiency of the exported model on ``held_out`` (onnxruntime + the
    server's post-processing), against the last frame's emitters inside the frame."""
    from livescope.localise_maps import maps_to_emitters

    session = export.cpu_session(proto)
    maps = session.run([OUTPUT_NAME], {INPUT_NAME: network_input(held_out)})[0]
    found = EmitterTable.concatenate([
        maps_to_emitters(maps[i], float(held_out.pixel_size_nm[i]), i + 1, spec) for i in range(len(maps))])
    truth = held_out.truth.select(held_out.inside)  # photons: not scored
    scores = score_localisations(found, truth, three_d=spec.three_d)
    keys = ("jaccard", "recall", "precision", "rmse_lateral_nm", "rmse_axial_nm", "efficiency_percent")
    return {f"held_out_{k}": round(float(v), 4) for k, v in scores.model_dump().items()
            if k in keys and v is not None}


def classical_held_out_jaccard(held_out: LocaliseBatch, three_d: bool) -> tuple[float, str]:
    """The classical fitter's Jaccard on the frames ``held_out_scores`` scores (each sample's last
    frame, against its emitters inside the frame), and the method in words.

    Each frame in photo-electrons ((ADU - baseline) x e-/ADU / EM gain, what the fitter takes),
    the initial sigma the sample's true (in-focus) PSF sigma, the detection threshold and fitting
    radius the best of ``CLASSICAL_THRESHOLDS`` x ``CLASSICAL_ROI_PX`` on these very frames: a best
    case for the classical method, so a model that beats it beats it fairly. It is a 2-D fitter:
    for a 3-D model it is scored laterally (the model in 3-D, also within 500 nm in z)."""
    last = held_out.frames_adu[:, -1].astype(np.float64) - held_out.baseline_adu[:, None, None]
    photons = last * (held_out.e_per_adu / held_out.em_gain)[:, None, None]
    truth = held_out.truth.select(held_out.inside)
    extra = {"sigma_range": CLASSICAL_SIGMA_RANGE_3D} if three_d else {}

    def jaccard(threshold: float, roi_px: int) -> float:
        found = EmitterTable.concatenate([
            localise_classical(photons[i], float(held_out.pixel_size_nm[i]),
                               float(held_out.psf_sigma_px[i] * held_out.pixel_size_nm[i]), threshold=threshold,
                               roi_px=roi_px, first_frame=i + 1, **extra)
            for i in range(len(photons))])
        return score_localisations(found, truth, three_d=False).jaccard

    tried = {(t, r): jaccard(t, r) for t in CLASSICAL_THRESHOLDS for r in CLASSICAL_ROI_PX}
    (threshold, roi_px), best = max(tried.items(), key=lambda item: item[1])
    method = (f"the ThunderSTORM-like Poisson-MLE fitter (detection threshold {threshold:g} x std(F1), "
              f"fitting radius {roi_px} px, tuned on these held-out frames)")
    if three_d:
        method += (" scored laterally only (a 2-D fitter, sigma "
                   f"{CLASSICAL_SIGMA_RANGE_3D[0]:g}-{CLASSICAL_SIGMA_RANGE_3D[1]:g} x the in-focus one)")
    return best, method


def train_and_publish_localiser(
    repository: Path, *, name: str, simulation: LocaliseSimulation, config: LocaliseTrainConfig,
    command: str, progress: Callable[[TrainProgress], None] | None = None,
    data_note: str = "", session_ids: tuple[str, ...] = (), compare_with: ModelVersion | None = None,
) -> tuple[Path, ModelCard]:
    """Train on simulation, export, score on held-out simulated movies, write the next version.

    ``data_note``: where the simulation's PSF came from (e.g. a bead calibration); ``compare_with``
    (the server's active version) is scored on the same held-out movies (the deploy gate)."""
    trained = train_localise(simulation, config, progress)
    held_out = simulate_batch(simulation, config.held_out_samples, np.random.default_rng(config.seed + 20_000))
    net = trained.graph
    proto = export_localiser(net, held_out)
    c = net.config
    spec = LocaliseSpec(context_frames=c.context_frames, psf=config.psf, three_d=c.three_d,
                        z_range_nm=simulation.z_range_nm if c.three_d else None)
    metrics = held_out_scores(proto, held_out, spec)
    classical_jaccard, classical_method = classical_held_out_jaccard(held_out, c.three_d)
    metrics["held_out_jaccard" + CLASSICAL_SUFFIX] = round(float(classical_jaccard), 4)

    def score_active(active: onnx.ModelProto, card: ModelCard) -> dict[str, float] | None:
        """With the active version's own post-processing; not a localiser: not scored."""
        return None if card.localise is None else held_out_scores(active, held_out, card.localise)

    record = TrainingRecord(
        command, (f"{data_note}; " if data_note else "") + f"simulated on the fly: {simulation.model_dump_json()}",
        config.seed, trained.train_seconds, session_ids=session_ids, curve=trained.curve)
    card_fields = dict(
        description=(
            f"DECODE-style localisation network ({config.psf} PSF, {'3-D' if c.three_d else '2-D'}): "
            f"frame UNet {c.frame_channels} + temporal UNet {c.temporal_channels} channels, depth "
            f"{c.depth}, {parameter_count(net)} parameters; trained on simulation only, "
            f"{trained.steps} steps of {config.batch_size} fields of {config.frame_px} px (stopped by "
            f"{trained.stopped_because}; kept step {trained.best_step}); train config: "
            f"{config.model_dump_json(exclude_none=True)}"),
        inputs=(TensorSpec(name=INPUT_NAME, dtype="float32", axes="NCYX"),),
        outputs=(TensorSpec(name=OUTPUT_NAME, dtype="float32", axes="NCYX"),),
        normalisation=Normalisation(kind="none"),
        tiling=Tiling(size_multiple_px=c.size_multiple_px, halo_px=c.halo_px),
        trained_for=TrainedFor(
            pixel_size_nm=simulation.pixel_size_nm, emitter_photons=simulation.photons,
            background_photons_per_px=simulation.background_photons_per_px,
            density_per_um2=simulation.density_per_um2,
            psf_sigma_px=None if c.three_d else simulation.psf_sigma_px),
        localise=spec,
    )
    return publish_version(repository, proto, name=name, task="localise", card_fields=card_fields, metrics=metrics,
                           record=record, compare_with=compare_with, score_active=score_active,
                           classical_method=classical_method)

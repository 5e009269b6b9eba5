"""Train a localisation network on simulation only, and publish it as a model version.

Every step draws a fresh batch from ``models.localise.data`` (nothing is stored: the simulator is
the dataset), so the network never sees the same frame twice. The window's last frame is the one
to localise (``models.localise.net``: causal, for the live stream). A fixed held-out set (another
seed) is scored every ``validate_every_steps``; the best weights are kept. Then the network is
exported to ONNX (input ``frames``: float32 [N, context, H, W] photons; output ``maps``), checked
against torch, scored on the held-out set through onnxruntime and the server's post-processing
(Jaccard, RMSE, efficiency as in the 2016 SMLM challenge) and written atomically.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch
from pydantic import BaseModel, ConfigDict, Field

import livescope
from livescope.emitters import LOCALISE_MAP_CHANNELS, EmitterTable
from livescope.modelcard import (
    MODEL_FILE,
    LocaliseSpec,
    ModelCard,
    Normalisation,
    Provenance,
    TensorSpec,
    Tiling,
    TrainedFor,
)
from livescope.models import export
from livescope.models.budget import StepPlan, TrainProgress
from livescope.models.compare import compare
from livescope.models.localise.data import LocaliseBatch, LocalisePsf, LocaliseSimulation, simulate_batch
from livescope.models.localise.metrics import score_localisations
from livescope.models.localise.net import LocaliseNet, LocaliseNetConfig, Targets, mixture_loss
from livescope.models.unet import parameter_count
from livescope.repository import ModelVersion, write_version

INPUT_NAME = "frames"
OUTPUT_NAME = "maps"


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


@dataclass(frozen=True)
class TrainedLocaliser:
    net: LocaliseNet
    steps: int
    train_seconds: float
    stopped_because: str
    best_step: int | None
    best_validation_loss: float | None


def train_localise(simulation: LocaliseSimulation, config: LocaliseTrainConfig,
                   progress: Callable[[TrainProgress], None] | None = None) -> TrainedLocaliser:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    held_out = simulate_batch(simulation, config.held_out_samples, np.random.default_rng(config.seed + 10_000))
    held_inputs, held_targets = _inputs(held_out), targets_of(held_out)
    net = LocaliseNet(config.net_config(simulation))
    three_d = net.config.three_d
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=0.1)
    plan = StepPlan(config.steps, config.budget_seconds, replan_every=config.validate_every_steps)
    loss_avg = float("nan")
    val_loss = best_loss = best_step = best_state = None

    def validate() -> float:
        net.eval()
        with torch.no_grad():
            total = 0.0
            for start in range(0, config.held_out_samples, 64):
                part = slice(start, start + 64)
                sub = Targets(*(getattr(held_targets, f)[part] for f in Targets.__dataclass_fields__))
                total += float(mixture_loss(net(held_inputs[part]), sub, three_d)["total"]) * (
                    sub.mask.shape[0])
        net.train()
        return total / config.held_out_samples

    net.train()
    while plan.running:
        for group in optimiser.param_groups:
            group["lr"] = config.learning_rate * plan.lr_factor()
        batch = simulate_batch(simulation, config.batch_size, rng)
        losses = mixture_loss(net(_inputs(batch)), targets_of(batch), three_d)
        optimiser.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)  # a rare dense batch must not blow up
        optimiser.step()
        step = plan.step + 1
        value = float(losses["total"].detach())
        loss_avg = value if math.isnan(loss_avg) else 0.98 * loss_avg + 0.02 * value
        last = plan.total is not None and step >= plan.total
        if step % config.validate_every_steps == 0 or last:
            val_loss = validate()
            if best_loss is None or val_loss < best_loss:
                best_loss, best_step, best_state = val_loss, step, copy.deepcopy(net.state_dict())
        plan.after_step()
        if progress is not None:
            progress(plan.progress(loss_avg, val_loss, best_loss))
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return TrainedLocaliser(net, plan.step, plan.elapsed_s, plan.stopped_because, best_step, best_loss)


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
    import onnxruntime as ort

    from livescope.localise_maps import maps_to_emitters

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    maps = session.run([OUTPUT_NAME], {INPUT_NAME: network_input(held_out)})[0]
    found = EmitterTable.concatenate([
        maps_to_emitters(maps[i], float(held_out.pixel_size_nm[i]), i + 1, spec) for i in range(len(maps))])
    truth = held_out.truth.select(held_out.inside)  # photons: not scored
    scores = score_localisations(found, truth, three_d=spec.three_d)
    keys = ("jaccard", "recall", "precision", "rmse_lateral_nm", "rmse_axial_nm", "efficiency_percent")
    return {f"held_out_{k}": round(float(v), 4) for k, v in scores.model_dump().items()
            if k in keys and v is not None}


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
    proto = export_localiser(trained.net, held_out)
    c = trained.net.config
    spec = LocaliseSpec(context_frames=c.context_frames, psf=config.psf, three_d=c.three_d,
                        z_range_nm=simulation.z_range_nm if c.three_d else None)
    metrics = held_out_scores(proto, held_out, spec)
    comparison = None
    if compare_with is not None and compare_with.card.localise is not None:
        active = held_out_scores(onnx.load(compare_with.onnx_path), held_out, compare_with.card.localise)
        comparison = compare("localise", metrics, compare_with.ref, active)

    def fill(folder: Path, version: int) -> ModelCard:
        export.save(proto, folder / MODEL_FILE)
        return ModelCard(
            name=name, version=version, task="localise",
            description=(
                f"DECODE-style localisation network ({config.psf} PSF, {'3-D' if c.three_d else '2-D'}): "
                f"frame UNet {c.frame_channels} + temporal UNet {c.temporal_channels} channels, depth "
                f"{c.depth}, {parameter_count(trained.net)} parameters; trained on simulation only, "
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
            provenance=Provenance(
                command=command, code_version=livescope.__version__,
                data=(f"{data_note}; " if data_note else "") + f"simulated on the fly: {simulation.model_dump_json()}",
                seed=config.seed, trained_at=datetime.now(timezone.utc).replace(microsecond=0),
                train_seconds=round(trained.train_seconds, 1), session_ids=session_ids),
            metrics=metrics, comparison=comparison,
            localise=spec,
        )

    return write_version(repository, name, fill)

"""Train the PSF estimator on simulation only (models/psf/estimate_data.py) and publish it as a
version of ``psf``: `livescope train psf`.

Loss: a Gaussian negative log-likelihood with a predicted log-variance for |defocus| (µm) and the
magnitudes of astigmatism and spherical aberration (waves), each weighted by its predicted variance
to the power 1/2 (beta-NLL, Seitzer et al. 2022: plain NLL lets a hard sample's large variance
starve its mean of gradient), plus binary cross-entropy for the two signs (livescope/psf_estimate.py).
The held-out metrics are measured through onnxruntime on patches of the optics region the training
never drew (`PsfSimulation.held_out`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from livescope.modelcard import ModelCard, Normalisation, TensorSpec, Tiling, TrainedFor
from livescope.models import export
from livescope.models.budget import TrainProgress
from livescope.models.compare import CLASSICAL_SUFFIX
from livescope.models.psf.estimate_data import IMMERSIONS, PsfBatch, PsfSimulation, simulate
from livescope.models.psf.estimate_net import PsfEstimator
from livescope.models.publish import TrainingRecord, publish_version
from livescope.models.training_loop import LoopSettings, TrainedGraph, fit
from livescope.psf_estimate import INPUT_NAME, OPTICS_CHANNELS, OUTPUT_CHANNELS, OUTPUT_NAME, tile_estimates

LOG_VAR_RANGE = (-14.0, 4.0)
HELD_OUT_PATCHES = 256
WITHIN_UM = 1.0  # the figure: defocus error over +-1 µm


class PsfTrainConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int | None = Field(default=None, ge=1)
    budget_seconds: float | None = Field(default=None, gt=0)
    seed: int = 0
    batch_size: int = Field(default=48, ge=2)
    width: int = Field(default=24, ge=4, description="channels of the first convolutions")
    learning_rate: float = 2e-3
    validate_every_steps: int = Field(default=100, ge=1)
    held_out_patches: int = Field(default=HELD_OUT_PATCHES, ge=4, description="validation and held-out optics, each")
    simulation: PsfSimulation = PsfSimulation()


def inputs_of(batch: PsfBatch) -> torch.Tensor:
    """The served graph's input: each tile with its optics as constant channels."""
    n, p, _ = batch.adu.shape
    x = np.empty((n, 1 + len(OPTICS_CHANNELS), p, p), np.float32)
    x[:, 0] = batch.adu
    x[:, 1:] = batch.optics[:, :, None, None]
    return torch.from_numpy(x)


def _beta_nll(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    log_var = log_var.clamp(*LOG_VAR_RANGE)
    nll = 0.5 * (log_var + (target - mean) ** 2 * torch.exp(-log_var))
    return (nll * torch.exp(0.5 * log_var).detach()).mean() / torch.exp(0.5 * log_var).detach().mean()


def loss_of(out: torch.Tensor, batch: PsfBatch) -> torch.Tensor:
    o = out[:, :, 0, 0]
    z, a, s = (torch.from_numpy(v) for v in (batch.defocus_um, batch.astigmatism_waves, batch.spherical_waves))
    loss = _beta_nll(o[:, 0], o[:, 1], z.abs()) + _beta_nll(o[:, 2], o[:, 3], a.abs()) \
        + _beta_nll(o[:, 4], o[:, 5], s.abs())
    same_a = ((z > 0) == (a > 0)).float()
    same_s = ((z > 0) == (s > 0)).float()
    return loss + 0.5 * (F.binary_cross_entropy_with_logits(o[:, 6], same_a)
                         + F.binary_cross_entropy_with_logits(o[:, 7], same_s))


def train_psf(config: PsfTrainConfig, progress: Callable[[TrainProgress], None] | None = None) -> TrainedGraph:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 1])
    graph = PsfEstimator(config.width)
    held = simulate(config.simulation, config.held_out_patches, np.random.default_rng([config.seed, 2]))
    held_x = inputs_of(held)

    def train_loss(g: PsfEstimator) -> torch.Tensor:
        batch = simulate(config.simulation, config.batch_size, rng)
        return loss_of(g(inputs_of(batch)), batch)

    def validate(g: PsfEstimator) -> float:
        return float(loss_of(g(held_x), held))

    settings = LoopSettings(learning_rate=config.learning_rate, steps=config.steps,
                            budget_seconds=config.budget_seconds, validate_every_steps=config.validate_every_steps,
                            weight_decay=1e-4, clip_grad_norm=5.0)
    return fit(graph, train_loss, validate, settings, progress)


def export_psf(graph: PsfEstimator, example: PsfBatch) -> onnx.ModelProto:
    """ONNX of the estimator: [N, 5, H, W] float32 -> [N, 8, 1, 1], N, H, W dynamic; parity-checked."""
    x = inputs_of(example)
    proto = export.export_graph(graph, x[:2], INPUT_NAME, OUTPUT_NAME)
    for i in (2, 3):  # export_graph names the output's H, W after the input's; here they are 1 (per tile)
        proto.graph.output[0].type.tensor_type.shape.dim[i].dim_value = 1
    onnx.checker.check_model(proto)
    export.check_parity(graph, proto, x.numpy(), INPUT_NAME, OUTPUT_NAME)
    return proto


def defocus_scores(est: dict[str, np.ndarray], z_um: np.ndarray, astig_waves: np.ndarray | None = None,
                   within_um: float = WITHIN_UM) -> dict[str, float]:
    """|defocus| rms error (nm) over |z| <= ``within_um``, the fraction of errors within 1 and 2
    predicted sigma, and, with the true astigmatism, the signed rms where |astigmatism| >= 0.05 waves."""
    keep = np.abs(z_um) <= within_um
    err = est["abs_defocus_um"][keep] - np.abs(z_um[keep])
    sd = est["abs_defocus_sd_um"][keep]
    out = {"abs_defocus_rms_nm": float(np.sqrt(np.mean(err**2)) * 1e3),
           "abs_defocus_within_1_sigma": float(np.mean(np.abs(err) <= sd)),
           "abs_defocus_within_2_sigma": float(np.mean(np.abs(err) <= 2 * sd)),
           "patches": float(keep.sum())}
    if astig_waves is not None:
        strong = keep & (np.abs(astig_waves) >= 0.05)
        sign = np.where(est["p_defocus_positive"] >= 0.5, 1.0, -1.0) * np.sign(astig_waves)  # rig's sign known
        signed = sign * est["abs_defocus_um"]
        out["signed_defocus_rms_nm_astigmatic"] = float(np.sqrt(np.mean((signed - z_um)[strong] ** 2)) * 1e3)
        out["sign_correct_astigmatic"] = float(np.mean((np.sign(signed) == np.sign(z_um))[strong]))
    return out


CONSTANT_GUESS = "one constant |defocus| for every tile (the held-out mean)"


def constant_guess_rms_nm(z_um: np.ndarray, within_um: float = WITHIN_UM) -> float:
    """|defocus| rms error (nm) over |z| <= ``within_um`` of guessing the mean |z| for every patch."""
    z = np.abs(z_um[np.abs(z_um) <= within_um])
    return float(np.sqrt(np.mean((z - z.mean()) ** 2)) * 1e3)


def run_onnx(proto: onnx.ModelProto, x: np.ndarray, batch: int = 64) -> np.ndarray:
    session = export.cpu_session(proto)
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def train_and_publish_psf(repository: Path, *, config: PsfTrainConfig, command: str,
                          progress: Callable[[TrainProgress], None] | None = None) -> tuple[Path, ModelCard]:
    sim = config.simulation
    trained = train_psf(config, progress)
    rng = np.random.default_rng([config.seed, 3])
    proto = export_psf(trained.graph, simulate(sim, 3, rng))
    held = simulate(sim, config.held_out_patches, rng, held_out=True)
    est = tile_estimates(run_onnx(proto, inputs_of(held).numpy()))
    scores = defocus_scores(est, held.defocus_um, held.astigmatism_waves)
    metrics = {f"held_out_optics_{k}": round(v, 4) for k, v in scores.items()}
    # The floor a PSF reader must beat to be served: the best single guess for every patch (the held-out
    # patches' own mean |defocus|), scored the same way. Reading nothing from the image scores this.
    metrics["held_out_optics_abs_defocus_rms_nm" + CLASSICAL_SUFFIX] = round(constant_guess_rms_nm(held.defocus_um), 4)
    params = sum(p.numel() for p in trained.graph.parameters())
    record = TrainingRecord(command, sim.describe(), config.seed, trained.train_seconds, curve=trained.curve)
    nas = [r for _, r in IMMERSIONS]
    card_fields = dict(
        description=(
            f"PSF estimation (Shajkofci & Liebling, IEEE TIP 2020): per {sim.patch_px} px tile, |defocus| (µm), "
            f"astigmatism Z(2,2) and spherical Z(4,0) magnitudes (waves rms), each with a predicted log-variance, "
            f"and the probabilities that the defocus has the astigmatism's / spherical aberration's sign (no "
            f"single image tells the sign alone: livescope/psf_estimate.py). Input float32 [N, 5, H, W]: the tile "
            f"in ADU (normalised per tile in the graph: any camera) and the optics {', '.join(OPTICS_CHANNELS)} "
            f"as constant channels. Output [N, 8, 1, 1]: {', '.join(OUTPUT_CHANNELS)}. CNN, {params} parameters; "
            f"{trained.steps} steps of {config.batch_size} patches (stopped by {trained.stopped_because}). "
            f"Domain: immersion 1.0 / 1.33 / 1.515, defocus {sim.defocus_um[0]:g} to {sim.defocus_um[1]:g} µm, "
            f"|astigmatism| and |spherical| up to {sim.astigmatism_waves[1]:g} waves; held out from training: NA "
            f"{sim.held_out_na[0]:g}-{sim.held_out_na[1]:g} x emission {sim.held_out_emission_nm[0]:g}-"
            f"{sim.held_out_emission_nm[1]:g} nm (the metrics are on it)."),
        inputs=(TensorSpec(name=INPUT_NAME, dtype="float32", axes="NCYX"),),
        outputs=(TensorSpec(name=OUTPUT_NAME, dtype="float32", axes="NCYX"),),
        normalisation=Normalisation(kind="in_graph"),
        tiling=Tiling(tile_px=sim.patch_px),
        trained_for=TrainedFor(pixel_size_nm=sim.pixel_size_nm, na=(min(r[0] for r in nas), max(r[1] for r in nas)),
                               emission_nm=sim.emission_nm, peak_photons=sim.peak_photons, modalities=("widefield",)),
    )
    return publish_version(repository, proto, name="psf", task="psf", card_fields=card_fields, metrics=metrics,
                           record=record, classical_method=CONSTANT_GUESS)

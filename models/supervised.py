"""The training loop of livescope's supervised image-to-image models (refocus, restore): Adam on
random patch batches, within a step count or a time budget (`StepPlan`), validated on fixed
held-out patches, keeping the best weights and stopping early when they stop improving."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from livescope.models.budget import StepPlan, TrainProgress

MIN_RELATIVE_IMPROVEMENT = 1e-3  # a validation loss must beat the best by this much to count

Batch = tuple[np.ndarray, np.ndarray]  # (inputs, targets), float32 [N, C, H, W]


class SupervisedTrainConfig(BaseModel):
    """What the loop and the patch sampling take; each task adds its network's and data's fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_channels: int = Field(default=16, ge=4)
    patch_px: int = Field(default=64, ge=16)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    target: str = Field(default="clean", pattern="^(clean|noisy)$",
                        description="noise-free targets where the data have them (virtual), else noisy ones")
    steps: int | None = Field(default=None, ge=1)
    budget_seconds: float | None = Field(default=None, gt=0)
    validate_every_steps: int = Field(default=100, ge=1)
    patience_validations: int = Field(default=8, ge=0)
    seed: int = 0


@dataclass
class TrainedGraph:
    graph: nn.Module
    steps: int
    train_seconds: float
    final_loss: float
    stopped_because: str
    best_step: int | None
    best_validation_loss: float | None


@dataclass(frozen=True)
class LoopSettings:
    learning_rate: float
    steps: int | None
    budget_seconds: float | None
    validate_every_steps: int
    patience_validations: int  # 0: never stop early


def fit(graph: nn.Module, loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
        next_batch: Callable[[], Batch], held_out: Batch, settings: LoopSettings,
        progress: Callable[[TrainProgress], None] | None = None) -> TrainedGraph:
    """Train ``graph`` on ``next_batch()`` batches; keep the weights with the lowest ``loss`` on
    ``held_out`` (validated every ``validate_every_steps`` and on the last step). The caller seeds
    torch and its batch generator."""
    val_in, val_target = (torch.from_numpy(a) for a in held_out)
    optimiser = torch.optim.Adam(graph.parameters(), lr=settings.learning_rate)
    plan = StepPlan(settings.steps, settings.budget_seconds, replan_every=settings.validate_every_steps)
    loss_avg = float("nan")
    val_loss = best_loss = best_step = best_state = None
    since_best = 0
    graph.train()
    while plan.running:
        for group in optimiser.param_groups:
            group["lr"] = settings.learning_rate * plan.lr_factor()
        inputs, targets = next_batch()
        value_t = loss(graph, torch.from_numpy(inputs), torch.from_numpy(targets))
        optimiser.zero_grad(set_to_none=True)
        value_t.backward()
        optimiser.step()
        value = float(value_t.detach())
        loss_avg = value if math.isnan(loss_avg) else 0.98 * loss_avg + 0.02 * value
        plan.after_step()  # first, so that the step a time budget ends on is validated too
        if plan.step % settings.validate_every_steps == 0 or not plan.running:
            graph.eval()
            with torch.no_grad():
                val_loss = float(loss(graph, val_in, val_target))
            graph.train()
            if best_loss is None or val_loss < best_loss * (1.0 - MIN_RELATIVE_IMPROVEMENT):
                best_loss, best_step, since_best = val_loss, plan.step, 0
                best_state = copy.deepcopy(graph.state_dict())
            else:
                since_best += 1
        if settings.patience_validations and since_best >= settings.patience_validations:
            plan.stop("early stop")
        if progress is not None:
            progress(plan.progress(loss_avg, val_loss, best_loss))
    if best_state is not None:
        graph.load_state_dict(best_state)
    graph.eval()
    return TrainedGraph(graph, plan.step, plan.elapsed_s, loss_avg, plan.stopped_because, best_step, best_loss)


def loop_settings(config: SupervisedTrainConfig) -> LoopSettings:
    """The loop's settings from a trainer's config."""
    return LoopSettings(**{name: getattr(config, name) for name in LoopSettings.__dataclass_fields__})

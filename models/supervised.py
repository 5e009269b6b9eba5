"""What the supervised image-to-image trainers (refocus, restore) share: their configuration's
common fields, and the training loop (`models.training_loop.fit`) on (input, target) batches."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from livescope.models.budget import TrainProgress
from livescope.models.training_loop import LoopSettings, TrainedGraph, fit

MIN_RELATIVE_IMPROVEMENT = 1e-3  # a validation loss must beat the best by this much to count

Batch = tuple[np.ndarray, np.ndarray]  # (inputs, targets), float32 [N, C, H, W]
PairLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (graph, inputs, targets) -> loss


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

    def loop_settings(self) -> LoopSettings:
        """The training loop's settings: Adam, early stop, validation after counting each step."""
        return LoopSettings(learning_rate=self.learning_rate, steps=self.steps, budget_seconds=self.budget_seconds,
                            validate_every_steps=self.validate_every_steps,
                            patience_validations=self.patience_validations,
                            min_relative_improvement=MIN_RELATIVE_IMPROVEMENT)


def fit_supervised(graph: nn.Module, loss: PairLoss, next_batch: Callable[[], Batch], held_out: Batch,
                   config: SupervisedTrainConfig, progress: Callable[[TrainProgress], None] | None = None
                   ) -> TrainedGraph:
    """`fit` on ``next_batch()`` batches, keeping the weights with the lowest ``loss`` on ``held_out``."""
    val_in, val_target = (torch.from_numpy(a) for a in held_out)
    return fit(graph, lambda g: loss(g, *(torch.from_numpy(a) for a in next_batch())),
               lambda g: float(loss(g, val_in, val_target)), config.loop_settings(), progress)

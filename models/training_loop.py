"""The training loop of every livescope model: an optimiser on random batches, within a step count
or a time budget (`StepPlan`), validated on fixed held-out data, keeping the best weights and
stopping early when they stop improving.

The trainers differ only in settings (`LoopSettings`): the optimiser, gradient clipping, what
counts as an improvement, patience, and the order of validating a step and counting it. The last
matters only for time budgets: the denoiser and the localiser validate a step before the plan
counts it (a step the budget ends on is validated only on schedule; validation time counts
towards that step), the refocus and restore trainers count it first (the step the budget ends on
is validated too). Each keeps its own order, so that its runs stay as they were.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from livescope.models.budget import StepPlan, TrainProgress


@dataclass(frozen=True)
class LoopSettings:
    learning_rate: float  # peak: linear warm-up, then cosine decay (`StepPlan.lr_factor`)
    steps: int | None
    budget_seconds: float | None
    validate_every_steps: int
    patience_validations: int = 0  # early stop after this many validations without improvement; 0: never
    min_relative_improvement: float = 0.0  # a validation loss must beat the best by this fraction to count
    weight_decay: float | None = None  # None: Adam; a number: AdamW with this decoupled weight decay
    clip_grad_norm: float | None = None  # clip the gradients' total norm to this before each step
    validate_before_counting: bool = False  # see the module's docstring
    validate_at_start: bool = False  # score the starting weights too (a fine-tuning keeps them if none is better)


@dataclass(frozen=True)
class TrainingCurve:
    """The losses along a training run, at each validation: (step, value) pairs."""

    train: tuple[tuple[int, float], ...]  # the running mean of the training loss
    held_out: tuple[tuple[int, float], ...]  # the held-out (validation) loss


@dataclass(frozen=True)
class TrainedGraph:
    graph: nn.Module
    steps: int
    train_seconds: float
    final_loss: float  # running mean of the training loss at the end
    stopped_because: str  # "steps", "budget" or "early stop"
    best_step: int | None  # the step whose weights were kept (lowest held-out loss)
    best_validation_loss: float | None
    curve: TrainingCurve = TrainingCurve((), ())


def fit(graph: nn.Module, train_loss: Callable[[nn.Module], torch.Tensor],
        validate: Callable[[nn.Module], float] | None, settings: LoopSettings,
        progress: Callable[[TrainProgress], None] | None = None) -> TrainedGraph:
    """Train ``graph`` on ``train_loss(graph)`` (which draws a batch and returns its loss) and keep
    the weights with the lowest ``validate(graph)`` (the held-out loss, run in eval mode without
    gradients; None: no validation, the last weights are kept), validated every
    ``validate_every_steps`` and on the last step. The caller seeds torch and its batch generator."""
    # To a time budget, channels-last weights: oneDNN's convolutions run 1.2-1.6x faster that way on a
    # CPU (bench/training_step.py), so a budget trains that many more steps. Not for a step count: the
    # same arithmetic summed in another order gives other weights, and the shipped models' documented
    # commands (step counts) must repeat them exactly. Converted back at the end.
    fast_layout = settings.budget_seconds is not None
    if fast_layout:
        graph.to(memory_format=torch.channels_last)
    optimiser = (torch.optim.Adam(graph.parameters(), lr=settings.learning_rate) if settings.weight_decay is None
                 else torch.optim.AdamW(graph.parameters(), lr=settings.learning_rate,
                                        weight_decay=settings.weight_decay))
    plan = StepPlan(settings.steps, settings.budget_seconds, replan_every=settings.validate_every_steps)
    loss_avg = float("nan")
    val_loss = best_loss = best_step = best_state = None
    since_best = 0
    train_curve: list[tuple[int, float]] = []
    held_out_curve: list[tuple[int, float]] = []

    def validate_if_due(step: int, last: bool) -> None:
        nonlocal val_loss, best_loss, best_step, best_state, since_best
        if validate is None or not (step % settings.validate_every_steps == 0 or last):
            return
        graph.eval()
        with torch.no_grad():
            val_loss = validate(graph)
        graph.train()
        held_out_curve.append((step, float(val_loss)))
        if not math.isnan(loss_avg):
            train_curve.append((step, loss_avg))
        if best_loss is None or val_loss < best_loss * (1.0 - settings.min_relative_improvement):
            best_loss, best_step, since_best = val_loss, step, 0
            best_state = copy.deepcopy(graph.state_dict())
        else:
            since_best += 1

    if settings.validate_at_start:
        validate_if_due(0, True)
    graph.train()
    while plan.running:
        for group in optimiser.param_groups:
            group["lr"] = settings.learning_rate * plan.lr_factor()
        loss = train_loss(graph)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if settings.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(graph.parameters(), settings.clip_grad_norm)
        optimiser.step()
        value = float(loss.detach())
        loss_avg = value if math.isnan(loss_avg) else 0.98 * loss_avg + 0.02 * value
        if settings.validate_before_counting:
            step = plan.step + 1
            validate_if_due(step, plan.total is not None and step >= plan.total)
            plan.after_step()
        else:
            plan.after_step()
            validate_if_due(plan.step, not plan.running)
        if settings.patience_validations and since_best >= settings.patience_validations:
            plan.stop("early stop")
        if progress is not None:
            progress(plan.progress(loss_avg, val_loss, best_loss))
    if best_state is not None:
        graph.load_state_dict(best_state)
    if fast_layout:
        graph.to(memory_format=torch.contiguous_format)
    graph.eval()
    return TrainedGraph(graph, plan.step, plan.elapsed_s, loss_avg, plan.stopped_because, best_step, best_loss,
                        TrainingCurve(tuple(train_curve), tuple(held_out_curve)))

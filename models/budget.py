"""When training stops, and its learning-rate schedule: a step count, a time budget, or both.

A time budget is turned into a step count after the warm-up and re-planned from the recent speed
every ``replan_every`` steps, so a slow start (a busy machine, one-time start-up) does not cut
training short, and it is never exceeded. The schedule is a linear warm-up, then a cosine decay to
1 % at the planned step count. A run with ``steps`` only is exactly reproducible; a budgeted run
adapts to the machine's speed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

WARMUP_STEPS = 20


@dataclass(frozen=True)
class TrainProgress:
    """What a training run reports after each step (the CLI's progress bar shows it)."""

    step: int
    total_steps: int | None  # None until a time budget has been turned into a step count
    fraction: float  # of the steps or of the time budget, whichever is further
    loss: float  # running mean of the training loss
    validation_loss: float | None  # the latest held-out loss, if there is a held-out set
    best_validation_loss: float | None
    elapsed_s: float
    eta_s: float | None


class StepPlan:
    def __init__(self, steps: int | None, budget_seconds: float | None, replan_every: int) -> None:
        if steps is None and budget_seconds is None:
            raise ValueError("give steps or budget_seconds (or both) to say when training stops")
        self.steps, self.budget_seconds, self.replan_every = steps, budget_seconds, replan_every
        self.step = 0
        self.total: int | None = steps
        self.stopped_because = "steps"
        self._start = time.monotonic()
        self._mark = (0, 0.0)  # (step, elapsed) where the speed was last measured

    @property
    def running(self) -> bool:
        return self.total is None or self.step < self.total

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._start

    def lr_factor(self) -> float:
        """Linear warm-up, then cosine decay to 1 % at the planned step count."""
        if self.step < WARMUP_STEPS or self.total is None:
            return min(1.0, (self.step + 1) / WARMUP_STEPS)
        fraction = (self.step - WARMUP_STEPS) / max(self.total - WARMUP_STEPS, 1)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(fraction, 1.0)))

    def after_step(self) -> None:
        """Count a finished step; stop at the budget, re-plan the step count on schedule."""
        self.step += 1
        budget = self.budget_seconds
        if budget is None:
            return
        elapsed = self.elapsed_s
        if elapsed >= budget:
            self.total, self.stopped_because = self.step, "budget"
            return
        # Re-plan on schedule, and whenever the plan runs out with budget left (it was made from
        # slower steps than the recent ones): training ends on the budget, not on an old plan.
        reached = self.total is not None and self.step >= self.total and (
            self.steps is None or self.step < self.steps)
        if self.step == WARMUP_STEPS or self.step % self.replan_every == 0 or reached:
            seconds_per_step = (elapsed - self._mark[1]) / max(self.step - self._mark[0], 1)
            fitting = self.step + int((budget - elapsed) / seconds_per_step)  # whole steps that fit
            self.total = fitting if self.steps is None else min(self.steps, fitting)
            self.stopped_because = "budget" if self.steps is None or fitting < self.steps else "steps"
            if self.step - self._mark[0] >= WARMUP_STEPS or self._mark[0] == 0:
                self._mark = (self.step, elapsed)

    def stop(self, reason: str) -> None:
        """Stop after the current step (e.g. "early stop")."""
        self.total, self.stopped_because = self.step, reason

    @property
    def fraction(self) -> float:
        """How far along: of the planned steps, or of the budget before there is a plan."""
        if self.total:
            return min(self.step / self.total, 1.0)
        return min(self.elapsed_s / self.budget_seconds, 1.0) if self.budget_seconds else 0.0

    def progress(self, loss: float, validation_loss: float | None,
                 best_validation_loss: float | None) -> TrainProgress:
        return TrainProgress(self.step, self.total, self.fraction, loss, validation_loss,
                             best_validation_loss, self.elapsed_s, self.eta_s)

    @property
    def eta_s(self) -> float | None:
        elapsed = self.elapsed_s
        eta = (self.total - self.step) * elapsed / self.step if self.total and self.step else None
        if self.budget_seconds is not None:
            eta = max(0.0, min(eta if eta is not None else self.budget_seconds, self.budget_seconds - elapsed))
        return eta

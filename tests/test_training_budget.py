"""A time budget is used, not cut short by a slow start, and never exceeded (issue 17: a 2-minute
`train denoise` on a busy CPU planned its step count once from a slow warm-up and stopped after
44 s of its 120 s)."""

from __future__ import annotations

import time

from livescope.models.budget import WARMUP_STEPS, StepPlan


def run(plan: StepPlan, seconds_per_step) -> None:
    while plan.running:
        time.sleep(seconds_per_step(plan.step))
        plan.after_step()


def test_a_slow_warm_up_does_not_end_training_before_its_budget():
    budget_s = 1.5
    plan = StepPlan(steps=None, budget_seconds=budget_s, replan_every=1000)  # re-plans rarely
    # the machine is busy during the warm-up, then the steps are 20 times faster
    run(plan, lambda step: 0.03 if step < WARMUP_STEPS else 0.0015)
    assert plan.stopped_because == "budget"
    assert 0.9 * budget_s <= plan.elapsed_s <= budget_s + 0.05
    assert plan.step > 2 * (WARMUP_STEPS + budget_s / 0.03)  # far more than planned after the warm-up


def test_a_budget_never_runs_a_step_it_has_no_time_for():
    plan = StepPlan(steps=None, budget_seconds=0.5, replan_every=5)
    run(plan, lambda step: 0.04)
    assert plan.elapsed_s <= 0.5 + 0.04


def test_steps_and_a_budget_stop_at_whichever_comes_first():
    plan = StepPlan(steps=30, budget_seconds=5.0, replan_every=1000)
    run(plan, lambda step: 0.001)
    assert (plan.step, plan.stopped_because) == (30, "steps")


def layouts_seen(settings) -> tuple[list[bool], object]:
    """Train a small two-layer CNN with ``settings``; per step, whether its weights were channels-last."""
    import torch
    from torch import nn

    from livescope.models.training_loop import fit

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 1, 3, padding=1))
    x = torch.rand(4, 1, 16, 16)
    seen: list[bool] = []

    def loss(graph: nn.Module) -> torch.Tensor:
        w = graph[1].weight  # 8 input channels: the two layouts differ
        seen.append(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())
        return (graph(x) - x).pow(2).mean()

    fit(net, loss, None, settings)
    return seen, net


def test_a_run_to_a_budget_trains_in_the_faster_layout_and_hands_back_the_standard_one():
    from livescope.models.training_loop import LoopSettings

    seen, net = layouts_seen(LoopSettings(learning_rate=1e-3, steps=None, budget_seconds=0.3, validate_every_steps=5))
    assert seen and all(seen)
    assert all(p.is_contiguous() for p in net.parameters())  # exported and saved as before


def test_a_run_of_a_step_count_keeps_the_standard_layout_so_its_weights_repeat_exactly():
    import torch

    from livescope.models.training_loop import LoopSettings

    settings = LoopSettings(learning_rate=1e-3, steps=12, budget_seconds=None, validate_every_steps=5)
    seen, first = layouts_seen(settings)
    _, second = layouts_seen(settings)
    assert len(seen) == 12 and not any(seen)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))

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

"""Batches only where they pay: the server learns, per model, frame size and dtype, whether running
waiting frames together costs clearly less per frame than one at a time, and otherwise runs them
one at a time so no frame waits for others."""

from __future__ import annotations

from livescope.server.batching import GAIN, PROBE_EVERY, BatchPolicy

KEY = (("denoise@3",), (512, 512), "uint16")


def policy_past_warm_up(key: tuple = KEY) -> BatchPolicy:
    """A policy whose first run of ``key`` (a new shape: the runtime allocates, slowly) is behind it."""
    policy = BatchPolicy(max_frames=8)
    policy.record(key, 1, 5.0)
    return policy


def test_a_key_runs_alone_until_one_frame_is_timed_then_probes_a_batch():
    policy = BatchPolicy(max_frames=8)
    assert policy.limit(KEY) == 1 and policy.batching_pays(KEY) is None
    policy.record(KEY, 1, 5.0)  # the first run allocates: not a timing
    assert policy.limit(KEY) == 1
    policy.record(KEY, 1, 0.100)
    assert policy.limit(KEY) == 2  # a probe: two frames, if two are waiting


def test_batches_continue_where_they_cost_clearly_less_per_frame_and_one_frame_is_retimed_now_and_then():
    policy = policy_past_warm_up()
    policy.record(KEY, 1, 0.100)
    policy.record(KEY, 4, 4 * 0.100 * GAIN * 0.9)  # a GPU: four for much less than four times one
    assert policy.batching_pays(KEY) and policy.limit(KEY) == 8
    for _ in range(PROBE_EVERY):
        policy.record(KEY, 4, 4 * 0.100 * GAIN * 0.9)
    assert policy.limit(KEY) == 1  # a stale single-frame time must not keep batching on


def test_where_a_batch_costs_as_much_per_frame_frames_run_alone_and_are_probed_again_later():
    policy = policy_past_warm_up()
    policy.record(KEY, 1, 0.100)
    policy.record(KEY, 4, 4 * 0.100)  # a CPU: the batch costs what its frames cost one by one
    assert policy.batching_pays(KEY) is False and policy.limit(KEY) == 1
    for _ in range(PROBE_EVERY):
        policy.record(KEY, 1, 0.100)
    assert policy.limit(KEY) == 2  # conditions change (another frame size, a warmed-up GPU): probe again


def test_keys_are_learned_apart_and_a_limit_of_one_never_batches():
    other = (("identity@1",), (64, 64), "uint16")
    policy = policy_past_warm_up()
    policy.record(other, 1, 1.0)
    policy.record(KEY, 1, 0.100)
    policy.record(KEY, 4, 0.400)
    policy.record(other, 1, 0.010)
    policy.record(other, 8, 0.020)
    assert (policy.limit(KEY), policy.limit(other)) == (1, 8)
    single = BatchPolicy(max_frames=1)
    single.record(KEY, 1, 0.1)
    assert single.limit(KEY) == 1

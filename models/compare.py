"""Which held-out metric decides whether a new version may replace the active one.

A new version is scored, and the active version is scored on the SAME held-out data by the same
function (the trainers do that: ``compare_with``), so the two numbers are comparable; this module
only says which metric of a task's held-out metrics is the deciding one, and in which direction.
"""

from __future__ import annotations

from collections.abc import Mapping

from livescope.modelcard import Comparison

# task -> metrics in order of preference (the first both versions have decides), higher is better?
DECIDING_METRICS: dict[str, tuple[tuple[str, bool], ...]] = {
    "refocus": (("psnr_db_refocused_at_1_um", True), ("psnr_db_refocused_at_0.5_um", True)),
    "restore": (("psnr_db_restored", True),),
    "denoise": (("n2v_validation_mse_adu2", False),),
    "localise": (("held_out_jaccard", True),),
}


def compare(task: str, new_metrics: Mapping[str, float], against: str,
            active_metrics: Mapping[str, float]) -> Comparison | None:
    """The deciding metric of ``task`` for the new version and for ``against`` (the active one),
    both measured on the new version's held-out data; None if they share no deciding metric (e.g.
    one was trained for a shorter delta-z range): the deploy gate then asks for --force."""
    for metric, higher in DECIDING_METRICS.get(task, ()):
        if metric in new_metrics and metric in active_metrics:
            return Comparison(against=against, metric=metric, higher_is_better=higher,
                              new_value=float(new_metrics[metric]), active_value=float(active_metrics[metric]))
    return None

"""Which held-out metric decides whether a new version may serve, and the quality gate.

A new version is scored, and both the version that is the default now and the strongest classical
method are scored on the SAME held-out data with the same metric (the trainers do that), so the
numbers are comparable; this module says which metric of a task's held-out metrics decides, in
which direction, and whether the new version passes (`quality_gate`).
"""

from __future__ import annotations

from collections.abc import Mapping

from livescope.modelcard import Comparison, QualityGate

# task -> metrics in order of preference (the first both versions have decides), higher is better?
DECIDING_METRICS: dict[str, tuple[tuple[str, bool], ...]] = {
    "refocus": (("psnr_db_refocused_at_1_um", True), ("psnr_db_refocused_at_0.5_um", True)),
    "restore": (("psnr_db_restored", True),),
    "denoise": (("n2n_validation_mse_stabilised", False), ("n2v_validation_mse_adu2", False),
                ("psnr_db_denoised_mean", True)),
    "localise": (("held_out_jaccard", True),),
    # |defocus| rms over +-1 µm on optics the training never drew; the baseline: one constant guess
    "psf": (("held_out_optics_abs_defocus_rms_nm", False),),
}
CLASSICAL_SUFFIX = "_classical"
"""A trainer reports the classical method's score of a deciding metric M as M + this suffix, and
names the method in its metrics' ``classical_method`` (see ``quality_gate``)."""


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


def quality_gate(task: str, metrics: Mapping[str, float], classical_method: str | None,
                 comparison: Comparison | None) -> QualityGate | None:
    """Pass when the deciding metric beats the classical method's score of it on the same held-out
    data (``metrics[M + CLASSICAL_SUFFIX]``) and, where the default version was scored there too,
    is not worse than it. No classical score: fail (nothing shows the model beats a filter). None
    for a task with no deciding metric in ``metrics`` (the identity model)."""
    decided = next(((m, higher) for m, higher in DECIDING_METRICS.get(task, ()) if m in metrics), None)
    if decided is None:
        return None
    metric, higher = decided
    new = float(metrics[metric])
    classical = metrics.get(metric + CLASSICAL_SUFFIX)
    fields = {"metric": metric, "higher_is_better": higher, "new_value": new}
    if classical is None or classical_method is None:
        return QualityGate(passed=False, classical_method=None, **fields,
                           reason=f"no classical method was scored on its held-out data, so nothing shows "
                                  f"it beats one ({metric} {new:.4g})")
    classical = float(classical)
    beats = new > classical if higher else new < classical
    fields |= {"classical_method": classical_method, "classical_value": classical}
    if not beats:
        return QualityGate(passed=False, **fields, reason=(
            f"{metric} {new:.4g} does not beat {classical_method} ({classical:.4g}) on the same held-out data"))
    if comparison is not None and not comparison.not_worse:
        return QualityGate(passed=False, **fields, reason=(
            f"beats {classical_method} ({metric} {new:.4g} vs {classical:.4g}) but is worse than the "
            f"default {comparison.against} ({comparison.active_value:.4g}) on the same held-out data"))
    than_default = (f" and is not worse than the default {comparison.against} ({comparison.active_value:.4g})"
                    if comparison is not None else "")
    return QualityGate(passed=True, **fields, reason=(
        f"{metric} {new:.4g} beats {classical_method} ({classical:.4g}){than_default} on the same held-out data"))

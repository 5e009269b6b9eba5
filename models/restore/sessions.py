"""Restoration training data from calibration `pairs` sessions: every session's pairs registered
(as its QA report shows them) and scaled, with the one camera baseline and pixel size they share.

Sessions trained together must agree on the camera baseline (within `BASELINE_TOLERANCE_ADU`) and
on the pixel size: one model serves one camera at one sampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


from livescope.models.baseline import darkest_pixels_baseline_adu
from livescope.models.restore.data import (
    Align,
    RestoreDataError,
    RestorePair,
    registration_aligner,
    session_pairs,
)
from livescope.session import ImagePair, Session, load_session

BASELINE_TOLERANCE_ADU = 1.0  # sessions trained together must share the camera baseline


@dataclass(frozen=True)
class SessionPairs:
    """The usable pairs of several sessions and what they share."""

    pairs: list[RestorePair]
    baseline_adu: float
    pixel_size_um: float | None  # None: no session records it
    session_ids: tuple[str, ...]
    left_out: list[str]  # one line per pair left out, saying why


def read_session_pairs(paths: Sequence[Path], patch_px: int) -> SessionPairs:
    """The pairs of the sessions at ``paths``; SessionError / RestoreDataError (one line) for a
    session that is no pairs session, holds no pairs or too small images, or that disagrees
    with the others on the camera baseline or pixel size."""
    pairs: list[RestorePair] = []
    left_out: list[str] = []
    ids: list[str] = []
    baselines: list[tuple[str, float]] = []
    pixel_sizes: list[float | None] = []
    for path in paths:
        session = load_session(path)
        raw = session.pairs()  # SessionError for a zstack / beads session
        _check_images(path, raw, patch_px)
        base = session.baseline_adu
        if base is None:  # a session without camera calibration: its darkest 0.1 % is the baseline
            base = darkest_pixels_baseline_adu(p.low_adu for p in raw)
        kept, dropped = session_pairs(raw, baseline_adu=base, source=f"session {session.session_id}",
                                      align=_registration(session, raw))
        pairs += kept
        left_out += dropped
        ids.append(session.session_id)
        baselines.append((str(path), base))
        pixel_sizes.append(session.pixel_size_um)
    return SessionPairs(pairs, _shared_baseline(baselines), _shared_pixel_size(pixel_sizes), tuple(ids), left_out)


def _check_images(path: Path, raw: list[ImagePair], patch_px: int) -> None:
    if not raw:
        raise RestoreDataError(f"session {path} holds no completed pairs yet (resume it to acquire them)")
    h, w = raw[0].low_adu.shape
    if min(h, w) < patch_px:  # before registering: too small a field is no registration failure
        raise RestoreDataError(f"session {path}: the images ({h}x{w} px) are smaller than the {patch_px} px "
                               "training patch; acquire larger fields")


def _shared_baseline(baselines: list[tuple[str, float]]) -> float:
    first_path, first = baselines[0]
    other = next(((p, b) for p, b in baselines if abs(b - first) > BASELINE_TOLERANCE_ADU), None)
    if other is not None:
        raise RestoreDataError(f"sessions {first_path} and {other[0]} have camera baselines {first:g} and "
                               f"{other[1]:g} ADU: train them separately (one model, one camera)")
    return first


def _shared_pixel_size(pixel_sizes: list[float | None]) -> float | None:
    known = {round(px, 6) for px in pixel_sizes if px}
    if len(known) > 1:
        sizes = ", ".join(f"{px:g}" for px in sorted(known))
        raise RestoreDataError(f"the sessions have different pixel sizes ({sizes} µm): train them separately "
                               "(the model learns one pixel size)")
    return known.pop() if known else None


def _registration(session: Session, pairs: list[ImagePair]) -> Align:
    """How each pair's high image lands on its low one: the registration saved with the session
    (what its QA report shows), else registered now; pairs failing registration QA are left out."""
    from livescope.acquire.calibration.registration import register_pairs
    from livescope.acquire.calibration.session_registration import saved_registration

    report = saved_registration(session) or register_pairs(pairs, session_id=session.session_id)
    return registration_aligner(report)

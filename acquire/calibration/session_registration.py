"""A pairs session's registration and QA report, kept with the session.

`livescope calibrate pairs` runs this once the last position is on disk, and `livescope calibrate
register` runs it again (e.g. with --affine); training reads the saved registration, so every model
trained from a session uses the pairs exactly as the QA report showed them. The files go next to
the manifest and outside the position stores, so the stores' checksums are untouched:

    SESSION.ome.zarr/registration.json   the RegistrationReport (atomic)
    SESSION.ome.zarr/qa/report.html      the QA report, its PNGs and qa_overview.png
"""

from __future__ import annotations

from pathlib import Path

from livescope.acquire.calibration.qa import write_qa_report
from livescope.acquire.calibration.registration import (
    REGISTRATION_FILE,
    RegistrationError,
    RegistrationReport,
    RegistrationSettings,
    register_pairs,
)
from livescope.session import Session, SessionError

QA_FOLDER = "qa"


def register_session(session: Session, settings: RegistrationSettings | None = None) -> tuple[RegistrationReport, Path]:
    """Register every pair of ``session``, save the report in it and write its QA report;
    (report, path of report.html). SessionError if the session holds no pairs yet."""
    pairs = session.pairs()  # SessionError for a stacks session
    if not pairs:
        raise SessionError(f"session {session.root} holds no completed pairs yet (resume it to acquire them)")
    report = register_pairs(pairs, settings or RegistrationSettings(), session_id=session.session_id)
    try:
        report.save(session.root / REGISTRATION_FILE)
    except RegistrationError as e:
        raise SessionError(str(e)) from None
    m = session.manifest
    low, high = m.plan.channels
    html = write_qa_report(pairs, report, session.root / QA_FOLDER,
                           title=f"{session.root.name}: {low} / {high} pairs, session {session.session_id}",
                           baseline_adu=session.baseline_adu)
    return report, html


def saved_registration(session: Session) -> RegistrationReport | None:
    """The registration saved with ``session``, or None if it was never registered. A report
    that does not cover the session's current pairs (e.g. registered before a --resume) is stale:
    SessionError says to register again."""
    file = session.root / REGISTRATION_FILE
    if not file.is_file():
        return None
    try:
        report = RegistrationReport.load(file)
    except RegistrationError as e:
        raise SessionError(str(e)) from None
    have = {(p.position, p.repeat) for p in report.pairs}
    m = session.manifest  # the pairs it holds, without reading their images
    missing = [(done.index, t) for done in m.completed for t in range(m.plan.repeats) if (done.index, t) not in have]
    if report.session_id != session.session_id or missing:
        raise SessionError(f"{file} does not cover the session's pairs (registered before it was resumed?): "
                           f"run `livescope calibrate register {session.root}`")
    return report

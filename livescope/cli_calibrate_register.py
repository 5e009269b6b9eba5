"""`livescope calibrate register SESSION`: register a pairs session's pairs and write its QA
report (`calibrate pairs` does this itself when its last position is on disk). livescope/cli.py
registers the command; livescope.cli is imported only inside the functions (cli imports this)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from livescope.acquire.calibration.registration import RegistrationSettings
    from livescope.session import Session


def register(
    session: Annotated[Path, typer.Argument(help="A pairs session folder (SESSION.ome.zarr).")],
    affine: Annotated[bool, typer.Option(
        "--affine", help="Refine each translation to an affine map (rotation, scale, shear).")] = False,
    max_shift: Annotated[Optional[float], typer.Option(
        "--max-shift", min=0.1, help="Pairs shifted more than this many pixels fail QA.")] = None,
    min_ncc: Annotated[Optional[float], typer.Option(
        "--min-ncc", min=-1.0, max=1.0, help="Pairs whose correlation after alignment is lower fail QA.")] = None,
) -> None:
    """Register each pair's high image onto its low one (sub-pixel phase correlation; --affine)
    and write the QA report: SESSION/registration.json and SESSION/qa/report.html."""
    from livescope.acquire.calibration.registration import RegistrationSettings
    from livescope.cli import fail
    from livescope.session import SessionError, load_session

    given = {"affine": affine, "max_shift_px": max_shift, "min_ncc": min_ncc}
    try:
        settings = RegistrationSettings(**{k: v for k, v in given.items() if v is not None})
        register_and_report(load_session(session, verify=True), settings)
    except SessionError as e:
        fail(str(e))


def register_and_report(session: Session, settings: RegistrationSettings | None = None) -> None:
    """Register ``session``'s pairs, save the registration and QA report, print what failed QA."""
    from livescope.acquire.calibration.session_registration import register_session
    from livescope.console import console

    with console.status(f"registering the pairs of {session.root}"):
        report, html = register_session(session, settings)
    passed, failed = report.passed, report.failed
    if passed:
        shifts = [max(abs(p.shift_px[0]), abs(p.shift_px[1])) for p in passed]
        console.print(f"registration: {len(passed)} of {len(report.pairs)} pairs pass QA "
                      f"(shifts up to {max(shifts):.2f} px, correlation after alignment "
                      f"{min(p.ncc_after for p in passed):.2f} or more)")
    else:
        console.print(f"registration: none of the {len(report.pairs)} pairs passes QA")
    for p in failed:
        console.print(f"  position {p.position} repeat {p.repeat}: failed QA ({p.reason}); training leaves it out")
    console.print(f"QA report: {html}")

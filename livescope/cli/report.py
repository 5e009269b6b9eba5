"""`livescope report RUN`: the account of an acquisition from its run journal: what was planned,
what was saved raw and restored, and for a run that was killed, what to do with what it left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from livescope.cli._common import fail

# The pipeline's last stage -> the offline command that does the same to saved raw data.
_OFFLINE = {"denoise": "denoise", "restore": "restore", "localise": "localise"}


def report(
    run: Annotated[Path, typer.Argument(help="The raw data of a `livescope acquire --output` run "
                                             "(RUN.ome.zarr or RUN.ome.tiff), or its RUN.journal.jsonl.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the account as JSON, for scripts.")] = False,
    page: Annotated[Optional[Path], typer.Option(
        "--html", help="Also write the run as an HTML page: raw and restored thumbnails, noise before and after, "
                       "latency and refusals over time, the models used.")] = None,
    recover: Annotated[bool, typer.Option(
        "--recover", help="An interrupted run saved as OME-TIFF: write its raw frames, which readers of the "
                          "killed file cannot see, to RUN.recovered.ome.tiff.")] = False,
) -> None:
    """Say what an acquisition saved, from its journal (complete, stopped, or interrupted by a
    crash or kill)."""
    from rich.console import Console
    from rich.table import Table

    from livescope.acquire.journal import JournalError, read_account

    if page is not None and page.suffix.lower() not in (".html", ".htm"):
        fail(f"--html {page}: name the page .html")
    if page is not None and not page.parent.is_dir():
        fail(f"--html {page}: no such folder {page.parent}")
    try:
        account = read_account(run)
    except JournalError as e:
        fail(str(e))
    if recover:
        _recover(account)
        return
    if page is not None:
        _write_page(run, account, page)
    if as_json:
        typer.echo(json.dumps(account.model_dump(mode="json"), indent=2))
        return
    plan = account.plan
    table = Table(title=f"run {plan.raw_path}", show_header=False)
    table.add_row("status", account.status + (
        f" (journal last written {account.last_line_utc})" if account.status == "interrupted" else ""))
    table.add_row("started", f"{plan.started_utc} on {plan.host} (pid {plan.pid})")
    table.add_row("pipeline", ", ".join(plan.pipeline) + f" on {plan.server}" if plan.pipeline else "- (acquire only)")
    table.add_row("frames planned", str(plan.frames_planned))
    table.add_row("acquired", f"{account.frames_acquired} -> {plan.raw_path}")
    if plan.pipeline:
        table.add_row("restored", f"{account.frames_restored} -> {plan.results_path or '-'}")
        refused = ", ".join(f"{k} {v}" for k, v in sorted(account.refusal_reasons.items()))
        table.add_row("refused", str(account.frames_refused) + (f" ({refused})" if refused else ""))
    if account.end is not None:
        reason = account.end.summary.get("stopped_reason") or account.end.summary.get("output_error")
        if reason:
            table.add_row("stopped because", reason)
    Console().print(table)
    if account.status == "interrupted":
        typer.echo(_interrupted_advice(account))


def _write_page(run: Path, account, page: Path) -> None:
    from livescope.acquire.journal import journal_path, read_frame_times
    from livescope.acquire.report_page import write_page

    journal = run if run.name.endswith(".journal.jsonl") else journal_path(run)
    write_page(account, read_frame_times(run), journal.parent, page)
    typer.echo(f"wrote {page}")


def _recover(account) -> None:
    from livescope.acquire.recover import RecoveryError, raw_tiff_files, recover_tiff

    raw = Path(account.plan.raw_path)
    if account.status != "interrupted" or ".ome.tif" not in raw.name:
        fail(f"--recover is for an interrupted run saved as OME-TIFF; {raw.name} is a {account.status} run"
             + ("" if ".ome.tif" in raw.name else " saved as OME-Zarr, which reads as it is"))
    files = raw_tiff_files(raw)
    if not files:
        fail(f"{raw} is gone: nothing to recover")
    for path in files:
        try:
            out, frames = recover_tiff(path)
        except RecoveryError as e:
            fail(str(e))
        typer.echo(f"recovered {frames} frames of {path} -> {out}")


def _interrupted_advice(account) -> str:
    from livescope.protocol import stage_name

    plan = account.plan
    lines = [f"The run was interrupted after {account.frames_acquired} of {plan.frames_planned} frames. "
             f"{plan.raw_path} holds them; the planned frames never acquired read as zeros."]
    if ".ome.tif" in plan.raw_path:
        lines[0] = (f"The run was interrupted after {account.frames_acquired} of {plan.frames_planned} frames. "
                    f"{plan.raw_path} holds them, but its writer (pymmcore-plus) completes an OME-TIFF only "
                    "at the end of a run, so readers see its first frame alone. Recover them with: "
                    f"livescope report {plan.raw_path} --recover")
    if plan.pipeline:
        stage = stage_name(plan.pipeline[-1])
        offline = _OFFLINE.get(stage)
        if stage == "localise":
            lines.append("Its emitter table is written at the end of a run, so none was; localise the saved "
                         f"frames with: livescope localise {plan.raw_path} {plan.results_path}")
        elif offline is not None:
            lines.append(f"To restore every saved frame: livescope {offline} {plan.raw_path} "
                         f"{plan.results_path} --overwrite")
    return "\n".join(lines)

"""Terminal display: live progress bars for acquisitions and training, and the closing summary (rich)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from livescope.acquire.run import AcquisitionProgress, AcquisitionSummary
    from livescope.models.budget import TrainProgress

# soft_wrap: a long line (a path, an error) is never broken by the console's width, so piped output
# and logs keep it whole; a terminal wraps it for display itself
console = Console(soft_wrap=True)


@contextmanager
def acquisition_progress(total: int, title: str = "acquiring"):
    """Yields a callback for run_acquisition(progress=...) that updates a live bar."""
    bar = Progress(TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console,
                   transient=True, disable=not console.is_terminal)  # piped: no blank line left behind
    with bar:
        task = bar.add_task(title, total=total, detail="")

        def update(p: AcquisitionProgress) -> None:
            latency = f"{p.latency_p50_ms:5.1f} ms" if p.latency_p50_ms is not None else "  -  "
            answered = (f"localised {p.tables}  emitters {p.emitters} (last frame {p.last_frame_emitters})"
                        if p.tables else f"restored {p.restored}")
            if p.frc_resolution_nm is not None:
                answered += f"  FRC {p.frc_resolution_nm:.0f} nm"
            if p.psf_abs_defocus_um is not None:
                answered += f"  |defocus| {p.psf_abs_defocus_um:.2f} µm"
            if p.focus_um is not None:
                answered += f"  focus {p.focus_um:+.2f} µm" + (
                    f" [red]{p.focus_alarms} focus alarm{'s' * (p.focus_alarms > 1)}[/]" if p.focus_alarms else "")
            bar.update(task, completed=p.acquired,
                       detail=f"{p.fps:5.1f} fps  {answered}  "
                              f"refused {p.refused}  latency p50 {latency}")

        yield update


@contextmanager
def training_progress(title: str):
    """Yields a callback for training (progress=...): a bar with the step, the training loss,
    the latest and best held-out loss, and the time left."""
    bar = Progress(TextColumn(f"[bold]{title}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                   TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console,
                   transient=True, disable=not console.is_terminal)  # piped: no blank line left behind
    with bar:
        task = bar.add_task(title, total=1.0, detail="")

        def update(p: TrainProgress) -> None:
            steps = f"step {p.step}" + (f"/{p.total_steps}" if p.total_steps else "")
            held_out = (f"  val {p.validation_loss:.4f} (best {p.best_validation_loss:.4f})"
                        if p.validation_loss is not None else "")
            eta = f"  ETA {_duration(p.eta_s)}" if p.eta_s is not None else ""
            bar.update(task, completed=p.fraction, detail=f"{steps}  loss {p.loss:.4f}{held_out}{eta}")

        yield update


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes}:{s:02d}"


def print_summary(s: AcquisitionSummary, extra: dict[str, str] | None = None) -> None:
    table = Table(title="acquisition summary", show_header=False)
    table.add_row("frames acquired", str(s.frames_acquired))
    table.add_row("acquisition rate", f"{s.acquisition_fps:.1f} fps")
    answered = "localised" if s.tables else "restored"  # a localise pipeline answers with tables
    if s.frames_sent or s.results:
        table.add_row(f"sent / {answered}", f"{s.frames_sent} / {s.results}")
        table.add_row("dropped", f"{s.dropped} (client {s.dropped_by_client}, "
                                 f"server {s.dropped_by_server})")
        table.add_row("errors", str(s.errors))
        if s.unanswered:
            table.add_row("[red]unanswered[/]", str(s.unanswered))
        if s.not_streamed:
            table.add_row("[red]not streamed[/] (raw saved)", str(s.not_streamed))
        for reason, n in s.refusal_reasons.items():
            table.add_row(f"  refused: {reason}", str(n))
        table.add_row(f"{answered} rate", f"{s.restored_fps:.1f} fps")
        if s.latency_p50_ms is not None:
            table.add_row("latency send->result", f"p50 {s.latency_p50_ms:.1f} ms, "
                                                  f"p99 {s.latency_p99_ms:.1f} ms")
            table.add_row("  of which server", f"p50 {s.server_latency_p50_ms:.1f} ms")
        table.add_row("models", ", ".join(s.models) or "-")
    if s.tables:
        table.add_row("emitters", f"{s.emitters} in {s.tables} frames ({s.emitters / s.tables:.1f} per frame)")
    if s.smlm is not None:
        q = s.smlm
        table.add_row("FRC resolution", f"{q.frc_resolution_nm:.1f} nm" if q.frc_resolution_nm is not None
                      else f"finer than {2 * q.frc_pixel_nm:g} nm (no crossing of 1/7)" if q.frc_pixel_nm else "-")
        table.add_row("drift (last frame)",
                      f"x {q.drift_nm[0]:+.1f} nm, y {q.drift_nm[1]:+.1f} nm, "
                      f"corrected (largest {q.drift_max_nm:.1f} nm)"
                      if q.drift_nm is not None else "- (too few emitters to tell)")
        table.add_row("emitter density", f"{q.density_per_um2:.3g} /µm² per frame (last {q.density_frames} frames)")
    if s.psf is not None:
        q = s.psf
        table.add_row("PSF tiles", f"{q.tiles} in {q.frames} frames; last frame |defocus| median "
                                   + (f"{q.median_abs_defocus_um:.2f} ± {q.median_abs_defocus_sd_um:.2f} µm"
                                      if q.median_abs_defocus_um is not None else "-"))
    if s.autofocus is not None:
        a = s.autofocus
        table.add_row("autofocus", f"{a.cycles} cycles, {a.corrections} corrected, {a.searching_cycles} searching; "
                                   f"focus {a.start_um:+.2f} -> {a.working_um:+.2f} µm")
        for alarm in a.alarms:
            table.add_row("[red]  focus alarm[/]", alarm)
    if s.ended_early:
        table.add_row("ended early", f"{s.ended_early} ({s.frames_acquired} of {s.frames_planned} frames)")
    if s.raw_path:
        table.add_row("raw data", s.raw_path)
    if s.restored_path:
        table.add_row("restored data", s.restored_path)
    elif s.output_error:
        table.add_row("localisations" if s.tables else "restored data", "[red]not saved[/] (see the error below)")
    if s.table_path:
        table.add_row("PSF tiles (CSV)" if s.psf is not None else "localisations", s.table_path)
    if s.render_path:
        table.add_row("render", s.render_path)
    for k, v in (extra or {}).items():
        table.add_row(k, v)
    console.print(table)
    for warning in s.warnings:
        console.print(f"[yellow]warning:[/] {warning}")

"""The offline commands: `livescope denoise`, `restore`, `localise` and `refocus` run a model of the
repository over a stack on disk (`livescope.server.offline*`), under a progress bar."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from livescope.cli._common import default_models_dir, fail

InArg = Annotated[Path, typer.Argument(help="TIFF, OME-TIFF or OME-Zarr stack (first axis = frames).")]
OutArg = Annotated[Path, typer.Argument(help="Output .ome.tiff / .tif / .ome.zarr (float32, input units).")]


def _model_help(task: str) -> str:
    # no square brackets: the help is rich markup, where NAME[@VERSION] loses its bracket
    return f"{task} or {task}@VERSION; default: the newest that passed the quality gate."


def _offline(task: str, model: str | None, inp: Path, out: Path, models: Path | None,
             overwrite: bool, tile: int | None, batch: int, provider: str | None,
             dask: str | None = None, dask_timeout: float = 10.0, **camera: Any) -> None:
    if dask is not None:  # dask is an optional extra: imported only for --dask
        from livescope.server.offline_dask import run_offline_dask as run
        camera |= {"scheduler": dask, "timeout_s": dask_timeout}
    else:
        from livescope.server.offline import run_offline as run

    _run_offline_job(task, lambda progress: run(
        model or task, inp, out, task=task, overwrite=overwrite,
        model_dirs=[models or default_models_dir()], tile_px=tile, batch=batch, provider=provider,
        progress=progress, **camera))


def _run_offline_job(label: str, job: Callable[[Callable[[int, int], None]], Any]) -> None:
    """Run ``job(progress)`` under a progress bar; a StackError / OfflineError becomes a one-line
    error; then print the summary's line and its warnings."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from livescope.cli._console import console
    from livescope.server.offline import OfflineError
    from livescope.stackio import StackError

    bar = Progress("[bold]" + label, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, transient=True, disable=not console.is_terminal)
    try:
        with bar:
            task = bar.add_task(label, total=None)
            summary = job(lambda done, total: bar.update(task, completed=done, total=total))
    except (StackError, OfflineError) as e:
        fail(str(e))
    console.print(summary.line())
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


_OfflineOpts = dict(
    models=typer.Option(None, "--models", help="Your model repository, searched after the shipped models."),
    overwrite=typer.Option(False, help="Replace an existing output."),
    tile=typer.Option(None, help="Tile size in pixels for large frames (default: by model and memory)."),
    batch=typer.Option(4, min=1, help="Frames (or tiles) per model call."),
    provider=typer.Option(None, help="tensorrt, cuda or cpu; default: probe."),
    dask=typer.Option(None, "--dask", metavar="SCHEDULER|local:N", help=(
        "Run on a Dask cluster, chunk by chunk (OME-Zarr in and out): a scheduler's address "
        "(tcp://host:8786) or local:N for N worker processes on this machine.")),
    dask_timeout=typer.Option(10.0, "--dask-timeout", min=0.1, help="Seconds to wait for the Dask scheduler."),
)


def denoise(
    inp: InArg, out: OutArg,
    model: Annotated[Optional[str], typer.Option(help=_model_help("denoise"))] = None,
    models: Optional[Path] = _OfflineOpts["models"], overwrite: bool = _OfflineOpts["overwrite"],
    tile: Optional[int] = _OfflineOpts["tile"], batch: int = _OfflineOpts["batch"],
    provider: Optional[str] = _OfflineOpts["provider"],
    dask: Optional[str] = _OfflineOpts["dask"], dask_timeout: float = _OfflineOpts["dask_timeout"],
    baseline: Annotated[Optional[float], typer.Option(
        help="Camera baseline (offset), ADU, for a camera-agnostic model (default: estimated from the stack).")] = None,
    e_per_adu: Annotated[Optional[float], typer.Option(
        "--e-per-adu", help="Camera conversion gain, e-/ADU, for a camera-agnostic model (default: estimated).",
    )] = None,
    em_gain: Annotated[float, typer.Option("--em-gain", help="EMCCD gain (1 for sCMOS).")] = 1.0,
    ensemble: Annotated[bool, typer.Option(
        "--ensemble", help="Average the model over each frame's 8 flips and quarter turns: a little "
                           "cleaner, 8x the time.")] = False,
) -> None:
    """Denoise a stack with the newest (or the named) denoise model. A camera-agnostic model works in
    photons: the camera is estimated from the stack (and printed) unless given."""
    if (e_per_adu is not None and e_per_adu <= 0) or em_gain < 1 or (baseline is not None and baseline < 0):
        fail("--e-per-adu must be positive, --em-gain at least 1, --baseline not negative")
    _offline("denoise", model, inp, out, models, overwrite, tile, batch, provider, dask, dask_timeout,
             baseline_adu=baseline, e_per_adu=e_per_adu, em_gain=em_gain, ensemble=ensemble)


def restore(
    inp: InArg, out: OutArg,
    model: Annotated[Optional[str], typer.Option(help=_model_help("restore"))] = None,
    models: Optional[Path] = _OfflineOpts["models"], overwrite: bool = _OfflineOpts["overwrite"],
    tile: Optional[int] = _OfflineOpts["tile"], batch: int = _OfflineOpts["batch"],
    provider: Optional[str] = _OfflineOpts["provider"],
    dask: Optional[str] = _OfflineOpts["dask"], dask_timeout: float = _OfflineOpts["dask_timeout"],
) -> None:
    """Cross-modality restoration (e.g. confocal -> STED) of a stack."""
    _offline("restore", model, inp, out, models, overwrite, tile, batch, provider, dask, dask_timeout)


def localise(
    inp: InArg,
    out: Annotated[Path, typer.Argument(help="Localisations, ThunderSTORM CSV (.csv).")],
    pixel_size: Annotated[Optional[float], typer.Option(
        "--pixel-size", help="Camera pixel size at the sample, nm (default: from the stack's metadata).")] = None,
    baseline: Annotated[Optional[float], typer.Option(
        help="Camera baseline (offset), ADU (default: estimated from the movie's noise).")] = None,
    e_per_adu: Annotated[Optional[float], typer.Option(
        "--e-per-adu", help="Camera conversion gain, e-/ADU (default: estimated from the movie's noise).")] = None,
    em_gain: Annotated[float, typer.Option("--em-gain", help="EMCCD gain (1 for sCMOS).")] = 1.0,
    render: Annotated[Optional[Path], typer.Option(
        help="Also write a Gaussian super-resolution render (OME-TIFF or OME-Zarr).")] = None,
    render_px: Annotated[float, typer.Option("--render-px", help="Render pixel size, nm.")] = 10.0,
    model: Annotated[Optional[str], typer.Option(help=_model_help("localise"))] = None,
    models: Optional[Path] = _OfflineOpts["models"], overwrite: bool = _OfflineOpts["overwrite"],
    strict: Annotated[bool, typer.Option(
        help="Refuse data outside the model's trained range instead of warning.")] = False,
    provider: Optional[str] = _OfflineOpts["provider"],
) -> None:
    """Localise single molecules in every frame of a stack; write a ThunderSTORM CSV (x, y in nm
    from the top-left corner of the top-left pixel; frames from 1) and optionally a render."""
    if pixel_size is not None and pixel_size <= 0:
        fail(f"--pixel-size must be positive nm, not {pixel_size:g}")
    if (e_per_adu is not None and e_per_adu <= 0) or em_gain < 1 or (baseline is not None and baseline < 0) \
            or render_px <= 0:
        fail("--e-per-adu and --render-px must be positive, --em-gain at least 1, --baseline not negative")
    from livescope.server.offline_localise import run_localise_offline

    _run_offline_job("localise", lambda progress: run_localise_offline(
        inp, out, baseline_adu=baseline, e_per_adu=e_per_adu, em_gain=em_gain, pixel_size_nm=pixel_size,
        render_path=render, render_px_nm=render_px,
        model=model or "localise", model_dirs=[models or default_models_dir()], overwrite=overwrite,
        strict=strict, provider=provider, progress=progress))


def refocus(
    inp: InArg, out: OutArg,
    dz: Annotated[Optional[float], typer.Option(
        "--dz", help="Move every frame's focus by this, µm (the wanted plane minus the frame's).")] = None,
    sweep: Annotated[Optional[str], typer.Option(
        help="START:STOP:STEP µm: one frame (--frame) becomes a virtual z-stack, e.g. -2:2:0.25.")] = None,
    frame: Annotated[int, typer.Option(min=0, help="With --sweep: the frame to sweep, from 0.")] = 0,
    model: Annotated[Optional[str], typer.Option(help=_model_help("refocus"))] = None,
    models: Optional[Path] = _OfflineOpts["models"], overwrite: bool = _OfflineOpts["overwrite"],
    batch: int = _OfflineOpts["batch"], provider: Optional[str] = _OfflineOpts["provider"],
    dask: Optional[str] = _OfflineOpts["dask"], dask_timeout: float = _OfflineOpts["dask_timeout"],
) -> None:
    """Virtual refocusing (Deep-Z style): each frame as it would look with the focus moved by --dz,
    or one frame swept through focus (--sweep) into a z-stack."""
    cluster: dict[str, Any] = {}
    if dask is not None:  # dask is an optional extra: imported only for --dask
        from livescope.server.offline_dask import run_refocus_dask as run
        cluster = {"scheduler": dask, "timeout_s": dask_timeout}
    else:
        from livescope.server.offline_refocus import run_refocus_offline as run

    _run_offline_job("refocus", lambda progress: run(
        inp, out, dz_um=dz, sweep=sweep, frame=frame, model=model or "refocus",
        model_dirs=[models or default_models_dir()], overwrite=overwrite, batch=batch, provider=provider,
        progress=progress, **cluster))

"""The `livescope` command. Each command imports its part lazily, so `serve` never loads torch
and `--help` is instant. A user's mistake ends in one line on stderr and a non-zero exit."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Deep-learning image restoration inside the microscope's acquisition loop.")
models_app = typer.Typer(no_args_is_help=True,
                        help="A server's model versions: list, load, activate (hot-swap), unload, rescan.")
keys_app = typer.Typer(no_args_is_help=True, help="CURVE keys for serving beyond this machine.")
from livescope.cli_calibrate import calibrate_app  # noqa: E402 - lazy inside, like this module
from livescope.cli_calibrate_register import register  # noqa: E402
from livescope.cli_train_restore import train_restore  # noqa: E402

train_app = typer.Typer(no_args_is_help=True, help="Train a model and add it to a repository.")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(train_app, name="train")
app.add_typer(calibrate_app, name="calibrate")
train_app.command("restore")(train_restore)
calibrate_app.command("register")(register)

EXIT_USER_ERROR = 2
POOR_PSF_FIT_RESIDUAL = 0.25  # a bead calibration this far off is worth a warning

ServerOpt = Annotated[str, typer.Option("--server", help="The server's frames address.")]
ModelsOpt = Annotated[Optional[Path], typer.Option(
    "--models", help="Your model repository, searched after the shipped models.")]
DeployOpt = Annotated[bool, typer.Option(
    "--deploy", help="Register the new version in the running server (--server; it must read --models) "
                     "and hot-swap it in if its held-out metric is not worse than the active version's "
                     "on the same held-out data.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="With --deploy: activate the new version even if worse.")]
DeployServerOpt = Annotated[str, typer.Option("--server", help="With --deploy: the server's frames address.")]


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    typer.echo(f"livescope: error: {message}", err=True)
    raise typer.Exit(code)


def _setup_logging(level: str) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=level.upper(), format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(show_path=False, console=_stderr_console())])


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _default_models_dir() -> Path:
    return Path.home() / ".livescope" / "models"


# -- serve ---------------------------------------------------------------------------------------


@app.command()
def serve(
    frames: Annotated[str, typer.Option(help="ROUTER address for frames and control.")] = "tcp://127.0.0.1:5760",
    results: Annotated[str, typer.Option(help="PUB address for results.")] = "tcp://127.0.0.1:5761",
    metrics_port: Annotated[int, typer.Option(help="Prometheus port on 127.0.0.1; 0 = off.")] = 9760,
    models: ModelsOpt = None,
    provider: Annotated[Optional[str], typer.Option(help="tensorrt, cuda or cpu; default: probe.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="onnxruntime intra-op threads.")] = None,
    fp16: Annotated[bool, typer.Option(help="TensorRT: allow fp16 kernels.")] = False,
    graph_opt: Annotated[str, typer.Option(
        help="onnxruntime graph optimisation: disable, basic, extended, all.")] = "all",
    max_frame_mb: Annotated[float, typer.Option(help="Largest frame accepted, MiB.")] = 64.0,
    batch_max_frames: Annotated[int, typer.Option(min=1, help="Micro-batch size limit.")] = 8,
    batch_wait_ms: Annotated[float, typer.Option(
        min=0, help="Wait this long for more frames to batch; 0 batches what is waiting.")] = 0.0,
    render_px: Annotated[float, typer.Option(
        min=0.1, help="localise streams: the running super-resolution render's pixel, nm.")] = 20.0,
    curve_secret: Annotated[Optional[Path], typer.Option(help="Server secret key (.key_secret).")] = None,
    allow: Annotated[Optional[Path], typer.Option(help="Folder of allowed client public keys.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning.")] = "info",
) -> None:
    """Run the inference server until Ctrl-C / SIGTERM (in-flight frames are finished first)."""
    import signal

    from pydantic import ValidationError

    from livescope.security import SecurityError
    from livescope.server.config import ServerConfig
    from livescope.server.providers import RuntimeOptions
    from livescope.server.server import InferenceServer, ServerStartError
    from livescope.validation import first_error

    _setup_logging(log_level)
    try:
        config = ServerConfig(
            frames_address=frames, results_address=results, metrics_port=metrics_port or None,
            model_dirs=(models or _default_models_dir(),),
            runtime=RuntimeOptions(provider=provider, intra_op_threads=threads, fp16=fp16,
                                   graph_optimisation=graph_opt),
            max_frame_bytes=int(max_frame_mb * 2**20),
            batch_max_frames=batch_max_frames, batch_wait_ms=batch_wait_ms, render_pixel_nm=render_px,
            curve_secret_key=curve_secret, curve_allowed_clients=allow)
    except ValidationError as e:
        fail(first_error(e))
    server = InferenceServer(config)
    try:
        server.start()
    except (ServerStartError, SecurityError) as e:
        fail(str(e))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.request_stop())
    print("ready", flush=True)  # a line supervisors (and the demo) wait for
    server.serve_forever()


# -- acquire and demo ----------------------------------------------------------------------------

SPECIMENS = ("filaments", "cells", "beads", "smlm")
MODALITIES = ("widefield", "confocal", "sted")


@app.command()
def acquire(
    mm_config: Annotated[Optional[Path], typer.Option(
        help="Your Micro-Manager config; default: the built-in virtual microscope.")] = None,
    sequence: Annotated[Optional[Path], typer.Option(help="useq-schema MDASequence, YAML or JSON.")] = None,
    frames: Annotated[Optional[int], typer.Option(help="Acquire N frames (a time series).")] = None,
    exposure_ms: Annotated[Optional[float], typer.Option(help="Camera exposure, ms.")] = None,
    server: Annotated[Optional[str], typer.Option(
        help="Restore live on this server. Without it and without --pipeline: only acquire.")] = None,
    pipeline: Annotated[Optional[str], typer.Option(
        help="Stages, comma-separated (default denoise); implies the default server "
             "tcp://127.0.0.1:5760 when --server is not given.")] = None,
    mode: Annotated[str, typer.Option(help="lossless (every frame) or latest (live view).")] = "lossless",
    in_flight: Annotated[int, typer.Option(
        min=1, help="Frames on their way to the server at once: 2 keeps it busy at least "
                    "latency; raise it for fast models on slow links.")] = 2,
    server_timeout: Annotated[float, typer.Option(
        min=0.1, help="Stop restoring if the server answers nothing for this long, s.")] = 30.0,
    output: Annotated[Optional[Path], typer.Option(
        help="Save raw frames to PATH.ome.zarr or PATH.ome.tiff (restored: PATH.<stage>.ome.*).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    specimen: Annotated[str, typer.Option(
        help="Virtual microscope: filaments, cells, beads or smlm (blinking molecules).")] = "filaments",
    modality: Annotated[str, typer.Option(
        help="Virtual microscope: widefield, confocal or sted (the Modality preset at start).")] = "widefield",
    depth: Annotated[float, typer.Option(
        min=0, help="Virtual microscope: specimen thickness in µm (0 = a flat specimen).")] = 0.0,
    size: Annotated[int, typer.Option(help="Virtual microscope: camera size in pixels.")] = 512,
    seed: Annotated[int, typer.Option(help="Virtual microscope: random seed.")] = 0,
    baseline: Annotated[Optional[float], typer.Option(
        help="Camera baseline (offset), ADU. A localise stage needs it on a real rig; the virtual "
             "microscope's camera gives it.")] = None,
    e_per_adu: Annotated[Optional[float], typer.Option(
        "--e-per-adu", help="Camera conversion gain, e-/ADU. A localise stage needs it on a real rig; "
                            "the virtual microscope's camera gives it.")] = None,
    em_gain: Annotated[Optional[float], typer.Option(
        "--em-gain", help="EMCCD gain (1 for sCMOS).")] = None,
    render_px: Annotated[float, typer.Option(
        "--render-px", help="localise: render pixel size of PATH.localise.render.ome.tif, nm.")] = 10.0,
    dz: Annotated[Optional[float], typer.Option(
        "--dz", metavar="MICRONS", help="refocus: move every frame's focus by this, µm (the wanted plane's "
                                        "focus minus the frame's; positive: further from the coverslip). "
                                        "Only with a refocus stage in --pipeline.")] = None,
) -> None:
    """Run a useq-schema acquisition on Micro-Manager (pymmcore-plus), restoring frames live.

    With a localise pipeline, counts emitters live and, with --output PATH.ome.zarr, writes
    PATH.localise.csv (ThunderSTORM) and a super-resolution render PATH.localise.render.ome.tif."""
    if mode not in ("lossless", "latest"):
        fail(f"--mode must be lossless or latest, not {mode!r}")
    if specimen not in SPECIMENS:
        fail(f"--specimen must be one of {', '.join(SPECIMENS)}, not {specimen!r}")
    if modality not in MODALITIES:
        fail(f"--modality must be one of {', '.join(MODALITIES)}, not {modality!r}")
    stages = tuple(s.strip() for s in (pipeline or "denoise").split(",") if s.strip())
    if not stages:
        fail("--pipeline names no stage")
    if server is None and pipeline is not None:
        server = "tcp://127.0.0.1:5760"
    if (e_per_adu is not None and e_per_adu <= 0) or (em_gain is not None and em_gain < 1) or (
            baseline is not None and baseline < 0) or render_px <= 0:
        fail("--e-per-adu and --render-px must be positive, --em-gain at least 1, --baseline not negative")
    from livescope.acquire.localisations import localises

    if server is not None and localises(stages) and mm_config is not None and (
            baseline is None or e_per_adu is None):
        fail("a localise stage needs the camera's calibration: give --baseline ADU and --e-per-adu E "
             "(and --em-gain G for an EMCCD)")
    _check_output(output, overwrite, stages if server is not None else ())
    summary = _acquire(mm_config=mm_config, sequence=sequence, frames=frames,
                       exposure_ms=exposure_ms, server=server, stages=stages, mode=mode,
                       output=output, specimen=specimen, size=size, seed=seed,
                       in_flight=in_flight, server_timeout_s=server_timeout,
                       modality=modality, depth_um=depth,
                       calibration={"baseline_adu": baseline, "e_per_adu": e_per_adu, "em_gain": em_gain},
                       render_px_nm=render_px, dz_um=dz)
    from livescope.console import print_summary

    print_summary(summary)
    if summary.stopped_reason:
        fail(f"restoration stopped: {summary.stopped_reason}; the raw data acquired is saved",
             code=1)
    if summary.errors:
        raise typer.Exit(1)


def _check_output(output: Path | None, overwrite: bool, stages: tuple[str, ...]) -> None:
    """Refuse an --output whose raw or result files exist (``stages``: the pipeline run, if any)."""
    if output is None:
        return
    from livescope.acquire.localisations import gives_tables
    from livescope.acquire.results import restored_path, table_paths

    if not output.name.endswith((".ome.zarr", ".ome.tiff", ".ome.tif")):
        fail(f"--output must end in .ome.zarr or .ome.tiff: {output}")
    targets = [output]
    if stages:
        stage = stages[-1].split("@")[0]
        targets += table_paths(output, stage) if gives_tables(stages) else [restored_path(output, stage)]
    for target in targets:
        if target.exists() and not overwrite:
            fail(f"{target} exists; choose another --output or pass --overwrite")
    if not output.parent.is_dir():
        fail(f"folder does not exist: {output.parent}")


def _acquire(*, mm_config, sequence, frames, exposure_ms, server, stages, mode, output,
             specimen="filaments", size=512, seed=0, in_flight=2, server_timeout_s=30.0,
             modality="widefield", depth_um=0.0, calibration=None, render_px_nm=10.0, dz_um=None):
    """``calibration``: the camera's baseline_adu, e_per_adu, em_gain as given (None: not given);
    on the virtual microscope its camera fills in what was not given. ``dz_um``: the delta-z sent
    with every frame, for a refocus stage."""
    from livescope.acquire.localisations import gives_tables, localises
    from livescope.acquire.microscope import MicroscopeError, open_microscope
    from livescope.acquire.run import refocuses, run_acquisition
    from livescope.acquire.sequence import SequenceError, load_sequence
    from livescope.acquire.virtual import VirtualRigConfig
    from livescope.client import ServerUnreachableError
    from livescope.console import acquisition_progress
    from livescope.protocol import CameraCalibration

    if dz_um is not None and (server is None or not refocuses(stages or ())):
        fail("--dz is the delta-z of a refocus stage: give one in --pipeline (e.g. --pipeline refocus)")
    if sequence is None and frames is None:
        frames = 100
    try:
        seq = load_sequence(sequence, frames=frames, exposure_ms=exposure_ms)
    except SequenceError as e:
        fail(str(e))
    rig = None
    given = {k: v for k, v in (calibration or {}).items() if v is not None}
    camera = None
    if mm_config is None:
        rig = VirtualRigConfig(sensor_shape_px=(size, size), specimen=specimen, seed=seed,
                               modality=modality, specimen_depth_um=depth_um)
        c = rig.camera
        camera = CameraCalibration(**{"baseline_adu": c.baseline_adu, "e_per_adu": c.e_per_adu,
                                      "em_gain": c.em_gain, **given})
    elif {"baseline_adu", "e_per_adu"} <= given.keys():
        camera = CameraCalibration(**given)
    try:
        core = open_microscope(mm_config, rig=rig)
    except MicroscopeError as e:
        fail(str(e))
    stages = stages or ("denoise",)
    if server is not None and localises(stages) and not core.getPixelSizeUm():
        fail("a localise stage needs the camera's pixel size: define a pixel size configuration "
             "in the Micro-Manager config")
    total = len(list(seq.iter_events()))
    title = "acquiring" if server is None else "localising" if gives_tables(stages) else "restoring"
    try:
        with acquisition_progress(total, title) as bar:
            return run_acquisition(core, seq, server=server, pipeline=stages,
                                   mode=mode, output=output, progress=bar,
                                   max_in_flight=in_flight, server_timeout_s=server_timeout_s,
                                   camera=camera, render_px_nm=render_px_nm, dz_um=dz_um)
    except ServerUnreachableError as e:
        fail(f"{e} (start one with `livescope serve`)")
    except KeyboardInterrupt:
        core.mda.cancel()
        fail("interrupted", code=130)


@app.command()
def demo(
    frames: Annotated[Optional[int], typer.Option(help="Frames to acquire (default: sized for ~1 min).")] = None,
    size: Annotated[Optional[int], typer.Option(help="Camera size in pixels (default: by hardware).")] = None,
    output: Annotated[Path, typer.Option(help="Folder for the raw and restored data.")] = Path("livescope-demo"),
) -> None:
    """One command: start a server, acquire on the virtual microscope, restore live, summarise."""
    from livescope.acquire.demo import run_demo
    from livescope.console import acquisition_progress, console, print_summary
    from livescope.launch import ServerLaunchError, spawn_server

    console.print("[bold]livescope demo[/]: starting the inference server ...")
    try:
        server = spawn_server("--log-level", "warning")
    except ServerLaunchError as e:
        fail(str(e))
    try:
        providers = _control(server.frames, "health")["providers"]
        gpu = any(p in ("cuda", "tensorrt") for p in providers)
        size = size or (1024 if gpu else 512)
        frames = frames or (1500 if gpu else 400)
        console.print(f"server ready on {server.frames} (provider: {', '.join(providers)}); "
                      f"virtual microscope: filaments, {size}x{size} px, {frames} frames; "
                      "pipeline: denoise")
        output.mkdir(parents=True, exist_ok=True)
        with acquisition_progress(frames, "restoring") as bar:
            report = run_demo(server.frames, frames=frames, size=size, output=output,
                              progress=bar)
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    finally:
        server.stop()
    extra = {}
    if report.psnr_raw_db is not None:
        extra["PSNR vs ground truth"] = (f"raw {report.psnr_raw_db:.1f} dB -> restored "
                                         f"{report.psnr_restored_db:.1f} dB")
    print_summary(report.summary, extra)
    s = report.summary
    if s.dropped or s.errors or s.results != s.frames_acquired:
        fail("not every frame was restored (see the summary above)", code=1)


# -- offline restoration -----------------------------------------------------------------------

InArg = Annotated[Path, typer.Argument(help="TIFF, OME-TIFF or OME-Zarr stack (first axis = frames).")]
OutArg = Annotated[Path, typer.Argument(help="Output .ome.tiff / .tif / .ome.zarr (float32, input units).")]


def _offline(task: str, model: str | None, inp: Path, out: Path, models: Path | None,
             overwrite: bool, tile: int | None, batch: int, provider: str | None) -> None:
    from livescope.server.offline import run_offline

    _run_offline_job(task, lambda progress: run_offline(
        model or task, inp, out, task=task, overwrite=overwrite,
        model_dirs=[models or _default_models_dir()], tile_px=tile, batch=batch, provider=provider,
        progress=progress))


def _run_offline_job(label: str, job: Callable[[Callable[[int, int], None]], Any]) -> None:
    """Run ``job(progress)`` under a progress bar; a StackError / OfflineError becomes a one-line
    error; then print the summary's line and its warnings."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from livescope.console import console
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
)


@app.command()
def denoise(
    inp: InArg, out: OutArg,
    model: Annotated[Optional[str], typer.Option(help="denoise[@VERSION]; default: newest.")] = None,
    models: Optional[Path] = _OfflineOpts["models"], overwrite: bool = _OfflineOpts["overwrite"],
    tile: Optional[int] = _OfflineOpts["tile"], batch: int = _OfflineOpts["batch"],
    provider: Optional[str] = _OfflineOpts["provider"],
) -> None:
    """Denoise a stack with the newest (or the named) denoise model."""
    _offline("denoise", model, inp, out, models, overwrite, tile, batch, provider)


@app.command()
def restore(
    inp: InArg, out: OutArg,
    model: Annotated[Optional[str], typer.Option(help="restore[@VERSION]; default: newest.")] = None,
    models: Optional[Path] = _OfflineOpts["models"], overwrite: bool = _OfflineOpts["overwrite"],
    tile: Optional[int] = _OfflineOpts["tile"], batch: int = _OfflineOpts["batch"],
    provider: Optional[str] = _OfflineOpts["provider"],
) -> None:
    """Cross-modality restoration (e.g. confocal -> STED) of a stack."""
    _offline("restore", model, inp, out, models, overwrite, tile, batch, provider)


@app.command()
def localise(
    inp: InArg,
    out: Annotated[Path, typer.Argument(help="Localisations, ThunderSTORM CSV (.csv).")],
    pixel_size: Annotated[Optional[float], typer.Option(
        "--pixel-size", help="Camera pixel size at the sample, nm (default: from the stack's metadata).")] = None,
    baseline: Annotated[float, typer.Option(help="Camera baseline (offset), ADU.")] = ...,
    e_per_adu: Annotated[float, typer.Option("--e-per-adu", help="Camera conversion gain, e-/ADU.")] = ...,
    em_gain: Annotated[float, typer.Option("--em-gain", help="EMCCD gain (1 for sCMOS).")] = 1.0,
    render: Annotated[Optional[Path], typer.Option(
        help="Also write a Gaussian super-resolution render (OME-TIFF or OME-Zarr).")] = None,
    render_px: Annotated[float, typer.Option("--render-px", help="Render pixel size, nm.")] = 10.0,
    model: Annotated[Optional[str], typer.Option(help="localise[@VERSION]; default: newest.")] = None,
    models: Optional[Path] = _OfflineOpts["models"], overwrite: bool = _OfflineOpts["overwrite"],
    strict: Annotated[bool, typer.Option(
        help="Refuse data outside the model's trained range instead of warning.")] = False,
    provider: Optional[str] = _OfflineOpts["provider"],
) -> None:
    """Localise single molecules in every frame of a stack; write a ThunderSTORM CSV (x, y in nm
    from the top-left corner of the top-left pixel; frames from 1) and optionally a render."""
    if pixel_size is not None and pixel_size <= 0:
        fail(f"--pixel-size must be positive nm, not {pixel_size:g}")
    if e_per_adu <= 0 or em_gain < 1 or baseline < 0 or render_px <= 0:
        fail("--e-per-adu and --render-px must be positive, --em-gain at least 1, --baseline not negative")
    from livescope.protocol import CameraCalibration
    from livescope.server.offline_localise import run_localise_offline

    camera = CameraCalibration(baseline_adu=baseline, e_per_adu=e_per_adu, em_gain=em_gain)
    _run_offline_job("localise", lambda progress: run_localise_offline(
        inp, out, camera, pixel_size_nm=pixel_size, render_path=render, render_px_nm=render_px,
        model=model or "localise", model_dirs=[models or _default_models_dir()], overwrite=overwrite,
        strict=strict, provider=provider, progress=progress))


# -- train -------------------------------------------------------------------------------------


@app.command()
def refocus(
    inp: InArg, out: OutArg,
    dz: Annotated[Optional[float], typer.Option(
        "--dz", help="Move every frame's focus by this, µm (the wanted plane minus the frame's).")] = None,
    sweep: Annotated[Optional[str], typer.Option(
        help="START:STOP:STEP µm: one frame (--frame) becomes a virtual z-stack, e.g. -2:2:0.25.")] = None,
    frame: Annotated[int, typer.Option(min=0, help="With --sweep: the frame to sweep, from 0.")] = 0,
    model: Annotated[Optional[str], typer.Option(help="refocus[@VERSION]; default: newest.")] = None,
    models: Optional[Path] = _OfflineOpts["models"], overwrite: bool = _OfflineOpts["overwrite"],
    batch: int = _OfflineOpts["batch"], provider: Optional[str] = _OfflineOpts["provider"],
) -> None:
    """Virtual refocusing (Deep-Z style): each frame as it would look with the focus moved by --dz,
    or one frame swept through focus (--sweep) into a z-stack."""
    from livescope.server.offline_refocus import run_refocus_offline

    _run_offline_job("refocus", lambda progress: run_refocus_offline(
        inp, out, dz_um=dz, sweep=sweep, frame=frame, model=model or "refocus",
        model_dirs=[models or _default_models_dir()], overwrite=overwrite, batch=batch, provider=provider,
        progress=progress))


def _resolve_model(ref: str, repository: Path, *, task: str, option: str):
    """NAME[@VERSION] in the shipped models and ``repository`` (a `ModelVersion` of ``task``)."""
    from livescope.protocol import split_stage
    from livescope.repository import ModelRepository, UnknownModelError, shipped_models_root

    try:
        name, version = split_stage(ref)
        found = ModelRepository([shipped_models_root(), repository]).resolve(name, version)
    except (ValueError, UnknownModelError) as e:
        fail(f"{option} {ref}: {e}")
    if found.card.task != task:
        fail(f"{option} {ref}: {found.ref} is a {found.card.task} model, not a {task} one")
    return found


def _expand_sessions(paths: list[Path]) -> tuple[list[Path], tuple[str, ...]]:
    """Calibration sessions among ``paths`` replaced by their positions' OME-Zarr stores (each
    an ordinary stack), and the sessions' ids (for the card's lineage)."""
    from livescope.session import SessionError, is_session, load_session

    expanded: list[Path] = []
    ids: list[str] = []
    for path in paths:
        if not is_session(path):
            expanded.append(path)
            continue
        try:
            session = load_session(path)
        except SessionError as e:
            fail(str(e))
        if not session.manifest.completed:
            fail(f"{path}: the session has no completed positions yet")
        expanded += [session.root / done.path for done in sorted(session.manifest.completed, key=lambda d: d.index)]
        ids.append(session.session_id)
    return expanded, tuple(ids)


def _compare_with(deploy: bool, server: str, name: str, force: bool):
    """With --deploy, before training (a mistake costs no training time): the server's active
    version of ``name``, which the trainer scores on the new version's held-out data."""
    if not deploy:
        if force:
            fail("--force only applies with --deploy")
        return None
    from livescope.deploy import DeployError, active_version
    from livescope.modelcard import CARD_FILE, ModelCard
    from livescope.repository import ModelVersion

    try:
        active = active_version(server, name)
    except DeployError as e:
        fail(f"--deploy: {e}")
    if active is None:
        return None
    folder = Path(active.folder)
    try:
        return ModelVersion(ModelCard.load(folder / CARD_FILE), folder)
    except (OSError, ValueError) as e:
        fail(f"--deploy: cannot read the active version {active.ref} at {folder}: {e}")


def _train_and_report(name: str, repository: Path, train: Callable[[Callable], tuple[Path, Any]], *,
                      deploy_to: str | None = None, force: bool = False) -> None:
    """Run ``train(progress)`` (it writes a new version into ``repository``) under a progress bar;
    print the held-out metrics, the folder, with ``deploy_to`` register it in that server and
    activate it if the gate allows, and last on stdout print the new version's NAME@VERSION."""
    from livescope.console import console, training_progress
    from livescope.models import export

    repository.mkdir(parents=True, exist_ok=True)
    with training_progress(f"training {name}") as report:
        try:
            folder, card = train(report)
        except export.ExportError as e:
            fail(str(e), code=1)
    for key, value in card.metrics.items():
        console.print(f"  {key}: {value:.4g}")
    console.print(f"wrote {folder}")
    if card.comparison is not None:
        console.print(f"compared: {card.comparison.summary()}")
    if deploy_to is not None:
        from livescope.deploy import DeployError, deploy

        try:
            outcome = deploy(deploy_to, card, force=force)
        except DeployError as e:
            fail(f"{card.ref} was written but not deployed: {e}", code=1)
        verb = "activated" if outcome.activated else "registered, NOT activated"
        console.print(f"deploy: {card.ref} {verb} in {deploy_to} ({outcome.reason}); active: {outcome.active}")
    typer.echo(card.ref)


@train_app.command("denoise")
def train_denoise(
    models: ModelsOpt = None,
    data: Annotated[Optional[list[Path]], typer.Option(
        help="Your own noisy stack (TIFF, OME-TIFF, OME-Zarr; frames = every axis before Y, X), "
             "raw camera counts, or a calibration session (every frame of it); repeat for several. "
             "Without it: virtual-microscope frames.")] = None,
    budget_minutes: Annotated[Optional[float], typer.Option(
        min=0.01, help="Training time budget, minutes (default 5 unless --steps / --epochs).")] = None,
    steps: Annotated[Optional[int], typer.Option(
        min=1, help="Train exactly N steps (reproducible; overrides the budget).")] = None,
    epochs: Annotated[Optional[int], typer.Option(
        min=1, help="With --data: train N passes over the data's patches (within the budget "
                    "if one is given).")] = None,
    patch: Annotated[int, typer.Option(
        min=8, help="Training patch side, px (a multiple of 8).")] = 32,
    struct: Annotated[Optional[str], typer.Option(
        help="structN2V for correlated camera noise: 'row' (horizontal stripes, e.g. sCMOS "
             "read-out) or 'column'.")] = None,
    struct_span: Annotated[int, typer.Option(
        min=1, help="With --struct: neighbours hidden either side of each blind spot, px.")] = 4,
    depth: Annotated[int, typer.Option(min=1, max=4, help="UNet depth (downsamplings).")] = 2,
    channels: Annotated[int, typer.Option(
        min=4, help="UNet channels at full resolution (doubled at every level down).")] = 16,
    intensity: Annotated[str, typer.Option(
        help="ADU -> network units: 'sqrt' (variance-stabilising, for a wide range of signals) "
             "or 'linear'.")] = "sqrt",
    seed: Annotated[int, typer.Option(help="Seed for data, held-out split and training.")] = 0,
    frames_per_condition: Annotated[int, typer.Option(
        min=1, help="Virtual-microscope frames per modality, specimen and signal level.")] = 4,
    deploy: DeployOpt = False, force: ForceOpt = False, server: DeployServerOpt = "tcp://127.0.0.1:5760",
) -> None:
    """Train a Noise2Void (N2V2) denoiser on your noisy stacks or on virtual-microscope frames;
    add it as a new version of `denoise` in the model repository."""
    import math
    import shlex
    from functools import partial

    from livescope.console import console

    repository = models or _default_models_dir()
    if repository.exists() and not repository.is_dir():
        fail(f"--models {repository} is a file, not a folder")
    if epochs is not None and not data:
        fail("--epochs needs --data (virtual-microscope training is set by --steps or the budget)")
    if struct not in (None, "row", "column"):
        fail(f"--struct must be 'row' or 'column', not {struct!r}")
    if intensity not in ("sqrt", "linear"):
        fail(f"--intensity must be 'sqrt' or 'linear', not {intensity!r}")
    if patch % math.lcm(2**depth, 8):
        fail(f"--patch {patch} must be a multiple of {math.lcm(2**depth, 8)} (8, and 2**depth for "
             f"--depth {depth})")
    own = None
    session_ids: tuple[str, ...] = ()
    if data:  # checked before torch is even imported: a mistake costs no time
        from livescope.models.denoise.user_data import TrainingDataError, load_training_stacks

        data, session_ids = _expand_sessions(data)
        try:
            own = load_training_stacks(data, patch, seed)
        except TrainingDataError as e:
            fail(str(e))
    from livescope.models.denoise.train import DenoiseTrainConfig

    budget_s = None if steps else (budget_minutes or (None if epochs else 5.0))
    budget_s = budget_s * 60.0 if budget_s else None
    config = DenoiseTrainConfig(steps=steps, seed=seed, patch_px=patch, budget_seconds=budget_s,
                                depth=depth, base_channels=channels, intensity=intensity,
                                struct_axis=struct or "none", struct_span_px=struct_span if struct else 0)
    command = shlex.join(["livescope", *sys.argv[1:]])
    if own is not None:
        from livescope.models.denoise.train import steps_per_epoch, train_and_publish_own_data

        if epochs is not None and steps is None:
            config = DenoiseTrainConfig(**(config.model_dump() | {
                "steps": epochs * steps_per_epoch(own.train_adu, config)}))
        console.print(f"training data: {own.describe()}")
        compare_with = _compare_with(deploy, server, "denoise", force)
        train = partial(train_and_publish_own_data, repository, own, compare_with=compare_with,
                        session_ids=session_ids)
    else:
        from livescope.models.denoise.data import VirtualDenoiseData
        from livescope.models.denoise.train import train_and_publish

        _compare_with(deploy, server, "denoise", force)  # checks the server before training; no comparison
        source = VirtualDenoiseData(frames_per_condition=frames_per_condition, seed=seed)
        train = partial(train_and_publish, repository, data=source)
    _train_and_report("denoise", repository, lambda report: train(config=config, command=command, progress=report),
                      deploy_to=server if deploy else None, force=force)


@train_app.command("localise")
def train_localise(
    models: ModelsOpt = None,
    psf: Annotated[str, typer.Option(help="gaussian or airy (2-D), astigmatic (3-D).")] = "gaussian",
    budget_minutes: Annotated[Optional[float], typer.Option(
        min=0.01, help="Training time budget, minutes (default 20 unless --steps).")] = None,
    steps: Annotated[Optional[int], typer.Option(
        min=1, help="Train exactly N steps (the command then repeats the model exactly).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the simulation and training.")] = 0,
    name: Annotated[Optional[str], typer.Option(
        help="Model name in the repository (default localise; localise3d for --psf astigmatic).")] = None,
    beads: Annotated[Optional[Path], typer.Option(
        "--beads", help="A `livescope calibrate beads` session: fit your rig's astigmatic PSF to its bead "
                        "stacks and simulate with it (implies --psf astigmatic).")] = None,
    na: Annotated[Optional[float], typer.Option(
        "--na", min=0.1, help="With --beads on a real rig: the objective's NA.")] = None,
    emission: Annotated[Optional[float], typer.Option(
        "--emission", min=200.0, help="With --beads on a real rig: emission wavelength, nm.")] = None,
    immersion: Annotated[Optional[float], typer.Option(
        "--immersion", min=1.0, help="With --beads on a real rig: immersion refractive index.")] = None,
    deploy: DeployOpt = False, force: ForceOpt = False, server: DeployServerOpt = "tcp://127.0.0.1:5760",
) -> None:
    """Train a localisation network on simulated single-molecule movies only (no data needed; with
    --beads, through your rig's calibrated PSF); add it as a new version of NAME in the model repository."""
    import shlex

    if beads is not None:
        if psf not in ("gaussian", "astigmatic"):
            fail(f"--beads calibrates an astigmatic PSF; it cannot train --psf {psf}")
        psf = "astigmatic"
    if psf not in ("gaussian", "airy", "astigmatic"):
        fail(f"--psf must be gaussian, airy or astigmatic, not {psf!r}")
    name = name or ("localise3d" if psf == "astigmatic" else "localise")
    repository = models or _default_models_dir()
    if repository.exists() and not repository.is_dir():
        fail(f"--models {repository} is a file, not a folder")
    from livescope.models.localise.data import EMCCD, SCMOS, LocaliseSimulation
    from livescope.models.localise.train import LocaliseTrainConfig, train_and_publish_localiser

    budget_s = None if steps else (budget_minutes or 20.0) * 60.0
    # the ranges, widened to the virtual rig's own PSF (0.72 px) and background (2 photons/px)
    # and to the ~500 photons/px of bright-background EMCCD data (NAIRR's 2-D sets); sCMOS and EMCCD
    fields: dict[str, Any] = {"psf": psf, "psf_sigma_px": (0.7, 1.6), "background_photons_per_px": (2.0, 600.0),
                              "cameras": (SCMOS, EMCCD)}
    data_note, session_ids = "", ()
    if beads is not None:
        calibration, session_ids = _bead_calibration(beads, na=na, emission_nm=emission, immersion_index=immersion)
        fields.update(calibration.simulation_fields())
        data_note = f"PSF calibrated on beads session {beads} ({session_ids[0]}): {calibration.summary()}"
    simulation = LocaliseSimulation(**fields)
    config = LocaliseTrainConfig(psf=psf, steps=steps, budget_seconds=budget_s, seed=seed)
    command = shlex.join(["livescope", *sys.argv[1:]])
    compare_with = _compare_with(deploy, server, name, force)
    _train_and_report(name, repository, lambda report: train_and_publish_localiser(
        repository, name=name, simulation=simulation, config=config, command=command, progress=report,
        data_note=data_note, session_ids=session_ids, compare_with=compare_with),
        deploy_to=server if deploy else None, force=force)


def _bead_calibration(path: Path, **optics: float | None):
    """The PSF calibrated on a beads session's stacks, and the session's id (printed as it goes)."""
    from livescope.console import console
    from livescope.models.psf.calibration import PsfCalibrationError, calibrate_psf_from_session
    from livescope.session import SessionError, load_session

    try:
        session = load_session(path, verify=True)
        with console.status(f"fitting the PSF to the bead stacks of {path}"):
            calibration = calibrate_psf_from_session(session, **optics)
    except (SessionError, PsfCalibrationError) as e:
        missing_optics = "does not record its optics" in str(e)
        fail(f"{e}{' (--emission, --na, --immersion)' if missing_optics else ''}")
    console.print(f"bead calibration: {calibration.summary()}")
    if calibration.residual_relative > POOR_PSF_FIT_RESIDUAL:
        console.print(f"[yellow]warning: the PSF model leaves {100 * calibration.residual_relative:.0f} % of the "
                      "beads' light unexplained: check that the beads are sparse, in focus mid-stack and cover "
                      "the z range you will image[/yellow]")
    for r in calibration.rejected:
        console.print(f"  bead left out: {r.reason}")
    return calibration, (session.session_id,)


@train_app.command("refocus")
def train_refocus(
    data: Annotated[Optional[list[Path]], typer.Option(
        "--data", help="Your z-stacks (OME-TIFF / OME-Zarr, one field each; or a `livescope calibrate zstack` "
                       "session, one field per position; repeat). Default: the virtual "
                       "microscope's default rig.")] = None,
    z_step: Annotated[Optional[float], typer.Option(
        "--z-step", min=0.001, help="Plane spacing of --data, µm (default: from the metadata).")] = None,
    dz_max: Annotated[float, typer.Option(
        "--dz-max", min=0.05, help="Train for |delta-z| up to this, µm.")] = 2.0,
    baseline: Annotated[Optional[float], typer.Option(
        help="Camera baseline of --data, ADU (default: the stacks' darkest 0.1%).")] = None,
    register: Annotated[bool, typer.Option(
        help="Measure and remove lateral drift between the planes of --data (stacks that cannot be "
             "registered are left out). Off: a piezo focus rarely drifts sideways.")] = False,
    models: ModelsOpt = None,
    budget_minutes: Annotated[Optional[float], typer.Option(
        min=0.01, help="Training time budget, minutes (default 10 unless --steps).")] = None,
    steps: Annotated[Optional[int], typer.Option(
        min=1, help="Train exactly N steps (the command then repeats the model exactly).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for data and training.")] = 0,
    name: Annotated[str, typer.Option(help="Model name in the repository.")] = "refocus",
    start_from: Annotated[Optional[str], typer.Option(
        "--from", help="Fine-tune this refocusing model (NAME[@VERSION], e.g. refocus@1) instead of "
                       "starting from scratch: a rig's few calibration stacks go further.")] = None,
    deploy: DeployOpt = False, force: ForceOpt = False, server: DeployServerOpt = "tcp://127.0.0.1:5760",
) -> None:
    """Train a refocusing network on z-stacks (pairs of planes of one field) and add it as a new
    version of NAME in the model repository."""
    import shlex

    import numpy as np

    from livescope.console import console

    repository = models or _default_models_dir()
    if repository.exists() and not repository.is_dir():
        fail(f"--models {repository} is a file, not a folder")
    from livescope.modelcard import TrainedFor
    from livescope.models.refocus.data import (
        RefocusDataError,
        VirtualRefocusData,
        read_stacks,
        register_stacks,
        split_fields,
        virtual_stacks,
    )
    from livescope.models.refocus.train import RefocusTrainConfig, train_and_publish_refocuser

    config = RefocusTrainConfig(dz_max_um=dz_max, steps=steps, seed=seed,
                                budget_seconds=None if steps else (budget_minutes or 10.0) * 60.0)
    rng = np.random.default_rng(seed)
    session_ids: tuple[str, ...] = ()
    if data:
        session_ids = _expand_sessions(data)[1]  # read_stacks reads sessions itself (plane spacing)
        try:
            stacks = read_stacks(data, z_step_um=z_step)
        except RefocusDataError as e:
            fail(str(e))
        if register:
            stacks, reports = register_stacks(stacks)
            for report in reports:
                console.print(f"registration: {report.summary()}")
        if len(stacks) < 2:
            fail(f"{len(stacks)} usable z-stack(s): give at least 2 fields (one is held out to choose the weights)")
        span = min(float(s.z_um[-1] - s.z_um[0]) for s in stacks)
        if span < dz_max:
            fail(f"the stacks span {span:g} µm of focus, less than --dz-max {dz_max:g}: lower --dz-max")
        stacks_train, held_out = split_fields(stacks, 1 / 3, rng)
        base = baseline if baseline is not None else float(min(np.percentile(s.planes_adu, 0.1) for s in stacks))
        described = f"z-stacks {', '.join(str(p) for p in data)} ({len(stacks_train)} train, {len(held_out)} held-out fields)"
        px = stacks[0].pixel_size_um
        trained_for = TrainedFor(pixel_size_nm=(px * 1e3,) * 2 if px else None)
        spherical = None
        target = "noisy"
    else:
        spec = VirtualRefocusData(seed=seed)
        with console.status("simulating z-stacks on the virtual microscope"):
            stacks = virtual_stacks(spec)
        stacks_train, held_out = split_fields(stacks, 1 / 3, rng)
        rig = spec.rig(spec.specimens[0])
        base, described = rig.baseline_adu, spec.describe()
        trained_for = TrainedFor(pixel_size_nm=(rig.pixel_size_um * 1e3,) * 2, na=(rig.na,) * 2,
                                 emission_nm=(rig.emission_nm,) * 2, modalities=("widefield",))
        spherical = rig.spherical_waves
        target = "clean"
    config = config.model_copy(update={"target": target})
    start = None
    if start_from is not None:
        from livescope.models.refocus.train import FINE_TUNE_LEARNING_RATE

        start = _resolve_model(start_from, repository, task="refocus", option="--from")
        config = config.model_copy(update={"learning_rate": FINE_TUNE_LEARNING_RATE})
    command = shlex.join(["livescope", *sys.argv[1:]])
    compare_with = _compare_with(deploy, server, name, force)
    _train_and_report(name, repository, lambda report: train_and_publish_refocuser(
        repository, name=name, stacks=stacks_train, held_out=held_out, config=config, baseline_adu=base,
        data_description=described, command=command, trained_for=trained_for, spherical_waves=spherical,
        session_ids=session_ids, compare_with=compare_with, start_from=start, progress=report),
        deploy_to=server if deploy else None, force=force)


# -- keys ----------------------------------------------------------------------------------------


@keys_app.command("generate")
def keys_generate(
    folder: Annotated[Path, typer.Argument(help="Where to write NAME.key and NAME.key_secret.")],
    name: Annotated[str, typer.Option(help="Key name, e.g. 'server' or a client's name.")] = "server",
) -> None:
    """Create a CURVE key pair. Give the server's .key to clients; put clients' .key files in
    the server's --allow folder."""
    from livescope.security import generate_keys

    public, secret = generate_keys(folder, name)
    typer.echo(f"public key: {public}\nsecret key: {secret} (keep it private)")


# -- status and models ---------------------------------------------------------------------------


def _control(server: str, command: str, *, timeout_s: float = 5.0, **args: object) -> dict:
    from livescope.client import ControlError, ServerUnreachableError, StreamClient

    client = StreamClient(server)
    try:
        client.connect(timeout_s=3.0)
        return client.control(command, timeout_s=timeout_s, **args)
    except ServerUnreachableError as e:
        fail(str(e))
    except ControlError as e:
        fail(f"{command}: {e}")
    finally:
        client.close(timeout_s=0)


@app.command()
def status(server: ServerOpt = "tcp://127.0.0.1:5760") -> None:
    """Show a running server's health and counters."""
    from rich.console import Console
    from rich.table import Table

    health, stats = _control(server, "health"), _control(server, "stats")
    table = Table(title=f"livescope server at {server}", show_header=False)
    table.add_row("status", health["status"])
    table.add_row("providers", ", ".join(health["providers"]) or "-")
    table.add_row("models loaded", ", ".join(health["models_loaded"]) or "-")
    for key in ("frames", "results", "errors", "dropped", "duplicates", "queue_depth", "streams"):
        table.add_row(key.replace("_", " "), str(stats[key]))
    table.add_row("uptime", f"{stats['uptime_s']:.0f} s")
    Console().print(table)


@models_app.command("list")
def models_list(server: ServerOpt = "tcp://127.0.0.1:5760") -> None:
    """List the models and versions a running server can serve."""
    from rich.console import Console
    from rich.table import Table

    data = _control(server, "list_models")
    table = Table(title="models")
    for col in ("model", "task", "active", "loaded", "provider", "held-out metrics"):
        table.add_column(col)
    for m in data["models"]:
        metrics = ", ".join(f"{k}={v:.3g}" for k, v in m["metrics"].items())
        table.add_row(f"{m['name']}@{m['version']}", m["task"], "yes" if m["active"] else "",
                      "yes" if m["loaded"] else "", m["provider"] or "", metrics)
    lineage = Table(title="lineage")
    for col in ("model", "trained on", "by", "against the version active then"):
        lineage.add_column(col, overflow="fold")
    for m in data["models"]:
        sessions = m.get("session_ids") or []
        source = (f"session {', '.join(sessions)}; " if sessions else "") + (m.get("data") or "")
        comparison = m.get("comparison")
        against = (f"{comparison['against']}: {comparison['metric']} {comparison['new_value']:.4g} vs "
                   f"{comparison['active_value']:.4g}" if comparison else "-")
        lineage.add_row(f"{m['name']}@{m['version']}", _shorten(source, 90), m.get("trained_by") or "", against)
    Console().print(table)
    Console().print(lineage)
    for problem in data["problems"]:
        typer.echo(f"warning: {problem}", err=True)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


ModelRefArg = Annotated[str, typer.Argument(help="NAME@VERSION, e.g. denoise@2.")]


@models_app.command("activate")
def models_activate(model: ModelRefArg, server: ServerOpt = "tcp://127.0.0.1:5760") -> None:
    """Load a version completely, then switch its stage to it atomically (hot-swap).

    Frames already on their way finish on the version they started with; if loading fails, the
    active version stays in service."""
    data = _control(server, "activate", timeout_s=300.0, model=model)
    typer.echo(f"active: {data['active']} (was {data['previous']})")


@models_app.command("load")
def models_load(model: ModelRefArg, server: ServerOpt = "tcp://127.0.0.1:5760") -> None:
    """Load a version (warm it up) without activating it."""
    data = _control(server, "load", timeout_s=300.0, model=model)
    typer.echo(f"loaded {data['model']} on {data['provider']} in {data['load_s']:.2f} s")


@models_app.command("unload")
def models_unload(model: ModelRefArg, server: ServerOpt = "tcp://127.0.0.1:5760") -> None:
    """Free a loaded version that is not active."""
    typer.echo(f"unloaded {_control(server, 'unload', model=model)['unloaded']}")


@models_app.command("rescan")
def models_rescan(server: ServerOpt = "tcp://127.0.0.1:5760") -> None:
    """Re-read the model repositories (new versions become loadable; nothing is activated)."""
    data = _control(server, "rescan")
    for name, versions in data["models"].items():
        typer.echo(f"{name}: versions {', '.join(map(str, versions))}")
    for problem in data["problems"]:
        typer.echo(f"warning: {problem}", err=True)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

"""`livescope acquire` (a useq-schema acquisition, restored live on a server) and `livescope demo`
(a server, the virtual microscope and live restoration in one command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from livescope.cli._common import control, fail, needs_acquisition

SPECIMENS = ("filaments", "cells", "beads", "smlm")
MODALITIES = ("widefield", "confocal", "sted")


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
        help="Camera baseline (offset), ADU, for a localise stage (default: the virtual microscope's; on "
             "a real rig, estimated from the noise of frames snapped before the run).")] = None,
    e_per_adu: Annotated[Optional[float], typer.Option(
        "--e-per-adu", help="Camera conversion gain, e-/ADU, for a localise stage (default: the virtual "
                            "microscope's; on a real rig, estimated like --baseline).")] = None,
    em_gain: Annotated[Optional[float], typer.Option(
        "--em-gain", help="EMCCD gain (1 for sCMOS).")] = None,
    render_px: Annotated[float, typer.Option(
        "--render-px", help="localise: render pixel size of PATH.localise.render.ome.tif, nm.")] = 10.0,
    dz: Annotated[Optional[float], typer.Option(
        "--dz", metavar="MICRONS", help="refocus: move every frame's focus by this, µm (the wanted plane's "
                                        "focus minus the frame's; positive: further from the coverslip). "
                                        "Only with a refocus stage in --pipeline.")] = None,
    stop_at_resolution: Annotated[Optional[float], typer.Option(
        "--stop-at-resolution", metavar="NM", help="localise: end the acquisition by itself (everything saved) "
                                                   "once the drift-corrected FRC resolution is NM or finer.")] = None,
    min_density: Annotated[Optional[float], typer.Option(
        "--min-density", metavar="PER_UM2", help="localise: end it once the emitters per µm² per frame "
                                                 "(mean of the latest --check-every frames) fall below this.")] = None,
    check_every: Annotated[int, typer.Option(
        "--check-every", min=1, help="With --stop-at-resolution / --min-density: assess every N frames.")] = 50,
    stop_min_frames: Annotated[int, typer.Option(
        "--stop-min-frames", min=1, help="With --stop-at-resolution / --min-density: never end before N frames "
                                         "(the first frames' FRC and density are noise).")] = 100,
    autofocus: Annotated[bool, typer.Option(
        "--autofocus", help="Keep the focus on the sample as it drifts: frames dither ±0.15 µm about the "
                            "working plane one in three, and their sharpness moves it (no z plan).")] = False,
    target_um: Annotated[float, typer.Option(
        "--target-um", help="With --autofocus: hold the focus this far (µm) from the sharpest plane.")] = 0.0,
    na: Annotated[Optional[float], typer.Option(
        "--na", help="psf pipeline on your rig: the objective's numerical aperture.")] = None,
    emission: Annotated[Optional[float], typer.Option(
        "--emission", metavar="NM", help="psf pipeline on your rig: emission wavelength, nm.")] = None,
    immersion: Annotated[Optional[float], typer.Option(
        "--immersion", help="psf pipeline on your rig: immersion index (oil 1.515, water 1.33, air 1.0).")] = None,
    astigmatism_sign: Annotated[int, typer.Option(
        "--astigmatism-sign", help="psf pipeline: the sign of the rig's astigmatism, which signs the defocus.")] = 1,
    z_drift: Annotated[float, typer.Option(
        "--z-drift", metavar="UM", help="Virtual microscope: the sample drifts axially by UM µm per frame.")] = 0.0,
) -> None:
    """Run a useq-schema acquisition on Micro-Manager (pymmcore-plus), restoring frames live.

    With a localise pipeline, counts emitters live and, with --output PATH.ome.zarr, writes
    PATH.localise.csv (ThunderSTORM) and a super-resolution render PATH.localise.render.ome.tif,
    both corrected for the lateral drift estimated from the localisations; --stop-at-resolution
    ends it when the FRC resolution is reached."""
    needs_acquisition()
    from livescope.acquire.autofocus import AutofocusSettings
    from livescope.acquire.psf_tiles import reads_psf

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
    stop = None
    if stop_at_resolution is not None or min_density is not None:
        from livescope.acquire.localisations import SmlmStop, gives_tables

        if server is None or not gives_tables(stages):
            fail("--stop-at-resolution and --min-density need a localise pipeline (--pipeline localise)")
        if (stop_at_resolution is not None and stop_at_resolution <= 0) or (min_density is not None
                                                                            and min_density <= 0):
            fail("--stop-at-resolution and --min-density must be positive")
        stop = SmlmStop(resolution_nm=stop_at_resolution, min_density_per_um2=min_density,
                        check_every_frames=check_every, min_frames=stop_min_frames)
    optics_given = {"na": na, "emission_nm": emission, "immersion_index": immersion}
    if any(v is not None for v in optics_given.values()) and not reads_psf(stages):
        fail("--na, --emission and --immersion are the optics of a psf stage: give --pipeline psf")
    if astigmatism_sign not in (1, -1):
        fail(f"--astigmatism-sign must be 1 or -1, not {astigmatism_sign}")
    if target_um and not autofocus:
        fail("--target-um is where --autofocus holds the focus: add --autofocus")
    if z_drift and mm_config is not None:
        fail("--z-drift makes the virtual microscope's sample drift; a real rig's drifts by itself")
    _check_output(output, overwrite, stages if server is not None else ())
    summary = _acquire(mm_config=mm_config, sequence=sequence, frames=frames,
                       exposure_ms=exposure_ms, server=server, stages=stages, mode=mode,
                       output=output, specimen=specimen, size=size, seed=seed,
                       in_flight=in_flight, server_timeout_s=server_timeout,
                       modality=modality, depth_um=depth,
                       calibration={"baseline_adu": baseline, "e_per_adu": e_per_adu, "em_gain": em_gain},
                       render_px_nm=render_px, dz_um=dz, stop=stop, z_drift_um=z_drift,
                       optics={**optics_given, "astigmatism_sign": astigmatism_sign},
                       autofocus=AutofocusSettings(target_um=target_um) if autofocus else None)
    from livescope.cli._console import print_summary

    print_summary(summary)
    if summary.output_error:
        fail(f"{summary.output_error}; the raw data acquired is saved in {summary.raw_path}", code=1)
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
    from livescope.protocol import stage_name

    if not output.name.endswith((".ome.zarr", ".ome.tiff", ".ome.tif")):
        fail(f"--output must end in .ome.zarr or .ome.tiff: {output}")
    targets = [output]
    if stages:
        stage = stage_name(stages[-1])
        targets += table_paths(output, stage) if gives_tables(stages) else [restored_path(output, stage)]
    for target in targets:
        if target.exists() and not overwrite:
            fail(f"{target} exists{_interrupted(output)}; choose another --output or pass --overwrite")
    if not output.parent.is_dir():
        fail(f"folder does not exist: {output.parent}")


def _interrupted(raw: Path) -> str:
    """' (an interrupted run: ...)' if ``raw``'s journal says its run was killed, else ''."""
    from livescope.acquire.journal import JournalError, read_account

    try:
        account = read_account(raw)
    except JournalError:
        return ""
    if account.status != "interrupted":
        return ""
    return (f" (an interrupted run, {account.frames_acquired} of {account.plan.frames_planned} frames saved: "
            f"`livescope report {raw}` says what it holds)")


def _acquire(*, mm_config, sequence, frames, exposure_ms, server, stages, mode, output,
             specimen="filaments", size=512, seed=0, in_flight=2, server_timeout_s=30.0,
             modality="widefield", depth_um=0.0, calibration=None, render_px_nm=10.0, dz_um=None, stop=None,
             z_drift_um=0.0, autofocus=None, optics=None):
    """``calibration``: the camera's baseline_adu, e_per_adu, em_gain as given (None: not given);
    on the virtual microscope its camera fills in what was not given. ``dz_um``: the delta-z sent
    with every frame, for a refocus stage."""
    from livescope.acquire.localisations import gives_tables, localises
    from livescope.acquire.microscope import MicroscopeError, open_microscope
    from livescope.acquire.psf_tiles import reads_psf
    from livescope.acquire.run import refocuses, run_acquisition
    from livescope.acquire.sequence import SequenceError, load_sequence
    from livescope.acquire.virtual import VirtualRigConfig
    from livescope.client import ServerUnreachableError
    from livescope.cli._console import acquisition_progress
    from livescope.camera import CameraCalibration

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
                               modality=modality, specimen_depth_um=depth_um,
                               drift_um_per_frame=(0.0, 0.0, z_drift_um))
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
    if server is not None and output is not None and gives_tables(stages) and core.getPixelSizeUm():
        _check_render_fits(core, render_px_nm)
    if server is not None and localises(stages) and camera is None:
        camera = _camera_from_rig(core, given)
    objective = None
    if server is not None and reads_psf(stages):
        objective = _objective(core, rig, optics or {})
    if autofocus is not None:  # refused in one line before acquiring, as run_acquisition would refuse it
        from livescope.acquire.autofocus import focused_run

        try:
            focused_run(core, seq, autofocus)
        except ValueError as e:
            fail(f"--autofocus: {e}")
    total = len(list(seq.iter_events()))
    title = "acquiring" if server is None else "localising" if gives_tables(stages) else "restoring"
    try:
        with acquisition_progress(total, title) as bar:
            return run_acquisition(core, seq, server=server, pipeline=stages,
                                   mode=mode, output=output, progress=bar,
                                   max_in_flight=in_flight, server_timeout_s=server_timeout_s,
                                   camera=camera, render_px_nm=render_px_nm, dz_um=dz_um, stop=stop,
                                   autofocus=autofocus, objective=objective)
    except ServerUnreachableError as e:
        fail(f"{e} (start one with `livescope serve`)")
    except KeyboardInterrupt:
        core.mda.cancel()
        fail("interrupted", code=130)


RIG_ESTIMATE_FRAMES = 3


def _objective(core, rig, given: dict):
    """A psf stage's optics: the virtual microscope's own (flags may override), or a rig's flags."""
    from pydantic import ValidationError

    from livescope.protocol import Objective
    from livescope.validation import first_error

    if not core.getPixelSizeUm():
        fail("a psf stage needs the camera's pixel size: define a pixel size configuration in the Micro-Manager "
             "config")
    values = {k: v for k, v in given.items() if v is not None}
    if rig is not None:
        values = {"na": rig.na, "emission_nm": rig.emission_nm, "immersion_index": rig.immersion_index,
                  "astigmatism_sign": 1 if rig.astigmatism_waves >= 0 else -1, **values}
    missing = [flag for flag, key in (("--na", "na"), ("--emission", "emission_nm"),
                                      ("--immersion", "immersion_index")) if key not in values]
    if missing:
        fail(f"a psf stage needs the objective: give {', '.join(missing)}")
    try:
        objective = Objective(**values)
    except ValidationError as e:
        fail(f"objective: {first_error(e)}")
    return objective


def _check_render_fits(core, render_px_nm: float) -> None:
    """Before acquiring: the run's render (the camera's field at --render-px) must fit in memory."""
    from pydantic import ValidationError

    from livescope.render import RenderGrid
    from livescope.validation import first_error

    pixel_nm = core.getPixelSizeUm() * 1000.0
    try:
        RenderGrid(width_nm=core.getImageWidth() * pixel_nm, height_nm=core.getImageHeight() * pixel_nm,
                   pixel_nm=render_px_nm)
    except ValidationError as e:
        fail(f"--render-px: {first_error(e)}")


def _camera_from_rig(core, given: dict):
    """A real rig's camera calibration for a localise stage: what the user gave, and the rest
    estimated from the noise of a few frames snapped now, with the run's settings (printed)."""
    import numpy as np

    from livescope.camera_estimate import complete_camera
    from livescope.cli._console import console

    frames = np.stack([core.snap() for _ in range(RIG_ESTIMATE_FRAMES)])
    try:
        camera, estimate = complete_camera(frames, baseline_adu=given.get("baseline_adu"),
                                           e_per_adu=given.get("e_per_adu"), em_gain=given.get("em_gain", 1.0))
    except ValueError as e:
        fail(f"a localise stage needs the camera's calibration, and the rig's frames cannot give it ({e}): "
             "give --baseline ADU and --e-per-adu E (and --em-gain G for an EMCCD)")
    console.print(f"{estimate.describe()} (snapped before the run; --baseline / --e-per-adu override it)")
    return camera


def demo(
    frames: Annotated[Optional[int], typer.Option(help="Frames to acquire (default: sized for ~1 min).")] = None,
    size: Annotated[Optional[int], typer.Option(help="Camera size in pixels (default: by hardware).")] = None,
    output: Annotated[Path, typer.Option(help="Folder for the raw and restored data.")] = Path("livescope-demo"),
) -> None:
    """One command: start a server, acquire on the virtual microscope, restore live, summarise."""
    needs_acquisition()
    from livescope.acquire.demo import run_demo
    from livescope.cli._console import acquisition_progress, console, print_summary
    from livescope.launch import ServerLaunchError, spawn_server

    console.print("[bold]livescope demo[/]: starting the inference server ...")
    try:
        server = spawn_server("--log-level", "warning")
    except ServerLaunchError as e:
        fail(str(e))
    try:
        providers = control(server.frames, "health")["providers"]
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
    if s.output_error:
        fail(f"{s.output_error}; the raw data acquired is saved in {s.raw_path}", code=1)
    if s.dropped or s.errors or s.results != s.frames_acquired:
        fail("not every frame was restored (see the summary above)", code=1)

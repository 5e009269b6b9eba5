"""`livescope calibrate {pairs,zstack,beads,register}`: calibration sessions on the rig (or the
virtual microscope), and the registration and QA report of a pairs session.

With --resume, an option left out takes the session's own value, and one given must match it:
`livescope calibrate pairs --output S.ome.zarr --resume` continues S as it was planned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from livescope.cli._common import fail, needs_acquisition

if TYPE_CHECKING:
    from pymmcore_plus import CMMCorePlus

    from livescope.acquire.calibration.registration import RegistrationSettings
    from livescope.session import Session, SessionManifest, SessionPlan

calibrate_app = typer.Typer(no_args_is_help=True,
                            help="Calibration sessions: paired, multi-plane and bead acquisitions for retraining.")

_VIRTUAL_OPTIONS = {"specimen": "--specimen", "specimen_depth_um": "--depth", "signal_photons_per_ms": "--signal",
                    "size": "--size", "seed": "--seed"}
Z_DEFAULTS_UM = (6.0, 0.25)  # range, step: the refocus training stacks' -3..+3 µm at 0.25 µm
# The kinds' options neither given nor (resuming) in the session's plan take these.
KIND_DEFAULTS: dict[str, Any] = {"group": "Modality", "low_preset": "Confocal", "high_preset": "STED", "repeats": 1,
                                 "z_range_um": Z_DEFAULTS_UM[0], "z_step_um": Z_DEFAULTS_UM[1]}

OutputOpt = Annotated[Path, typer.Option(
    "--output", help="The session folder to create, SESSION.ome.zarr (with --resume: to continue).")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Continue the interrupted session in --output: completed positions are kept, "
                     "the rest acquired. Options left out take the session's values.")]
MmConfigOpt = Annotated[Optional[Path], typer.Option(
    "--mm-config", help="Your Micro-Manager config; default: the built-in virtual microscope.")]
GridOpt = Annotated[Optional[str], typer.Option(
    "--grid", metavar="ROWSxCOLS", help="Positions on a grid centred on the current stage position "
                                        "(default 1x1: here).")]
SpacingOpt = Annotated[Optional[float], typer.Option(
    "--spacing", metavar="MICRONS", help="Grid spacing, µm (default: the camera's field of view).")]
PositionsOpt = Annotated[Optional[Path], typer.Option(
    "--positions", metavar="FILE", help="Positions from a YAML/JSON list of {x_um, y_um, z_um?, name?}.")]
ExposureOpt = Annotated[Optional[float], typer.Option(
    "--exposure", metavar="MS", help="Camera exposure, ms (default: the camera's current one).")]
SpecimenOpt = Annotated[Optional[str], typer.Option(
    help="Virtual microscope: filaments, cells, beads or smlm (default: filaments; beads for beads).")]
DepthOpt = Annotated[Optional[float], typer.Option(
    help="Virtual microscope: specimen thickness, µm (default: 0 for pairs, 4 for stacks, focused "
         "mid-specimen).")]
SignalOpt = Annotated[Optional[float], typer.Option(
    "--signal", help="Virtual microscope: peak photons/px/ms of an in-focus structure (sets SNR).")]
SizeOpt = Annotated[Optional[int], typer.Option(help="Virtual microscope: camera size in pixels (default 512).")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Virtual microscope: random seed (default 0).")]
BaselineOpt = Annotated[Optional[float], typer.Option(
    help="Camera baseline (offset), ADU, recorded with the session (the virtual camera's is known).")]
EPerAduOpt = Annotated[Optional[float], typer.Option(
    "--e-per-adu", help="Camera conversion gain, e-/ADU, recorded with the session.")]
RangeOpt = Annotated[Optional[float], typer.Option(
    "--range", metavar="MICRONS", help=f"Stack height about each position's focus, µm (default {Z_DEFAULTS_UM[0]:g}).")]
StepOpt = Annotated[Optional[float], typer.Option(
    "--step", metavar="MICRONS", help=f"Plane spacing, µm (default {Z_DEFAULTS_UM[1]:g}).")]


@dataclass
class _Options:
    """The options common to every kind, as given (None: not given)."""

    output: Path
    resume: bool
    mm_config: Path | None
    grid: str | None
    spacing_um: float | None
    positions: Path | None
    exposure_ms: float | None
    virtual: dict[str, Any]  # specimen, specimen_depth_um, signal_photons_per_ms, size, seed
    baseline_adu: float | None
    e_per_adu: float | None


@calibrate_app.command("pairs")
def pairs(
    output: OutputOpt,
    group: Annotated[Optional[str], typer.Option(
        help=f"The config group switching the two images (default {KIND_DEFAULTS['group']}).")] = None,
    low: Annotated[Optional[str], typer.Option(
        help=f"The input image's preset (default {KIND_DEFAULTS['low_preset']}).")] = None,
    high: Annotated[Optional[str], typer.Option(
        help=f"The target image's preset (default {KIND_DEFAULTS['high_preset']}).")] = None,
    repeats: Annotated[Optional[int], typer.Option(
        help=f"Pairs per position (default {KIND_DEFAULTS['repeats']}).")] = None,
    resume: ResumeOpt = False, mm_config: MmConfigOpt = None, grid: GridOpt = None, spacing: SpacingOpt = None,
    positions: PositionsOpt = None, exposure: ExposureOpt = None, specimen: SpecimenOpt = None,
    depth: DepthOpt = None, signal: SignalOpt = None, size: SizeOpt = None, seed: SeedOpt = None,
    baseline: BaselineOpt = None, e_per_adu: EPerAduOpt = None,
) -> None:
    """Low/high image pairs (e.g. confocal/STED, low/high NA) at each position, for cross-modality restoration."""
    opts = _Options(output, resume, mm_config, grid, spacing, positions, exposure,
                    _virtual(specimen, depth, signal, size, seed), baseline, e_per_adu)
    _run("pairs", opts, {"group": group, "low_preset": low, "high_preset": high, "repeats": repeats})


@calibrate_app.command("zstack")
def zstack(
    output: OutputOpt, range_um: RangeOpt = None, step_um: StepOpt = None,
    resume: ResumeOpt = False, mm_config: MmConfigOpt = None, grid: GridOpt = None, spacing: SpacingOpt = None,
    positions: PositionsOpt = None, exposure: ExposureOpt = None, specimen: SpecimenOpt = None,
    depth: DepthOpt = None, signal: SignalOpt = None, size: SizeOpt = None, seed: SeedOpt = None,
    baseline: BaselineOpt = None, e_per_adu: EPerAduOpt = None,
) -> None:
    """Multi-plane stacks about each position's focus, for training virtual refocusing."""
    opts = _Options(output, resume, mm_config, grid, spacing, positions, exposure,
                    _virtual(specimen, depth, signal, size, seed), baseline, e_per_adu)
    _run("zstack", opts, {"z_range_um": range_um, "z_step_um": step_um})


@calibrate_app.command("beads")
def beads(
    output: OutputOpt, range_um: RangeOpt = None, step_um: StepOpt = None,
    resume: ResumeOpt = False, mm_config: MmConfigOpt = None, grid: GridOpt = None, spacing: SpacingOpt = None,
    positions: PositionsOpt = None, exposure: ExposureOpt = None, specimen: SpecimenOpt = None,
    depth: DepthOpt = None, signal: SignalOpt = None, size: SizeOpt = None, seed: SeedOpt = None,
    baseline: BaselineOpt = None, e_per_adu: EPerAduOpt = None,
) -> None:
    """Bead stacks about each position's focus, for PSF calibration."""
    opts = _Options(output, resume, mm_config, grid, spacing, positions, exposure,
                    _virtual(specimen, depth, signal, size, seed), baseline, e_per_adu)
    _run("beads", opts, {"z_range_um": range_um, "z_step_um": step_um})


def _virtual(specimen, depth, signal, size, seed) -> dict[str, Any]:
    given = {"specimen": specimen, "specimen_depth_um": depth, "signal_photons_per_ms": signal,
             "size": size, "seed": seed}
    return {k: v for k, v in given.items() if v is not None}


@calibrate_app.command("register")
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
    from livescope.session import SessionError, load_session

    given = {"affine": affine, "max_shift_px": max_shift, "min_ncc": min_ncc}
    try:
        settings = RegistrationSettings(**{k: v for k, v in given.items() if v is not None})
        register_and_report(load_session(session, verify=True), settings)
    except SessionError as e:
        fail(str(e))



# -- running ------------------------------------------------------------------------------------


def _run(kind: str, opts: _Options, kind_options: dict[str, Any]) -> None:
    needs_acquisition()
    # Registration is what a session ends with: without its extra (scikit-image) the command stops
    # here, before a dataset is begun, not after acquiring it.
    import livescope.acquire.calibration.session_registration  # noqa: F401
    from livescope.session import SessionError, read_manifest

    previous = None
    if opts.resume:
        try:
            previous = read_manifest(opts.output)
        except SessionError as e:
            fail(f"cannot resume: {e}")
        if previous.kind != kind:
            fail(f"cannot resume {opts.output}: it is a {previous.kind} session, not {kind} "
                 f"(use `livescope calibrate {previous.kind} --resume`)")
        if previous.complete:
            typer.echo(f"{opts.output}: the session is already complete "
                       f"({len(previous.completed)} positions)")
            return
    elif opts.output.exists():
        fail(f"{opts.output} already exists; add --resume to continue the session in it, or choose "
             "another --output")
    _check_values(opts, kind_options)
    core, mm_config, camera = _open_rig(kind, opts, previous)
    plan = _plan(core, kind, opts, kind_options, previous)
    _acquire(core, plan, opts, camera, mm_config)


def _check_values(opts: _Options, kind_options: dict[str, Any]) -> None:
    from livescope.acquire.virtual.devices import SPECIMENS

    v = opts.virtual
    if "specimen" in v and v["specimen"] not in SPECIMENS:
        fail(f"--specimen must be one of {', '.join(SPECIMENS)}, not {v['specimen']!r}")
    for option, value, minimum in (("--depth", v.get("specimen_depth_um"), 0.0),
                                   ("--signal", v.get("signal_photons_per_ms"), 0.0),
                                   ("--baseline", opts.baseline_adu, 0.0)):
        if value is not None and value < minimum:
            fail(f"{option} must not be negative, got {value:g}")
    if "size" in v and not 16 <= v["size"] <= 4096:
        fail(f"--size must be 16 to 4096 pixels, got {v['size']}")
    if "seed" in v and v["seed"] < 0:
        fail(f"--seed must not be negative, got {v['seed']}")
    for option, value in (("--spacing", opts.spacing_um), ("--exposure", opts.exposure_ms),
                          ("--e-per-adu", opts.e_per_adu), ("--range", kind_options.get("z_range_um")),
                          ("--step", kind_options.get("z_step_um"))):
        if value is not None and not value > 0:
            fail(f"{option} must be positive, got {value:g}")
    if (r := kind_options.get("repeats")) is not None and r < 1:
        fail(f"--repeats must be at least 1, got {r}")
    if opts.grid is not None and opts.positions is not None:
        fail("give either --grid or --positions, not both")
    if opts.mm_config is not None and opts.virtual:
        fail(f"{_VIRTUAL_OPTIONS[next(iter(opts.virtual))]} is a virtual microscope option; "
             "it does not apply with --mm-config")


def _open_rig(kind: str, opts: _Options, previous: SessionManifest | None):
    """The rig (the session's own when resuming), its config path and the camera calibration."""
    from livescope.acquire.calibration.rig import resumed_virtual_rig, virtual_rig
    from livescope.acquire.microscope import MicroscopeError, open_microscope
    from livescope.camera import CameraCalibration
    from livescope.session import SessionError

    mm_config = opts.mm_config
    rig = None
    if previous is not None:
        snap = previous.rig
        if mm_config is None and snap.source == "micro-manager" and snap.mm_config_path:
            mm_config = Path(snap.mm_config_path)
        if mm_config is None and snap.virtual_rig_config is not None:
            try:
                rig = resumed_virtual_rig(snap.virtual_rig_config, opts.virtual, str(opts.output))
            except SessionError as e:
                fail(str(e))
    elif mm_config is None:
        rig = virtual_rig(kind, opts.virtual)
    camera = None
    if opts.baseline_adu is not None or opts.e_per_adu is not None:
        if opts.baseline_adu is None or opts.e_per_adu is None:
            fail("give the camera's calibration as both --baseline ADU and --e-per-adu E")
        camera = CameraCalibration(baseline_adu=opts.baseline_adu, e_per_adu=opts.e_per_adu)
    elif previous is not None:
        camera = previous.rig.camera
    try:
        core = open_microscope(mm_config, rig=rig if mm_config is None else None)
    except MicroscopeError as e:
        fail(str(e))
    if rig is not None and previous is None and kind != "pairs":
        core.setPosition(rig.specimen_depth_um / 2)  # stacks about the specimen's middle
    return core, mm_config, camera


def _plan(core: CMMCorePlus, kind: str, opts: _Options, kind_options: dict[str, Any],
          previous: SessionManifest | None) -> SessionPlan:
    """The plan from the options; when resuming, options left out take the session's values."""
    from livescope.acquire.calibration.plan import plan_session
    from livescope.cli._console import console
    from livescope.session import SessionError

    def warn(message: str) -> None:
        console.print(f"[yellow]warning: {message}[/yellow]")

    try:
        return plan_session(core, kind, kind_options, KIND_DEFAULTS, positions_file=opts.positions, grid=opts.grid,
                            spacing_um=opts.spacing_um, exposure_ms=opts.exposure_ms,
                            previous=previous.plan if previous is not None else None, warn=warn)
    except SessionError as e:
        fail(str(e))


def _acquire(core: CMMCorePlus, plan: SessionPlan, opts: _Options, camera, mm_config: Path | None) -> None:
    from livescope.acquire.calibration.run import SessionInterrupted, run_session
    from livescope.session import SessionError

    try:
        with _progress(plan) as progress:
            session = run_session(core, plan, opts.output, resume=opts.resume, progress=progress,
                                  camera=camera, mm_config=mm_config)
    except SessionInterrupted as e:
        fail(str(e), code=130)
    except SessionError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail(f"interrupted; the positions completed are saved in {opts.output}, continue with --resume",
             code=130)
    m = session.manifest
    frames = sum(d.frame_count for d in m.completed)
    typer.echo(f"{session.root}: {m.kind} session {m.session_id}, {len(m.completed)} positions, "
               f"{frames} frames{', complete' if m.complete else ''}")
    if m.kind == "pairs" and m.complete:
        try:
            register_and_report(session)
        except SessionError as e:
            fail(f"the session is saved, but its pairs could not be registered: {e}", code=1)


def register_and_report(session: Session, settings: RegistrationSettings | None = None) -> None:
    """Register ``session``'s pairs, save the registration and QA report, print what failed QA."""
    from livescope.acquire.calibration.session_registration import register_session
    from livescope.cli._console import console

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


def _progress(plan: SessionPlan):
    """A live display of positions and of the current position's frames (rich)."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from livescope.cli._console import console

    @contextmanager
    def display():
        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console,
                       transient=True, disable=not console.is_terminal)  # piped: the summary alone
        with bar:
            positions = bar.add_task("positions", total=len(plan.positions), detail="")
            frames = bar.add_task("frames", total=plan.frames_per_position, detail="")

            def update(p) -> None:
                bar.update(positions, completed=p.positions_done, detail=p.position_name)
                bar.update(frames, completed=p.frames_done, total=p.frames_total or None)

            yield update

    return display()

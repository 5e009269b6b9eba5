"""`livescope train {denoise,localise,refocus,restore,psf}`: train a model on the user's data (or on
the virtual microscope's) and add it as a new version to the model repository; with --deploy,
register it in a running server and hot-swap it in if it passes the gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from livescope.cli._common import (
    DEFAULT_SERVER,
    DeployOpt,
    DeployServerOpt,
    ForceOpt,
    ModelsOpt,
    command_line,
    expand_sessions,
    fail,
    train_and_report,
    user_repository,
    version_to_compare,
)

train_app = typer.Typer(no_args_is_help=True, help="Train a model and add it to a repository.")

POOR_PSF_FIT_RESIDUAL = 0.25  # a bead calibration this far off is worth a warning
RESTORE_BUDGET_MINUTES = 10.0
HELD_OUT_FRACTION = 1 / 3


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
    patch: Annotated[Optional[int], typer.Option(
        min=8, help="Training patch side, px (a multiple of 8; default 32, with --broad 64).")] = None,
    struct: Annotated[Optional[str], typer.Option(
        help="structN2V for correlated camera noise: 'row' (horizontal stripes, e.g. sCMOS "
             "read-out) or 'column'.")] = None,
    struct_span: Annotated[int, typer.Option(
        min=1, help="With --struct: neighbours hidden either side of each blind spot, px.")] = 4,
    depth: Annotated[Optional[int], typer.Option(
        min=1, max=4, help="UNet depth (downsamplings; default 2, with --broad 3).")] = None,
    channels: Annotated[int, typer.Option(
        min=4, help="UNet channels at full resolution (doubled at every level down).")] = 16,
    intensity: Annotated[str, typer.Option(
        help="ADU -> network units: 'sqrt' (variance-stabilising, for a wide range of signals) "
             "or 'linear'.")] = "sqrt",
    seed: Annotated[int, typer.Option(help="Seed for data, held-out split and training.")] = 0,
    context_frames: Annotated[int, typer.Option(
        "--context-frames", min=1, max=9,
        help="Frames the model sees per frame it denoises: it and the ones before (a time series; with "
             "--data). 1: each frame alone.")] = 1,
    frames_per_condition: Annotated[int, typer.Option(
        min=1, help="Virtual-microscope frames per modality, specimen and signal level.")] = 4,
    broad: Annotated[bool, typer.Option(
        "--broad", help="Train the camera-agnostic denoiser instead: supervised on a wide simulator (any "
                        "structure, PSF 0.7-4 px, 1-1000 photons, sCMOS/EMCCD/8-bit); it takes photo-electrons, "
                        "converted with each frame's camera (given or estimated from the data).")] = False,
    start_from: Annotated[Optional[str], typer.Option(
        "--from", help="Fine-tune this camera-agnostic denoiser (NAME or NAME@VERSION, e.g. denoise@3) on --data's "
                       "time series instead of training from scratch: each frame's neighbours, drift registered "
                       "out, are its target (Noise2Noise).")] = None,
    deploy: DeployOpt = False, force: ForceOpt = False, server: DeployServerOpt = DEFAULT_SERVER,
) -> None:
    """Train a Noise2Void (N2V2) denoiser on your noisy stacks or on virtual-microscope frames,
    (--from) fine-tune the camera-agnostic denoiser on your time series, or (--broad) train the
    camera-agnostic denoiser on simulated pairs; add it as a new version of `denoise` in the model
    repository."""
    import math
    from functools import partial

    from livescope.cli._console import console

    repository = user_repository(models)
    if broad:
        if data or epochs is not None or context_frames > 1 or struct is not None:
            fail("--broad trains on its own simulator: it takes none of --data, --epochs, --context-frames, --struct")
        depth, patch = depth or 3, patch or 64
        if patch < 16 or patch % 2**depth:
            fail(f"--patch {patch} must be at least 16 and a multiple of {2**depth} (2**depth)")
        from livescope.models.denoise.broad import BroadDenoiseConfig, train_and_publish_broad

        budget_s = None if steps else (budget_minutes or 20.0) * 60.0
        broad_config = BroadDenoiseConfig(steps=steps, budget_seconds=budget_s, seed=seed, depth=depth,
                                          base_channels=channels, patch_px=patch)
        compare_with = version_to_compare(deploy, server, "denoise", force, repository)
        command = command_line()
        train_and_report("denoise", repository, lambda report: train_and_publish_broad(
            repository, config=broad_config, command=command, progress=report, compare_with=compare_with),
            deploy_to=server if deploy else None, force=force)
        return
    if start_from is not None:
        if not data or epochs is not None or context_frames > 1 or struct is not None or depth is not None:
            fail("--from fine-tunes a model on --data (a time series): it takes none of --epochs, "
                 "--context-frames, --struct, --depth")
        _fine_tune_denoiser(start_from, data, repository, budget_minutes=budget_minutes, steps=steps,
                            patch=patch or 64, seed=seed, deploy=deploy, force=force, server=server)
        return
    depth, patch = depth or 2, patch or 32
    if epochs is not None and not data:
        fail("--epochs needs --data (virtual-microscope training is set by --steps or the budget)")
    if context_frames > 1 and not data:
        fail("--context-frames needs --data: a time series of your own (the virtual microscope's training "
             "frames are independent)")
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

        data, session_ids = expand_sessions(data)
        try:
            own = load_training_stacks(data, patch, seed, context_frames)
        except TrainingDataError as e:
            fail(str(e))
    from livescope.models.denoise.train import DenoiseTrainConfig

    budget_s = None if steps else (budget_minutes or (None if epochs else 5.0))
    budget_s = budget_s * 60.0 if budget_s else None
    config = DenoiseTrainConfig(steps=steps, seed=seed, patch_px=patch, budget_seconds=budget_s,
                                depth=depth, base_channels=channels, intensity=intensity,
                                struct_axis=struct or "none", struct_span_px=struct_span if struct else 0,
                                context_frames=context_frames)
    command = command_line()
    if own is not None:
        from livescope.models.denoise.train import steps_per_epoch, train_and_publish_own_data

        if epochs is not None and steps is None:
            config = DenoiseTrainConfig(**(config.model_dump() | {
                "steps": epochs * steps_per_epoch(own.train_adu, config)}))
        console.print(f"training data: {own.describe()}")
        compare_with = version_to_compare(deploy, server, "denoise", force, repository)
        train = partial(train_and_publish_own_data, repository, own, compare_with=compare_with,
                        session_ids=session_ids)
    else:
        from livescope.models.denoise.data import VirtualDenoiseData
        from livescope.models.denoise.train import train_and_publish

        compare_with = version_to_compare(deploy, server, "denoise", force, repository)
        source = VirtualDenoiseData(frames_per_condition=frames_per_condition, seed=seed)
        train = partial(train_and_publish, repository, data=source, compare_with=compare_with)
    train_and_report("denoise", repository, lambda report: train(config=config, command=command, progress=report),
                     deploy_to=server if deploy else None, force=force)


def _fine_tune_denoiser(start_from: str, data: list[Path], repository: Path, *, budget_minutes: float | None,
                        steps: int | None, patch: int, seed: int, deploy: bool, force: bool, server: str) -> None:
    """`train denoise --from NAME@V --data STACK`: checks first (no training time lost), then
    `models.denoise.finetune`."""
    from livescope.cli._console import console
    from livescope.models.denoise.user_data import TrainingDataError, load_training_stacks

    start = _resolve_model(start_from, repository, task="denoise", option="--from")
    if start.card.normalisation.kind != "photons":
        fail(f"--from {start_from}: {start.ref} takes one camera's ADU; fine-tuning starts from a camera-agnostic "
             "denoiser (its card's normalisation is 'photons', e.g. the shipped denoise@3)")
    multiple = start.card.tiling.size_multiple_px  # the start's UNet takes sides of this multiple
    if patch < 16 or patch % multiple:
        fail(f"--patch {patch} must be at least 16 and a multiple of {multiple} ({start.ref}'s UNet)")
    data, session_ids = expand_sessions(data)
    try:  # held out in order (the last frames), as pairs of neighbours need
        own = load_training_stacks(data, patch, seed, context_frames=2)
    except TrainingDataError as e:
        fail(str(e))
    from livescope.models.denoise.finetune import FineTuneConfig, FineTuneError, NoImprovement, fine_tune_and_publish

    config = FineTuneConfig(steps=steps, seed=seed, patch_px=patch,
                            budget_seconds=None if steps else (budget_minutes or 3.0) * 60.0)
    console.print(f"training data: {own.describe()}")
    compare_with = version_to_compare(deploy, server, "denoise", force, repository)
    command = command_line()

    def train(report):
        try:
            return fine_tune_and_publish(repository, own, start, config=config, command=command,
                                         session_ids=session_ids, compare_with=compare_with, progress=report)
        except NoImprovement as e:
            fail(str(e), code=1)  # not a mistake: the start is the better model
        except FineTuneError as e:
            fail(str(e))

    train_and_report("denoise", repository, train, deploy_to=server if deploy else None, force=force)


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
    deploy: DeployOpt = False, force: ForceOpt = False, server: DeployServerOpt = DEFAULT_SERVER,
) -> None:
    """Train a localisation network on simulated single-molecule movies only (no data needed; with
    --beads, through your rig's calibrated PSF); add it as a new version of NAME in the model repository."""
    if beads is not None:
        if psf not in ("gaussian", "astigmatic"):
            fail(f"--beads calibrates an astigmatic PSF; it cannot train --psf {psf}")
        psf = "astigmatic"
    if psf not in ("gaussian", "airy", "astigmatic"):
        fail(f"--psf must be gaussian, airy or astigmatic, not {psf!r}")
    name = name or ("localise3d" if psf == "astigmatic" else "localise")
    repository = user_repository(models)
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
    command = command_line()
    compare_with = version_to_compare(deploy, server, name, force, repository)
    train_and_report(name, repository, lambda report: train_and_publish_localiser(
        repository, name=name, simulation=simulation, config=config, command=command, progress=report,
        data_note=data_note, session_ids=session_ids, compare_with=compare_with),
        deploy_to=server if deploy else None, force=force)


def _bead_calibration(path: Path, **optics: float | None):
    """The PSF calibrated on a beads session's stacks, and the session's id (printed as it goes)."""
    from livescope.cli._console import console
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
        "--from", help="Fine-tune this refocusing model (NAME or NAME@VERSION, e.g. refocus@1) instead of "
                       "starting from scratch: a rig's few calibration stacks go further.")] = None,
    deploy: DeployOpt = False, force: ForceOpt = False, server: DeployServerOpt = DEFAULT_SERVER,
) -> None:
    """Train a refocusing network on z-stacks (pairs of planes of one field) and add it as a new
    version of NAME in the model repository."""
    from livescope.cli._console import console

    repository = user_repository(models)
    from livescope.models.refocus.data import RefocusDataError
    from livescope.models.refocus.train import RefocusTrainConfig, train_and_publish_refocuser
    from livescope.models.refocus.training_data import user_refocus_data, virtual_refocus_data

    config = RefocusTrainConfig(dz_max_um=dz_max, steps=steps, seed=seed,
                                budget_seconds=None if steps else (budget_minutes or 10.0) * 60.0)
    session_ids: tuple[str, ...] = ()
    if data:
        session_ids = expand_sessions(data)[1]  # read_stacks reads sessions itself (plane spacing)
        try:
            prepared = user_refocus_data(data, z_step_um=z_step, dz_max_um=dz_max, baseline_adu=baseline,
                                         register=register, seed=seed, report=console.print)
        except RefocusDataError as e:
            fail(str(e))
    else:
        with console.status("simulating z-stacks on the virtual microscope"):
            prepared = virtual_refocus_data(seed)
    config = config.model_copy(update={"target": prepared.target})
    start = None
    if start_from is not None:
        from livescope.models.refocus.train import FINE_TUNE_LEARNING_RATE

        start = _resolve_model(start_from, repository, task="refocus", option="--from")
        config = config.model_copy(update={"learning_rate": FINE_TUNE_LEARNING_RATE})
    command = command_line()
    compare_with = version_to_compare(deploy, server, name, force, repository)
    train_and_report(name, repository, lambda report: train_and_publish_refocuser(
        repository, name=name, stacks=prepared.train, held_out=prepared.held_out, config=config,
        baseline_adu=prepared.baseline_adu, data_description=prepared.description, command=command,
        trained_for=prepared.trained_for, spherical_waves=prepared.spherical_waves,
        session_ids=session_ids, compare_with=compare_with, start_from=start, progress=report),
        deploy_to=server if deploy else None, force=force)


@train_app.command("restore")
def train_restore(
    data: Annotated[Optional[list[Path]], typer.Option(
        "--data", help="A calibration pairs session (SESSION.ome.zarr, from `livescope calibrate pairs`); "
                       "repeat for several. Default: virtual-microscope confocal/STED pairs.")] = None,
    models: ModelsOpt = None,
    budget_minutes: Annotated[Optional[float], typer.Option(
        min=0.01, help=f"Training time budget, minutes (default {RESTORE_BUDGET_MINUTES:g} unless --steps).")] = None,
    steps: Annotated[Optional[int], typer.Option(
        min=1, help="Train exactly N steps (the command then repeats the model exactly).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for data and training.")] = 0,
    name: Annotated[str, typer.Option(help="Model name in the repository.")] = "restore",
    deploy: DeployOpt = False, force: ForceOpt = False, server: DeployServerOpt = DEFAULT_SERVER,
) -> None:
    """Train a cross-modality restoration network (confocal in, STED out) on registered pairs and
    add it as a new version of NAME in the model repository."""
    import numpy as np

    from livescope.cli._console import console

    repository = user_repository(models)
    from livescope.modelcard import TrainedFor
    from livescope.models.restore.data import RestoreDataError, require_fields, split_fields
    from livescope.models.restore.train import RestoreTrainConfig

    config = RestoreTrainConfig(steps=steps, seed=seed,
                                budget_seconds=None if steps else (budget_minutes or RESTORE_BUDGET_MINUTES) * 60.0)
    rng = np.random.default_rng(seed)
    if data:
        from livescope.models.restore.sessions import read_session_pairs
        from livescope.session import SessionError

        try:
            sessions = read_session_pairs(data, config.patch_px)
            require_fields(sessions.pairs, config.patch_px)
        except (SessionError, RestoreDataError) as e:
            fail(str(e))
        for line in sessions.left_out:
            console.print(f"left out: {line}")
        base, pixel_size_um, session_ids = sessions.baseline_adu, sessions.pixel_size_um, sessions.session_ids
        train, held_out = split_fields(sessions.pairs, HELD_OUT_FRACTION, rng)
        described = (f"calibration pairs sessions {', '.join(str(p) for p in data)} ({len(train)} train, "
                     f"{len(held_out)} held-out pairs; {len(sessions.left_out)} left out)")
        trained_for = TrainedFor(pixel_size_nm=(pixel_size_um * 1e3,) * 2 if pixel_size_um else None)
        config = config.model_copy(update={"target": "noisy"})
    else:
        from livescope.models.restore.data import VirtualRestoreData, virtual_pairs

        spec = VirtualRestoreData(seed=seed)
        with console.status("simulating confocal/STED pairs on the virtual microscope"):
            pairs = virtual_pairs(spec)
        train, held_out = split_fields(pairs, HELD_OUT_FRACTION, rng)
        rig = spec.rig(spec.specimens[0])
        base, described, pixel_size_um, session_ids = rig.baseline_adu, spec.describe(), spec.pixel_size_um, ()
        trained_for = TrainedFor(pixel_size_nm=(spec.pixel_size_um * 1e3,) * 2, na=(rig.na,) * 2,
                                 emission_nm=(rig.emission_nm,) * 2, modalities=("confocal", "sted"))
    from livescope.models.restore.train import train_and_publish_restorer

    command = command_line()
    compare_with = version_to_compare(deploy, server, name, force, repository)
    train_and_report(name, repository, lambda report: train_and_publish_restorer(
        repository, name=name, pairs=train, held_out=held_out, config=config, baseline_adu=base,
        data_description=described, command=command, trained_for=trained_for, pixel_size_um=pixel_size_um,
        session_ids=session_ids, compare_with=compare_with, progress=report),
        deploy_to=server if deploy else None, force=force)


@train_app.command("psf")
def train_psf(
    models: Annotated[Optional[Path], typer.Option(
        "--models", "--out", help="Your model repository (the new version goes in DIR/psf/N).")] = None,
    budget_minutes: Annotated[Optional[float], typer.Option(
        min=0.01, help="Training time budget, minutes (default 12 unless --steps).")] = None,
    steps: Annotated[Optional[int], typer.Option(
        min=1, help="Train exactly N steps (the command then repeats the model exactly).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the simulation and training.")] = 0,
) -> None:
    """Train the PSF estimator (|defocus|, astigmatism, spherical aberration per tile, with uncertainties)
    on simulated blur of textures only, and add it as a new version of `psf` in the model repository."""
    repository = user_repository(models)
    from livescope.models.psf.estimate_train import PsfTrainConfig, train_and_publish_psf

    config = PsfTrainConfig(steps=steps, seed=seed, budget_seconds=None if steps else (budget_minutes or 12.0) * 60.0)
    command = command_line()
    train_and_report("psf", repository, lambda report: train_and_publish_psf(
        repository, config=config, command=command, progress=report))


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

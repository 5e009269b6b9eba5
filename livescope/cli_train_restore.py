"""`livescope train restore`: a cross-modality (confocal -> STED) restoration model from
calibration `pairs` sessions, or from virtual-microscope pairs; added as a new model version.

livescope/cli.py registers it (``train_app.command("restore")(train_restore)``). Parts are imported
lazily, per command, and livescope.cli only inside the function (cli imports this module).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

DEFAULT_BUDGET_MINUTES = 10.0
HELD_OUT_FRACTION = 1 / 3
BASELINE_TOLERANCE_ADU = 1.0  # sessions trained together must share the camera baseline


def train_restore(
    data: Annotated[Optional[list[Path]], typer.Option(
        "--data", help="A calibration pairs session (SESSION.ome.zarr, from `livescope calibrate pairs`); "
                       "repeat for several. Default: virtual-microscope confocal/STED pairs.")] = None,
    models: Annotated[Optional[Path], typer.Option(
        "--models", help="Your model repository, searched after the shipped models.")] = None,
    budget_minutes: Annotated[Optional[float], typer.Option(
        min=0.01, help=f"Training time budget, minutes (default {DEFAULT_BUDGET_MINUTES:g} unless --steps).")] = None,
    steps: Annotated[Optional[int], typer.Option(
        min=1, help="Train exactly N steps (the command then repeats the model exactly).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for data and training.")] = 0,
    name: Annotated[str, typer.Option(help="Model name in the repository.")] = "restore",
    deploy: Annotated[bool, typer.Option(
        "--deploy", help="Register the new version in the running server (--server; it must read --models) "
                         "and hot-swap it in if its held-out metric is not worse than the active version's "
                         "on the same held-out data.")] = False,
    force: Annotated[bool, typer.Option("--force", help="With --deploy: activate the new version even if worse.")] = False,
    server: Annotated[str, typer.Option("--server", help="With --deploy: the server's frames address.")]
    = "tcp://127.0.0.1:5760",
) -> None:
    """Train a cross-modality restoration network (confocal in, STED out) on registered pairs and
    add it as a new version of NAME in the model repository."""
    import shlex

    import numpy as np

    from livescope.cli import _compare_with, _default_models_dir, _train_and_report, fail
    from livescope.console import console

    repository = models or _default_models_dir()
    if repository.exists() and not repository.is_dir():
        fail(f"--models {repository} is a file, not a folder")
    from livescope.modelcard import TrainedFor
    from livescope.models.restore.data import RestoreDataError, require_fields, split_fields
    from livescope.models.restore.train import RestoreTrainConfig

    config = RestoreTrainConfig(steps=steps, seed=seed,
                                budget_seconds=None if steps else (budget_minutes or DEFAULT_BUDGET_MINUTES) * 60.0)
    rng = np.random.default_rng(seed)
    if data:
        from livescope.session import SessionError

        try:
            pairs, base, pixel_size_um, session_ids, dropped = _session_pairs(data, config.patch_px)
            require_fields(pairs, config.patch_px)
        except (SessionError, RestoreDataError) as e:
            fail(str(e))
        for line in dropped:
            console.print(f"left out: {line}")
        train, held_out = split_fields(pairs, HELD_OUT_FRACTION, rng)
        described = (f"calibration pairs sessions {', '.join(str(p) for p in data)} ({len(train)} train, "
                     f"{len(held_out)} held-out pairs; {len(dropped)} left out)")
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

    command = shlex.join(["livescope", *sys.argv[1:]])
    compare_with = _compare_with(deploy, server, name, force)
    _train_and_report(name, repository, lambda report: train_and_publish_restorer(
        repository, name=name, pairs=train, held_out=held_out, config=config, baseline_adu=base,
        data_description=described, command=command, trained_for=trained_for, pixel_size_um=pixel_size_um,
        session_ids=session_ids, compare_with=compare_with, progress=report),
        deploy_to=server if deploy else None, force=force)


def _session_pairs(paths: list[Path], patch_px: int):
    """(pairs, baseline ADU, pixel size µm or None, session ids, lines on pairs left out) of the
    sessions at ``paths``; SessionError / RestoreDataError with a one-line message."""
    import numpy as np

    from livescope.models.restore.data import RestoreDataError, session_pairs
    from livescope.session import load_session

    pairs, dropped, ids, baselines, pixel_sizes = [], [], [], [], []
    for path in paths:
        session = load_session(path)
        raw = session.pairs()  # SessionError for a zstack / beads session
        if not raw:
            raise RestoreDataError(f"session {path} holds no completed pairs yet (resume it to acquire them)")
        h, w = raw[0].low_adu.shape
        if min(h, w) < patch_px:  # before registering: too small a field is no registration failure
            raise RestoreDataError(f"session {path}: the images ({h}x{w} px) are smaller than the {patch_px} px "
                                   "training patch; acquire larger fields")
        # A session without camera calibration: its darkest 0.1 % is the baseline.
        base = session.baseline_adu
        if base is None:
            base = float(min(np.percentile(p.low_adu, 0.1) for p in raw))
        kept, left_out = session_pairs(raw, baseline_adu=base, source=f"session {session.session_id}",
                                       align=_registration(session, raw))
        pairs += kept
        dropped += left_out
        ids.append(session.session_id)
        baselines.append((str(path), base))
        pixel_sizes.append((str(path), session.pixel_size_um))
    first_path, first = baselines[0]
    other = next(((p, b) for p, b in baselines if abs(b - first) > BASELINE_TOLERANCE_ADU), None)
    if other is not None:
        raise RestoreDataError(f"sessions {first_path} and {other[0]} have camera baselines {first:g} and "
                               f"{other[1]:g} ADU: train them separately (one model, one camera)")
    known = {round(px, 6) for _, px in pixel_sizes if px}
    if len(known) > 1:
        raise RestoreDataError(f"the sessions have different pixel sizes ({', '.join(f'{px:g}' for px in sorted(known))}"
                               " µm): train them separately (the model learns one pixel size)")
    return pairs, first, (known.pop() if known else None), tuple(ids), dropped


def _registration(session, pairs):
    """How each pair's high image lands on its low one: the registration saved with the session
    (what its QA report shows), else registered now; pairs failing registration QA are left out."""
    from livescope.acquire.calibration.registration import register_pairs
    from livescope.acquire.calibration.session_registration import saved_registration
    from livescope.models.restore.data import registration_aligner

    report = saved_registration(session) or register_pairs(pairs, session_id=session.session_id)
    return registration_aligner(report)

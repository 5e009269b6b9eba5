"""Localising a stack offline with a localisation model, on the server's runtime.

``localise_frames`` runs a loaded ``localise`` model over frames in photons: each frame is
localised with the ``context_frames - 1`` frames before it as context (the first frames of a
stack repeat the first frame, as the live stage does at the start of a stream), in batches,
tiled with the card's halo when frames are large, and the maps become emitters by the server's
post-processing (``livescope/localise_maps.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from livescope.camera_estimate import complete_camera
from livescope.context import causal_windows
from livescope.emitters import EmitterTable
from livescope.localise_maps import maps_to_emitters, range_warnings
from livescope.server.models import LoadedModel
from livescope.server.offline import OfflineError, gate_warnings, load_model, pixel_size_nm_of, resolve_task_model
from livescope.provenance import CameraModel, Provenance, sidecar_path
from livescope.stackio import StackError, StackInfo, read_stack, stack_format, write_stack
from livescope.validation import first_error


def localise_frames(model: LoadedModel, frames_photons: np.ndarray, pixel_size_nm: float, *,
                    first_frame: int = 1, batch: int = 8,
                    progress: Callable[[int, int], None] | None = None) -> EmitterTable:
    """Emitters of every frame of ``frames_photons`` (T, H, W), numbered from ``first_frame``."""
    spec = model.card.localise
    if spec is None:
        raise ValueError(f"{model.ref} is a {model.card.task} model, not a localisation model")
    frames = np.ascontiguousarray(frames_photons, dtype=np.float32)
    tables = []
    for start in range(0, len(frames), batch):
        stop = min(start + batch, len(frames))
        maps = model.run_frames(causal_windows(frames, spec.context_frames, start, stop))
        tables += [maps_to_emitters(maps[k], pixel_size_nm, first_frame + start + k, spec)
                   for k in range(stop - start)]
        if progress is not None:
            progress(stop, len(frames))
    return EmitterTable.concatenate(tables)



class LocaliseSummary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    provider: str
    input: str
    output: str
    render: str | None
    frames: int
    frame_shape: tuple[int, int]
    pixel_size_nm: float
    emitters: int
    seconds: float
    camera: str = ""  # how the frames were converted to photo-electrons, for the user
    warnings: tuple[str, ...] = ()

    def line(self) -> str:
        h, w = self.frame_shape
        render = f" and {self.render}" if self.render else ""
        fps = self.frames / self.seconds if self.seconds > 0 else float("inf")
        return (f"{self.model} ({self.provider}): {self.emitters} emitters in {self.frames} frames of {h}x{w} "
                f"px ({self.emitters / max(self.frames, 1):.1f} per frame) in {self.seconds:.1f} s "
                f"({fps:.1f} frames/s) -> {self.output}{render}" + (f"\n{self.camera}" if self.camera else ""))


def run_localise_offline(in_path: str | os.PathLike, out_csv: str | os.PathLike, *,
                         baseline_adu: float | None = None, e_per_adu: float | None = None, em_gain: float = 1.0,
                         pixel_size_nm: float | None = None, render_path: str | os.PathLike | None = None,
                         render_px_nm: float = 10.0, model: str = "localise",
                         model_dirs: Sequence[str | os.PathLike] = (), overwrite: bool = False,
                         strict: bool = False, provider: str | None = None, threads: int | None = None,
                         progress: Callable[[int, int], None] | None = None) -> LocaliseSummary:
    """Localise every frame of IN, write the emitters as a ThunderSTORM CSV (and a render).

    The camera is the given ``baseline_adu`` and ``e_per_adu``; what is not given is estimated from
    the stack's noise (``livescope.camera_estimate``) and reported in the summary. The pixel size
    comes from ``pixel_size_nm`` or else the stack's metadata. Data outside the
    model's trained range give warnings, or with ``strict`` an OfflineError before any work.
    Raises StackError / OfflineError with one-line messages; nothing is written on failure.
    """
    from livescope.render import RenderGrid, gaussian

    in_path, out_csv = Path(in_path), Path(out_csv)
    render_out = Path(render_path) if render_path is not None else None
    if out_csv.suffix.lower() != ".csv":
        raise StackError(f"{out_csv}: the localisations are written as CSV; name it .csv")
    for target in (out_csv, sidecar_path(out_csv), render_out):
        if target is not None and target.exists() and not overwrite:
            raise StackError(f"{target} already exists; choose another output or pass --overwrite")
    if render_out is not None:
        stack_format(render_out)
    version_found = resolve_task_model(model, model_dirs, "localise", "localise needs a localisation model")
    card = version_found.card
    stack = read_stack(in_path)
    pixel_size_nm = pixel_size_nm_of(stack, pixel_size_nm, in_path)
    h, w = stack.frames.shape[1:]
    grid = None
    if render_out is not None:  # before any work: a render too fine for memory is refused now
        try:
            grid = RenderGrid(width_nm=w * pixel_size_nm, height_nm=h * pixel_size_nm, pixel_nm=render_px_nm)
        except ValidationError as e:
            raise OfflineError(f"--render-px: {first_error(e)}") from None
    try:
        camera, estimate = complete_camera(stack.frames, baseline_adu=baseline_adu, e_per_adu=e_per_adu,
                                           em_gain=em_gain)
    except ValueError as e:
        raise OfflineError(f"{in_path}: cannot estimate the camera ({e}); give --baseline and --e-per-adu") from None
    described = (f"camera: baseline {camera.baseline_adu:g} ADU, {camera.e_per_adu:g} e-/ADU (given)"
                 if estimate is None else estimate.describe())
    photons = camera.photons(stack.frames)
    warnings = gate_warnings(card) + tuple(range_warnings(card, pixel_size_nm, photons))
    if strict and warnings:
        raise OfflineError(f"--strict: {warnings[0]}")
    loaded = load_model(version_found, provider, threads)
    t0 = time.perf_counter()
    table = localise_frames(loaded, photons, pixel_size_nm, progress=progress)
    seconds = time.perf_counter() - t0
    used = CameraModel(baseline_adu=camera.baseline_adu, e_per_adu=camera.e_per_adu, em_gain=camera.em_gain,
                       source="given" if estimate is None else estimate.describe())
    made = dict(source=str(in_path), model=loaded.ref, model_file=version_found.onnx_path, camera=used)
    rendered = None
    if render_out is not None and grid is not None:
        image = gaussian(table, grid).image[None]
        info = StackInfo(path=str(render_out), format=stack_format(render_out), axes="TYX", shape=image.shape,
                         dtype="float32", pixel_size_um=render_px_nm / 1000.0)
        rendered = write_stack(render_out, image, info, overwrite=overwrite, provenance=Provenance.of_one_model(
            operation="localise render (every frame's localisations)", frame_count=1, **made))
    # The card, not the data, says what was measured: z by a 3-D model only, and no PSF width at all.
    three_d = card.localise is not None and card.localise.three_d  # localise_frames needed the spec
    Provenance.of_one_model(operation="localise", frame_count=stack.n_frames, **made).write_sidecar(
        out_csv, overwrite=overwrite)
    table.write_csv(out_csv, z=three_d, sigma=False, overwrite=overwrite)
    return LocaliseSummary(model=loaded.ref, provider=loaded.provider, input=str(in_path), output=str(out_csv),
                           render=str(rendered) if rendered else None, frames=stack.n_frames,
                           frame_shape=(h, w), pixel_size_nm=pixel_size_nm, emitters=len(table),
                           seconds=seconds, camera=described, warnings=warnings)

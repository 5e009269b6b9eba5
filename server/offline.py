"""Offline restoration: a whole stack through a model, on the same runtime the server uses.

``run_offline`` is what ``livescope denoise|refocus|restore IN OUT`` do: resolve the model in the
repository (shipped + the user's), load it (same providers, same card checks), read the stack,
restore it frame batch by frame batch (tiled when frames are larger than a tile), and write the
result atomically in the input's layout. Outputs are float32 in the input's intensity units
(ADU, baseline included): the model's graph undoes its own normalisation.

Large frames are cut by ``livescope.server.tiling`` with the card's halo; when the device runs
out of memory the tile is made smaller and the batch retried (logged), then the model is
reloaded on the CPU.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from livescope.camera_estimate import PhotonScale, complete_camera, photon_scale
from livescope.context import causal_windows
from livescope.modelcard import ModelCard
from livescope.provenance import CameraModel, Provenance
from livescope.server.domain import domain_warnings
from livescope.server.ensemble import ENSEMBLE_TASKS, ensembled, transform_count
from livescope.server.tiling import DEFAULT_TILE_PX, effective_tile, is_out_of_memory, run_shrinking_on_oom
from livescope.stackio import Stack, StackError, read_stack, stack_format, write_stack

if TYPE_CHECKING:
    from livescope.repository import ModelVersion
    from livescope.server.models import LoadedModel

log = logging.getLogger("livescope.server")

Progress = Callable[[int, int], None]
"""progress(frames_done, frames_total)"""

_DTYPE_RANGE = {"uint8": (0, 255), "uint16": (0, 65535)}


class OfflineError(Exception):
    """The model cannot be used for this command; a one-line message for the user."""


class RunsFrames(Protocol):
    """What restore_stack needs of a model: ``LoadedModel`` has it."""

    @property
    def card(self) -> ModelCard: ...

    def run(self, frames: np.ndarray) -> np.ndarray: ...

    def run_windows(self, x: np.ndarray) -> np.ndarray: ...


class OfflineSummary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    provider: str
    input: str
    output: str
    frames: int
    frame_shape: tuple[int, int]
    tile_px: int | None
    clipped_pixels: int
    seconds: float
    warnings: tuple[str, ...] = ()
    camera: str | None = None  # how a camera-agnostic model's photons were obtained, in words
    ensemble_transforms: int = 1  # each frame the mean over this many flips / quarter turns

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")

    def line(self) -> str:
        h, w = self.frame_shape
        tiles = f", tiles of {self.tile_px} px" if self.tile_px else ""
        clipped = f", {self.clipped_pixels} input pixels clipped" if self.clipped_pixels else ""
        mean = f", each the mean of {self.ensemble_transforms} flips/turns" if self.ensemble_transforms > 1 else ""
        return (f"{self.model} ({self.provider}): {self.frames} frames of {h}x{w} px in "
                f"{self.seconds:.1f} s ({self.frames_per_s:.1f} frames/s{tiles}{mean}{clipped}) -> {self.output}"
                + (f"\nphotons from {self.camera}" if self.camera else ""))


def to_model_dtype(frames: np.ndarray, dtype: str) -> tuple[np.ndarray, int]:
    """Frames in the model's input dtype, and how many pixels had to be clipped to fit it.

    Integer inputs take values as they are (ADU); float stacks are rounded to the nearest ADU.
    """
    if frames.dtype.name == dtype:
        return frames, 0
    if dtype == "float32":
        return frames.astype(np.float32), 0
    lo, hi = _DTYPE_RANGE[dtype]
    x = np.rint(frames) if frames.dtype.kind == "f" else frames
    clipped = int(np.count_nonzero((x < lo) | (x > hi)))
    return np.clip(x, lo, hi).astype(dtype), clipped


def tiling_for(card: ModelCard, tile_px: int | None = None) -> tuple[int, bool]:
    """(tile size, whether the model needs exactly that size) for a card; OfflineError for a tile too
    small for the model's halo (the user's --tile)."""
    if card.tiling.tile_px is not None:
        return card.tiling.tile_px, True
    tile = tile_px or DEFAULT_TILE_PX
    try:
        effective_tile(tile, card.tiling.halo_px, card.tiling.size_multiple_px)
    except ValueError as e:
        raise OfflineError(f"--tile: {e} for {card.ref}") from None
    return tile, False


def restore_stack(model: RunsFrames, stack: Stack | np.ndarray, *, batch: int = 4,
                  tile_px: int | None = None, progress: Progress | None = None,
                  scale: PhotonScale | None = None, ensemble: bool = False) -> np.ndarray:
    """Run the model on every frame of a (T, H, W) stack; return float32 (T, H, W).

    A camera-agnostic model (card normalisation ``photons``) gets the frames in noise-equivalent
    photons by ``scale`` (default: estimated from the stack, `photon_scale`), its result back in ADU.

    A model with context frames sees each frame with the ones before it (the first frame standing
    in before the stack's start: ``livescope.context.causal_windows``), as it would live.
    ``batch`` frames (or tiles, for frames larger than a tile) go to the model per call.
    ``tile_px`` overrides the default tile size for models that accept any size.
    ``ensemble``: each tile's result is the mean over its 8 flips and quarter turns
    (`livescope.server.ensemble`; 8x the time); OfflineError for a task without that symmetry.
    """
    frames = stack.frames if isinstance(stack, Stack) else stack
    if frames.ndim != 3:
        raise ValueError(f"frames must be (T, H, W), got shape {frames.shape}")
    card = model.card
    check_ensemble(card, ensemble)
    tile, fixed = tiling_for(card, tile_px)
    t = frames.shape[0]
    out: np.ndarray | None = None
    in_dtype = card.inputs[0].dtype
    done = 0
    context = card.context_frames
    run = model.run if context == 1 else (lambda windows: model.run_windows(windows)[:, 0])
    if ensemble:
        run = ensembled(run)
    if card.normalisation.kind == "photons":
        run = (scale or photon_scale(frames)).around(run)
    while done < t:
        stop = min(done + batch, t)
        chunk, _ = to_model_dtype(frames[done:stop] if context == 1 else
                                  causal_windows(frames, context, done, stop), in_dtype)
        y, tile = run_shrinking_on_oom(run, chunk, tile_px=tile,
                                       halo_px=card.tiling.halo_px,
                                       size_multiple_px=card.tiling.size_multiple_px,
                                       fixed_size=fixed, batch_tiles=batch, name=card.ref)
        if out is None:
            out = np.empty((t, *y.shape[1:]), np.float32)
        out[done:done + len(chunk)] = y
        done += len(chunk)
        if progress is not None:
            progress(done, t)
    return out if out is not None else np.empty((0, *frames.shape[1:]), np.float32)


def check_ensemble(card: ModelCard, ensemble: bool) -> None:
    """OfflineError when ``ensemble`` is asked of a model whose task a flip or a quarter turn changes."""
    if ensemble and card.task not in ENSEMBLE_TASKS:
        raise OfflineError(f"--ensemble averages over flips and quarter turns, which a {card.task} model "
                           f"({card.ref}) does not allow; run it without --ensemble")


def check_image_model(card: ModelCard, task: str | None) -> None:
    """OfflineError unless the card maps images to images (for ``task``, where given)."""
    if card.inputs[0].axes != "NCYX" or card.outputs[0].axes != "NCYX":
        raise OfflineError(f"{card.ref} maps {card.inputs[0].axes} to {card.outputs[0].axes}, not "
                           "image to image; it cannot restore a stack"
                           + ("; use `livescope localise`" if card.task == "localise" else ""))
    if task is not None and card.task not in (task, "identity"):
        raise OfflineError(f"{card.ref} is a {card.task} model, not a {task} model; "
                           f"name a {task} model with --model")


def resolve_task_model(task_stage: str, model_dirs: Sequence[str | os.PathLike], task: str,
                       command_needs: str) -> ModelVersion:
    """``resolve_model``, and OfflineError unless it is a ``task`` model (``command_needs`` says what
    the command takes, e.g. "localise needs a localisation model")."""
    version = resolve_model(task_stage, model_dirs)
    if version.card.task != task:
        raise OfflineError(f"{version.card.ref} is a {version.card.task} model; {command_needs}")
    return version


def pixel_size_nm_of(stack: Stack, given_nm: float | None, in_path: str | os.PathLike) -> float:
    """The pixel size the user gave, else the stack's metadata's; OfflineError when neither says."""
    if given_nm is not None:
        return given_nm
    if stack.info.pixel_size_um is None:
        raise OfflineError(f"{in_path} does not say its pixel size; give --pixel-size NM")
    return stack.info.pixel_size_um * 1000.0


def resolve_model(task_stage: str, model_dirs: Sequence[str | os.PathLike]) -> ModelVersion:
    """The ModelVersion ``task_stage`` ('denoise' or 'denoise@2') names among the shipped models and
    ``model_dirs``; OfflineError with a one-line message if there is none."""
    from livescope.protocol import split_stage
    from livescope.repository import ModelRepository, UnknownModelError, shipped_models_root

    try:
        name, version = split_stage(task_stage)
        return ModelRepository([shipped_models_root(), *map(Path, model_dirs)]).resolve(name, version)
    except (ValueError, UnknownModelError) as e:
        raise OfflineError(str(e).strip("'\"")) from None


def gate_warnings(card: ModelCard) -> tuple[str, ...]:
    """A candidate named explicitly runs (it is the user's choice), but never silently."""
    if card.serves_by_default:
        return ()
    return (f"{card.ref} is a candidate that failed the quality gate ({card.gate.reason}); "
            "its results may be worse than a classical filter's",)


def load_model(version: ModelVersion, provider: str | None, threads: int | None) -> LoadedModel:
    """``version`` loaded on the server's runtime; OfflineError with a one-line message if not."""
    from livescope.server.models import LoadedModel, ModelLoadError
    from livescope.server.providers import RuntimeOptions

    try:
        return LoadedModel.load(version, RuntimeOptions(provider=provider, intra_op_threads=threads))
    except (ModelLoadError, ValueError) as e:
        raise OfflineError(str(e)) from None


def scale_and_warnings(card: ModelCard, frames: np.ndarray, in_path: Path, *, baseline_adu: float | None = None,
                       e_per_adu: float | None = None, em_gain: float = 1.0
                       ) -> tuple[PhotonScale | None, tuple[str, ...]]:
    """A camera-agnostic model's photon scale (from the camera given, completed from ``frames``, or
    estimated from them), and the warnings about the model and about ``frames`` (`domain_warnings`)."""
    scale = None
    if card.normalisation.kind == "photons":
        camera = None
        if baseline_adu is not None or e_per_adu is not None or em_gain != 1.0:
            try:
                camera, _ = complete_camera(frames, baseline_adu=baseline_adu, e_per_adu=e_per_adu, em_gain=em_gain)
            except ValueError as e:
                raise OfflineError(f"{in_path}: {e}") from None
        scale = photon_scale(frames, camera)
    return scale, gate_warnings(card) + domain_warnings(
        card, frames, str(in_path), advice=f"train a model on this data with: livescope train denoise --data {in_path}",
        scale=scale)


def run_offline(task_stage: str, in_path: str | os.PathLike, out_path: str | os.PathLike, *,
                model_dirs: Sequence[str | os.PathLike] = (), overwrite: bool = False,
                progress: Progress | None = None, batch: int = 4, tile_px: int | None = None,
                provider: str | None = None, threads: int | None = None,
                task: str | None = None, baseline_adu: float | None = None, e_per_adu: float | None = None,
                em_gain: float = 1.0, ensemble: bool = False) -> OfflineSummary:
    """Read IN, restore it with the model ``task_stage`` ('denoise' or 'denoise@2'), write OUT.

    ``task``: the command's task; a model trained for another task is refused. For a camera-agnostic
    model, ``baseline_adu``, ``e_per_adu`` and ``em_gain`` give the camera to convert to photons with
    (what is not given is estimated from IN, as `complete_camera` does; neither: `photon_scale`).
    Raises StackError (input or output) or OfflineError (model), each with a one-line message.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    stack_format(out_path)  # refuse a bad output name before any work
    if out_path.exists() and not overwrite:
        raise StackError(f"{out_path} already exists; choose another output or pass --overwrite")
    model_version = resolve_model(task_stage, model_dirs)
    check_image_model(model_version.card, task)
    check_ensemble(model_version.card, ensemble)
    stack = read_stack(in_path)
    scale, warnings = scale_and_warnings(model_version.card, stack.frames, in_path, baseline_adu=baseline_adu,
                                         e_per_adu=e_per_adu, em_gain=em_gain)
    model = load_model(model_version, provider, threads)

    t0 = time.perf_counter()
    in_dtype = model_version.card.inputs[0].dtype
    clipped = 0 if stack.frames.dtype.name == in_dtype else sum(
        to_model_dtype(stack.frames[i:i + 64], in_dtype)[1] for i in range(0, stack.n_frames, 64))
    try:
        restored = restore_stack(model, stack, batch=batch, tile_px=tile_px, progress=progress, scale=scale,
                                 ensemble=ensemble)
    except Exception as e:
        if not is_out_of_memory(e) or model.provider == "cpu":
            raise
        log.warning("%s: out of memory on %s even with small tiles; running on the CPU",
                    model.ref, model.provider)
        model = load_model(model_version, "cpu", threads)
        restored = restore_stack(model, stack, batch=batch, tile_px=tile_px, progress=progress, scale=scale,
                                 ensemble=ensemble)
    seconds = time.perf_counter() - t0
    camera = None if scale is None else CameraModel(**scale.model_dump())
    transforms = transform_count(ensemble)
    write_stack(out_path, restored, stack, overwrite=overwrite, provenance=Provenance.of_one_model(
        operation=task or model.card.task, source=str(in_path), frame_count=len(restored), model=model.ref,
        model_file=model_version.onnx_path, camera=camera, ensemble_transforms=transforms))
    tile, fixed = tiling_for(model.card, tile_px)
    h, w = stack.frames.shape[1:]
    return OfflineSummary(model=model.ref, provider=model.provider, input=str(in_path),
                          output=str(out_path), frames=stack.n_frames, frame_shape=(h, w),
                          tile_px=tile if fixed or max(h, w) > tile else None,
                          clipped_pixels=clipped, seconds=seconds, warnings=warnings,
                          camera=None if scale is None else scale.source,
                          ensemble_transforms=transforms)

"""Refocusing a stack offline with a refocusing model, on the server's runtime.

``livescope refocus IN OUT --dz 1.5`` moves the focus of every frame by delta-z (µm: the wanted
plane's focus position minus the frame's); ``--sweep -2:2:0.25`` turns one frame into a virtual
z-stack, one plane per delta-z, written with the step as its plane spacing. Delta-z outside the
range on the model's card is refused: the model never saw it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict

from livescope.modelcard import ModelCard
from livescope.server.models import LoadedModel
from livescope.server.offline import OfflineError, gate_warnings, load_model, resolve_model
from livescope.provenance import Provenance
from livescope.stackio import Stack, StackError, StackInfo, read_stack, stack_format, write_stack

if TYPE_CHECKING:
    from livescope.repository import ModelVersion


class RefocusSummary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    provider: str
    input: str
    output: str
    frames_in: int
    planes_out: int
    dz_um: tuple[float, ...]
    frame_shape: tuple[int, int]
    seconds: float
    warnings: tuple[str, ...] = ()

    def line(self) -> str:
        h, w = self.frame_shape
        what = (f"{self.frames_in} frames moved by {self.dz_um[0]:+g} µm" if len(self.dz_um) == 1
                else f"a sweep of {self.planes_out} planes, {self.dz_um[0]:+g} to {self.dz_um[-1]:+g} µm")
        return (f"{self.model} ({self.provider}): {what}, {h}x{w} px, in {self.seconds:.1f} s -> {self.output}")


def parse_sweep(text: str) -> np.ndarray:
    """'START:STOP:STEP' (µm, STOP included when on the grid) -> the delta-z values."""
    parts = text.split(":")
    try:
        start, stop, step = (float(p) for p in parts)
    except ValueError:
        raise OfflineError(f"--sweep {text!r}: expected START:STOP:STEP in µm, e.g. -2:2:0.25") from None
    if not step > 0 or stop < start or not all(math.isfinite(v) for v in (start, stop, step)):
        raise OfflineError(f"--sweep {text!r}: needs STEP > 0 and STOP >= START")
    n = math.floor((stop - start) / step + 1e-9) + 1
    if n > 1000:
        raise OfflineError(f"--sweep {text!r} gives {n} planes; at most 1000")
    return start + step * np.arange(n)


def check_dz(card: ModelCard, dz_um: np.ndarray) -> None:
    """OfflineError unless every delta-z lies in the (refocusing) card's trained range."""
    low, high = card.refocus.dz_range_um
    outside = dz_um[(dz_um < low - 1e-9) | (dz_um > high + 1e-9)]
    if outside.size:
        raise OfflineError(f"delta-z {outside[0]:+g} µm is outside the {low:+g} to {high:+g} µm {card.ref} was "
                           f"trained for")


def refocus_model(model: str, model_dirs: Sequence[str | os.PathLike], dz_um: float | None,
                  sweep: str | None) -> tuple[ModelVersion, np.ndarray]:
    """The refocusing model named, and the delta-z planes (µm) asked of it, both checked."""
    if (dz_um is None) == (sweep is None):
        raise OfflineError("give either --dz MICRONS (every frame) or --sweep START:STOP:STEP (one frame)")
    version = resolve_model(model, model_dirs)
    card = version.card
    if card.refocus is None:
        raise OfflineError(f"{card.ref} is not a refocusing model (its task: {card.task}); name one with --model")
    planes = parse_sweep(sweep) if sweep is not None else np.array([float(dz_um)])
    check_dz(card, planes)
    return version, planes


def check_frame(frame: int, n_frames: int, in_path: Path) -> None:
    if not 0 <= frame < n_frames:
        raise OfflineError(f"--frame {frame}: {in_path} has frames 0 to {n_frames - 1}")


def sweep_info(out_path: Path, shape: tuple[int, ...], pixel_size_um: float | None,
               planes: np.ndarray) -> StackInfo:
    """How a sweep is written: a z-stack (ZYX) whose plane spacing is the sweep's step."""
    return StackInfo(path=str(out_path), format=stack_format(out_path), axes="ZYX", shape=shape,
                     dtype="float32", pixel_size_um=pixel_size_um,
                     z_step_um=float(planes[1] - planes[0]) if len(planes) > 1 else None)


def refocus_provenance(version: ModelVersion, in_path: Path, planes_out: int, sweep: str | None,
                       frame: int) -> Provenance:
    return Provenance.of_one_model(
        operation="refocus" if sweep is None else f"refocus sweep {sweep} of frame {frame}", source=str(in_path),
        frame_count=planes_out, model=version.ref, model_file=version.onnx_path)


def refocus_frames(model: LoadedModel, frames: np.ndarray, dz_um: np.ndarray, *, batch: int = 4,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Frame k (ADU) moved by dz_um[k] -> float32 (N, H, W) in ADU."""
    n = len(frames)
    out = np.empty(frames.shape, np.float32)
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        x = np.empty((stop - start, 2, *frames.shape[1:]), np.float32)
        x[:, 0] = frames[start:stop]
        x[:, 1] = dz_um[start:stop, None, None]
        out[start:stop] = model.run_frames(x)[:, 0]
        if progress is not None:
            progress(stop, n)
    return out


def run_refocus_offline(in_path: str | os.PathLike, out_path: str | os.PathLike, *, dz_um: float | None = None,
                        sweep: str | None = None, frame: int = 0, model: str = "refocus",
                        model_dirs: Sequence[str | os.PathLike] = (), overwrite: bool = False,
                        batch: int = 4, provider: str | None = None, threads: int | None = None,
                        progress: Callable[[int, int], None] | None = None) -> RefocusSummary:
    """Refocus every frame of IN by ``dz_um``, or frame ``frame`` of IN over ``sweep``; write OUT.

    Raises StackError / OfflineError with one-line messages; nothing is written on failure."""
    in_path, out_path = Path(in_path), Path(out_path)
    version, planes = refocus_model(model, model_dirs, dz_um, sweep)
    stack_format(out_path)
    if out_path.exists() and not overwrite:
        raise StackError(f"{out_path} already exists; choose another output or pass --overwrite")
    card = version.card
    stack = read_stack(in_path)
    loaded = load_model(version, provider, threads)
    t0 = time.perf_counter()
    if sweep is None:
        frames = stack.frames
        out = refocus_frames(loaded, frames, np.full(len(frames), planes[0]), batch=batch, progress=progress)
        like: Stack | StackInfo = stack
    else:
        check_frame(frame, stack.n_frames, in_path)
        frames = np.repeat(stack.frames[frame : frame + 1], len(planes), axis=0)
        out = refocus_frames(loaded, frames, planes, batch=batch, progress=progress)
        like = sweep_info(out_path, out.shape, stack.info.pixel_size_um, planes)
    seconds = time.perf_counter() - t0
    written = write_stack(out_path, out, like, overwrite=overwrite,
                          provenance=refocus_provenance(version, in_path, len(out), sweep, frame))
    h, w = stack.frames.shape[1:]
    return RefocusSummary(model=loaded.ref, provider=loaded.provider, input=str(in_path), output=str(written),
                          frames_in=stack.n_frames, planes_out=len(out), dz_um=tuple(float(p) for p in planes),
                          frame_shape=(h, w), seconds=seconds, warnings=gate_warnings(card))

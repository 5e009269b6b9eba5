"""Reading the local PSF of a stack offline with a ``psf`` model, on the server's runtime.

``livescope psf IN OUT.csv`` cuts every frame into tiles (the model's trained size by default),
gives each tile with the frame's optics to the model (`livescope.psf_estimate`: the graph
normalises each tile itself, so no camera needs to be given) and writes one CSV row per tile:
|defocus| and the aberrations' magnitudes with their uncertainties, and the defocus signed by the
rig's astigmatism where the model is sure of the sign; a provenance sidecar beside it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from livescope.provenance import Provenance, sidecar_path
from livescope.psf_estimate import PsfOptics, tile_estimates, tile_px_of, tile_table, write_tiles_csv
from livescope.server.offline import OfflineError, gate_warnings, load_model, pixel_size_nm_of, resolve_task_model
from livescope.stackio import StackError, read_stack
from livescope.validation import first_error

MIN_TILE_PX = 16


class PsfSummary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    provider: str
    input: str
    output: str
    frames: int
    tiles_per_frame: int
    tile_px: int
    median_abs_defocus_um: float
    seconds: float
    warnings: tuple[str, ...] = ()

    def line(self) -> str:
        return (f"{self.model} ({self.provider}): {self.frames} frames x {self.tiles_per_frame} tiles of "
                f"{self.tile_px} px in {self.seconds:.1f} s; median |defocus| {self.median_abs_defocus_um:.2f} µm "
                f"-> {self.output}")


def tile_origins(h: int, w: int, tile_px: int) -> list[tuple[int, int]]:
    """Top-left corners of the whole tiles that cover a frame, row by row (the remainder is left out)."""
    return [(y, x) for y in range(0, h - tile_px + 1, tile_px) for x in range(0, w - tile_px + 1, tile_px)]


def estimate_tiles(run: Callable[[np.ndarray], np.ndarray], frames: np.ndarray, optics: PsfOptics, tile_px: int, *,
                   astigmatism_sign: int = 1, batch: int = 64,
                   progress: Callable[[int, int], None] | None = None) -> tuple[list[tuple[int, int]], dict]:
    """Per tile of every frame of ``frames`` (T, H, W, ADU): the estimates of `tile_estimates`, frame
    by frame, each array (T x tiles,), and the tiles' origins. ``run``: the model on (N, C, tile,
    tile) windows (a `LoadedModel.run_windows`, or the server's stage, which may move to the CPU)."""
    origins = tile_origins(*frames.shape[1:], tile_px)
    channels = optics.channels()
    outs = []
    items = [(t, y, x) for t in range(len(frames)) for y, x in origins]
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        x_in = np.empty((len(chunk), 1 + len(channels), tile_px, tile_px), np.float32)
        for k, (t, y, x) in enumerate(chunk):
            x_in[k, 0] = frames[t, y:y + tile_px, x:x + tile_px]
        x_in[:, 1:] = channels[None, :, None, None]
        outs.append(run(x_in))
        if progress is not None:
            progress(min(start + batch, len(items)) // max(len(origins), 1), len(frames))
    return origins, tile_estimates(np.concatenate(outs), astigmatism_sign)


def run_psf_offline(in_path: str | os.PathLike, out_csv: str | os.PathLike, *, na: float, emission_nm: float,
                    immersion_index: float, pixel_size_nm: float | None = None, tile_px: int | None = None,
                    astigmatism_sign: int = 1, model: str = "psf", model_dirs: Sequence[str | os.PathLike] = (),
                    overwrite: bool = False, provider: str | None = None, threads: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> PsfSummary:
    """Estimate the PSF per tile of every frame of IN; write OUT.csv and its provenance sidecar.
    Raises StackError / OfflineError with one-line messages; nothing is written on failure."""
    in_path, out_csv = Path(in_path), Path(out_csv)
    if out_csv.suffix.lower() != ".csv":
        raise StackError(f"{out_csv}: the estimates are written as CSV; name it .csv")
    for target in (out_csv, sidecar_path(out_csv)):
        if target.exists() and not overwrite:
            raise StackError(f"{target} already exists; choose another output or pass --overwrite")
    if astigmatism_sign not in (1, -1):
        raise OfflineError(f"--astigmatism-sign must be 1 or -1, not {astigmatism_sign}")
    version = resolve_task_model(model, model_dirs, "psf", "psf needs a PSF estimation model")
    card = version.card
    tile = tile_px or tile_px_of(card)
    if tile < MIN_TILE_PX:
        raise OfflineError(f"--tile {tile}: tiles must be at least {MIN_TILE_PX} px")
    stack = read_stack(in_path)
    pixel_size_nm = pixel_size_nm_of(stack, pixel_size_nm, in_path)
    try:
        optics = PsfOptics(na=na, emission_nm=emission_nm, pixel_size_nm=pixel_size_nm,
                           immersion_index=immersion_index)
    except ValidationError as e:
        raise OfflineError(f"optics: {first_error(e)}") from None
    h, w = stack.frames.shape[1:]
    if h < tile or w < tile:
        raise OfflineError(f"{in_path}: frames of {h}x{w} px are smaller than one {tile} px tile; "
                           "give a smaller --tile")
    warnings = gate_warnings(card) + psf_domain_warnings(card, optics, tile)
    loaded = load_model(version, provider, threads)
    t0 = time.perf_counter()
    origins, est = estimate_tiles(loaded.run_windows, stack.frames, optics, tile, astigmatism_sign=astigmatism_sign,
                                  progress=progress)
    seconds = time.perf_counter() - t0
    Provenance.of_one_model(operation=f"psf (tiles of {tile} px)", source=str(in_path), frame_count=stack.n_frames,
                            model=loaded.ref, model_file=version.onnx_path).write_sidecar(out_csv, overwrite=overwrite)
    per_tile = len(origins)
    rows = tile_table(origins * stack.n_frames, tile, est)
    write_tiles_csv(out_csv, [(t + 1, rows[t * per_tile:(t + 1) * per_tile]) for t in range(stack.n_frames)])
    return PsfSummary(model=loaded.ref, provider=loaded.provider, input=str(in_path), output=str(out_csv),
                      frames=stack.n_frames, tiles_per_frame=len(origins), tile_px=tile,
                      median_abs_defocus_um=float(np.median(est["abs_defocus_um"])), seconds=seconds,
                      warnings=warnings)


def psf_domain_warnings(card, optics: PsfOptics, tile: int) -> tuple[str, ...]:
    """Optics or tiles the model was not trained on: it still answers, but never silently."""
    found = []
    trained = card.trained_for
    for label, value, span in (("NA", optics.na, trained.na), ("emission nm", optics.emission_nm, trained.emission_nm),
                               ("pixel size nm", optics.pixel_size_nm, trained.pixel_size_nm)):
        if span is not None and not span[0] <= value <= span[1]:
            found.append(f"{label} {value:g} is outside the {span[0]:g}-{span[1]:g} {card.ref} was trained on")
    if card.tiling.tile_px is not None and tile != card.tiling.tile_px:
        found.append(f"tiles of {tile} px: {card.ref} was trained on {card.tiling.tile_px} px tiles")
    return tuple(found)

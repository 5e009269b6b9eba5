"""Tiling: run a model on frames of any size, in overlapping tiles that join without seams.

How a frame is cut (one plan per frame shape, ``plan_tiles``):

1. The frame is padded at the bottom and right to the card's size multiple, by reflection,
   exactly as ``LoadedModel.run`` pads a whole frame; a model with a fixed input size
   (``fixed_size``) is padded up to that size if the frame is smaller.
2. Windows of ``tile_px`` (rounded down to the size multiple) are placed so that their *cores*
   cover the frame without overlap; each window reaches ``halo_px`` (rounded up to the size
   multiple) beyond its core on every side, except where it touches the frame's edge, where it
   stops at the edge, as the whole-frame run does. Windows start on multiples of the size
   multiple, so a UNet's pooling grid in a window coincides with its grid in the whole frame.
3. Only the core of each window's output is kept (the halo is cropped).

With ``halo_px`` at least the network's receptive-field radius, every kept pixel saw exactly
the input it would have seen in a whole-frame run, so tiled and whole-frame outputs agree to
floating-point rounding (tested against ``denoise@2``). Tiles all have one shape and are run
several per call (``batch_tiles``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("livescope.server")

RunFn = Callable[[np.ndarray], np.ndarray]
"""(N, H, W) frames -> (N, H, W) outputs, e.g. ``LoadedModel.run``."""

DEFAULT_TILE_PX = 512


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


@dataclass(frozen=True)
class Span:
    """One window along one axis: the model sees [start, stop); [core_start, core_stop) is kept."""

    start: int
    stop: int
    core_start: int
    core_stop: int


def plan_axis(length: int, tile: int, halo: int) -> list[Span]:
    """Windows of ``tile`` px whose cores cover [0, length); ``length`` and ``tile`` padded already."""
    if length <= tile:
        return [Span(0, length, 0, length)]
    step = tile - 2 * halo
    spans, core = [], 0
    while core < length:
        core_stop = tile - halo if core == 0 else min(core + step, length)
        start = min(max(core - halo, 0), length - tile)
        spans.append(Span(start, start + tile, core, min(core_stop, length)))
        core = core_stop
    return spans


@dataclass(frozen=True)
class TilePlan:
    """How frames of one shape are padded and cut."""

    height: int  # the frame's own size
    width: int
    padded_height: int  # after padding to the size multiple (and to a fixed tile size)
    padded_width: int
    tile_h: int  # every window's shape
    tile_w: int
    rows: tuple[Span, ...]
    cols: tuple[Span, ...]

    @property
    def n_tiles(self) -> int:
        return len(self.rows) * len(self.cols)


def effective_tile(tile_px: int, halo_px: int, size_multiple_px: int) -> tuple[int, int]:
    """(tile, halo) rounded to the size multiple: tile down, halo up. Raises if no core is left."""
    m = size_multiple_px
    tile, halo = (tile_px // m) * m, _round_up(halo_px, m)
    if tile - 2 * halo < m:
        raise ValueError(f"tile {tile_px} px leaves no core inside a halo of {halo_px} px "
                         f"(size multiple {m}); use a tile of at least {2 * halo + m} px")
    return tile, halo


def plan_tiles(height: int, width: int, *, tile_px: int, halo_px: int, size_multiple_px: int = 1,
               fixed_size: bool = False) -> TilePlan:
    m = size_multiple_px
    tile, halo = effective_tile(tile_px, halo_px, m)
    if fixed_size and tile != tile_px:
        raise ValueError(f"fixed tile size {tile_px} px is not a multiple of {m} px")
    ph, pw = _round_up(height, m), _round_up(width, m)
    if fixed_size:
        ph, pw = max(ph, tile), max(pw, tile)
    th, tw = min(tile, ph), min(tile, pw)
    return TilePlan(height, width, ph, pw, th, tw,
                    tuple(plan_axis(ph, th, halo)), tuple(plan_axis(pw, tw, halo)))


def _pad(frame: np.ndarray, plan: TilePlan) -> np.ndarray:
    dh, dw = plan.padded_height - plan.height, plan.padded_width - plan.width
    if not (dh or dw):
        return frame
    # numpy reflects repeatedly when the pad is wider than the frame; a 1-px frame can only repeat.
    mode = "reflect" if min(plan.height, plan.width) > 1 else "edge"
    return np.pad(frame, [(0, 0)] * (frame.ndim - 2) + [(0, dh), (0, dw)], mode=mode)


def _tiles(frames: np.ndarray, plan: TilePlan) -> Iterator[tuple[int, Span, Span, np.ndarray]]:
    for i in range(frames.shape[0]):
        padded = _pad(frames[i], plan)
        for r in plan.rows:
            for c in plan.cols:
                yield i, r, c, padded[..., r.start:r.stop, c.start:c.stop]


def run_tiled(run: RunFn, frames: np.ndarray, *, tile_px: int = DEFAULT_TILE_PX, halo_px: int = 0,
              size_multiple_px: int = 1, fixed_size: bool = False,
              batch_tiles: int = 4) -> np.ndarray:
    """Run ``run`` on ``frames`` of any size, ``batch_tiles`` windows per call.

    ``frames`` is (N, H, W) or (N, C, H, W) (e.g. a window of frames per item); ``run`` maps a
    batch of windows to (B, H, W) or (B, C', H, W), and so does this, in ``run``'s dtype. A frame
    that fits in one tile is run whole (padded to the size multiple), several frames per call.
    """
    if frames.ndim not in (3, 4):
        raise ValueError(f"frames must be (N, H, W) or (N, C, H, W), got shape {frames.shape}")
    if batch_tiles < 1:
        raise ValueError("batch_tiles must be at least 1")
    n, (h, w) = frames.shape[0], frames.shape[-2:]
    plan = plan_tiles(h, w, tile_px=tile_px, halo_px=halo_px, size_multiple_px=size_multiple_px,
                      fixed_size=fixed_size)
    out: np.ndarray | None = None
    batch: list[tuple[int, Span, Span]] = []
    stack = np.empty((batch_tiles, *frames.shape[1:-2], plan.tile_h, plan.tile_w), dtype=frames.dtype)

    def flush() -> None:
        nonlocal out
        result = run(stack[: len(batch)])
        if out is None:
            out = np.empty((n, *result.shape[1:-2], h, w), dtype=result.dtype)
        for k, (i, r, c) in enumerate(batch):
            ys, xs = slice(r.core_start, min(r.core_stop, h)), slice(c.core_start, min(c.core_stop, w))
            if ys.start >= ys.stop or xs.start >= xs.stop:
                continue  # a core that lies wholly in the padding
            out[i, ..., ys, xs] = result[k, ..., ys.start - r.start:ys.stop - r.start,
                                         xs.start - c.start:xs.stop - c.start]
        batch.clear()

    for i, r, c, window in _tiles(frames, plan):
        stack[len(batch)] = window
        batch.append((i, r, c))
        if len(batch) == batch_tiles:
            flush()
    if batch:
        flush()
    assert out is not None or n == 0
    return out if out is not None else np.empty((0, *frames.shape[1:-2], h, w), dtype=np.float32)


# -- tile size from a memory budget (GPU out-of-memory retry) ---------------------------------


def tile_for_memory(budget_bytes: int, *, bytes_per_pixel: float, halo_px: int,
                    size_multiple_px: int = 1, batch_tiles: int = 1,
                    max_tile_px: int | None = None) -> int:
    """The largest square tile whose ``batch_tiles`` windows fit in ``budget_bytes``.

    ``bytes_per_pixel`` is the model's peak memory per input pixel (activations, input and
    output; for a UNet roughly 4 bytes x the widest full-resolution layer's channels x 3).
    Raises ValueError when not even the smallest tile with a core fits.
    """
    m = size_multiple_px
    side = int((budget_bytes / (bytes_per_pixel * batch_tiles)) ** 0.5)
    if max_tile_px is not None:
        side = min(side, max_tile_px)
    tile = (side // m) * m
    smallest = 2 * _round_up(halo_px, m) + m
    if tile < smallest:
        raise ValueError(f"{budget_bytes / 2**20:.0f} MiB holds no {batch_tiles} x {smallest} px "
                         f"tile at {bytes_per_pixel:g} bytes/px")
    return tile


def smaller_tile(tile_px: int, *, halo_px: int, size_multiple_px: int = 1) -> int | None:
    """The next tile size to try after running out of memory: about half the pixels of
    ``tile_px``, or None when that would leave no core inside the halo."""
    m = size_multiple_px
    tile = (int(tile_px / 2**0.5) // m) * m
    return tile if tile - 2 * _round_up(halo_px, m) >= m else None


# -- running out of memory ---------------------------------------------------------------------


def is_out_of_memory(e: BaseException) -> bool:
    """onnxruntime reports device allocation failures as plain runtime errors."""
    text = str(e).lower()
    return isinstance(e, MemoryError) or any(
        s in text for s in ("out of memory", "failed to allocate memory", "cudnn_status_alloc",
                            "cublas_status_alloc"))


def run_shrinking_on_oom(run: RunFn, frames: np.ndarray, *, tile_px: int, halo_px: int,
                         size_multiple_px: int = 1, fixed_size: bool = False,
                         batch_tiles: int = 4, name: str = "model") -> tuple[np.ndarray, int]:
    """``run_tiled``, retried with smaller tiles while the model runs out of memory.

    Returns the output and the tile size that worked (callers keep it for the next frames).
    Raises the error when it is not out-of-memory, or no smaller tile is left.
    """
    tile = tile_px
    while True:
        try:
            out = run_tiled(run, frames, tile_px=tile, halo_px=halo_px,
                            size_multiple_px=size_multiple_px, fixed_size=fixed_size,
                            batch_tiles=batch_tiles)
            return out, tile
        except Exception as e:
            smaller = None if fixed_size else smaller_tile(
                min(tile, _round_up(max(frames.shape[-2:]), size_multiple_px)), halo_px=halo_px,
                size_multiple_px=size_multiple_px)
            if not is_out_of_memory(e) or smaller is None:
                raise
            log.warning("%s: out of memory with tiles of %d px; retrying with %d px",
                        name, tile, smaller)
            tile = smaller

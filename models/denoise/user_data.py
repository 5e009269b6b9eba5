"""The user's own noisy stacks as denoiser training data, checked before any training time is spent.

``load_training_stacks(paths, patch_px, seed)`` reads TIFF / OME-TIFF / OME-Zarr stacks with
``livescope.stackio.read_stack`` (every axis before Y, X is a frame), checks each one, converts it
to camera counts (uint16 ADU: the served model takes uint16) and sets aside a held-out part for the
Noise2Void validation loss. Every problem is a ``TrainingDataError`` whose one-line message names
the file and says what to do.

Refused: unreadable files; colour / RGB samples; frames smaller than the patch; constant images;
NaN or inf; fewer than ``MIN_GREY_LEVELS`` grey levels (a mask, or floats normalised to [0, 1]);
too few pixels for ``MIN_PATCHES`` patches. Float stacks are accepted when every value rounds into
0..65535 (camera counts); negative or larger values are refused, not clipped, because clipping would
silently change the noise the model learns.

Held out: with two or more frames, a seeded choice of ``HELD_OUT_FRACTION`` of them (at least one);
with one frame, its last rows (or columns) -- ``HELD_OUT_FRACTION`` of it, at least one patch.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from livescope.stackio import Stack, StackError, read_stack

MIN_PATCHES = 8
"""Training needs at least this many non-overlapping patches in all the data together."""
MIN_GREY_LEVELS = 4
HELD_OUT_FRACTION = 0.1
UINT16_MAX = 65535


class TrainingDataError(ValueError):
    """Training data that cannot train a denoiser; the message is one line, for the user."""


@dataclass(frozen=True)
class SourceStack:
    """One input file, as read."""

    path: str
    format: str
    axes: str
    shape: tuple[int, ...]
    dtype: str
    pixel_size_um: float | None

    def describe(self) -> str:
        size = "x".join(map(str, self.shape))
        px = f", {self.pixel_size_um:g} um/px" if self.pixel_size_um else ""
        return f"{self.path} ({self.format} {self.axes} {size} {self.dtype}{px})"


@dataclass(frozen=True)
class UserTrainingData:
    train_adu: np.ndarray  # (T, H, W) uint16
    held_out_adu: np.ndarray  # (T', H', W') uint16
    sources: tuple[SourceStack, ...]
    data_hash: str  # sha256 of every file's pixels, shape and dtype, in the order given
    split: str  # how the held-out part was chosen
    # which time series (file, or tile of a file) each frame belongs to; where the held-out part was
    # not cut off in order (a single-frame model's random frames), every frame is its own series
    train_series: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    held_out_series: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def pixel_size_nm(self) -> tuple[float, float] | None:
        """(min, max) pixel size over the files, nm; None if any file does not say."""
        sizes = [s.pixel_size_um for s in self.sources]
        if not sizes or any(s is None for s in sizes):
            return None
        return round(min(sizes) * 1e3, 3), round(max(sizes) * 1e3, 3)

    def describe(self) -> str:
        t, h, w = self.train_adu.shape
        return (f"{len(self.sources)} stack(s): {'; '.join(s.describe() for s in self.sources)}; "
                f"train {t} frames of {h}x{w} px; held out: {self.split}")


def load_training_stacks(paths: list[Path], patch_px: int, seed: int = 0, context_frames: int = 1
                         ) -> UserTrainingData:
    """Read, check and split the stacks at ``paths``; raise TrainingDataError on any problem.
    ``context_frames`` > 1 (a model that sees the frames before): the stacks are time series, so
    the held-out part is the last frames, kept together (see ``split_held_out``)."""
    if not paths:
        raise TrainingDataError("no training data: give one or more --data STACK")
    digest = hashlib.sha256()
    frames, sources = [], []
    for path in paths:
        try:
            stack = read_stack(path)
        except StackError as e:
            raise TrainingDataError(str(e)) from None
        frames.append(as_counts(stack, patch_px))
        sources.append(SourceStack(str(Path(path).resolve()), stack.info.format, stack.info.axes,
                                   tuple(stack.info.shape), stack.info.dtype,
                                   stack.info.pixel_size_um))
        digest.update(f"{stack.frames.dtype.name}{stack.frames.shape}".encode())
        digest.update(np.ascontiguousarray(stack.frames).tobytes())
    patches = sum(f.shape[0] * (f.shape[1] // patch_px) * (f.shape[2] // patch_px) for f in frames)
    if patches < MIN_PATCHES:
        names = ", ".join(str(p) for p in paths)
        raise TrainingDataError(
            f"{names}: too few pixels to train on: {patches} patch(es) of {patch_px}x{patch_px} px, "
            f"need at least {MIN_PATCHES}; give more or larger frames, or a smaller --patch")
    total = sum(len(f) for f in frames)
    if context_frames > 1 and total < 2 * context_frames:
        raise TrainingDataError(f"training on frames in time (context frames, or neighbouring frames as targets) "
                                f"needs a time series of at least {2 * context_frames} frames; got {total}")
    joined, series = same_size(frames)
    train, held_out, split = split_held_out(joined, patch_px, seed, context_frames)
    if context_frames > 1:  # cut in order: the labels follow
        train_series, held_out_series = series[: len(train)], series[len(train):]
    else:
        train_series, held_out_series = np.arange(len(train)), -1 - np.arange(len(held_out))
    return UserTrainingData(train, held_out, tuple(sources), "sha256:" + digest.hexdigest(), split,
                            train_series, held_out_series)


def as_counts(stack: Stack, patch_px: int) -> np.ndarray:
    """The stack's frames as uint16 camera counts, after the checks of this module."""
    path, frames = stack.info.path, stack.frames
    if "S" in stack.info.leading_axes:
        raise TrainingDataError(f"{path}: has colour samples (axes {stack.info.axes}); save one "
                                "grey-level channel per plane")
    t, h, w = frames.shape
    if t == 0 or min(h, w) < patch_px:
        raise TrainingDataError(f"{path}: frames of {h}x{w} px are smaller than the {patch_px} px "
                                "training patch; give a smaller --patch or larger frames")
    if frames.dtype.kind == "f":
        if not np.isfinite(frames).all():
            bad = int(np.count_nonzero(~np.isfinite(frames)))
            raise TrainingDataError(f"{path}: has {bad} NaN or infinite pixel(s); remove or "
                                    "replace them before training")
        low, high = float(frames.min()), float(frames.max())
        if low < -0.5 or high >= UINT16_MAX + 0.5:
            raise TrainingDataError(
                f"{path}: float values from {low:g} to {high:g} do not fit camera counts (ADU, "
                f"0..{UINT16_MAX}); the denoiser takes uint16 counts: give the raw stack")
        frames = np.rint(frames)
    if frames.min() == frames.max():
        raise TrainingDataError(f"{path}: constant image (every pixel is {frames.flat[0]:g}); "
                                "nothing to learn from: give frames with signal and noise")
    sample = frames[:, :: max(1, h // 256), :: max(1, w // 256)]
    levels = len(np.unique(sample[: max(1, 4_000_000 // sample[0].size)]))
    if levels < MIN_GREY_LEVELS:
        raise TrainingDataError(
            f"{path}: only {levels} grey levels as camera counts (a mask, or values normalised "
            "to 0..1?); the denoiser takes raw counts: give the raw stack")
    return frames.astype(np.uint16)


def same_size(frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One (T, H, W) array, and which series each of its frames belongs to: stacks of one frame size
    are joined (a series per stack); otherwise every frame is cut into square tiles of the smallest
    frame side (the remainder at the right and bottom unused; a series per tile of a stack)."""
    if len({f.shape[1:] for f in frames}) == 1:
        return np.concatenate(frames), np.repeat(np.arange(len(frames)), [len(f) for f in frames])
    side = min(min(f.shape[1:]) for f in frames)
    tiles = [f[:, y : y + side, x : x + side]
             for f in frames
             for y in range(0, f.shape[1] - side + 1, side)
             for x in range(0, f.shape[2] - side + 1, side)]
    return np.concatenate(tiles), np.repeat(np.arange(len(tiles)), [len(t) for t in tiles])


def split_held_out(frames: np.ndarray, patch_px: int, seed: int, context_frames: int = 1
                   ) -> tuple[np.ndarray, np.ndarray, str]:
    """(train, held out, how): a seeded tenth of the frames, or the end of a single frame; for a
    model with context frames, the last tenth (at least ``context_frames``), so that held-out frames
    keep the frames before them."""
    t, h, w = frames.shape
    if context_frames > 1:
        n = max(context_frames, round(HELD_OUT_FRACTION * t))
        return frames[: t - n], frames[t - n:], f"the last {n} of {t} frames (a time series: kept in order)"
    if t >= 2:
        n = max(1, round(HELD_OUT_FRACTION * t))
        held = np.sort(np.random.default_rng(seed).choice(t, n, replace=False))
        keep = np.setdiff1d(np.arange(t), held)
        return frames[keep], frames[held], f"frame(s) {held.tolist()} of {t} (seed {seed})"
    axis, length = (1, h) if h >= w else (2, w)
    cut = length - max(patch_px, math.ceil(HELD_OUT_FRACTION * length))
    if cut < patch_px:  # MIN_PATCHES makes the longer side at least 2 patches; kept as a guard
        raise TrainingDataError(f"one frame of {h}x{w} px is too small to hold out a validation "
                                "part; give more frames")
    train, held = np.split(frames, [cut], axis=axis)
    where = "rows" if axis == 1 else "columns"
    return train, held, f"{where} {cut}..{length - 1} of the single frame"

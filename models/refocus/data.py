"""Training data for virtual refocusing (Deep-Z style): registered axial stacks of one field.

A refocusing network takes one widefield frame and a per-pixel map of dz (µm, the target focal
plane minus the input's) and gives the image at the target plane. It learns from z-stacks: a pair
is (plane z_i, dz = z_j - z_i) -> plane z_j of the same field and crop.

- `ZStack`: one field's planes, noisy (uint16 ADU) and, from the virtual microscope, noise-free.
- `sample_pairs`: a training batch; `split_fields`: hold out whole fields for validation.

Where stacks come from: the virtual microscope (`models.refocus.virtual`), or the user's files and
calibration sessions (`models.refocus.user_data`), registered (`models.refocus.registration`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from livescope.models.fields import split_by_field
from livescope.models.patches import random_crop, same_random_turn

UINT16_MAX = 65535
MIN_PLANES = 3


class RefocusDataError(ValueError):
    """Refocusing data that cannot be used; the message is one line, for the user."""


@dataclass(frozen=True)
class ZStack:
    """One field's focal planes, aligned laterally (virtual ones by construction; a file's after
    `register_stack`).

    ``field_id``: stacks with the same id image the same field (e.g. time points of one position),
    so `split_fields` keeps them together; None: a field of its own.
    """

    planes_adu: np.ndarray  # (Z, H, W) uint16, camera frames (noisy)
    clean_adu: np.ndarray | None  # (Z, H, W) float32, noise-free expectation (virtual only)
    z_um: np.ndarray  # (Z,) float64, focus positions, increasing
    pixel_size_um: float | None  # None: the file did not say (training does not need it)
    source: str  # one line: where the stack came from
    field_id: str | None = None

    def __post_init__(self) -> None:
        planes = self.planes_adu
        if planes.ndim != 3 or planes.dtype != np.uint16:
            raise ValueError(f"planes_adu must be (Z, H, W) uint16, got {planes.shape} {planes.dtype}")
        z = np.asarray(self.z_um, dtype=np.float64)
        object.__setattr__(self, "z_um", z)
        if z.shape != (planes.shape[0],):
            raise ValueError(f"z_um has {z.shape} entries for {planes.shape[0]} planes")
        if planes.shape[0] > 1 and not np.all(np.diff(z) > 0):
            raise ValueError("z_um must increase strictly")
        if self.clean_adu is not None and (self.clean_adu.shape != planes.shape
                                           or self.clean_adu.dtype != np.float32):
            raise ValueError(f"clean_adu must be float32 of {planes.shape}, got "
                             f"{self.clean_adu.shape} {self.clean_adu.dtype}")

    @property
    def n_planes(self) -> int:
        return self.planes_adu.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.planes_adu.shape[1], self.planes_adu.shape[2]

    @property
    def z_step_um(self) -> float:
        """Plane spacing (the median one, should the steps differ)."""
        return float(np.median(np.diff(self.z_um))) if self.n_planes > 1 else 0.0


# -- training batches ------------------------------------------------------------------------------


def sample_pairs(stacks: Sequence[ZStack], batch_size: int, patch_px: int, dz_max_um: float,
                 rng: np.random.Generator, target: Literal["clean", "noisy"] = "clean",
                 rotate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A batch of refocusing pairs: (inputs (B, 2, P, P), targets (B, 1, P, P)), float32.

    Input channel 0: the input plane's patch (ADU); channel 1: dz = z_target - z_input, µm, the
    same at every pixel. Target: the same field and crop at the target plane -- its noise-free
    expectation when ``target`` is "clean" and the stack has one, else the noisy plane (noise is
    independent between planes, so noisy targets train like Noise2Noise).

    Per pair: a stack uniformly, a plane offset k uniformly among those with |dz| <= ``dz_max_um``
    (so dz is uniform over the stack's steps; k = 0, the identity, included), the input plane
    uniformly among those that have a partner k away, a crop uniformly, and one of the 8 flips /
    quarter turns, the same for input and target. These assume a PSF symmetric under them, as
    defocus and spherical aberration are (rotationally); astigmatism is not: a quarter turn swaps
    its x and y focal lines, so for an astigmatic rig pass ``rotate=False`` (flips keep
    astigmatism along the axes as it is).

    With noisy targets k = 0 is left out: its target would be the input frame itself, noise and
    all, teaching the network to copy noise at dz = 0 while it learns to remove it elsewhere.
    """
    if not stacks:
        raise ValueError("no stacks to sample from")
    if target not in ("clean", "noisy"):
        raise ValueError(f"target must be 'clean' or 'noisy', got {target!r}")
    if dz_max_um < 0:
        raise ValueError(f"dz_max_um must not be negative, got {dz_max_um}")
    small = [s.source for s in stacks if min(s.frame_shape) < patch_px]
    if small:
        raise ValueError(f"{small[0]}: frames are smaller than the {patch_px} px patch")
    offsets = [_offsets(s, dz_max_um, exclude_zero=target == "noisy" or s.clean_adu is None)
               for s in stacks]
    usable = [i for i, o in enumerate(offsets) if o.size]
    if not usable:
        raise ValueError(f"no plane pairs within dz_max_um {dz_max_um:g} µm (other than identical frames)")
    inputs = np.empty((batch_size, 2, patch_px, patch_px), np.float32)
    targets = np.empty((batch_size, 1, patch_px, patch_px), np.float32)
    for b in range(batch_size):
        s = usable[rng.integers(len(usable))]
        stack = stacks[s]
        k = int(rng.choice(offsets[s]))
        i = int(rng.integers(max(0, -k), stack.n_planes - max(0, k)))
        j = i + k
        crop = random_crop(stack.frame_shape, patch_px, rng)
        source = stack.clean_adu if target == "clean" and stack.clean_adu is not None else stack.planes_adu
        a, t = same_random_turn(stack.planes_adu[i][crop], source[j][crop], rng, rotate)
        inputs[b, 0] = a
        inputs[b, 1] = stack.z_um[j] - stack.z_um[i]
        targets[b, 0] = t
    return inputs, targets


def _offsets(stack: ZStack, dz_max_um: float, exclude_zero: bool) -> np.ndarray:
    """Plane offsets k whose every pair lies within ``dz_max_um`` (a hair over, for rounding)."""
    z, n = stack.z_um, stack.n_planes
    ks = []
    for k in range(-(n - 1), n):
        i = np.arange(max(0, -k), n - max(0, k))
        if not (k == 0 and exclude_zero) and np.all(np.abs(z[i + k] - z[i]) <= dz_max_um + 1e-6):
            ks.append(k)
    return np.asarray(ks, dtype=np.int64)


def split_fields(stacks: Sequence[ZStack], fraction: float,
                 rng: np.random.Generator) -> tuple[list[ZStack], list[ZStack]]:
    """(train, held out): whole fields held out (planes of one field are too alike to validate
    on), ``fraction`` of the fields rounded, at least one while there are two or more fields, and
    never all; stacks sharing a ``field_id`` go together. With one field nothing is held out
    (`models.fields.split_by_field`)."""
    keys = [s.field_id if s.field_id is not None else f"#{i}" for i, s in enumerate(stacks)]
    return split_by_field(stacks, keys, fraction, rng)

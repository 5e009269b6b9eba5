"""What `livescope train refocus` trains on: the user's z-stacks (files or zstack sessions) or the
virtual microscope's, split into training and held-out fields, with the camera baseline, the card's
description of the data and the range it was trained for. One call per source, so the command
only parses its options and prints."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from livescope.modelcard import TrainedFor
from livescope.models.baseline import darkest_pixels_baseline_adu
from livescope.models.refocus.data import RefocusDataError, ZStack, split_fields
from livescope.models.refocus.registration import register_stacks
from livescope.models.refocus.user_data import read_stacks
from livescope.models.refocus.virtual import VirtualRefocusData, virtual_stacks

HELD_OUT_FRACTION = 1 / 3


@dataclass(frozen=True)
class RefocusTrainingData:
    train: list[ZStack]
    held_out: list[ZStack]
    baseline_adu: float
    description: str  # the card's provenance.data
    trained_for: TrainedFor
    spherical_waves: float | None  # the optics' spherical aberration, where known (virtual rig)
    target: str  # "clean" (noise-free planes exist) or "noisy"


def user_refocus_data(paths: Sequence[str | os.PathLike], *, z_step_um: float | None, dz_max_um: float,
                      baseline_adu: float | None, register: bool, seed: int,
                      report: Callable[[str], None] = lambda line: None) -> RefocusTrainingData:
    """The user's stacks, registered (lateral drift removed; ``report`` gets a line per stack) if
    ``register``; a `RefocusDataError` (one line) if fewer than 2 fields are usable or they span
    less focus than ``dz_max_um``. The baseline is the stacks' darkest 0.1 % unless given."""
    stacks = read_stacks(paths, z_step_um=z_step_um)
    if register:
        stacks, reports = register_stacks(stacks)
        for r in reports:
            report(f"registration: {r.summary()}")
    if len(stacks) < 2:
        raise RefocusDataError(f"{len(stacks)} usable z-stack(s): give at least 2 fields (one is held out to "
                               "choose the weights)")
    span = min(float(s.z_um[-1] - s.z_um[0]) for s in stacks)
    if span < dz_max_um:
        raise RefocusDataError(f"the stacks span {span:g} µm of focus, less than --dz-max {dz_max_um:g}: "
                               "lower --dz-max")
    train, held_out = split_fields(stacks, HELD_OUT_FRACTION, np.random.default_rng(seed))
    base = baseline_adu if baseline_adu is not None else darkest_pixels_baseline_adu(s.planes_adu for s in stacks)
    px = stacks[0].pixel_size_um
    return RefocusTrainingData(
        train=train, held_out=held_out, baseline_adu=base,
        description=(f"z-stacks {', '.join(str(p) for p in paths)} ({len(train)} train, "
                     f"{len(held_out)} held-out fields)"),
        trained_for=TrainedFor(pixel_size_nm=(px * 1e3,) * 2 if px else None),
        spherical_waves=None, target="noisy")


def virtual_refocus_data(seed: int) -> RefocusTrainingData:
    """Z-stacks simulated on the virtual microscope's default rig (noise-free targets)."""
    spec = VirtualRefocusData(seed=seed)
    stacks = virtual_stacks(spec)
    train, held_out = split_fields(stacks, HELD_OUT_FRACTION, np.random.default_rng(seed))
    rig = spec.rig(spec.specimens[0])
    return RefocusTrainingData(
        train=train, held_out=held_out, baseline_adu=rig.baseline_adu, description=spec.describe(),
        trained_for=TrainedFor(pixel_size_nm=(rig.pixel_size_um * 1e3,) * 2, na=(rig.na,) * 2,
                               emission_nm=(rig.emission_nm,) * 2, modalities=("widefield",)),
        spherical_waves=rig.spherical_waves, target="clean")

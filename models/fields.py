"""Holding out whole fields: the images of one field (planes of a z-stack, repeats of a position)
are too alike to validate on, so a field is either all training data or all held out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

Item = TypeVar("Item")


def split_by_field(items: Sequence[Item], field_ids: Sequence[str], fraction: float,
                   rng: np.random.Generator) -> tuple[list[Item], list[Item]]:
    """(train, held out) of ``items``, ``field_ids[i]`` naming the field of ``items[i]``:
    ``fraction`` of the fields rounded, at least one while there are two or more fields, and never
    all, chosen by ``rng``; items of one field go together. With one field nothing is held out."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    fields = list(dict.fromkeys(field_ids))
    n = len(fields)
    n_held = 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))
    held = {fields[i] for i in rng.permutation(n)[:n_held]}
    train = [item for item, key in zip(items, field_ids) if key not in held]
    held_out = [item for item, key in zip(items, field_ids) if key in held]
    return train, held_out

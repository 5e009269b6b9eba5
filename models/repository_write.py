"""Writing a new model version into a repository, atomically.

A version is built in a hidden temporary folder inside the repository root (same filesystem) and
renamed to ``<repository>/<name>/<version>`` only once ``model.onnx`` and a valid ``card.yaml``
are in it, so no reader ever sees a half-written version. A failure removes the temporary folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from livescope.modelcard import CARD_FILE, MODEL_FILE, ModelCard

INCOMING_PREFIX = ".incoming-"
"""Temporary folders start with this (hidden: repository scanners skip dot-folders)."""


def existing_versions(repository: Path, name: str) -> list[int]:
    folder = Path(repository) / name
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(repository: Path, name: str) -> int:
    """The largest existing version of ``name`` plus one (1 for a new name), counting the shipped
    models too: every repository is searched after them, so a user's version numbered like a
    shipped one would shadow it, and one numbered below would never be the newest."""
    shipped = Path(__file__).resolve().parent / "shipped"
    taken = existing_versions(repository, name) + existing_versions(shipped, name)
    return max(taken, default=0) + 1


def write_version(
    repository: Path, name: str, fill: Callable[[Path, int], ModelCard]
) -> tuple[Path, ModelCard]:
    """Create ``<repository>/<name>/<next version>/`` atomically; return its path and card.

    ``fill(folder, version)`` writes ``model.onnx`` into ``folder`` and returns the card; this
    function writes the card, checks the folder is complete, then renames it into place.
    """
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{INCOMING_PREFIX}{name}-", dir=repository))
    try:
        version = next_version(repository, name)
        card = fill(staging, version)
        if (card.name, card.version) != (name, version):
            raise ValueError(f"card says {card.ref}, expected {name}@{version}")
        card.dump(staging / CARD_FILE)
        _check_complete(staging, card)
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; a version is not
        _fsync_folder(staging)
        (repository / name).mkdir(exist_ok=True)
        target = repository / name / str(version)
        if target.exists():
            raise FileExistsError(f"{target} appeared while writing (another writer?); try again")
        os.rename(staging, target)
        _fsync_folder(repository / name)
        return target, card
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_complete(folder: Path, card: ModelCard) -> None:
    model = folder / MODEL_FILE
    if not model.is_file() or model.stat().st_size == 0:
        raise FileNotFoundError(f"{model} missing or empty: nothing was published")
    if ModelCard.load(folder / CARD_FILE) != card:
        raise ValueError(f"{folder / CARD_FILE} does not read back as the card that was written")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    for path in [*folder.iterdir(), folder]:
        if path.is_dir() and path != folder:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

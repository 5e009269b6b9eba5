"""The versioned model repository: ``<root>/<name>/<version>/model.onnx + card.yaml``.

One module for reading and writing it, used by the server (which serves versions), the trainers
(which publish them) and the CLI. Several roots are searched (the shipped models, then the
user's); a later root wins if both hold the same name@version. Nothing here loads a model: see
``livescope.server.models``.

A new version is built in a hidden temporary folder inside the repository root (same filesystem)
and renamed to ``<repository>/<name>/<version>`` only once ``model.onnx`` and a valid
``card.yaml`` are in it, so no reader ever sees a half-written version. A failure removes the
temporary folder.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from livescope.modelcard import CARD_FILE, MODEL_FILE, ModelCard

log = logging.getLogger("livescope.server")

USER_MODELS = Path.home() / ".livescope" / "models"

INCOMING_PREFIX = ".incoming-"
"""Temporary folders start with this (hidden: repository scanners skip dot-folders)."""


class UnknownModelError(LookupError):
    """A name or name@version that the repository does not hold."""


@dataclass(frozen=True)
class ModelVersion:
    card: ModelCard
    folder: Path

    @property
    def ref(self) -> str:
        return self.card.ref

    @property
    def onnx_path(self) -> Path:
        return self.folder / MODEL_FILE


def shipped_models_root() -> Path:
    """Where the shipped models are (``models/shipped`` in a source checkout, or in the installed
    package). Found by the package's location, without importing it: the core imports no part."""
    spec = importlib.util.find_spec("livescope.models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("livescope.models is not installed: the shipped models cannot be found")
    return Path(next(iter(spec.submodule_search_locations))).resolve() / "shipped"
class ModelRepository:
    def __init__(self, roots: list[Path]) -> None:
        self.roots = [Path(r).expanduser() for r in roots]
        self.problems: list[str] = []
        self._versions: dict[str, dict[int, ModelVersion]] = {}
        self.rescan()

    def rescan(self) -> None:
        versions: dict[str, dict[int, ModelVersion]] = {}
        problems: list[str] = []
        for root in self.roots:
            if not root.is_dir():
                continue
            for card_path in sorted(root.glob(f"*/*/{CARD_FILE}")):
                folder = card_path.parent
                # Staging folders (".incoming-*", written by training) are not versions yet.
                if folder.parent.name.startswith(".") or not folder.name.isdigit():
                    continue
                where = f"{folder.parent.name}/{folder.name} in {root}"
                try:
                    card = ModelCard.load(card_path)
                except (ValidationError, OSError, ValueError) as e:
                    problems.append(f"{where}: invalid card: {str(e).splitlines()[0]}")
                    continue
                if (card.name, str(card.version)) != (folder.parent.name, folder.name):
                    problems.append(f"{where}: card says {card.ref}, folder disagrees")
                    continue
                if not (folder / MODEL_FILE).is_file():
                    problems.append(f"{where}: {MODEL_FILE} missing")
                    continue
                versions.setdefault(card.name, {})[card.version] = ModelVersion(card, folder)
            for onnx_path in sorted(root.glob(f"*/*/{MODEL_FILE}")):
                folder = onnx_path.parent
                if not folder.parent.name.startswith(".") and not (folder / CARD_FILE).is_file():
                    problems.append(f"{folder.parent.name}/{folder.name} in {root}: {CARD_FILE} "
                                    "missing; a model without its card is not served")
        for p in problems:
            log.warning("model repository: %s", p)
        self._versions, self.problems = versions, problems

    def names(self) -> list[str]:
        return sorted(self._versions)

    def versions(self, name: str) -> list[ModelVersion]:
        return [self._versions[name][v] for v in sorted(self._versions.get(name, {}))]

    def default(self, name: str) -> ModelVersion | None:
        """The version served when none is named: the newest that passed the quality gate; None if
        there is no such model, or only candidates (versions that failed the gate)."""
        passed = [v for v in self.versions(name) if v.card.serves_by_default]
        return passed[-1] if passed else None

    def resolve(self, name: str, version: int | None = None) -> ModelVersion:
        """The given version, or when version is None the default: the newest that passed the
        quality gate (a candidate that failed it is served only when activated by force)."""
        have = self._versions.get(name)
        if not have:
            raise UnknownModelError(
                f"no model named {name!r} in the repository; available: {', '.join(self.names()) or 'none'}"
            )
        if version is None:
            default = self.default(name)
            if default is None:
                newest = have[max(have)].card
                raise UnknownModelError(
                    f"no version of {name!r} passed the quality gate (the newest, {newest.ref}: "
                    f"{newest.gate.reason}); `livescope models activate {newest.ref} --force` serves it anyway")
            return default
        if version not in have:
            raise UnknownModelError(
                f"{name}@{version} does not exist; versions of {name}: {sorted(have)}"
            )
        return have[version]


# -- writing ---------------------------------------------------------------------------------


def existing_versions(repository: Path, name: str) -> list[int]:
    folder = Path(repository) / name
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(repository: Path, name: str) -> int:
    """The largest existing version of ``name`` plus one (1 for a new name), counting the shipped
    models too: every repository is searched after them, so a user's version numbered like a
    shipped one would shadow it, and one numbered below would never be the newest."""
    taken = existing_versions(repository, name) + existing_versions(shipped_models_root(), name)
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

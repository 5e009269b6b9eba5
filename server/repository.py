"""The versioned model repository: ``<root>/<name>/<version>/model.onnx + card.yaml``.

Several roots are searched (the shipped models, then the user's); a later root wins if both
hold the same name@version. Nothing here loads a model: see ``livescope.server.models``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from livescope.modelcard import CARD_FILE, MODEL_FILE, ModelCard

log = logging.getLogger("livescope.server")

USER_MODELS = Path.home() / ".livescope" / "models"


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
    """Where the shipped models are, in a source checkout or an installed package."""
    import livescope.models

    return Path(livescope.models.__file__).resolve().parent / "shipped"


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

    def resolve(self, name: str, version: int | None = None) -> ModelVersion:
        """The given version, or the newest when version is None."""
        have = self._versions.get(name)
        if not have:
            raise UnknownModelError(
                f"no model named {name!r} in the repository; available: {', '.join(self.names()) or 'none'}"
            )
        if version is None:
            return have[max(have)]
        if version not in have:
            raise UnknownModelError(
                f"{name}@{version} does not exist; versions of {name}: {sorted(have)}"
            )
        return have[version]

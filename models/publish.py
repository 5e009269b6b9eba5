"""Publishing a trained model as the next version of a repository: the one path every trainer ends on.

The trainer has exported its graph to ONNX (parity-checked against torch) and scored it, and the
strongest classical method, on its held-out data. `publish_version` then scores the default
version (``compare_with``: the server's active one, or the repository's default) on the SAME
held-out data with the trainer's scorer and compares the two (`compare`), decides the quality
gate (`quality_gate`: a version that fails is written as a candidate, never served by default),
records where the version came from (`TrainingRecord` -> the card's
`Provenance`, with this code's version and the time), and writes ``model.onnx`` and ``card.yaml``
atomically (`write_version`): the whole version, or nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import livescope
from livescope.charts import line_chart
from livescope.modelcard import MODEL_FILE, ModelCard, Provenance, Task
from livescope.models import export
from livescope.models.compare import compare, quality_gate
from livescope.models.training_loop import TrainingCurve
from livescope.repository import ModelVersion, write_version

ScoreActive = Callable[[onnx.ModelProto, ModelCard], "Mapping[str, float] | None"]
"""(the active version's graph, its card) -> its metrics on the new version's held-out data, or
None where it cannot be scored there (e.g. a model of another kind)."""


@dataclass(frozen=True)
class TrainingRecord:
    """What the card's provenance says about a training run (code version and time are added)."""

    command: str  # the command that repeats it
    data: str  # what the training data was
    seed: int
    train_seconds: float
    data_hash: str = ""
    session_ids: tuple[str, ...] = ()  # calibration sessions it was trained on
    curve: TrainingCurve | None = None  # its losses: drawn next to the card (CURVE_FILE)

    def provenance(self) -> Provenance:
        return Provenance(command=self.command, code_version=livescope.__version__, data=self.data,
                          data_hash=self.data_hash, seed=self.seed,
                          trained_at=datetime.now(timezone.utc).replace(microsecond=0),
                          train_seconds=round(self.train_seconds, 1), session_ids=self.session_ids)


CURVE_FILE = "training.svg"


def curve_svg(curve: TrainingCurve, ref: str) -> str:
    """The training and held-out losses against the step, as a standalone SVG."""
    def series(points: tuple[tuple[int, float], ...]) -> tuple[np.ndarray, np.ndarray]:
        return np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)

    return line_chart({"training loss (running mean)": series(curve.train), "held-out loss": series(curve.held_out)},
                      f"step ({ref})", "loss")


def publish_version(
    repository: Path, proto: onnx.ModelProto, *, name: str, task: Task, card_fields: Mapping[str, Any],
    metrics: dict[str, float], record: TrainingRecord, compare_with: ModelVersion | None = None,
    score_active: ScoreActive | None = None, compared_metrics: Mapping[str, float] | None = None,
    classical_method: str | None = None,
) -> tuple[Path, ModelCard]:
    """Write ``proto`` as the next version of ``name`` with its card; return its folder and card.

    ``card_fields``: the card's fields other than name, version, task, provenance, metrics and
    comparison. ``metrics``: the new version's held-out metrics. With ``compare_with`` and
    ``score_active``, the card records the comparison of ``compared_metrics`` (default:
    ``metrics``) with the active version's scores on the same held-out data. ``classical_method``
    names the method whose scores ``metrics`` holds as METRIC_classical (models/compare.py)."""
    comparison = None
    if compare_with is not None and score_active is not None:
        active = score_active(onnx.load(compare_with.onnx_path), compare_with.card)
        if active is not None:
            new = metrics if compared_metrics is None else compared_metrics
            comparison = compare(task, new, compare_with.ref, active)
    gate = quality_gate(task, metrics, classical_method, comparison)

    def fill(folder: Path, version: int) -> ModelCard:
        export.save(proto, folder / MODEL_FILE)
        if record.curve is not None and record.curve.held_out:
            (folder / CURVE_FILE).write_text(curve_svg(record.curve, f"{name}@{version}"), encoding="utf-8")
        return ModelCard(name=name, version=version, task=task, **card_fields, provenance=record.provenance(),
                         metrics=metrics, comparison=comparison, gate=gate)

    return write_version(repository, name, fill)

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

from livescope.code_version import code_version
from livescope.charts import line_chart
from livescope.png import grey_png, stretched
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
    # held-out inputs (N, H, W) in the served graph's input units: each beside the new version's output
    # for it, next to the card (EXAMPLES_FILE)
    examples: np.ndarray | None = None

    def provenance(self) -> Provenance:
        return Provenance(command=self.command, code_version=code_version(), data=self.data,
                          data_hash=self.data_hash, seed=self.seed,
                          trained_at=datetime.now(timezone.utc).replace(microsecond=0),
                          train_seconds=round(self.train_seconds, 1), session_ids=self.session_ids)


CURVE_FILE = "training.svg"
EXAMPLES_FILE = "held_out.png"
EXAMPLE_GAP_PX = 4


def examples_png(proto: onnx.ModelProto, inputs: np.ndarray) -> bytes:
    """Each held-out input beside what the exported graph (the one that will be served) makes of it,
    a row each, each image stretched to its own percentiles: a grey PNG."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    dtype = {"tensor(uint16)": np.uint16, "tensor(uint8)": np.uint8}.get(spec.type, np.float32)
    outputs = session.run(None, {spec.name: np.asarray(inputs)[:, None].astype(dtype)})[0][:, 0]
    rows = []
    for x, y in zip(inputs, outputs):
        gap = np.full((x.shape[0], EXAMPLE_GAP_PX), 255, np.uint8)
        row = np.hstack([stretched(x), gap, stretched(y)])
        rows += [row, np.full((EXAMPLE_GAP_PX, row.shape[1]), 255, np.uint8)]
    return grey_png(np.vstack(rows[:-1]))


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
        if record.examples is not None and len(record.examples):
            (folder / EXAMPLES_FILE).write_bytes(examples_png(proto, record.examples))
        return ModelCard(name=name, version=version, task=task, **card_fields, provenance=record.provenance(),
                         metrics=metrics, comparison=comparison, gate=gate)

    return write_version(repository, name, fill)

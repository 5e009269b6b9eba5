"""The `identity` model: returns the frame unchanged (uint16 in, uint16 out).

It exists so transport and serving overheads can be measured, and the loop tested, on a
real onnxruntime session whose compute is negligible. Regenerate with
``python -m livescope.models.identity models/shipped``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from livescope.code_version import code_version
from livescope.modelcard import MODEL_FILE, ModelCard, Provenance, TensorSpec

# onnxruntime 1.31 reads IR <= 13; onnx 1.23 would write 14 by default.
IR_VERSION = 10
OPSET = 17


def build_identity() -> onnx.ModelProto:
    dims = ["N", 1, "H", "W"]
    raw = helper.make_tensor_value_info("raw", TensorProto.UINT16, dims)
    out = helper.make_tensor_value_info("restored", TensorProto.UINT16, dims)
    graph = helper.make_graph([helper.make_node("Identity", ["raw"], ["restored"])], "identity", [raw], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def identity_card(version: int = 1) -> ModelCard:
    return ModelCard(
        name="identity",
        version=version,
        task="identity",
        description="Returns each frame unchanged; for transport and serving benchmarks and tests.",
        inputs=(TensorSpec(name="raw", dtype="uint16", axes="NCYX"),),
        outputs=(TensorSpec(name="restored", dtype="uint16", axes="NCYX"),),
        normalisation={"kind": "none"},
        provenance=Provenance(
            command="python -m livescope.models.identity models/shipped",
            code_version=code_version(),
            data="none (no training)",
        ),
    )


def write_identity(repository: Path, version: int = 1) -> Path:
    folder = repository / "identity" / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(build_identity(), folder / MODEL_FILE)
    identity_card(version).dump(folder / "card.yaml")
    return folder


if __name__ == "__main__":
    print(write_identity(Path(sys.argv[1] if len(sys.argv) > 1 else "models/shipped")))

"""ONNX export of a served model, and the parity check that must pass before it is published.

The served contract: one input ``raw`` (uint16, [N, 1, H, W]) and one output ``restored``
(float32, [N, 1, H, W], same ADU units), with N, H and W dynamic. onnxruntime 1.31 reads ONNX IR
version <= 13 while onnx 1.23 writes IR 14, so the IR version is pinned here.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

INPUT_NAME = "raw"
OUTPUT_NAME = "restored"
OPSET = 18
IR_VERSION = 10  # ONNX 1.16's IR; opset 18 needs IR >= 8, onnxruntime 1.31 reads <= 13
PARITY_RTOL = 1e-4


class ExportError(RuntimeError):
    """The exported graph does not meet the served contract or disagrees with torch."""


def to_onnx(module: nn.Module, size_multiple_px: int) -> onnx.ModelProto:
    """Export ``module`` (uint16 [N,1,H,W] -> float32 [N,1,H,W]) with dynamic N, H, W."""
    module = module.eval()
    side = 4 * size_multiple_px
    example = torch.full((2, 1, side, side), 100, dtype=torch.int32).to(torch.uint16)
    dims = {0: torch.export.Dim("N"), 2: torch.export.Dim("H"), 3: torch.export.Dim("W")}
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # not the exporter's notes on absent torchvision ops
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                dynamic_shapes={INPUT_NAME: dims},
                verbose=False,
            )
    except Exception as error:
        raise ExportError(f"torch.onnx.export failed: {error}") from error
    finally:
        exporter_log.setLevel(level)
    proto = program.model_proto
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    # the exporter names output dims by expressions such as "4*(((H - 1)//4)) + 4"; H and W
    # are multiples of the size multiple (the card says so), where those equal H and W.
    for i, name in ((0, "N"), (2, "H"), (3, "W")):
        proto.graph.output[0].type.tensor_type.shape.dim[i].dim_param = name
    check_contract(proto)
    return proto


def check_contract(proto: onnx.ModelProto) -> None:
    """Raise ExportError unless the graph has the served input/output names, dtypes and dims."""
    onnx.checker.check_model(proto)
    graph = proto.graph
    inputs, outputs = [i.name for i in graph.input], [o.name for o in graph.output]
    if (inputs, outputs) != ([INPUT_NAME], [OUTPUT_NAME]):
        raise ExportError(
            f"graph inputs/outputs are {inputs}/{outputs}, expected ['{INPUT_NAME}']/['{OUTPUT_NAME}']"
        )
    expected = {INPUT_NAME: onnx.TensorProto.UINT16, OUTPUT_NAME: onnx.TensorProto.FLOAT}
    for value in (graph.input[0], graph.output[0]):
        tensor = value.type.tensor_type
        if tensor.elem_type != expected[value.name]:
            raise ExportError(
                f"{value.name} has ONNX dtype {onnx.TensorProto.DataType.Name(tensor.elem_type)}, "
                f"expected {onnx.TensorProto.DataType.Name(expected[value.name])}"
            )
        dims = tensor.shape.dim
        if len(dims) != 4 or dims[1].dim_value != 1:
            raise ExportError(f"{value.name} must be [N, 1, H, W], got {len(dims)} dims")
        static = [i for i in (0, 2, 3) if not dims[i].dim_param]
        if static:
            raise ExportError(f"{value.name} has static axes {static}: N, H, W must be dynamic")


def check_parity(module: nn.Module, proto: onnx.ModelProto, raw: np.ndarray) -> float:
    """Run torch and onnxruntime (CPU) on ``raw`` (uint16 [N,1,H,W]); return the relative error.

    The relative error is max |onnx - torch| / max |torch|; above PARITY_RTOL raises ExportError.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: raw})[0]
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(raw.astype(np.int32)).to(torch.uint16)).numpy()
    if got.shape != expected.shape or got.dtype != np.float32:
        raise ExportError(
            f"onnxruntime returned {got.dtype}{got.shape}, torch {expected.dtype}{expected.shape}"
        )
    error = float(np.max(np.abs(got - expected)) / max(float(np.max(np.abs(expected))), 1e-12))
    if not error <= PARITY_RTOL:  # also catches NaN
        raise ExportError(
            f"onnxruntime and torch disagree: relative error {error:.2e} > {PARITY_RTOL:.0e} "
            f"on input {raw.shape}; the model was not written"
        )
    return error


def parity_inputs(frames: np.ndarray, size_multiple_px: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Two test inputs cut from real frames: a batch of 2 square crops and one non-square crop.

    Two shapes check that N, H and W really are dynamic in the exported graph.
    """
    t, h, w = frames.shape
    m = size_multiple_px
    side = max(m, min(h, w) // 2 // m * m)
    tall, wide = max(m, h // m * m), max(m, (w // 2) // m * m)

    def crop(ch: int, cw: int) -> np.ndarray:
        i = rng.integers(t)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        return frames[i, y : y + ch, x : x + cw]

    batch = np.stack([crop(side, side), crop(side, side)])[:, None]
    single = crop(tall, wide)[None, None]
    return [np.ascontiguousarray(batch, np.uint16), np.ascontiguousarray(single, np.uint16)]


def save(proto: onnx.ModelProto, path: Path) -> None:
    onnx.save_model(proto, str(path), save_as_external_data=False)

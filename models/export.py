"""ONNX export of a served model, and the parity check that must pass before it is published.

The image models' contract: one input ``raw`` (uint16, [N, 1, H, W]) and one output ``restored``
(float32, [N, 1, H, W], same ADU units), with N, H and W dynamic. Other tasks (localisation)
export through ``export_graph`` with their own names and channels. onnxruntime 1.31 reads ONNX IR
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

from livescope.context import window_indices

INPUT_NAME = "raw"
OUTPUT_NAME = "restored"
OPSET = 18
IR_VERSION = 10  # ONNX 1.16's IR; opset 18 needs IR >= 8, onnxruntime 1.31 reads <= 13
PARITY_RTOL = 1e-4


class ExportError(RuntimeError):
    """The exported graph does not meet the served contract or disagrees with torch."""


def to_onnx(module: nn.Module, size_multiple_px: int, channels: int = 1) -> onnx.ModelProto:
    """Export an image model (uint16 [N,channels,H,W] -> float32 [N,1,H,W]) with dynamic N, H, W;
    ``channels`` > 1: a window of consecutive frames, the last the one restored."""
    side = 4 * size_multiple_px
    example = torch.full((2, channels, side, side), 100, dtype=torch.int32).to(torch.uint16)
    proto = export_graph(module, example, INPUT_NAME, OUTPUT_NAME)
    check_contract(proto, input_channels=channels)
    return proto


def export_graph(module: nn.Module, example: torch.Tensor, input_name: str, output_name: str
                 ) -> onnx.ModelProto:
    """Export ``module`` of one [N, C, H, W] input and one [N, C', H, W] output, N, H and W
    dynamic (``example`` sets C and the dtype; its H and W must be multiples of the model's
    size multiple, and the exported graph assumes inputs that are)."""
    module = module.eval()
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
                input_names=[input_name],
                output_names=[output_name],
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                dynamic_shapes=(dims,),  # positional: the forward argument may have any name
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
    return proto  # the caller's check_contract validates the graph too


def check_contract(proto: onnx.ModelProto, input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME,
                   input_channels: int = 1, output_channels: int = 1,
                   input_dtype: int = onnx.TensorProto.UINT16) -> None:
    """Raise ExportError unless the graph has the given input/output names, dtypes (output
    float32), channels and dynamic N, H, W (the defaults: the image models' contract)."""
    onnx.checker.check_model(proto)
    graph = proto.graph
    inputs, outputs = [i.name for i in graph.input], [o.name for o in graph.output]
    if (inputs, outputs) != ([input_name], [output_name]):
        raise ExportError(
            f"graph inputs/outputs are {inputs}/{outputs}, expected ['{input_name}']/['{output_name}']"
        )
    expected = {input_name: (input_dtype, input_channels),
                output_name: (onnx.TensorProto.FLOAT, output_channels)}
    for value in (graph.input[0], graph.output[0]):
        tensor = value.type.tensor_type
        dtype, channels = expected[value.name]
        if tensor.elem_type != dtype:
            raise ExportError(
                f"{value.name} has ONNX dtype {onnx.TensorProto.DataType.Name(tensor.elem_type)}, "
                f"expected {onnx.TensorProto.DataType.Name(dtype)}"
            )
        dims = tensor.shape.dim
        if len(dims) != 4 or dims[1].dim_value != channels:
            raise ExportError(f"{value.name} must be [N, {channels}, H, W], got {len(dims)} dims")
        static = [i for i in (0, 2, 3) if not dims[i].dim_param]
        if static:
            raise ExportError(f"{value.name} has static axes {static}: N, H, W must be dynamic")


def cpu_session(proto: onnx.ModelProto):
    """An onnxruntime session of ``proto`` on the CPU: what parity checks and held-out scores run."""
    import onnxruntime as ort

    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def check_parity(module: nn.Module, proto: onnx.ModelProto, x: np.ndarray,
                 input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME) -> float:
    """Run torch and onnxruntime (CPU) on ``x`` ([N,C,H,W]; uint16 for the image models); return
    the relative error max |onnx - torch| / max |torch|; above PARITY_RTOL raises ExportError."""
    session = cpu_session(proto)
    got = session.run([output_name], {input_name: x})[0]
    with torch.no_grad():
        tensor = (torch.from_numpy(x.astype(np.int32)).to(torch.uint16) if x.dtype == np.uint16
                  else torch.from_numpy(x))
        expected = module.eval()(tensor).numpy()
    if got.shape != expected.shape or got.dtype != np.float32:
        raise ExportError(
            f"onnxruntime returned {got.dtype}{got.shape}, torch {expected.dtype}{expected.shape}"
        )
    error = float(np.max(np.abs(got - expected)) / max(float(np.max(np.abs(expected))), 1e-12))
    if not error <= PARITY_RTOL:  # also catches NaN
        raise ExportError(
            f"onnxruntime and torch disagree: relative error {error:.2e} > {PARITY_RTOL:.0e} "
            f"on input {x.shape}; the model was not written"
        )
    return error


def parity_inputs(frames: np.ndarray, size_multiple_px: int, rng: np.random.Generator,
                  channels: int = 1) -> list[np.ndarray]:
    """Two test inputs cut from real frames: a batch of 2 square crops and one non-square crop,
    each (channels, h, w): the same crop of ``channels`` consecutive frames (the first repeated
    where the stack is shorter).

    Two shapes check that N, H and W really are dynamic in the exported graph.
    """
    t, h, w = frames.shape
    m = size_multiple_px
    side = max(m, min(h, w) // 2 // m * m)
    tall, wide = max(m, h // m * m), max(m, (w // 2) // m * m)

    def crop(ch: int, cw: int) -> np.ndarray:
        i = rng.integers(t)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        return frames[window_indices(i, channels), y : y + ch, x : x + cw]

    batch = np.stack([crop(side, side), crop(side, side)])
    single = crop(tall, wide)[None]
    return [np.ascontiguousarray(batch, np.uint16), np.ascontiguousarray(single, np.uint16)]


def save(proto: onnx.ModelProto, path: Path) -> None:
    onnx.save_model(proto, str(path), save_as_external_data=False)


class WeightsMismatchError(ValueError):
    """An ONNX graph does not hold the weights of the network it should initialise."""


def load_weights(module: nn.Module, proto: onnx.ModelProto, source: str) -> None:
    """Initialise ``module`` from the weights of a graph it was exported to (fine-tuning a served
    version: only the ONNX is kept). The exporter names each initializer after its parameter;
    every parameter and buffer must be found there with its shape, else nothing is changed."""
    stored = {init.name: init for init in proto.graph.initializer}
    state = module.state_dict()
    missing = [k for k in state if k not in stored]
    if missing:
        raise WeightsMismatchError(f"{source} is not this architecture: it lacks {len(missing)} of the "
                                   f"network's {len(state)} weights (e.g. {missing[0]})")
    loaded = {k: torch.from_numpy(onnx.numpy_helper.to_array(stored[k]).copy()) for k in state}
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(state[k].shape)}" for k, v in loaded.items()
             if v.shape != state[k].shape]
    if wrong:
        raise WeightsMismatchError(f"{source} is not this architecture: {wrong[0]}")
    module.load_state_dict(loaded)

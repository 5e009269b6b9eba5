"""A bioimage.io model package into the repository, so that the server serves it live:
`livescope models import PACKAGE`.

The package's ONNX weights (or, with torch installed, its TorchScript weights converted by
bioimageio.core) become ``model.onnx`` with the package's pre- and postprocessing built into the
graph, so that it takes the camera's frames as the server sends them (float32, NCYX) and gives the
package's output. Supported processing, as the spec defines it: scale_linear, zero_mean_unit_variance
(per frame: a frame's result never depends on the frames batched with it), fixed_zero_mean_unit_variance,
scale_range (percentiles, per frame), clip, sigmoid, ensure_dtype. Other steps are refused
by name. Frames larger than the tile the server picks are run in tiles; statistics of per-frame
steps are then per tile, as for any tiled run.

The card comes from the package: its name, description, licence, citation and halo. Nothing was
scored here, so the version is a candidate that failed the quality gate: it runs when named
(`livescope denoise --model NAME@V`, with a warning) or is served after `livescope models activate
NAME@V --force`. Needs the ``bioimage`` extra.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from livescope.code_version import code_version
from livescope.modelcard import ModelCard, QualityGate
from livescope.models.bioimage import default_opset
from livescope.repository import MODEL_FILE, write_version
from livescope.validation import first_line

IMPORTABLE_TASKS = ("denoise", "restore")
DEFAULT_HALO_PX = 32  # for tiling a package that declares no halo
INPUT, OUTPUT = "raw", "restored"


class ImportFailed(ValueError):
    """The package cannot be imported; the message says why, in one line."""


def import_bioimage(package: Path, repository: Path, *, name: str | None = None, task: str = "denoise",
                    command: str = "livescope models import") -> tuple[Path, ModelCard]:
    """Write ``package`` as the next version of ``name`` (default: from the package's name) in
    ``repository``; return its folder and card. Raises ImportFailed."""
    from bioimageio.spec import InvalidDescr, load_model_description

    if task not in IMPORTABLE_TASKS:
        raise ImportFailed(f"--task {task}: an imported package serves as {' or '.join(IMPORTABLE_TASKS)}")
    try:
        descr = load_model_description(package, format_version="latest")
    except Exception as e:  # a zip that is not one, a missing rdf.yaml, YAML errors: each its own type
        raise ImportFailed(f"{package}: cannot read it as a bioimage.io package ({first_line(e)})") from None
    if isinstance(descr, InvalidDescr):
        problems = "; ".join(f"{e.loc}: {e.msg}" for e in descr.validation_summary.errors[:2])
        raise ImportFailed(f"{package} is not a valid bioimage.io model: {problems}")
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise ImportFailed(f"{package} has {len(descr.inputs)} inputs and {len(descr.outputs)} outputs; "
                           "livescope serves models of one image in, one image out")
    in_order = _axis_order(descr.inputs[0], "input")
    out_order = _axis_order(descr.outputs[0], "output")
    proto = _weights(descr, package)
    graph = build_graph(proto, in_order, out_order, list(descr.inputs[0].preprocessing),
                        list(descr.outputs[0].postprocessing))
    name = name or _identifier(descr.name)
    step, tile = _sizes(descr.inputs[0])
    halo = max((getattr(a, "halo", 0) or 0 for a in descr.outputs[0].axes), default=0)
    cited = "; ".join(c.text for c in descr.cite)
    fields: dict[str, Any] = dict(
        task=task, licence=str(descr.license or "see the package"),
        description=(f"Imported from the bioimage.io package '{descr.name}' ({Path(package).name}): "
                     f"{descr.description} Cite: {cited}")[:2000],
        inputs=[{"name": INPUT, "dtype": "float32", "axes": "NCYX"}],
        outputs=[{"name": OUTPUT, "dtype": "float32", "axes": "NCYX"}],
        normalisation={"kind": "none"},
        tiling={"size_multiple_px": step, "halo_px": halo or DEFAULT_HALO_PX, "tile_px": tile},
        provenance={"command": command, "code_version": code_version(),
                    "data": f"the package's own training data (see its documentation); package {Path(package).name}"},
        metrics={},
        gate=QualityGate(passed=False, metric="none", higher_is_better=True, new_value=0.0, classical_method=None,
                         reason="imported from bioimage.io and not scored here against a classical filter; serve it "
                                "with `livescope models activate NAME@V --force`"),
    )

    def fill(folder: Path, version: int) -> ModelCard:
        onnx.save(graph, str(folder / MODEL_FILE))
        return ModelCard.model_validate({"name": name, "version": version, **fields})

    return write_version(repository, name, fill)


def _identifier(text: str) -> str:
    ident = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return ident[:40].strip("-") or "imported"


def _axis_order(tensor, which: str) -> str:
    """The package tensor's axes as letters of 'NCYX' (e.g. 'NYXC'); refuses anything else."""
    letters = {"batch": "N", "channel": "C", "y": "Y", "x": "X"}
    order = ""
    for axis in tensor.axes:
        kind = "batch" if axis.type == "batch" else "channel" if axis.type == "channel" else str(axis.id)
        if kind not in letters:
            raise ImportFailed(f"the {which} has a {axis.type} axis '{axis.id}'; livescope serves 2-D images "
                               "(batch, channel, y, x)")
        if kind == "channel" and len(axis.channel_names) != 1:
            raise ImportFailed(f"the {which} has {len(axis.channel_names)} channels; livescope serves one")
        order += letters[kind]
    if "N" not in order or not {"Y", "X"} <= set(order):
        raise ImportFailed(f"the {which}'s axes {order} lack a batch, y or x axis")
    return order


def _sizes(tensor) -> tuple[int, int | None]:
    """The size multiple and the fixed tile size (None: any) of the input's y and x axes."""
    steps, fixed = [], []
    for axis in tensor.axes:
        if str(axis.id) not in ("x", "y"):
            continue
        size = axis.size
        if isinstance(size, int):
            fixed.append(size)
        elif hasattr(size, "step"):
            steps.append(max(size.step, 1))
            if size.step == 0:
                fixed.append(size.min)
        else:
            steps.append(1)
    if fixed:
        return 1, min(fixed)
    return math.lcm(*steps) if steps else 1, None


def _weights(descr, package: Path) -> onnx.ModelProto:
    if descr.weights.onnx is not None:
        return onnx.load_from_string(descr.weights.onnx.get_reader().read())
    if descr.weights.torchscript is not None:
        import tempfile

        from bioimageio.core.weight_converters.torchscript_to_onnx import convert

        with tempfile.TemporaryDirectory() as tmp:
            convert(descr, Path(tmp) / "model.onnx")
            return onnx.load(str(Path(tmp) / "model.onnx"))
    formats = [f for f, w in descr.weights.model_dump().items() if w]
    raise ImportFailed(f"{package} has {', '.join(formats)} weights; livescope serves ONNX (or converts TorchScript)")


class _Builder:
    """Nodes and constants appended to a graph, named uniquely."""

    def __init__(self, prefix: str, opset: int) -> None:
        self.prefix, self.opset = prefix, opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, what: str) -> str:
        self._n += 1
        return f"{self.prefix}_{what}_{self._n}"

    def const(self, value: Any, dtype=np.float32) -> str:
        name = self.name("c")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def mean(self, x: str, axes: list[int]) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.const(axes, np.int64), keepdims=1)
        return self.op("ReduceMean", x, axes=axes, keepdims=1)

    def percentile(self, x: str, q: float) -> str:
        """Each frame's (axis 0) ``q``-th percentile, linear interpolation as numpy's: (N, 1, 1, 1)."""
        flat = self.op("Reshape", x, self.const([0, -1], np.int64))
        count = self.op("Gather", self.op("Shape", flat), self.const(1, np.int64))
        k = (self.op("Unsqueeze", count, self.const([0], np.int64)) if self.opset >= 13
             else self.op("Unsqueeze", count, axes=[0]))
        ordered = self.op("TopK", flat, k, largest=0, sorted=1)
        self.nodes[-1].output.append(self.name("idx"))  # TopK's indices, unused
        position = self.op("Mul", self.op("Cast", self.op("Sub", count, self.const(1, np.int64)), to=TensorProto.FLOAT),
                           self.const(q / 100.0))
        low = self.op("Floor", position)
        high = self.op("Ceil", position)
        frac = self.op("Sub", position, low)
        at_low = self.op("Gather", ordered, self.op("Cast", low, to=TensorProto.INT64), axis=1)
        at_high = self.op("Gather", ordered, self.op("Cast", high, to=TensorProto.INT64), axis=1)
        value = self.op("Add", at_low, self.op("Mul", self.op("Sub", at_high, at_low), frac))
        return self.op("Reshape", value, self.const([-1, 1, 1, 1], np.int64))


def _kw(step) -> dict:
    return step.kwargs.model_dump() if getattr(step, "kwargs", None) is not None else {}


def _scalar(value: Any, what: str) -> float:
    values = np.atleast_1d(np.asarray(value, np.float64))
    if values.size != 1:
        raise ImportFailed(f"{what} has {values.size} values (one per channel); livescope serves one channel")
    return float(values[0])


def _apply(b: _Builder, x: str, step) -> str:
    """One processing step on ``x`` (float32, NCYX)."""
    kind, kw = step.id, _kw(step)
    if kind == "ensure_dtype":  # the values that type holds, kept in float32 between the steps
        if kw["dtype"] in ("float32", "float64"):
            return x
        to = helper.np_dtype_to_tensor_dtype(np.dtype(kw["dtype"]))
        return b.op("Cast", b.op("Cast", x, to=to), to=TensorProto.FLOAT)
    if kind == "scale_linear":
        return b.op("Add", b.op("Mul", x, b.const(_scalar(kw["gain"], "scale_linear's gain"))),
                    b.const(_scalar(kw["offset"], "scale_linear's offset")))
    if kind in ("zero_mean_unit_variance", "scale_range"):
        if kind == "scale_range" and kw.get("reference_tensor"):
            raise ImportFailed("scale_range with a reference tensor is not supported")
        if kind == "zero_mean_unit_variance":
            mean = b.mean(x, [1, 2, 3])
            centred = b.op("Sub", x, mean)
            std = b.op("Sqrt", b.mean(b.op("Mul", centred, centred), [1, 2, 3]))
            return b.op("Div", centred, b.op("Add", std, b.const(kw.get("eps", 1e-6))))
        low = b.percentile(x, kw.get("min_percentile", 0.0))
        high = b.percentile(x, kw.get("max_percentile", 100.0))
        return b.op("Div", b.op("Sub", x, low), b.op("Add", b.op("Sub", high, low), b.const(kw.get("eps", 1e-6))))
    if kind == "fixed_zero_mean_unit_variance":
        mean, std = _scalar(kw["mean"], "the fixed mean"), _scalar(kw["std"], "the fixed std")
        return b.op("Div", b.op("Sub", x, b.const(mean)), b.const(std + kw.get("eps", 1e-6)))
    if kind == "clip":
        return b.op("Clip", x, b.const(kw.get("min", -np.inf) if kw.get("min") is not None else -np.inf),
                    b.const(kw.get("max") if kw.get("max") is not None else np.inf))
    if kind == "sigmoid":
        return b.op("Sigmoid", x)
    raise ImportFailed(f"the package's {kind} step is not supported (livescope builds scale_linear, "
                       "zero_mean_unit_variance, fixed_zero_mean_unit_variance, scale_range, clip, sigmoid "
                       "and ensure_dtype into the graph)")


def build_graph(model: onnx.ModelProto, in_order: str, out_order: str, pre: list, post: list) -> onnx.ModelProto:
    """``model`` behind ``pre`` and before ``post``, taking and giving float32 NCYX tensors named
    raw and restored."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    initialised = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in initialised]
    if len(inputs) != 1 or len(g.output) != 1:
        raise ImportFailed(f"the ONNX graph has {len(inputs)} inputs and {len(g.output)} outputs, not one each")
    opset = default_opset(model) or 13
    # the package's own tensor names may be ours (raw, restored): its graph's become private
    _rename(g, inputs[0].name, "package_input")
    _rename(g, g.output[0].name, "package_output")
    before, after = _Builder("livescope_pre", opset), _Builder("livescope_post", opset)
    x = INPUT
    for step in pre:
        x = _apply(before, x, step)
    elem = inputs[0].type.tensor_type.elem_type
    x = _reorder(before, x, "NCYX", in_order)
    before.nodes.append(helper.make_node("Cast", [x], [inputs[0].name], to=elem))
    y = after.op("Cast", g.output[0].name, to=TensorProto.FLOAT)
    y = _reorder(after, y, out_order, "NCYX")
    for step in post:
        y = _apply(after, y, step)
    after.nodes.append(helper.make_node("Identity", [y], [OUTPUT]))
    nodes = before.nodes + list(g.node) + after.nodes
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(before.initializers + after.initializers)
    g.input.remove(inputs[0])
    g.input.insert(0, helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 1, "H", "W"]))
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 1, "H", "W"])])
    onnx.checker.check_model(model)
    return model


def _rename(g: onnx.GraphProto, old: str, new: str) -> None:
    """Tensor ``old`` of ``g`` (an input or output, and every node's use of it) renamed ``new``."""
    for node in g.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in (*g.input, *g.output, *g.value_info):
        if value.name == old:
            value.name = new


def _reorder(b: _Builder, x: str, have: str, want: str) -> str:
    """``x`` from axes ``have`` to ``want`` (a channel axis of one added or dropped)."""
    if "C" in have and "C" not in want:
        x = b.op("Squeeze", x, b.const([have.index("C")], np.int64)) if b.opset >= 13 else \
            b.op("Squeeze", x, axes=[have.index("C")])
        have = have.replace("C", "")
    if "C" in want and "C" not in have:
        at = want.index("C")
        x = b.op("Unsqueeze", x, b.const([at], np.int64)) if b.opset >= 13 else b.op("Unsqueeze", x, axes=[at])
        have = have[:at] + "C" + have[at:]
    if have != want:
        x = b.op("Transpose", x, perm=[have.index(a) for a in want])
    return x

"""livescope models in the community's model zoo format, both ways.

- `livescope models export NAME@V OUT.zip` writes a bioimage.io package that bioimageio.spec
  validates and bioimageio.core runs, giving what livescope gives on the same frame; models that mean
  nothing to other tools are refused in one line.
- `livescope models import PACKAGE` brings a package into the repository with its pre- and
  postprocessing built into the graph: the imported graph gives what bioimageio.core gives, and a
  running server serves it live once activated (it was not scored here, so it is a candidate).

Nothing is downloaded: the packages are built here, from the shipped models or a small graph."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from bioimageio.core import predict
from bioimageio.core import test_model as bioimageio_test
from bioimageio.spec import load_model_description
from bioimageio.spec.model.v0_5 import TensorId

from livescope.client import Result, StreamClient
from livescope.server.offline import run_offline
from livescope.stackio import read_stack


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "livescope.cli", *args], capture_output=True, text=True,
                          timeout=300, check=False)


def noisy_frame(seed: int, baseline_adu: float, e_per_adu: float, size: int = 192) -> np.ndarray:
    """A camera frame (ADU) of blurred blobs at 5-80 photons, not the package's own test input."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.random((size, size)).astype(np.float32) ** 8, 2.0)
    photons = rng.poisson(5 + 75 * blobs / blobs.max())
    return np.round(photons / e_per_adu + baseline_adu).astype(np.uint16)


@pytest.mark.parametrize("model", ["denoise@3", "denoise@2"])
def test_an_exported_model_validates_and_bioimageio_core_reproduces_its_test_output(tmp_path, model):
    out = tmp_path / f"{model.replace('@', '-')}.zip"
    r = cli("models", "export", model, str(out))
    assert r.returncode == 0, r.stderr
    assert f"{model} -> {out}" in r.stdout
    summary = bioimageio_test(out)  # bioimageio.core: validates the description, runs the test input, compares
    assert summary.status == "passed", summary.format()
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
    assert {"rdf.yaml", "model.onnx", "test_input.npy", "test_output.npy", "cover.png", "README.md",
            "livescope-card.yaml"} <= names  # the card, with its provenance and metrics, travels along
    descr = load_model_description(out)
    assert descr.weights.onnx is not None and descr.license == "BSD-3-Clause" and descr.cite


def test_a_camera_agnostic_package_for_a_camera_gives_what_livescope_gives_on_the_same_frame(tmp_path):
    out = tmp_path / "denoise.zip"
    r = cli("models", "export", "denoise@3", str(out), "--baseline", "100", "--e-per-adu", "0.5")
    assert r.returncode == 0, r.stderr
    assert bioimageio_test(out).status == "passed"

    frame = noisy_frame(seed=7, baseline_adu=100.0, e_per_adu=0.5, size=320)
    tifffile.imwrite(tmp_path / "frame.tif", frame[None])
    run_offline("denoise@3", tmp_path / "frame.tif", tmp_path / "ours.ome.tif", task="denoise",
                baseline_adu=100.0, e_per_adu=0.5)
    ours = read_stack(tmp_path / "ours.ome.tif").frames[0]
    theirs = predict(model=out, inputs={TensorId("raw"): frame[None, None].astype(np.float32)})
    theirs = np.asarray(theirs.members[TensorId("restored")].data).reshape(ours.shape)
    # the same restoration, in ADU, wherever the package says its output is valid: inside the halo
    # (bioimageio.core fills the halo from padded input; livescope runs the frame whole)
    halo = load_model_description(out).outputs[0].axes[-1].halo
    inside = (slice(halo, -halo),) * 2
    np.testing.assert_allclose(theirs[inside], ours[inside], rtol=0, atol=1e-3 * float(np.ptp(ours)))


@pytest.mark.parametrize("args,words", [
    (("localise@1", "out.zip"), "localise@1 is a localise model; only image-to-image models"),
    (("denoise@2", "out.zip", "--baseline", "100", "--e-per-adu", "0.5"), "takes ADU already"),
    (("denoise@3", "out.zip", "--baseline", "100"), "give --baseline and --e-per-adu together"),
    (("denoise@3", "out.tar"), "a bioimage.io package is a .zip file"),
    (("denoise@9", "out.zip"), "denoise@9 does not exist"),
])
def test_what_cannot_be_exported_is_refused_in_one_line(tmp_path, args, words):
    model, name, *rest = args
    r = cli("models", "export", model, str(tmp_path / name), *rest)
    assert r.returncode == 2 and r.stderr.startswith("livescope: error:") and words in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not any(tmp_path.iterdir())


def test_an_existing_package_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "denoise.zip"
    out.write_bytes(b"precious")
    r = cli("models", "export", "denoise@2", str(out))
    assert r.returncode == 2 and "already exists" in r.stderr and out.read_bytes() == b"precious"
    assert cli("models", "export", "denoise@2", str(out), "--overwrite").returncode == 0
    assert bioimageio_test(out).status == "passed"


def test_a_sample_frame_becomes_the_test_input(tmp_path):
    frame = noisy_frame(seed=3, baseline_adu=100.0, e_per_adu=1.0, size=200)
    tifffile.imwrite(tmp_path / "mine.tif", frame[None])
    out = tmp_path / "denoise.zip"
    assert cli("models", "export", "denoise@2", str(out), "--sample", str(tmp_path / "mine.tif")).returncode == 0
    with zipfile.ZipFile(out) as z, z.open("test_input.npy") as f:
        test_input = np.load(f)
    assert test_input.shape == (1, 1, 200, 200)  # a multiple of the model's 4 px
    np.testing.assert_array_equal(test_input[0, 0], frame)
    assert bioimageio_test(out).status == "passed"


# -- import -----------------------------------------------------------------------------------------


def their_output(package: Path, frame: np.ndarray) -> np.ndarray:
    """bioimageio.core's prediction for one (H, W) frame, as (H, W)."""
    descr = load_model_description(package)
    tensor = descr.inputs[0]
    order = "".join({"batch": "b", "channel": "c"}.get(a.type, str(a.id)) for a in tensor.axes)
    x = frame.astype(np.dtype(tensor.data.type))
    x = x[None, None] if order == "bcyx" else x[None, :, :, None]
    out = predict(model=package, inputs={tensor.id: x})
    return np.asarray(out.members[descr.outputs[0].id].data).reshape(frame.shape)


def imported_output(folder: Path, frame: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"raw": frame.astype(np.float32)[None, None]})[0][0, 0]


def small_package(tmp_path: Path, pre: list, post: list, *, channel_last: bool = False, halo: int = 0,
                  extra_axis: bool = False, predicted: bool = True) -> Path:
    """A package built here around a tiny graph (y = 2x - 1) with the given processing steps; its
    test output is bioimageio.core's prediction (``predicted``) or else its test input."""
    import onnx
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio
    from onnx import TensorProto, helper

    dims = ["N", "H", "W", 1] if channel_last else ["N", 1, "H", "W"]
    if extra_axis:
        dims = ["N", 1, "Z", "H", "W"]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["x2"]), helper.make_node("Sub", ["x2", "one"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
         helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "tiny.onnx")
    size = bio.ParameterizedSize(min=32, step=16)
    in_id = bio.TensorId("input")
    space_in = [bio.SpaceInputAxis(id=bio.AxisId(a), size=size) for a in "yx"]
    space_out = [bio.SpaceOutputAxisWithHalo(id=bio.AxisId(a), halo=halo, size=bio.SizeReference(
        tensor_id=in_id, axis_id=bio.AxisId(a))) if halo else bio.SpaceOutputAxis(
        id=bio.AxisId(a), size=bio.SizeReference(tensor_id=in_id, axis_id=bio.AxisId(a))) for a in "yx"]
    channel = bio.ChannelAxis(channel_names=[bio.Identifier("c0")])
    z_in = [bio.SpaceInputAxis(id=bio.AxisId("z"), size=4)] if extra_axis else []
    z_out = [bio.SpaceOutputAxis(id=bio.AxisId("z"), size=4)] if extra_axis else []
    in_axes = [bio.BatchAxis(), *space_in, channel] if channel_last else [bio.BatchAxis(), channel, *z_in, *space_in]
    out_axes = [bio.BatchAxis(), *space_out, channel] if channel_last else [bio.BatchAxis(), channel, *z_out,
                                                                             *space_out]
    shape = (1, 4, 48, 48) if extra_axis else (1, 48, 48)
    x = np.random.default_rng(0).gamma(2.0, 50.0, shape).astype(np.float32)
    x = x[:, :, :, None] if channel_last else x[:, None]
    np.save(tmp_path / "in.npy", x)
    descr = bio.ModelDescr(
        name="tiny test model", description="2x - 1", authors=[bio.Author(name="tests")],
        cite=[bio.CiteEntry(text="tests", doi=bio.Doi("10.1007/978-3-319-24574-4_28"))], license=bio.LicenseId("MIT"),
        documentation=bio.FileDescr(source=_readme(tmp_path)),
        inputs=[bio.InputTensorDescr(id=in_id, axes=in_axes, test_tensor=bio.FileDescr(source=tmp_path / "in.npy"),
                                     preprocessing=pre)],
        outputs=[bio.OutputTensorDescr(id=bio.TensorId("output"), axes=out_axes,
                                       test_tensor=bio.FileDescr(source=tmp_path / "in.npy"), postprocessing=post)],
        weights=bio.WeightsDescr(onnx=bio.OnnxWeightsDescr(source=tmp_path / "tiny.onnx", opset_version=17)))
    # the test output is what bioimageio.core gives: written by saving once, predicting, saving again
    save_bioimageio_package(descr, output_path=tmp_path / "tiny.zip")
    if predicted and not extra_axis:
        np.save(tmp_path / "out.npy", _predict_raw(tmp_path / "tiny.zip", x))
        descr.outputs[0].test_tensor = bio.FileDescr(source=tmp_path / "out.npy")
        save_bioimageio_package(descr, output_path=tmp_path / "tiny.zip")
    return tmp_path / "tiny.zip"


def _readme(folder: Path) -> Path:
    (folder / "README.md").write_text("# tiny\n")
    return folder / "README.md"


def _predict_raw(package: Path, x: np.ndarray) -> np.ndarray:
    descr = load_model_description(package)
    out = predict(model=package, inputs={descr.inputs[0].id: x})
    return np.asarray(out.members[descr.outputs[0].id].data)


def test_an_exported_package_imported_back_is_served_live_with_its_processing_built_in(tmp_path, own_server):
    package = tmp_path / "denoise.zip"
    assert cli("models", "export", "denoise@3", str(package), "--baseline", "100", "--e-per-adu", "0.5").returncode == 0
    repository = tmp_path / "models"
    r = cli("models", "import", str(package), "--models", str(repository), "--name", "zoo-denoise")
    assert r.returncode == 0, r.stderr
    assert "zoo-denoise@1" in r.stdout and "--force" in r.stdout  # not scored here: a candidate
    frame = noisy_frame(seed=11, baseline_adu=100.0, e_per_adu=0.5, size=224)
    theirs = their_output(package, frame)
    ours = imported_output(repository / "zoo-denoise" / "1", frame)
    inside = (slice(72, -72),) * 2  # the package's halo
    np.testing.assert_allclose(ours[inside], theirs[inside], rtol=0, atol=1e-3 * float(np.ptp(theirs)))

    srv = own_server("--models", str(repository))
    with StreamClient(srv.frames, stream="zoo", pipeline=["zoo-denoise"]) as client:
        client.connect()
        assert client.control("activate", model="zoo-denoise@1", force=True)["active"] == "zoo-denoise@1"
        client.submit(frame)
        (outcome,) = list(client.outcomes())
    assert isinstance(outcome, Result) and outcome.header.model == "zoo-denoise@1"
    np.testing.assert_allclose(outcome.data[inside], theirs[inside], rtol=0, atol=1e-3 * float(np.ptp(theirs)))


@pytest.mark.parametrize("pre,post,channel_last", [
    ([{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["channel", "y", "x"]}}],
     [{"id": "scale_linear", "kwargs": {"gain": 3.0, "offset": 0.5}}], False),
    ([{"id": "scale_range", "kwargs": {"axes": ["channel", "y", "x"], "min_percentile": 1.0,
                                       "max_percentile": 99.8}}],
     [{"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}}, {"id": "sigmoid"}], False),
    ([{"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": 90.0, "std": 40.0}}], [], True),
], ids=["zero-mean-unit-variance", "percentile-range-clip-sigmoid", "fixed-normalisation-channel-last"])
def test_an_imported_graph_gives_what_bioimageio_core_gives(tmp_path, pre, post, channel_last):
    package = small_package(tmp_path, pre, post, channel_last=channel_last)
    assert bioimageio_test(package).status == "passed"
    repository = tmp_path / "models"
    r = cli("models", "import", str(package), "--models", str(repository))
    assert r.returncode == 0, r.stderr
    frame = np.random.default_rng(5).gamma(2.0, 60.0, (64, 80)).astype(np.float32)
    np.testing.assert_allclose(imported_output(repository / "tiny-test-model" / "1", frame),
                               their_output(package, frame), rtol=1e-4, atol=1e-4)


def test_a_package_livescope_cannot_serve_is_refused_in_one_line(tmp_path):
    for folder in ("z", "m"):
        (tmp_path / folder).mkdir()
    three_d = small_package(tmp_path / "z", [], [], extra_axis=True)
    matched = small_package(tmp_path / "m", [], [{"id": "scale_mean_variance",
                                                  "kwargs": {"reference_tensor": "input"}}], predicted=False)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    refusals = ((three_d, "livescope serves 2-D images"), (matched, "scale_mean_variance step is not supported"),
                (tmp_path / "junk.zip", "cannot read it as a bioimage.io package"))
    for package, words in refusals:
        r = cli("models", "import", str(package), "--models", str(tmp_path / "models"))
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_a_torchscript_package_is_converted_to_onnx_on_import(tmp_path):
    torch = pytest.importorskip("torch")  # the train extra's; the conversion is bioimageio.core's
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio

    class Smooth(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1) * 0.5

    torch.jit.script(Smooth()).save(str(tmp_path / "smooth.pt"))
    x = np.random.default_rng(1).gamma(2.0, 50.0, (1, 1, 48, 48)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    np.save(tmp_path / "out.npy", Smooth()(torch.from_numpy(x)).numpy())
    size = bio.ParameterizedSize(min=16, step=8)
    in_id = bio.TensorId("input")
    descr = bio.ModelDescr(
        name="smooth", description="a 3x3 mean, halved", authors=[bio.Author(name="tests")],
        cite=[bio.CiteEntry(text="tests", doi=bio.Doi("10.1007/978-3-319-24574-4_28"))], license=bio.LicenseId("MIT"),
        documentation=bio.FileDescr(source=_readme(tmp_path)),
        inputs=[bio.InputTensorDescr(id=in_id, axes=[bio.BatchAxis(), bio.ChannelAxis(
            channel_names=[bio.Identifier("c0")]), *[bio.SpaceInputAxis(id=bio.AxisId(a), size=size) for a in "yx"]],
            test_tensor=bio.FileDescr(source=tmp_path / "in.npy"))],
        outputs=[bio.OutputTensorDescr(id=bio.TensorId("output"), axes=[bio.BatchAxis(), bio.ChannelAxis(
            channel_names=[bio.Identifier("c0")]), *[bio.SpaceOutputAxis(id=bio.AxisId(a), size=bio.SizeReference(
                tensor_id=in_id, axis_id=bio.AxisId(a))) for a in "yx"]],
            test_tensor=bio.FileDescr(source=tmp_path / "out.npy"))],
        weights=bio.WeightsDescr(torchscript=bio.TorchscriptWeightsDescr(
            source=tmp_path / "smooth.pt", pytorch_version=bio.Version(torch.__version__.split("+")[0]))))
    save_bioimageio_package(descr, output_path=tmp_path / "smooth.zip")
    r = cli("models", "import", str(tmp_path / "smooth.zip"), "--models", str(tmp_path / "models"))
    assert r.returncode == 0, r.stderr
    frame = np.random.default_rng(2).gamma(2.0, 50.0, (40, 56)).astype(np.float32)
    np.testing.assert_allclose(imported_output(tmp_path / "models" / "smooth" / "1", frame),
                               their_output(tmp_path / "smooth.zip", frame), rtol=1e-4, atol=1e-3)


def test_a_version_trained_here_takes_its_training_figures_along(tmp_path):
    tifffile.imwrite(tmp_path / "cells.tif", noisy_frame(seed=1, baseline_adu=100.0, e_per_adu=1.0, size=64)[None]
                     .repeat(8, axis=0) + np.random.default_rng(0).poisson(3, (8, 64, 64)).astype(np.uint16))
    repository = tmp_path / "models"
    trained = cli("train", "denoise", "--data", str(tmp_path / "cells.tif"), "--steps", "4", "--patch", "32",
                  "--models", str(repository))
    assert "denoise@4" in trained.stdout, trained.stderr
    out = tmp_path / "mine.zip"
    r = cli("models", "export", "denoise@4", str(out), "--models", str(repository))
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(out) as z:
        assert {"training.svg", "held_out.png", "livescope-card.yaml"} <= set(z.namelist())

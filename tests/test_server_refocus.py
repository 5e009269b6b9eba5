"""The live `refocus` stage: each camera frame and its delta-z (`dz_um`, the wanted plane's focus
minus the frame's) in, the frame at that plane out (float32 ADU), exactly as the model computes it
offline; a frame without delta-z, or with one the model was not trained for, refused on arrival."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import useq
from onnx import TensorProto, helper

import livescope
from livescope.acquire.microscope import open_microscope
from livescope.acquire.run import run_acquisition
from livescope.acquire.virtual import VirtualRigConfig
from livescope.client import Refusal, Result, StreamClient
from livescope.modelcard import (
    MODEL_FILE,
    ModelCard,
    Normalisation,
    Provenance,
    RefocusSpec,
    TensorSpec,
    Tiling,
)
from livescope.models import export
from livescope.models.refocus.data import ZStack
from livescope.models.refocus.net import INPUT_NAME, OUTPUT_NAME, RefocusGraph, refocus_unet
from livescope.models.refocus.train import export_refocuser
from livescope.repository import write_version

BASELINE_ADU = 100.0
DZ_RANGE_UM = (-2.0, 2.0)
SHAPE = (24, 32)  # a multiple of the tiny UNet's size multiple (2): the graph runs it unpadded


def _provenance(what: str) -> Provenance:
    return Provenance(command="tests/test_server_refocus.py", code_version=livescope.__version__, data=what)


def _write_refocuser(folder: Path) -> None:
    """``refocus``: a depth-1 refocusing UNet with random weights (it runs; it does not refocus),
    exported through the same path as a trained one."""
    torch.manual_seed(0)
    unet = refocus_unet(depth=1, base_channels=4)
    graph = RefocusGraph(unet, baseline_adu=BASELINE_ADU, dz_scale_um=2.0)
    planes = np.random.default_rng(0).integers(100, 400, (3, *SHAPE), dtype=np.uint16)
    stack = ZStack(planes_adu=planes, clean_adu=None, z_um=np.array([0.0, 0.25, 0.5]), pixel_size_um=0.1,
                   source="random planes")
    proto = export_refocuser(graph, stack)

    def fill(version_folder: Path, version: int) -> ModelCard:
        export.save(proto, version_folder / MODEL_FILE)
        return ModelCard(
            name="refocus", version=version, task="refocus", description="untrained, for tests",
            inputs=(TensorSpec(name=INPUT_NAME, dtype="float32", axes="NCYX"),),
            outputs=(TensorSpec(name=OUTPUT_NAME, dtype="float32", axes="NCYX"),),
            normalisation=Normalisation(kind="in_graph", offset_adu=BASELINE_ADU),
            tiling=Tiling(size_multiple_px=unet.config.size_multiple_px, halo_px=unet.config.halo_px),
            refocus=RefocusSpec(dz_range_um=DZ_RANGE_UM, z_step_um=0.25),
            provenance=_provenance("none: random weights"))

    write_version(folder, "refocus", fill)


def _write_doubler(folder: Path) -> None:
    """``double``: an image stage that takes float32 (what a refocus stage gives) and doubles it."""
    dims = ["N", 1, "H", "W"]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["raw", "two"], ["restored"])], "double",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("restored", TensorProto.FLOAT, dims)],
        initializer=[helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = export.IR_VERSION
    onnx.checker.check_model(proto)

    def fill(version_folder: Path, version: int) -> ModelCard:
        export.save(proto, version_folder / MODEL_FILE)
        return ModelCard(
            name="double", version=version, task="restore", description="x 2, for tests",
            inputs=(TensorSpec(name="raw", dtype="float32", axes="NCYX"),),
            outputs=(TensorSpec(name="restored", dtype="float32", axes="NCYX"),),
            normalisation=Normalisation(kind="none"), provenance=_provenance("none"))

    write_version(folder, "double", fill)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    _write_refocuser(folder)
    _write_doubler(folder)
    return folder


@pytest.fixture(scope="module")
def offline(repository):
    """The refocusing graph run directly with onnxruntime: (H, W) frame, dz µm -> (H, W) ADU."""
    session = ort.InferenceSession(str(repository / "refocus" / "2" / MODEL_FILE),
                                   providers=["CPUExecutionProvider"])

    def refocus(frame: np.ndarray, dz_um: float) -> np.ndarray:
        x = np.stack([frame.astype(np.float32), np.full(frame.shape, dz_um, np.float32)])[None]
        return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0][0, 0]

    return refocus


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Five camera frames (ADU, baseline 100) with some structure."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    spot = 800 * np.exp(-((yy - 12) ** 2 + (xx - 15) ** 2) / 8.0)
    return (BASELINE_ADU + spot + rng.poisson(20, (5, *SHAPE))).astype(np.uint16)


def outcomes_in_order(client: StreamClient) -> list[Result | Refusal]:
    return sorted(client.outcomes(), key=lambda o: o.seq)


def test_every_frame_gets_a_float32_image_of_its_shape_with_its_dz_named_by_the_model(
        own_server, repository, frames):
    srv = own_server("--models", str(repository))
    with StreamClient(srv.frames, pipeline=["refocus"], dz_um=1.0) as client:
        client.connect()
        for z, frame in enumerate(frames):
            client.submit(frame, z_um=0.5 * z)
        results = outcomes_in_order(client)
    assert len(results) == len(frames) and all(isinstance(r, Result) for r in results), results
    for z, r in enumerate(results):
        assert r.header.stage == "refocus" and r.header.model == "refocus@2" and r.header.final
        assert r.header.kind == "image" and r.header.dtype == "float32" and r.data.shape == SHAPE
        assert r.header.dz_um == 1.0 and r.header.z_um == 0.5 * z


@pytest.mark.parametrize("dtype", ["uint16", "uint8", "float32"])
def test_the_image_is_the_models_output_on_the_frame_and_its_dz_map_and_nothing_else(
        own_server, repository, frames, offline, dtype):
    sent = (np.minimum(frames, 255) if dtype == "uint8" else frames).astype(dtype)  # ADU as sent
    srv = own_server("--models", str(repository))
    with StreamClient(srv.frames, pipeline=["refocus"], dz_um=-1.5) as client:
        client.connect()
        for frame in sent:
            client.submit(frame)
        results = outcomes_in_order(client)
    for frame, r in zip(sent, results, strict=True):
        np.testing.assert_allclose(r.data, offline(frame, -1.5), rtol=1e-5, atol=1e-3)


def test_dz_may_differ_from_frame_to_frame_of_one_stream_even_in_one_batch(
        own_server, repository, frames, offline):
    dz = [-2.0, -0.5, 0.0, 1.25, 2.0]
    srv = own_server("--models", str(repository), "--batch-wait-ms", "500")
    with StreamClient(srv.frames, pipeline=["refocus"], dz_um=0.0, max_in_flight=len(dz)) as client:
        client.connect()
        for frame, d in zip(frames, dz):
            client.submit(frame, dz_um=d)
        results = outcomes_in_order(client)
    assert [r.header.dz_um for r in results] == dz
    assert max(r.header.latency.batch_size for r in results) > 1  # mixed delta-z batched together
    for frame, d, r in zip(frames, dz, results):
        np.testing.assert_allclose(r.data, offline(frame, d), rtol=1e-5, atol=1e-3)
    # the delta-z reaches the model: the same frame moved differently differs
    assert not np.allclose(offline(frames[0], -2.0), offline(frames[0], 2.0), atol=1e-3)


@pytest.mark.parametrize("dz_um, words", [
    (None, "needs the frame's dz_um"),
    (2.5, "dz_um +2.5 µm is outside the -2 to +2 µm refocus@2 was trained for"),
    (-2.01, "dz_um -2.01 µm is outside the -2 to +2 µm refocus@2 was trained for"),
])
def test_a_frame_without_dz_or_outside_the_trained_range_is_refused_and_the_next_is_served(
        own_server, repository, frames, dz_um, words):
    srv = own_server("--models", str(repository))
    with StreamClient(srv.frames, pipeline=["refocus"]) as client:
        client.connect()
        client.submit(frames[0], dz_um=dz_um)
        client.submit(frames[1], dz_um=2.0)  # the edge of the range is in it
        refused, served = outcomes_in_order(client)
    assert isinstance(refused, Refusal) and refused.reason == "bad_header", refused
    assert words in refused.message
    assert isinstance(served, Result) and served.header.dz_um == 2.0


def test_refocus_follows_any_image_stage_and_feeds_a_stage_that_takes_float32(
        own_server, repository, frames, offline):
    srv = own_server("--models", str(repository))
    with StreamClient(srv.frames, pipeline=["identity", "refocus", "double"], dz_um=0.75) as client:
        client.connect()
        client.submit(frames[0])
        (result,) = outcomes_in_order(client)
    assert result.header.model == "double@1" and result.header.dz_um == 0.75
    np.testing.assert_allclose(result.data, 2 * offline(frames[0], 0.75), rtol=1e-5, atol=1e-3)

    with StreamClient(srv.frames, pipeline=["refocus", "identity"], dz_um=0.75) as client:
        client.connect()
        client.submit(frames[0])
        (refused,) = outcomes_in_order(client)
    assert isinstance(refused, Refusal) and refused.reason == "unknown_model"
    assert "identity@1 takes uint16 but receives float32" in refused.message


def test_an_acquisition_refocuses_every_frame_by_the_given_dz(own_server, repository):
    srv = own_server("--models", str(repository))
    core = open_microscope(rig=VirtualRigConfig(sensor_shape_px=(32, 48), seed=3))
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 3})
    summary = run_acquisition(core, seq, server=srv.frames, pipeline=("refocus",), dz_um=-1.0)
    assert summary.frames_acquired == 3 and summary.results == 3 and summary.errors == 0
    assert summary.models == ("refocus@2",)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "livescope.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_acquire_sends_dz_to_a_refocus_stage_and_refuses_it_without_one_in_one_line(own_server, repository):
    srv = own_server("--models", str(repository))
    r = cli("acquire", "--frames", "2", "--size", "32", "--server", srv.frames, "--pipeline", "refocus",
            "--dz", "0.5")
    assert r.returncode == 0, r.stderr

    r = cli("acquire", "--frames", "2", "--size", "32", "--server", srv.frames, "--pipeline", "identity",
            "--dz", "0.5")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("livescope: error:") and "--dz" in lines[0], r.stderr

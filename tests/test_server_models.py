"""The server with models from a user repository, and its queue's scheduling rules."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from livescope.client import Refusal, Result, StreamClient
from livescope.modelcard import ModelCard, Provenance, TensorSpec
from livescope.protocol import FrameHeader
from livescope.server.queue import Job, QueueFullError, WorkQueue


def write_tiling_only_model(repo):
    """uint16 -> uint16 that reshapes into 64x64 tiles: runs on 64x64 frames, raises on 8x8."""
    dims = ["N", 1, "H", "W"]
    shape = helper.make_tensor("tile", TensorProto.INT64, [4], [-1, 1, 64, 64])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["raw", "tile"], ["restored"])], "tiles",
        [helper.make_tensor_value_info("raw", TensorProto.UINT16, dims)],
        [helper.make_tensor_value_info("restored", TensorProto.UINT16, dims)], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    folder = repo / "tiles" / "1"
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")
    ModelCard(name="tiles", version=1, task="restore",
              inputs=(TensorSpec(name="raw", dtype="uint16", axes="NCYX"),),
              outputs=(TensorSpec(name="restored", dtype="uint16", axes="NCYX"),),
              normalisation={"kind": "none"},
              provenance=Provenance(command="tests", code_version="0", data="none")
              ).dump(folder / "card.yaml")


def test_a_model_failing_on_one_frame_fails_that_frame_only(own_server, tmp_path):
    write_tiling_only_model(tmp_path)
    srv = own_server("--models", str(tmp_path))
    with StreamClient(srv.frames, pipeline=["tiles"]) as c:
        c.connect()
        c.submit(np.zeros((8, 8), np.uint16))      # the model raises
        c.submit(np.full((64, 64), 2, np.uint16))  # and still serves the next frame
        bad, good = list(c.outcomes())
    assert isinstance(bad, Refusal) and bad.reason == "inference_failed"
    assert "tiles@1" in bad.message
    assert isinstance(good, Result) and good.data[0, 0] == 2


def job(stream: str, seq: int, mode: str = "lossless") -> Job:
    h = FrameHeader(stream=stream, seq=seq, shape=(2, 2), pipeline=("identity",), mode=mode)
    return Job(b"id", h, np.zeros((2, 2), np.uint16), stages=[])


def test_the_queue_keeps_each_stream_in_order_and_serves_streams_in_turn():
    q = WorkQueue(max_jobs=10)
    for j in (job("a", 0), job("a", 1), job("a", 2), job("b", 0), job("b", 1)):
        q.put(j)
    order = [(j.header.stream, j.header.seq) for j in iter(lambda: take_and_answer(q), None)]
    assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2)]


def take_and_answer(q: WorkQueue) -> Job | None:
    taken = q.take(0.01)
    if taken is not None:
        q.done([taken])
    return taken


def test_a_stream_one_worker_runs_goes_to_no_other_worker_until_that_one_is_done():
    q = WorkQueue(max_jobs=10)
    for j in (job("a", 0), job("a", 1), job("b", 0)):
        q.put(j)
    first = q.take(0.01)  # worker 1: a/0
    second = q.take(0.01)  # worker 2 gets b/0, not a/1: a is worker 1's until it answered a/0
    assert (first.header.stream, first.header.seq, second.header.stream) == ("a", 0, "b")
    assert q.take(0.01) is None
    q.done([first])
    third = q.take(0.01)
    assert (third.header.stream, third.header.seq) == ("a", 1)


def test_a_latest_frame_supersedes_the_waiting_frames_of_its_stream_only():
    q = WorkQueue(max_jobs=10)
    q.put(job("live", 0, "latest"))
    q.put(job("rec", 0))
    dropped = q.put(job("live", 1, "latest"))
    assert [(j.header.stream, j.header.seq) for j in dropped] == [("live", 0)]
    assert len(q) == 2


def test_a_full_queue_refuses_instead_of_growing():
    q = WorkQueue(max_jobs=2)
    q.put(job("a", 0))
    q.put(job("a", 1))
    with pytest.raises(QueueFullError):
        q.put(job("a", 2))


def test_a_model_with_a_fixed_input_size_serves_frames_of_any_size(own_server, tmp_path):
    from livescope.models.identity import write_identity

    folder = write_identity(tmp_path, version=2)
    card = ModelCard.load(folder / "card.yaml")
    card.model_copy(update={"tiling": card.tiling.model_copy(update={"tile_px": 64})}).dump(
        folder / "card.yaml")
    srv = own_server("--models", str(tmp_path))
    img = np.arange(100 * 150, dtype=np.uint16).reshape(100, 150)
    with StreamClient(srv.frames, pipeline=["identity@2"]) as c:
        c.connect()
        c.submit(img)
        (o,) = list(c.outcomes())
    assert isinstance(o, Result) and np.array_equal(o.data, img)


def test_frames_waiting_together_run_as_one_batch_without_reordering_a_stream(own_server):
    srv = own_server("--batch-wait-ms", "30", "--batch-max-frames", "8")
    clients = [StreamClient(srv.frames, pipeline=["identity"], max_in_flight=8, stream=f"b{i}")
               for i in range(2)]
    for c in clients:
        c.connect()
    for i in range(24):
        for c in clients:
            c.submit(np.full((32, 32), i, np.uint16))
    batch_sizes = []
    for c in clients:
        got = list(c.outcomes())
        c.close()
        assert [o.seq for o in got] == list(range(24))
        assert all(o.data[0, 0] == o.seq for o in got)
        batch_sizes += [o.header.latency.batch_size for o in got]
    # the batch policy probes a batch once frames wait; whether later batches pay on this CPU (and so
    # whether the other stream's frames join one) depends on timing, so only the probe is certain
    assert max(batch_sizes) > 1


def test_every_stage_of_a_pipeline_is_published_and_the_sender_gets_the_last(server):
    import time

    from livescope.client import ResultSubscriber

    with ResultSubscriber(server.results, streams=["two-stage"]) as sub:
        time.sleep(0.3)
        with StreamClient(server.frames, pipeline=["identity", "identity@1"],
                          stream="two-stage") as c:
            c.connect()
            c.submit(np.full((16, 16), 5, np.uint16))
            (final,) = list(c.outcomes())
        published = [sub.recv(timeout_s=5) for _ in range(2)]
    assert final.header.final and final.header.stage == "identity@1"
    assert [(r.header.stage, r.header.final) for r in published] == [
        ("identity", False), ("identity@1", True)]


def test_prometheus_metrics_count_frames_per_model(own_server):
    import urllib.request

    from livescope.launch import free_port

    port = free_port()
    srv = own_server("--metrics-port", str(port))
    with StreamClient(srv.frames, pipeline=["identity"]) as c:
        c.connect()
        for _ in range(3):
            c.submit(np.zeros((8, 8), np.uint16))
        list(c.outcomes())
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'livescope_results_total{model="identity@1"} 3.0' in text
    assert 'livescope_execution_provider{model="identity@1",provider="cpu"} 1.0' in text
    assert "livescope_queue_depth" in text and "livescope_inference_seconds_bucket" in text


def test_a_frame_too_large_for_the_device_is_run_in_smaller_tiles_and_the_size_is_kept():
    from livescope.repository import ModelRepository, shipped_models_root
    from livescope.server.models import LoadedModel

    class SmallDevice(LoadedModel):
        """The real identity session on a 'device' that holds at most 96x96 pixels per call."""

        def run(self, frames):
            if frames.shape[0] * frames.shape[1] * frames.shape[2] > 96 * 96:
                raise RuntimeError("CUDA failure 2: out of memory")
            return super().run(frames)

    version = ModelRepository([shipped_models_root()]).resolve("identity")
    real = LoadedModel.load(version)
    model = SmallDevice(real.version, real.session, real.provider, real.load_seconds)
    img = np.arange(200 * 170, dtype=np.uint16).reshape(1, 200, 170)
    assert np.array_equal(model.run_frames(img), img)
    assert model._tile_px is not None and model._tile_px <= 96
    assert np.array_equal(model.run_frames(img), img)  # straight to tiles the second time

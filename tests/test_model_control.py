"""Loading, activating and unloading model versions on a running server.

Hot-swap happens under load with no frame dropped, and every refused model leaves what was
serving in service."""

import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from livescope.client import ControlError, Result, StreamClient
from livescope.modelcard import ModelCard
from livescope.models.identity import write_identity


def control(srv, command, **args):
    with StreamClient(srv.frames) as c:
        c.connect()
        return c.control(command, timeout_s=60, **args)


def test_activating_a_new_version_under_a_running_stream_drops_no_frame(own_server, tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    srv = own_server("--models", str(repo))
    client = StreamClient(srv.frames, pipeline=["identity"], max_in_flight=4, stream="swap")
    client.connect()
    outcomes: list = []
    n = 300

    def stream():
        for i in range(n):
            client.submit(np.full((64, 64), i % 1000, np.uint16))
        outcomes.extend(client.outcomes(timeout_s=60))

    streamer = threading.Thread(target=stream)
    streamer.start()
    while client.stats.results < 50:
        threading.Event().wait(0.01)
    write_identity(repo, version=2)  # a new version appears (e.g. just trained) ...
    control(srv, "rescan")
    reply = control(srv, "activate", model="identity@2")  # ... and is swapped in under load
    streamer.join(120)
    client.close()
    assert reply == {"active": "identity@2", "previous": "identity@1"}
    assert len(outcomes) == n and all(isinstance(o, Result) for o in outcomes)
    assert client.stats.dropped == 0 and client.stats.errors == 0
    models = [o.header.model for o in outcomes]
    switch = models.index("identity@2")
    assert 0 < switch < n
    assert models == ["identity@1"] * switch + ["identity@2"] * (n - switch)  # one clean switch
    assert all(o.data[0, 0] == o.seq % 1000 for o in outcomes)


def broken_models(repo):
    """A corrupt graph, an unsupported operator, a card that disagrees, a card missing."""
    write_identity(repo, version=1)
    corrupt = repo / "corrupt" / "1"
    shutil.copytree(repo / "identity" / "1", corrupt)
    (corrupt / "model.onnx").write_bytes(b"\x08\x07 definitely not protobuf")
    card = ModelCard.load(corrupt / "card.yaml").model_copy(update={"name": "corrupt"})
    card.dump(corrupt / "card.yaml")

    import onnx
    from onnx import TensorProto, helper

    dims = ["N", 1, "H", "W"]
    g = helper.make_graph([helper.make_node("Teleport", ["raw"], ["restored"], domain="ex.ample")],
                          "custom", [helper.make_tensor_value_info("raw", TensorProto.UINT16, dims)],
                          [helper.make_tensor_value_info("restored", TensorProto.UINT16, dims)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("ex.ample", 1)])
    m.ir_version = 10
    custom = repo / "custom" / "1"
    custom.mkdir(parents=True)
    onnx.save(m, custom / "model.onnx")
    ModelCard.load(corrupt / "card.yaml").model_copy(update={"name": "custom"}).dump(
        custom / "card.yaml")

    mismatch = repo / "identity" / "2"
    shutil.copytree(repo / "identity" / "1", mismatch)
    card = ModelCard.load(mismatch / "card.yaml")
    card.model_copy(update={"version": 2, "inputs": (card.inputs[0].model_copy(
        update={"name": "pixels"}),)}).dump(mismatch / "card.yaml")

    nocard = repo / "identity" / "3"
    shutil.copytree(repo / "identity" / "1", nocard)
    (nocard / "card.yaml").unlink()


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ("corrupt@1", "cannot load"),
        ("custom@1", "cannot load"),
        ("identity@2", "card inputs ['pixels'] but graph has ['raw']"),
        ("identity@3", "does not exist"),
        ("identity@9", "does not exist"),
        ("../../etc/passwd", "not a stage name"),
        ("identity@1/../../x", "not a stage name"),
    ],
)
def test_a_model_that_cannot_serve_is_refused_and_the_active_one_stays(own_server, tmp_path,
                                                                      model, words):
    broken_models(tmp_path)
    srv = own_server("--models", str(tmp_path))
    with StreamClient(srv.frames, pipeline=["identity"]) as c:
        c.connect()
        c.submit(np.full((8, 8), 1, np.uint16))
        before = next(iter(c.outcomes())).header.model
        with pytest.raises(ControlError, match=__import__("re").escape(words)):
            c.control("activate", model=model, timeout_s=60)
        c.submit(np.full((8, 8), 2, np.uint16))
        (after,) = list(c.outcomes())
    assert isinstance(after, Result) and after.header.model == before == "identity@1"


def test_the_repository_reports_a_version_without_its_card(own_server, tmp_path):
    broken_models(tmp_path)
    srv = own_server("--models", str(tmp_path))
    problems = control(srv, "list_models")["problems"]
    assert any("identity/3" in p and "card.yaml missing" in p for p in problems)


def test_unloading_the_active_version_is_refused(server):
    with pytest.raises(ControlError, match="is active"):
        control(server, "unload", model="identity@1")


def test_the_cli_activates_and_lists_versions(own_server, tmp_path):
    write_identity(tmp_path, version=2)
    srv = own_server("--models", str(tmp_path))
    run = lambda *a: subprocess.run([sys.executable, "-m", "livescope.cli", "models", *a,
                                     "--server", srv.frames], capture_output=True, text=True,
                                    timeout=120)
    r = run("activate", "identity@1")
    assert r.returncode == 0 and "active: identity@1" in r.stdout, r.stderr
    r = run("list")
    assert "identity@2" in r.stdout and "identity@1" in r.stdout
    r = run("activate", "identity@7")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_a_broken_newest_version_does_not_take_its_stage_out_of_service(own_server, tmp_path):
    broken_models(tmp_path)  # identity@2 disagrees with its card
    srv = own_server("--models", str(tmp_path))
    data = control(srv, "list_models")
    active = [m for m in data["models"] if m["name"] == "identity" and m["active"]]
    assert [m["version"] for m in active] == [1]
    assert any("identity@2" in p for p in data["problems"])

"""The PSF estimation network live (issue 20): a ``psf`` stage reads each frame's tiles with the
stream's optics and answers with one record per tile, published like localisations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from livescope.client import Refusal, Result, StreamClient
from livescope.protocol import Objective
from livescope.psf_estimate import TILE_DTYPE

OIL = Objective(na=1.4, emission_nm=600.0, immersion_index=1.515)
SHIPPED = "psf@1"  # passed the quality gate: activated without force


def serve_psf(frames_address: str) -> None:
    with StreamClient(frames_address) as control:
        control.connect()
        control.control("activate", model=SHIPPED)


@pytest.fixture(autouse=True)
def _psf_served(request):
    if "server" in request.fixturenames:
        serve_psf(request.getfixturevalue("server").frames)


def frames_at_defocus(defocus_um: float, n: int = 1, size: int = 128) -> np.ndarray:
    from livescope.acquire.microscope import open_microscope
    from livescope.acquire.virtual import VirtualRigConfig

    core = open_microscope(rig=VirtualRigConfig(sensor_shape_px=(size, size), specimen="beads", seed=5,
                                                na=1.4, emission_nm=600.0))
    core.setPosition(defocus_um)
    return np.stack([core.snap() for _ in range(n)])


def test_a_psf_stage_answers_each_frame_with_a_record_per_tile(server):
    with StreamClient(server.frames, pipeline=["psf"], objective=OIL) as c:
        c.connect()
        for frame in (*frames_at_defocus(0.0), *frames_at_defocus(1.0)):
            c.submit(frame, pixel_size_um=0.108)
        focused, defocused = list(c.outcomes())
    for r in (focused, defocused):
        assert isinstance(r, Result) and r.header.kind == "table" and r.header.stage == "psf"
        assert r.data.dtype.names == TILE_DTYPE.names and len(r.data) == 4  # 2 x 2 tiles of 64 px
        assert sorted(zip(r.data["tile_y_px"], r.data["tile_x_px"])) == [(0, 0), (0, 64), (64, 0), (64, 64)]
        assert np.all(r.data["abs_defocus_sd_um"] > 0)
    # how well it reads the defocus is bench/psf_estimate.py's to measure, not this test's


@pytest.mark.parametrize("objective,pixel,words", [
    (None, 0.108, "needs the frame's objective"),
    (OIL, None, "needs the frame's pixel_size_um"),
])
def test_a_frame_without_the_optics_a_psf_stage_needs_is_refused_by_name(server, objective, pixel, words):
    with StreamClient(server.frames, pipeline=["psf"], objective=objective) as c:
        c.connect()
        c.submit(np.zeros((128, 128), np.uint16), pixel_size_um=pixel)
        (r,) = list(c.outcomes())
    assert isinstance(r, Refusal) and r.reason == "bad_header" and words in r.message


def test_an_objective_whose_na_reaches_its_index_is_refused_by_the_header_check(server, dealer):
    # Python cannot build one (tests/test_protocol.py); a client in another language can send one
    from livescope.protocol import PROTOCOL_VERSION, ErrorHeader, decode_header

    header = {"type": "frame", "protocol": PROTOCOL_VERSION, "stream": "oil-in-water", "seq": 0,
              "shape": [128, 128], "dtype": "uint16", "pipeline": ["psf"], "pixel_size_um": 0.108,
              "objective": {"na": 1.4, "emission_nm": 600.0, "immersion_index": 1.33}}
    sock = dealer(server.frames)
    sock.send_multipart([json.dumps(header).encode(), np.zeros((128, 128), np.uint16).tobytes()])
    answer = decode_header(sock.recv_multipart()[0])
    assert isinstance(answer, ErrorHeader) and answer.code == "bad_header" and answer.seq == 0
    assert "NA 1.4 must be below the immersion index 1.33" in answer.message


def test_a_frame_smaller_than_a_tile_and_a_psf_stage_before_another_are_refused(server):
    with StreamClient(server.frames, pipeline=["psf"], objective=OIL) as c:
        c.connect()
        c.submit(np.zeros((32, 128), np.uint16), pixel_size_um=0.1)
        (small,) = list(c.outcomes())
    assert isinstance(small, Refusal) and "64 px tiles" in small.message
    with StreamClient(server.frames, pipeline=["psf", "identity"], objective=OIL) as c:
        c.connect()
        c.submit(np.zeros((128, 128), np.uint16), pixel_size_um=0.1)
        (first,) = list(c.outcomes())
    assert isinstance(first, Refusal) and "must be the pipeline's last stage" in first.message


def test_subscribers_get_the_tile_records_as_they_get_localisations(server):
    import time

    from livescope.client import ResultSubscriber

    with ResultSubscriber(server.results, streams=["psf-watch"]) as sub:
        time.sleep(0.3)
        with StreamClient(server.frames, pipeline=["psf"], objective=OIL, stream="psf-watch") as c:
            c.connect()
            c.submit(frames_at_defocus(0.5)[0], pixel_size_um=0.108)
            (sent,) = list(c.outcomes())
        published = sub.recv(timeout_s=5)
    assert published.header.kind == "table" and published.header.stage == "psf"
    assert published.data.tobytes() == sent.data.tobytes()  # NaN where the sign is not known


def test_a_live_psf_acquisition_writes_every_frames_tiles_with_provenance(server, tmp_path):
    import csv

    from livescope.acquire.microscope import open_microscope
    from livescope.acquire.run import run_acquisition
    from livescope.acquire.virtual import VirtualRigConfig
    from livescope.provenance import Provenance
    from tests.test_acquire_channels import cli

    r = cli("acquire", "--server", server.frames, "--pipeline", "psf", "--frames", "3", "--size", "128",
            "--output", str(tmp_path / "run.ome.zarr"))
    assert r.returncode == 0, r.stderr
    assert "PSF tiles" in r.stdout and "12 in 3 frames" in r.stdout
    with open(tmp_path / "run.psf.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and [int(row["frame"]) for row in rows[::4]] == [1, 2, 3]
    assert Provenance.of_table(tmp_path / "run.psf.csv").frame_count == 3

    rig = VirtualRigConfig(sensor_shape_px=(128, 128), specimen="beads", seed=1)
    seq = __import__("useq").MDASequence(time_plan={"interval": 0, "loops": 2})
    with pytest.raises(ValueError, match="objective"):
        run_acquisition(open_microscope(rig=rig), seq, server=server.frames, pipeline=["psf"])


def test_the_optics_flags_belong_to_a_psf_pipeline_and_a_rig_must_give_them():
    from tests.test_acquire_channels import cli

    r = cli("acquire", "--frames", "2", "--na", "1.4")
    assert r.returncode == 2 and "give --pipeline psf" in r.stderr
    r = cli("acquire", "--frames", "2", "--pipeline", "psf", "--na", "1.6", "--immersion", "1.5", "--size", "128",
            "--server", "tcp://127.0.0.1:9")
    assert r.returncode == 2 and "below the immersion index" in r.stderr and "Traceback" not in r.stderr


def test_a_frame_read_beyond_the_alarm_threshold_carries_a_focus_alarm_and_counts_in_the_metrics(own_server):
    import urllib.request

    from livescope.launch import free_port

    frame = frames_at_defocus(1.0)[0]
    answers = {}
    for threshold in ("0.3", "5"):
        port = free_port()
        srv = own_server("--focus-alarm-um", threshold, "--metrics-port", str(port))
        serve_psf(srv.frames)
        with StreamClient(srv.frames, pipeline=["psf"], objective=OIL) as c:
            c.connect()
            c.submit(frame, pixel_size_um=0.108)
            (answers[threshold],) = list(c.outcomes())
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        answers[threshold + " counted"] = 'livescope_focus_alarms_total{source="psf@1"} 1.0' in metrics
    assert any(w.startswith("focus alarm") for w in answers["0.3"].header.warnings) and answers["0.3 counted"]
    assert not any("focus alarm" in w for w in answers["5"].header.warnings) and not answers["5 counted"]
    assert not any("baseline" in w for w in answers["5"].header.warnings)  # the graph scales each tile itself


def test_a_viewer_counts_psf_tables_without_taking_them_for_localisations(server):
    from livescope.view.live import LiveState

    with StreamClient(server.frames, pipeline=["psf"], objective=OIL, stream="psf-view") as c:
        c.connect()
        c.submit(frames_at_defocus(0.0)[0], pixel_size_um=0.108)
        (tiles,) = list(c.outcomes())
    state = LiveState()
    state.add(tiles)
    view = state.streams["psf-view"]
    assert view.results == 1 and view.emitters == 0 and view.tables == 0 and len(view.points_px) == 0


def test_a_psf_stage_whose_device_runs_out_of_memory_moves_to_the_cpu_and_still_answers():
    # As every other stage does (server._run_stage): a GPU that cannot hold even small tiles hands
    # the model to the CPU instead of failing every frame. The 'device' is the real psf session
    # under another provider's name that runs out of memory on every call.
    from livescope.protocol import FrameHeader
    from livescope.server.config import ServerConfig
    from livescope.server.models import LoadedModel
    from livescope.server.queue import Job
    from livescope.server.server import InferenceServer

    class FullDevice(LoadedModel):
        def run_windows(self, x, out=None):
            raise RuntimeError("CUDA failure 2: out of memory")

    srv = InferenceServer(ServerConfig(metrics_port=None))  # not started: no sockets, the worker's path only
    try:
        version = srv.repository.resolve("psf", 1)
        cpu = LoadedModel.load(version)
        srv.registry._loaded[(version.ref, 0)] = FullDevice(version, cpu.session, "cuda", 0.0,
                                                            _out_dims=cpu._out_dims)
        image = frames_at_defocus(0.5)[0]
        header = FrameHeader(stream="s", seq=0, shape=image.shape, pipeline=(SHIPPED,), pixel_size_um=0.108,
                             objective=OIL)
        model, (tiles,) = srv._psf(version, [Job(b"c", header, image, [version])], image[None], [[]])
    finally:
        srv.close()
    assert model.provider == "cpu" and srv.registry.load(version).provider == "cpu"
    assert len(tiles.rows) == (image.shape[0] // 64) * (image.shape[1] // 64)
    assert np.all(np.isfinite(tiles.rows["abs_defocus_um"]))

"""The live `localise` stage: camera frames in, one emitter table per frame out, the frames before
as context per stream, and a super-resolution render per stream published on request."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from livescope.camera import CameraCalibration
from livescope.client import ControlError, Refusal, Result, ResultSubscriber, StreamClient
from livescope.emitters import EMITTER_DTYPE, EMITTER_FIELDS, EmitterTable
from livescope.models.localise.data import LocaliseSimulation, simulate_batch
from livescope.models.localise.train import LocaliseTrainConfig, train_and_publish_localiser
from livescope.repository import ModelRepository
from livescope.server.models import LoadedModel
from livescope.server.offline_localise import localise_frames

CAMERA = CameraCalibration(baseline_adu=100.0, e_per_adu=0.5)
PIXEL_UM = 0.1


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """``loc``: a 2-step localiser (it runs; it does not localise well, so it is a candidate the
    quality gate keeps from serving by default: `serve_localisers` activates it by force).
    ``loc-eager``: the same network with thresholds at ~0, so every local maximum of its maps is
    an emitter -- tables with rows, to compare the live stage with offline localisation row by row."""
    folder = tmp_path_factory.mktemp("models")
    config = LocaliseTrainConfig(frame_channels=4, temporal_channels=4, batch_size=4, steps=2,
                                 validate_every_steps=1, held_out_samples=8, frame_px=16)
    train_and_publish_localiser(folder, name="loc", simulation=LocaliseSimulation(frame_shape_px=(16, 16)),
                                config=config, command="test")
    eager = folder / "loc-eager" / "1"
    shutil.copytree(folder / "loc" / "1", eager)
    card = yaml.safe_load((eager / "card.yaml").read_text())
    card["name"] = "loc-eager"
    card["localise"].update(threshold=1e-6, candidate_p=0.0)
    (eager / "card.yaml").write_text(yaml.safe_dump(card))
    return folder


@pytest.fixture(scope="module")
def movie() -> np.ndarray:
    """Six 24x32 camera frames (ADU) of blinking molecules."""
    batch = simulate_batch(LocaliseSimulation(frame_shape_px=(24, 32), pixel_size_nm=(100.0, 100.0)), 6,
                           np.random.default_rng(3))
    return np.ascontiguousarray(batch.frames_adu[:, -1]).astype(np.uint16)


def serve_localisers(own_server, repository: Path, *options: str):
    """A server on ``repository`` serving its two candidates (activated by force)."""
    srv = own_server("--models", str(repository), *options)
    with StreamClient(srv.frames) as control:
        control.connect()
        for ref in ("loc@1", "loc-eager@1"):
            control.control("activate", model=ref, force=True)
    return srv


def offline(repository: Path, name: str, frames_adu: np.ndarray) -> EmitterTable:
    loaded = LoadedModel.load(ModelRepository([repository]).resolve(name, 1))
    return localise_frames(loaded, CAMERA.photons(frames_adu), PIXEL_UM * 1000)


def localise_live(client: StreamClient, frames: np.ndarray) -> list[Result]:
    for frame in frames:
        client.submit(frame, pixel_size_um=PIXEL_UM)
    outcomes = list(client.outcomes())
    assert all(isinstance(o, Result) for o in outcomes), outcomes
    return sorted(outcomes, key=lambda o: o.seq)


def test_every_frame_gets_a_table_of_emitters_numbered_from_one(own_server, repository, movie):
    srv = serve_localisers(own_server, repository)
    with StreamClient(srv.frames, pipeline=["loc-eager"], camera=CAMERA) as client:
        client.connect()
        results = localise_live(client, movie)
    assert len(results) == len(movie)
    for seq, result in enumerate(results):
        assert result.header.kind == "table" and result.header.fields == EMITTER_FIELDS
        assert result.header.model == "loc-eager@1" and result.header.final
        assert result.data.dtype == EMITTER_DTYPE
        assert len(result.data) > 0 and set(result.data["frame"]) == {seq + 1}
        h, w = movie.shape[1:]
        assert np.all((result.data["x_nm"] > -100) & (result.data["x_nm"] < w * 100 + 100))


def test_live_tables_equal_offline_localisation_of_the_same_frames(own_server, repository, movie):
    """The first frame stands in for the frames before it, as offline; then each frame has its
    two predecessors as context."""
    srv = serve_localisers(own_server, repository, "--batch-wait-ms", "50")
    with StreamClient(srv.frames, pipeline=["loc-eager"], camera=CAMERA, max_in_flight=6) as client:
        client.connect()
        live = EmitterTable.concatenate([EmitterTable(np.array(r.data)) for r in localise_live(client, movie)])
    expected = offline(repository, "loc-eager", movie)
    assert len(live) == len(expected) > 0
    for name in ("frame", "x_nm", "y_nm", "photons", "x_uncertainty_nm", "probability"):
        np.testing.assert_allclose(live.rows[name], expected.rows[name], rtol=1e-4, atol=1e-3)


def test_interleaved_streams_keep_their_own_context(own_server, repository, movie):
    srv = serve_localisers(own_server, repository)
    clients = [StreamClient(srv.frames, stream=s, pipeline=["loc-eager"], camera=CAMERA) for s in "ab"]
    try:
        for c in clients:
            c.connect()
        for k in range(len(movie)):
            clients[0].submit(movie[k], pixel_size_um=PIXEL_UM)
            clients[1].submit(movie[::-1][k].copy(), pixel_size_um=PIXEL_UM)
        got = [EmitterTable.concatenate([EmitterTable(np.array(o.data)) for o in sorted(c.outcomes(),
                                                                                          key=lambda o: o.seq)])
               for c in clients]
    finally:
        for c in clients:
            c.close()
    for table, frames in zip(got, (movie, movie[::-1])):
        np.testing.assert_allclose(table.rows["x_nm"], offline(repository, "loc-eager", frames).rows["x_nm"],
                                   rtol=1e-4)


def test_an_empty_frame_gives_an_empty_table(own_server, repository):
    srv = serve_localisers(own_server, repository)
    with StreamClient(srv.frames, pipeline=["loc"], camera=CAMERA) as client:
        client.connect()
        (result,) = localise_live(client, np.full((1, 24, 32), 100, np.uint16))
    assert result.header.kind == "table" and result.header.shape == (0,) and len(result.data) == 0


@pytest.mark.parametrize("camera, pixel_size_um, pipeline, code, words", [
    (None, PIXEL_UM, ["loc"], "bad_header", "camera"),
    (CAMERA, None, ["loc"], "bad_header", "pixel_size_um"),
    (CAMERA, PIXEL_UM, ["loc", "identity"], "unknown_pipeline", "last stage"),
])
def test_a_frame_the_stage_cannot_localise_is_refused_and_the_server_keeps_serving(
        own_server, repository, movie, camera, pixel_size_um, pipeline, code, words):
    srv = serve_localisers(own_server, repository)
    with StreamClient(srv.frames, pipeline=pipeline, camera=camera) as client:
        client.connect()
        client.submit(movie[0], pixel_size_um=pixel_size_um)
        (refused,) = list(client.outcomes())
    assert isinstance(refused, Refusal) and refused.reason == code and words in refused.message
    with StreamClient(srv.frames, pipeline=["loc"], camera=CAMERA) as client:
        client.connect()
        assert len(localise_live(client, movie[:1])) == 1


def test_a_streams_render_is_published_on_request_at_the_asked_pixel_size(own_server, repository, movie):
    srv = serve_localisers(own_server, repository)
    with ResultSubscriber(srv.results, streams=["smlm"]) as sub, \
            StreamClient(srv.frames, stream="smlm", pipeline=["loc-eager"], camera=CAMERA) as client:
        client.connect()
        results = localise_live(client, movie)
        emitters = sum(len(r.data) for r in results)
        while sub.recv(timeout_s=0.5) is not None:  # the tables, also published
            pass
        info = client.control("render", stream="smlm", timeout_s=30)
        render, frc = sub.recv(timeout_s=10), sub.recv(timeout_s=2)
        assert render is not None and render.header.stage == "render"
        # the FRC curve its resolution was read on follows, where one was measured
        assert (frc is None) == (info["smlm"]["frc_pixel_nm"] is None)
        if frc is not None:
            assert frc.header.stage == "frc" and frc.header.kind == "table"
            assert frc.data.dtype.names == ("frequency_per_nm", "correlation", "smoothed", "threshold")
        h, w = movie.shape[1:]
        assert info["frames"] == len(movie) and info["pixel_nm"] == 20.0 and info["method"] == "gaussian"
        assert render.data.shape == tuple(info["shape"]) == (h * 100 // 20, w * 100 // 20)
        assert render.header.pixel_size_um == pytest.approx(0.02) and render.data.dtype == np.float32
        assert info["emitters"] + info["emitters_outside"] == emitters
        # a Gaussian render adds one per emitter, but for what falls off the field's edge
        assert info["emitters"] * 0.9 <= render.data.sum() <= info["emitters"] + 1e-3

        info = client.control("render", stream="smlm", pixel_nm=50.0, method="histogram", timeout_s=30)
        render = sub.recv(timeout_s=10)
        while sub.recv(timeout_s=1) is not None:  # its FRC curve
            pass
        assert render.data.shape == (h * 100 // 50, w * 100 // 50)
        assert render.data.sum() == info["emitters"]

        with pytest.raises(ControlError, match="no localised frames from stream 'other'"):
            client.control("render", stream="other", timeout_s=30)


def test_with_frames_enough_for_two_halves_the_frc_curve_is_published_beside_the_render(own_server, repository,
                                                                                          movie):
    srv = serve_localisers(own_server, repository)
    with ResultSubscriber(srv.results, streams=["long"]) as sub, \
            StreamClient(srv.frames, stream="long", pipeline=["loc-eager"], camera=CAMERA) as client:
        client.connect()
        localise_live(client, np.concatenate([movie] * 5))  # 30 frames: three blocks of 10
        while sub.recv(timeout_s=0.5) is not None:
            pass
        info = client.control("render", stream="long", timeout_s=30)
        render, frc = sub.recv(timeout_s=10), sub.recv(timeout_s=10)
    assert render.header.stage == "render" and frc.header.stage == "frc" and frc.header.seq == render.header.seq
    assert info["smlm"]["frc_pixel_nm"] is not None and len(frc.data) > 10
    assert np.all(np.diff(frc.data["frequency_per_nm"]) > 0) and np.all(frc.data["threshold"] == np.float32(1 / 7))
    assert np.all(np.abs(frc.data["correlation"]) <= 1.0 + 1e-6)


def test_the_render_pixel_size_is_a_server_option(own_server, repository, movie):
    srv = serve_localisers(own_server, repository, "--render-px", "40")
    with StreamClient(srv.frames, stream="s", pipeline=["loc"], camera=CAMERA) as client:
        client.connect()
        localise_live(client, movie[:2])
        assert client.control("render", stream="s", timeout_s=30)["pixel_nm"] == 40.0


"""`livescope view`: a running server's streams in napari, for real: a real server, real clients
streaming frames, napari's own viewer on a virtual display (pytest-xvfb), and a screenshot of a
live acquisition on the virtual microscope whose pixels show the specimen."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from livescope.client import StreamClient
from tests.test_server_localise import CAMERA, PIXEL_UM, movie, repository, serve_localisers  # noqa: F401
from tests.test_train_own_data import noisy_stack

napari = pytest.importorskip("napari", reason="the view extra (napari) is not installed")
if not os.environ.get("DISPLAY"):
    pytest.skip("no display: install Xvfb (pytest-xvfb starts one)", allow_module_level=True)

from livescope.view.viewer import LiveViewer, results_address  # noqa: E402


@pytest.fixture
def viewer(qtbot):
    v = napari.Viewer(show=True)
    yield v
    v.close()


def test_a_stream_is_shown_raw_beside_restored_with_its_counters_in_a_bounded_ring(viewer, qtbot, own_server):
    srv = own_server()
    live = LiveViewer(viewer, srv.frames, results=srv.results, stream="cam1", ring=3)
    try:
        frames = noisy_stack(6, 64, 64)
        with StreamClient(srv.frames, stream="cam1", pipeline=["denoise@2"]) as client:
            client.connect()
            qtbot.wait(300)  # the watch lease and the subscription reach the server
            for frame in frames:
                client.submit(frame)
            client.wait_idle()
        qtbot.waitUntil(lambda: live.shown is not None and live.shown.results == 6 and live.shown.raw_frames == 6,
                        timeout=10_000)
        raw, restored = viewer.layers["raw"], viewer.layers["restored"]
        assert raw.visible and restored.visible and not viewer.layers["localisations"].visible
        assert raw.data.shape == restored.data.shape == (3, 64, 64)  # the ring keeps the newest three
        np.testing.assert_array_equal(raw.data[-1], frames[-1])
        assert restored.data.dtype == np.float32 and not np.array_equal(restored.data[-1], frames[-1])
        low, high = restored.contrast_limits
        assert np.percentile(restored.data[-1], 1) <= high and low < high  # following the data
        labels = {key: label.text() for key, label in live.dock.labels.items()}
        assert labels["model"] == "denoise@2" and labels["results"] == "6" and labels["missed"] == "0"
        assert labels["raw frames"] == "6" and labels["latency p50"].endswith(" ms")
        assert [live.dock.selector.itemText(i) for i in range(live.dock.selector.count())] == ["cam1"]
    finally:
        live.close()


def test_localisations_are_points_and_their_render_grows(viewer, qtbot, own_server, repository, movie):  # noqa: F811
    srv = serve_localisers(own_server, repository)
    live = LiveViewer(viewer, srv.frames, results=srv.results, stream="smlm")
    try:
        with StreamClient(srv.frames, stream="smlm", pipeline=["loc-eager"], camera=CAMERA) as client:
            client.connect()
            qtbot.wait(300)
            for frame in movie:
                client.submit(frame, pixel_size_um=PIXEL_UM)
            client.wait_idle()
        qtbot.waitUntil(lambda: live.shown is not None and live.shown.tables == len(movie), timeout=10_000)
        points, render = viewer.layers["localisations"], viewer.layers["render"]
        assert points.visible and len(points.data) == live.shown.points_px.shape[0] > 0
        assert render.visible and render.data.max() > 0  # every frame's emitters drawn
        s = 20.0 / (PIXEL_UM * 1000)
        assert render.scale[0] == pytest.approx(s)  # render pixels over camera pixels
        assert render.translate[0] == pytest.approx(0.5 * s - 0.5)  # pixel centres on the camera's grid
        assert live.dock.labels["localisations"].text() == str(live.shown.emitters)
    finally:
        live.close()


def test_the_first_stream_seen_is_shown_and_another_can_be_selected(viewer, qtbot, own_server):
    srv = own_server()
    live = LiveViewer(viewer, srv.frames, results=srv.results)
    try:
        with StreamClient(srv.frames, stream="a", pipeline=["identity"]) as a, \
                StreamClient(srv.frames, stream="b", pipeline=["identity"]) as b:
            a.connect()
            b.connect()
            a.submit(np.full((16, 16), 7, np.uint16))
            qtbot.waitUntil(lambda: live.stream == "a", timeout=10_000)
            b.submit(np.full((16, 16), 9, np.uint16))
            qtbot.waitUntil(lambda: "b" in live.state.streams, timeout=10_000)
        live.dock.selector.setCurrentText("b")
        assert live.stream == "b" and viewer.layers["restored"].data[-1, 0, 0] == 9
    finally:
        live.close()


def test_the_results_address_is_the_next_port_unless_given():
    assert results_address("tcp://127.0.0.1:5760") == "tcp://127.0.0.1:5761"
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        results_address("127.0.0.1:5760")


def test_a_screenshot_of_a_live_acquisition_shows_the_specimen_raw_and_restored(tmp_path, own_server):
    import imageio.v3 as iio

    srv = own_server()
    acquisition = subprocess.Popen(
        [sys.executable, "-m", "livescope.cli", "acquire", "--frames", "400", "--size", "256", "--server",
         srv.frames, "--pipeline", "denoise"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        shot = tmp_path / "view.png"
        r = subprocess.run([sys.executable, "-m", "livescope.cli", "view", "--server", srv.frames, "--results",
                            srv.results, "--screenshot", str(shot), "--frames", "6"],
                           capture_output=True, text=True, timeout=180, check=False)
    finally:
        acquisition.terminate()
        acquisition.wait(timeout=30)
    assert r.returncode == 0, r.stderr
    assert "of denoise@3" in r.stdout  # the first stream seen: the acquisition's
    image = iio.imread(shot)[..., :3].mean(axis=2)
    left, right = image[:, : image.shape[1] // 2], image[:, image.shape[1] // 2:]
    # raw (left) is noise over the whole field; restored (right) dark background with bright filaments
    assert left[left > 0].std() > 20
    lit = right[right > 0]
    assert np.percentile(lit, 99.5) > 150 and np.median(lit) < 60


def test_without_a_display_the_view_says_so_in_one_line():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    r = subprocess.run([sys.executable, "-m", "livescope.cli", "view"], capture_output=True, text=True, timeout=60,
                       env=env, check=False)
    assert r.returncode == 2 and "no display to show napari on" in r.stderr and "Traceback" not in r.stderr


# -- the napari plugin ------------------------------------------------------------------------------


def test_a_restored_output_opens_beside_its_raw_twin_and_a_csv_as_points(viewer, tmp_path):
    import tifffile

    from livescope.server.offline import run_offline

    raw = tmp_path / "run.ome.tif"
    tifffile.imwrite(raw, noisy_stack(3, 64, 64), ome=True, metadata={
        "axes": "TYX", "PhysicalSizeX": 0.1, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.1,
        "PhysicalSizeYUnit": "µm"})
    run_offline("denoise@2", raw, tmp_path / "run.denoise.ome.zarr", task="denoise")
    layers = viewer.open(str(tmp_path / "run.denoise.ome.zarr"), plugin="livescope")
    assert [layer.name for layer in layers] == ["run.ome.tif (raw)", "run.denoise.ome.zarr (restored, denoise@2)"]
    assert all(tuple(layer.scale) == pytest.approx((1.0, 0.1, 0.1)) for layer in layers)  # in µm, aligned
    assert layers[1].metadata["livescope"]["model_runs"][0]["model"] == "denoise@2"

    csv_path = tmp_path / "locs.csv"
    csv_path.write_text('"id","frame","x [nm]","y [nm]","intensity [photon]"\n1,1,1500.0,250.0,900.0\n'
                        '2,3,100.0,3200.0,800.0\n')
    (points,) = viewer.open(str(csv_path), plugin="livescope")
    np.testing.assert_allclose(points.data, [[0, 0.25, 1.5], [2, 3.2, 0.1]], rtol=1e-6)  # frame, y, x (µm)
    # an emitter at the centre of pixel (y 2, x 15) (positions count from the image's corner) lies on
    # that pixel's centre in the image layers, not half a pixel off
    np.testing.assert_allclose(layers[1].world_to_data([0, 0.25, 1.55]), [0, 2, 15], atol=1e-6)


def test_the_plugin_leaves_what_livescope_did_not_write_to_other_readers(tmp_path):
    import tifffile

    from livescope.view.plugin import get_reader

    tifffile.imwrite(tmp_path / "plain.ome.tif", np.zeros((2, 8, 8), np.uint16), ome=True)
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert get_reader(str(tmp_path / "plain.ome.tif")) is None and get_reader(str(tmp_path / "other.csv")) is None


def test_the_run_model_widget_restores_the_selected_layer_on_a_running_server(viewer, qtbot, own_server):
    from livescope.view.plugin import run_model_widget

    srv = own_server()
    frames = noisy_stack(2, 48, 48)
    layer = viewer.add_image(frames, name="noisy")
    viewer.layers.selection.active = layer
    widget = run_model_widget(viewer)
    qtbot.addWidget(widget)
    widget.server.setText(srv.frames)
    widget.model.setText("denoise@2")
    widget.button.click()
    assert widget.status.text() == "2 frames restored by denoise@2", widget.status.text()
    restored = viewer.layers["noisy (denoise@2)"]
    assert restored.data.shape == frames.shape and restored.data.dtype == np.float32
    widget.model.setText("nosuchmodel")
    widget.button.click()
    assert "refused" in widget.status.text() and "nosuchmodel" in widget.status.text()


def test_a_server_that_is_not_there_is_a_one_line_error(tmp_path):
    from tests.conftest import free_port

    r = subprocess.run([sys.executable, "-m", "livescope.cli", "view", "--server", f"tcp://127.0.0.1:{free_port()}",
                        "--screenshot", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 2 and "no livescope server answered" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.png").exists()

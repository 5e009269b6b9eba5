"""Live single-molecule localisation: an acquisition whose pipeline ends in `localise` counts the
emitters as the tables arrive and writes them as a ThunderSTORM CSV with a super-resolution
render next to the raw data; mistakes are refused in one line before anything is acquired."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import useq

from livescope.acquire.localisations import LocalisationWriter
from livescope.acquire.results import table_paths
from livescope.client import Refusal, Result
from livescope.emitters import EMITTER_FIELDS, EmitterTable
from livescope.protocol import Latency, ResultHeader
from livescope.provenance import Provenance
from livescope.stackio import read_stack

# A 2-D model's: no z it never measured, no PSF width the network never estimates.
HEADER = '"id","frame","x [nm]","y [nm]","intensity [photon]","offset [photon]","bkgstd [photon]","uncertainty [nm]"'
HEADER_3D = ('"id","frame","x [nm]","y [nm]","z [nm]","intensity [photon]","offset [photon]","bkgstd [photon]",'
             '"uncertainty [nm]"')


def table_result(seq: int, x_nm: list[float], y_nm: list[float], z_nm: list[float] | None = None) -> Result:
    """What the server sends for one localised frame (frame = seq + 1); a 2-D model's z is 0."""
    n = len(x_nm)
    rows = EmitterTable.from_columns(frame=np.full(n, seq + 1), x_nm=np.array(x_nm), y_nm=np.array(y_nm),
                                     z_nm=np.array(z_nm if z_nm is not None else [0.0] * n),
                                     x_uncertainty_nm=np.full(n, 20.0), y_uncertainty_nm=np.full(n, 20.0)).rows
    header = ResultHeader(stream="s", seq=seq, stage="localise", model="localise@1", final=True, kind="table",
                          shape=(len(rows),), dtype="record", fields=EMITTER_FIELDS,
                          latency=Latency(queue_ms=0, inference_ms=1, total_ms=1))
    return Result(header, rows)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "livescope.cli", *args], capture_output=True, text=True,
                          timeout=300)


def assert_one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("livescope: error:"), r.stderr
    for w in words:
        assert w in lines[0]


# -- the table writer ------------------------------------------------------------------------------


def test_the_outputs_are_named_after_the_raw_data():
    assert table_paths(Path("d/run.ome.zarr"), "localise") == (Path("d/run.localise.csv"),
                                                                Path("d/run.localise.render.ome.tif"))
    assert table_paths(Path("run.ome.tiff"), "localise")[0] == Path("run.localise.csv")


def test_tables_arriving_in_any_order_are_written_by_frame_with_a_render_in_render_pixels(tmp_path):
    csv, render = tmp_path / "run.localise.csv", tmp_path / "run.localise.render.ome.tif"
    writer = LocalisationWriter(csv, render, frame_shape_px=(32, 48), pixel_size_nm=100.0, render_px_nm=20.0)
    writer.add(table_result(2, [1000.0, 2000.0], [500.0, 600.0]))
    writer.add(Refusal(1, "inference_failed", "boom"))  # a frame without a table adds nothing
    writer.add(table_result(0, [4000.0], [3000.0]))
    writer.add(table_result(3, [], []))  # an empty frame: an empty table
    assert (writer.tables, writer.emitters, writer.last_frame_emitters) == (3, 3, 0)

    assert writer.close() == (csv, render)
    assert csv.read_text().splitlines()[0] == HEADER
    table = EmitterTable.read_csv(csv)
    assert list(table["frame"]) == [1, 3, 3] and list(table["x_nm"]) == [4000.0, 1000.0, 2000.0]
    image = read_stack(render)
    assert image.frames.shape == (1, 32 * 100 // 20, 48 * 100 // 20)
    assert image.info.pixel_size_um == pytest.approx(0.02)
    assert image.frames.sum() == pytest.approx(3.0, rel=1e-4)  # a unit Gaussian per emitter


def test_a_3d_models_tables_keep_their_z_and_a_2d_models_have_none(tmp_path):
    """Told by the card: z is written for a 3-D model, even an emitter's exact 0, and never for a 2-D one."""
    for three_d, header in ((True, HEADER_3D), (False, HEADER)):
        writer = LocalisationWriter(tmp_path / f"{three_d}.csv", three_d=three_d)
        writer.add(table_result(0, [100.0, 200.0], [100.0, 100.0], [-350.5, 0.0]))
        writer.close()
        assert (tmp_path / f"{three_d}.csv").read_text().splitlines()[0] == header
    np.testing.assert_allclose(EmitterTable.read_csv(tmp_path / "True.csv")["z_nm"], [-350.5, 0.0])


def test_without_the_card_the_z_a_2d_network_sets_to_0_is_left_out_and_a_3d_ones_kept(tmp_path):
    """The live client is told only the model's name@version; livescope's 2-D networks give z = 0 exactly."""
    flat, deep = LocalisationWriter(tmp_path / "2d.csv"), LocalisationWriter(tmp_path / "3d.csv")
    for writer, z in ((flat, [0.0, 0.0]), (deep, [412.25, -80.0])):
        writer.add(table_result(0, [100.0, 200.0], [100.0, 100.0], z))
        writer.add(table_result(1, [], []))
        writer.close()
    assert (tmp_path / "2d.csv").read_text().splitlines()[0] == HEADER
    assert (tmp_path / "3d.csv").read_text().splitlines()[0] == HEADER_3D
    np.testing.assert_allclose(EmitterTable.read_csv(tmp_path / "3d.csv")["z_nm"], [412.25, -80.0])


def test_without_an_output_the_tables_are_only_counted():
    writer = LocalisationWriter()
    assert writer.add(table_result(0, [100.0, 200.0], [100.0, 100.0])) == 2
    assert writer.emitters == 2 and writer.close() == ()


def test_an_acquisition_where_no_frame_was_localised_writes_no_table(tmp_path):
    writer = LocalisationWriter(tmp_path / "t.csv", tmp_path / "t.ome.tif", frame_shape_px=(8, 8),
                                pixel_size_nm=100.0)
    writer.add(Refusal(0, "inference_failed", "boom"))
    assert writer.close() == () and not (tmp_path / "t.csv").exists()


def test_a_localise_pipeline_without_the_camera_calibration_is_refused_before_acquiring():
    from livescope.acquire.microscope import open_microscope
    from livescope.acquire.run import run_acquisition
    from livescope.acquire.virtual import VirtualRigConfig
    from livescope.launch import free_port

    core = open_microscope(rig=VirtualRigConfig(sensor_shape_px=(32, 32), specimen="smlm"))
    with pytest.raises(ValueError, match="calibration"):
        run_acquisition(core, useq.MDASequence(time_plan={"interval": 0, "loops": 2}),
                        server=f"tcp://127.0.0.1:{free_port()}", pipeline=("localise",))


# -- the CLI refuses mistakes before acquiring --------------------------------------------------


def test_an_existing_emitter_table_is_not_overwritten_without_overwrite(tmp_path):
    (tmp_path / "run.localise.csv").write_text("precious")
    r = cli("acquire", "--specimen", "smlm", "--size", "32", "--frames", "2", "--pipeline", "localise",
            "--output", str(tmp_path / "run.ome.zarr"))
    assert_one_line_error(r, "run.localise.csv", "--overwrite")
    assert (tmp_path / "run.localise.csv").read_text() == "precious"
    assert not (tmp_path / "run.ome.zarr").exists()


@pytest.mark.parametrize("option", [("--e-per-adu", "0"), ("--em-gain", "0.5"), ("--render-px", "-1")])
def test_a_nonsensical_calibration_or_render_pixel_is_refused(option):
    assert_one_line_error(cli("acquire", "--frames", "2", "--pipeline", "localise", *option), option[0])


# -- live, on a real server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """A localisation model from a 2-step training run: it runs, it does not localise well."""
    from livescope.models.localise.data import LocaliseSimulation
    from livescope.models.localise.train import LocaliseTrainConfig, train_and_publish_localiser

    folder = tmp_path_factory.mktemp("models")
    config = LocaliseTrainConfig(frame_channels=4, temporal_channels=4, batch_size=4, steps=2,
                                 validate_every_steps=1, held_out_samples=8, frame_px=16)
    train_and_publish_localiser(folder, name="localise", simulation=LocaliseSimulation(frame_shape_px=(16, 16)),
                                config=config, command="test")
    return folder


def test_every_frame_of_a_live_localisation_is_accounted_for_and_its_emitters_written(
        own_server, repository, tmp_path):
    from livescope.acquire.microscope import open_microscope
    from livescope.acquire.run import run_acquisition
    from livescope.acquire.virtual import VirtualRigConfig
    from livescope.camera import CameraCalibration

    srv = own_server("--models", str(repository))
    rig = VirtualRigConfig(sensor_shape_px=(64, 64), specimen="smlm", seed=2)
    cam = rig.camera
    seen = []
    summary = run_acquisition(
        open_microscope(rig=rig), useq.MDASequence(time_plan={"interval": 0, "loops": 6}), server=srv.frames,
        pipeline=("localise",), output=tmp_path / "run.ome.zarr", render_px_nm=20.0, progress=seen.append,
        camera=CameraCalibration(baseline_adu=cam.baseline_adu, e_per_adu=cam.e_per_adu, em_gain=cam.em_gain))
    assert summary.frames_acquired == 6
    assert summary.results + summary.errors + summary.dropped == summary.frames_acquired
    assert summary.results == summary.tables == 6, summary.refusal_reasons
    assert summary.table_path == str(tmp_path / "run.localise.csv")
    assert summary.render_path == str(tmp_path / "run.localise.render.ome.tif")
    assert summary.restored_path is None
    table = EmitterTable.read_csv(tmp_path / "run.localise.csv")
    assert len(table) == summary.emitters == seen[-1].emitters
    assert set(table["frame"]) <= set(range(1, 7))
    assert np.all((table["x_nm"] >= 0) & (table["x_nm"] < 64 * 6500 / 60))
    render = read_stack(tmp_path / "run.localise.render.ome.tif")
    assert render.info.pixel_size_um == pytest.approx(0.02)
    made = Provenance.of_table(tmp_path / "run.localise.csv")  # what localised each frame, beside the table
    assert made.source == str(tmp_path / "run.ome.zarr") and made.frame_count == 6
    (served,) = summary.models  # the localiser the server ran
    assert made.frames_without_result == () and {made.model_of(i) for i in range(6)} == {served}
    assert render.info.provenance.model_of(0) == served


def test_the_cli_localises_live_and_writes_the_table_and_render_next_to_the_raw_data(
        own_server, repository, tmp_path):
    srv = own_server("--models", str(repository))
    out = tmp_path / "run.ome.zarr"
    args = ("acquire", "--specimen", "smlm", "--size", "64", "--frames", "6", "--pipeline", "localise",
            "--server", srv.frames, "--render-px", "25", "--output", str(out))
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert "emitters" in r.stdout and "in 6 frames" in r.stdout
    assert (tmp_path / "run.localise.csv").read_text().splitlines()[0] == HEADER
    render = read_stack(tmp_path / "run.localise.render.ome.tif")
    assert render.info.pixel_size_um == pytest.approx(0.025)
    side = math.ceil(64 * 6500 / 60 / 25)  # render pixels over the 64 camera pixels of 108.3 nm
    assert render.frames.shape == (1, side, side)

    kept = (tmp_path / "run.localise.csv").read_text()
    (tmp_path / "run.ome.zarr").rename(tmp_path / "moved.ome.zarr")  # only the table is in the way now
    assert_one_line_error(cli(*args), "run.localise.csv", "--overwrite")
    assert (tmp_path / "run.localise.csv").read_text() == kept
    assert cli(*args, "--overwrite").returncode == 0

"""`livescope denoise|refocus IN.ome.zarr OUT.ome.zarr --dask ...`: the single-process result, computed chunk by
chunk on a Dask cluster's worker processes, written by the workers, described the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from distributed import Client, LocalCluster
from typer.testing import CliRunner

from livescope.cli import app
from livescope.server import offline_dask
from livescope.server.offline import OfflineError, run_offline
from livescope.server.offline_dask import run_offline_dask, run_refocus_dask
from livescope.server.offline_refocus import run_refocus_offline
from livescope.stackio import StackError, read_stack
from tests.test_offline import noisy
from tests.test_stackio import make_ome_zarr

# 256 px frames in 128 px tiles with denoise@2's 32 px halo: 3 x 3 chunks per frame, each reaching
# into its neighbours; frames are not square so the two axes are cut differently.
TILE_PX = 128


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """An OME-Zarr (T=3, Z=2, 256 x 232 px) and its single-process denoised result."""
    folder = tmp_path_factory.mktemp("single")
    make_ome_zarr(folder / "in.ome.zarr", noisy((3, 2, 256, 232)))
    run_offline("denoise@2", folder / "in.ome.zarr", folder / "single.ome.zarr", tile_px=TILE_PX, task="denoise")
    return folder


def group_attributes(path) -> dict:
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    attrs["livescope"].pop("created_utc")  # the one thing that differs: when
    return attrs


def test_a_dask_run_writes_the_single_process_result_bit_for_bit_with_the_same_metadata(cluster, single, tmp_path):
    seen = []
    summary = run_offline_dask("denoise@2", single / "in.ome.zarr", tmp_path / "out.ome.zarr",
                               scheduler=cluster.scheduler_address, tile_px=TILE_PX, batch=2, threads=1,
                               task="denoise", progress=lambda done, total: seen.append((done, total)))
    out, ref = read_stack(tmp_path / "out.ome.zarr"), read_stack(single / "single.ome.zarr")
    assert np.array_equal(out.frames, ref.frames)
    assert (out.info.axes, out.info.shape, out.info.pixel_size_um, out.info.z_step_um) == \
           (ref.info.axes, ref.info.shape, ref.info.pixel_size_um, ref.info.z_step_um)
    assert group_attributes(tmp_path / "out.ome.zarr") == group_attributes(single / "single.ome.zarr")
    assert (tmp_path / "out.ome.zarr/0/zarr.json").read_text() == (single / "single.ome.zarr/0/zarr.json").read_text()
    assert out.info.provenance.model_runs == ref.info.provenance.model_runs
    assert seen[-1] == (6, 6) and len(seen) == 3  # one step per block of 2 frames written
    assert (summary.model, summary.frames, summary.tile_px, summary.provider) == ("denoise@2", 6, TILE_PX, "cpu")
    assert [p.name for p in tmp_path.iterdir()] == ["out.ome.zarr"]  # no temporary folder left


def test_an_ensembled_dask_run_is_the_single_process_ensembled_result_bit_for_bit(cluster, single, tmp_path):
    run_offline("denoise@2", single / "in.ome.zarr", tmp_path / "one.ome.zarr", tile_px=TILE_PX, task="denoise",
                ensemble=True)
    summary = run_offline_dask("denoise@2", single / "in.ome.zarr", tmp_path / "out.ome.zarr",
                               scheduler=cluster.scheduler_address, tile_px=TILE_PX, batch=2, threads=1,
                               task="denoise", ensemble=True)
    out, ref = read_stack(tmp_path / "out.ome.zarr"), read_stack(tmp_path / "one.ome.zarr")
    assert np.array_equal(out.frames, ref.frames)
    assert not np.array_equal(out.frames, read_stack(single / "single.ome.zarr").frames)
    assert out.info.provenance.model_runs == ref.info.provenance.model_runs
    assert out.info.provenance.model_runs[0].ensemble_transforms == summary.ensemble_transforms == 8


def test_each_worker_process_loads_the_model_once(cluster, single, tmp_path):
    run_offline_dask("denoise@2", single / "in.ome.zarr", tmp_path / "out.ome.zarr",
                     scheduler=cluster.scheduler_address, tile_px=TILE_PX, threads=1)
    with Client(cluster) as client:
        loaded = client.run(offline_dask._providers_loaded)
    assert len(loaded) == 2 and all(len(models) <= 1 for models in loaded.values())


def test_the_cli_runs_on_local_worker_processes(single, tmp_path):
    result = CliRunner().invoke(app, ["denoise", str(single / "in.ome.zarr"), str(tmp_path / "out.ome.zarr"),
                                      "--model", "denoise@2", "--tile", str(TILE_PX), "--dask", "local:2"])
    assert result.exit_code == 0, result.output
    assert "denoise@2 (cpu): 6 frames of 256x232 px" in result.output
    assert np.array_equal(read_stack(tmp_path / "out.ome.zarr").frames, read_stack(single / "single.ome.zarr").frames)


def test_dask_refuses_a_tiff_input_and_a_tiff_output_in_one_line(single, tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((2, 16, 16), np.uint16))
    for inp, out in ((tmp_path / "in.tif", tmp_path / "out.ome.zarr"), (single / "in.ome.zarr", tmp_path / "out.tif")):
        with pytest.raises(StackError, match="--dask (reads|writes) OME-Zarr"):
            run_offline_dask("denoise@2", inp, out, scheduler="local:1")
    result = CliRunner().invoke(app, ["denoise", str(tmp_path / "in.tif"), str(tmp_path / "out.ome.zarr"),
                                      "--dask", "local:2"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.count("\n") == 1 and "--dask reads OME-Zarr" in result.output
    assert not (tmp_path / "out.ome.zarr").exists()


def test_an_unreachable_scheduler_is_one_line_naming_it_and_writes_nothing(single, tmp_path):
    with pytest.raises(OfflineError, match="cannot reach a Dask scheduler"):
        run_offline_dask("denoise@2", single / "in.ome.zarr", tmp_path / "out.ome.zarr",
                         scheduler="tcp://127.0.0.1:1", timeout_s=1)
    result = CliRunner().invoke(app, ["denoise", str(single / "in.ome.zarr"), str(tmp_path / "out.ome.zarr"),
                                      "--dask", "tcp://127.0.0.1:1", "--dask-timeout", "1"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.count("\n") == 1 and "tcp://127.0.0.1:1" in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_bad_local_worker_count_is_refused():
    with pytest.raises(OfflineError, match="local:N"):
        with offline_dask.dask_client("local:zero"):
            pass


# -- refocus ------------------------------------------------------------------------------------
# Refocusing chunks by whole frames (the graph scales each frame by its own mean, so a tile would
# not give the frame's pixels): several chunks of 2 frames, or of 2 planes of a sweep, each plane
# with its own delta-z. Frames of 60 x 68 px: not on the model's size multiple of 8.
REFOCUS = "refocus@1"  # shipped
SWEEP = "-2:2:0.5"  # 9 planes: 5 chunks of 2


@pytest.fixture(scope="module")
def refocused(tmp_path_factory):
    """An OME-Zarr (T=3, Z=2, 60 x 68 px), moved by +0.75 µm and swept through its frame 4, single-process."""
    folder = tmp_path_factory.mktemp("refocused")
    make_ome_zarr(folder / "in.ome.zarr", noisy((3, 2, 60, 68), seed=1))
    run_refocus_offline(folder / "in.ome.zarr", folder / "dz.ome.zarr", dz_um=0.75, model=REFOCUS)
    run_refocus_offline(folder / "in.ome.zarr", folder / "sweep.ome.zarr", sweep=SWEEP, frame=4, model=REFOCUS)
    return folder


def assert_same_stack(out, ref) -> None:
    """Pixels bit for bit; layout, sizes, group and array metadata and provenance as written single-process."""
    a, b = read_stack(out), read_stack(ref)
    assert a.frames.dtype == b.frames.dtype and np.array_equal(a.frames, b.frames)
    assert (a.info.axes, a.info.shape, a.info.pixel_size_um, a.info.z_step_um) == \
           (b.info.axes, b.info.shape, b.info.pixel_size_um, b.info.z_step_um)
    assert group_attributes(out) == group_attributes(ref)
    assert (out / "0/zarr.json").read_text() == (ref / "0/zarr.json").read_text()
    assert a.info.provenance.model_runs == b.info.provenance.model_runs


def test_refocus_by_dz_on_dask_is_the_single_process_result_bit_for_bit_in_the_inputs_layout(
        cluster, refocused, tmp_path):
    seen = []
    summary = run_refocus_dask(refocused / "in.ome.zarr", tmp_path / "out.ome.zarr", dz_um=0.75, model=REFOCUS,
                               scheduler=cluster.scheduler_address, batch=2, threads=1,
                               progress=lambda done, total: seen.append((done, total)))
    assert_same_stack(tmp_path / "out.ome.zarr", refocused / "dz.ome.zarr")
    assert read_stack(tmp_path / "out.ome.zarr").info.axes == "TZYX"
    assert seen[-1] == (6, 6) and len(seen) == 3  # one step per chunk of 2 frames written
    assert (summary.model, summary.provider, summary.frames_in, summary.planes_out, summary.dz_um) == \
           (REFOCUS, "cpu", 6, 6, (0.75,))
    assert [p.name for p in tmp_path.iterdir()] == ["out.ome.zarr"]  # no temporary folder left


def test_a_refocus_sweep_on_dask_is_the_single_process_z_stack_bit_for_bit_plane_by_plane(cluster, refocused, tmp_path):
    summary = run_refocus_dask(refocused / "in.ome.zarr", tmp_path / "sweep.ome.zarr", sweep=SWEEP, frame=4,
                               model=REFOCUS, scheduler=cluster.scheduler_address, batch=2, threads=1)
    assert_same_stack(tmp_path / "sweep.ome.zarr", refocused / "sweep.ome.zarr")
    sweep = read_stack(tmp_path / "sweep.ome.zarr")
    assert (sweep.info.axes, sweep.frames.shape, sweep.info.z_step_um) == ("ZYX", (9, 60, 68), 0.5)
    assert sweep.info.provenance.operation == f"refocus sweep {SWEEP} of frame 4"
    # each plane got its own delta-z, not its chunk's first
    assert not any(np.array_equal(sweep.frames[k], sweep.frames[k + 1]) for k in range(8))
    assert (summary.frames_in, summary.planes_out, summary.dz_um[0], summary.dz_um[-1]) == (6, 9, -2.0, 2.0)


def test_the_refocus_cli_runs_a_sweep_on_local_worker_processes(refocused, tmp_path):
    result = CliRunner().invoke(app, ["refocus", str(refocused / "in.ome.zarr"), str(tmp_path / "sweep.ome.zarr"),
                                      "--sweep", SWEEP, "--frame", "4", "--model", REFOCUS, "--batch", "2",
                                      "--dask", "local:2"])
    assert result.exit_code == 0, result.output
    assert "refocus@1 (cpu): a sweep of 9 planes, -2 to +2 µm, 60x68 px" in result.output
    assert np.array_equal(read_stack(tmp_path / "sweep.ome.zarr").frames,
                          read_stack(refocused / "sweep.ome.zarr").frames)


@pytest.mark.parametrize("stack, args, words", [
    ("in.tif", ("--dz", "0.5"), "--dask reads OME-Zarr"),
    ("in.ome.zarr", ("--sweep", SWEEP, "--frame", "6"), "--frame 6: "),
    ("in.ome.zarr", ("--dz", "3"), "delta-z +3 µm is outside the -2 to +2 µm refocus@1 was trained for"),
    ("in.ome.zarr", ("--dz", "0.5", "--model", "identity"), "identity@1 is not a refocusing model"),
])
def test_refocus_on_dask_refuses_mistakes_in_one_line_before_reaching_the_cluster(refocused, tmp_path, stack, args,
                                                                                   words):
    inp = refocused / stack
    if stack == "in.tif":
        tifffile.imwrite(inp := tmp_path / stack, np.zeros((2, 16, 16), np.uint16))
    model = () if "--model" in args else ("--model", REFOCUS)
    # no scheduler listens there: the mistake is said before anything asks for one
    result = CliRunner().invoke(app, ["refocus", str(inp), str(tmp_path / "out.ome.zarr"), *args, *model,
                                      "--dask", "tcp://127.0.0.1:1", "--dask-timeout", "1"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.count("\n") == 1 and words in " ".join(result.output.split()), result.output
    assert not (tmp_path / "out.ome.zarr").exists()

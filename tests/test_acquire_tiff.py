"""Restored frames saved as OME-TIFF: `acquire --pipeline denoise --output run.ome.tiff` writes
run.denoise.ome.tiff (float32) in the raw file's layout: the same axes in the same order, sizes,
channel names, physical pixel sizes and position files, every frame in the raw data's place, and
OME-XML that tifffile and ome-types read."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import ome_types
import pytest
import tifffile
import useq
from livescope.acquire.microscope import open_microscope
from livescope.acquire.run import run_acquisition
from livescope.acquire.virtual import VirtualRigConfig

from tests.test_acquire_channels import cli, sequence_file


def position_files(stem_path: Path) -> list[Path]:
    """The files of a run saved as run.ome.tiff: that file, or (several positions) one file
    per position in the folder run/, as ome-writers lays them out."""
    single = stem_path.with_name(stem_path.name + ".ome.tiff")
    if single.is_file():
        return [single]
    return sorted(stem_path.glob(f"{stem_path.name}_p*.ome.tiff"))


def read_position(path: Path) -> tuple[np.ndarray, ome_types.model.Image]:
    """Every frame in the file (in file order) and the OME image describing it (ome-types
    validates the whole OME-XML as it reads it)."""
    ome = ome_types.from_tiff(path)
    own = [im for im in ome.images if any(
        td.uuid is not None and td.uuid.file_name == path.name for td in im.pixels.tiff_data_blocks)]
    image = own[0] if own else ome.images[0]
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        frames = np.stack([page.asarray() for page in tif.pages])
        if len(ome.images) == 1:  # tifffile's own reading of the OME series
            series = tif.series[0]
            assert series.shape == tuple(n for n in _sizes(image).values() if n > 1) + frames.shape[1:]
            assert series.dtype == frames.dtype
    return frames, image


def _sizes(image: ome_types.model.Image) -> dict[str, int]:
    """The image's axes (slowest first, as in the file) and their sizes, Y and X left out."""
    order = image.pixels.dimension_order.value[2:][::-1]  # XYZCT -> TCZ
    return {a: getattr(image.pixels, f"size_{a.lower()}") for a in order}


def metadata(image: ome_types.model.Image) -> dict:
    p = image.pixels
    return {"name": image.name, "axes": list(_sizes(image).items()), "size_yx": (p.size_y, p.size_x),
            "channels": [c.name for c in p.channels],
            "physical_size": [(getattr(p, f"physical_size_{a}"), getattr(p, f"physical_size_{a}_unit"))
                              for a in "xyz"]}


def frames_with_data(frames: np.ndarray) -> int:
    return int(np.count_nonzero(frames.reshape(len(frames), -1).max(axis=1)))


def sequence_args(tmp_path: Path, run: str) -> list[str]:
    if run == "time series":
        return ["--frames", "5"]
    path = sequence_file(tmp_path, "Modality", ("Widefield", "Confocal"))
    if "positions" in run:
        path.write_text("stage_positions: [{x: 0, y: 0, name: A}, {x: 20, y: 20, name: B}]\n"
                        + path.read_text().replace("axis_order: tpcz", "axis_order: tpzc"))
    return ["--sequence", str(path)]


RUNS = {"time series": 5, "channels x z x t": 2 * 3 * 2, "two positions x z x channels x t": 2 * 2 * 3 * 2}


def acquire(server, tmp_path: Path, run: str, pipeline: str) -> list[tuple[Path, Path]]:
    """Run ``acquire``; the raw and restored files, position by position."""
    r = cli("acquire", *sequence_args(tmp_path, run), "--size", "48", "--server", server.frames,
            "--pipeline", pipeline, "--output", str(tmp_path / "run.ome.tiff"))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    raw_files, restored_files = position_files(tmp_path / "run"), position_files(tmp_path / f"run.{pipeline}")
    assert restored_files, f"no restored OME-TIFF in {sorted(p.name for p in tmp_path.rglob('*'))}"
    assert [p.name.replace("run", f"run.{pipeline}", 1) for p in raw_files] == [p.name for p in restored_files]
    return list(zip(raw_files, restored_files))


@pytest.mark.parametrize("run", RUNS)
def test_restored_frames_are_saved_as_float_ome_tiff_in_the_raw_files_layout(server, tmp_path, run):
    frames = 0
    for raw_file, restored_file in acquire(server, tmp_path, run, "denoise"):
        raw, raw_image = read_position(raw_file)
        restored, restored_image = read_position(restored_file)
        assert restored.dtype == np.float32 and restored_image.pixels.type.value == "float"
        assert metadata(restored_image) == metadata(raw_image)
        assert restored.shape == raw.shape
        assert frames_with_data(raw) == frames_with_data(restored) == len(raw)
        frames += len(raw)
    assert frames == RUNS[run]


def test_every_restored_frame_is_in_its_raw_frames_place(server, tmp_path):
    """The identity pipeline returns each frame unchanged: the files must then be equal."""
    for raw_file, restored_file in acquire(server, tmp_path, "two positions x z x channels x t", "identity"):
        (raw, raw_image), (restored, restored_image) = read_position(raw_file), read_position(restored_file)
        assert metadata(restored_image) == metadata(raw_image)
        assert np.array_equal(restored, raw)


def test_a_run_that_stops_early_leaves_a_valid_restored_file_with_what_was_restored(own_server, tmp_path):
    srv = own_server()
    core = open_microscope(rig=VirtualRigConfig(sensor_shape_px=(32, 32), seed=1))
    seq = useq.MDASequence(time_plan={"interval": 0.05, "loops": 400})
    killer = threading.Timer(2.0, srv.proc.kill)
    killer.start()
    summary = run_acquisition(core, seq, server=srv.frames, pipeline=("denoise",),
                              output=tmp_path / "run.ome.tiff", server_timeout_s=2.0)
    killer.join()
    assert summary.stopped_reason is not None and 0 < summary.results < 400
    restored, image = read_position(tmp_path / "run.denoise.ome.tiff")
    assert image.pixels.size_t == len(restored) >= summary.results
    assert frames_with_data(restored) == summary.results  # frames never answered are zeros


def test_a_restored_file_that_cannot_be_written_stops_in_one_line_and_the_raw_data_is_kept(server, tmp_path):
    restored = tmp_path / "run.denoise.ome.tiff"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    restored.symlink_to(blocker / "run.denoise.ome.tiff")  # no file can be made there
    seq = tmp_path / "seq.yaml"
    seq.write_text("time_plan: {interval: 0.05, loops: 100}\n")  # >= 5 s: stopped before its end
    r = cli("acquire", "--sequence", str(seq), "--size", "48", "--server", server.frames,
            "--pipeline", "denoise", "--output", str(tmp_path / "run.ome.tiff"), timeout=120)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("livescope: error:"), r.stderr
    assert "restored data" in lines[0] and restored.name in lines[0], lines[0]
    acquired = int(next(ln for ln in r.stdout.splitlines() if "frames acquired" in ln).split("│")[2])
    assert 0 < acquired < 100  # stopped
    raw, _ = read_position(tmp_path / "run.ome.tiff")
    assert frames_with_data(raw) == len(raw) == acquired

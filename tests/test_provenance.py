"""Restored outputs carry their raw data's metadata and say what made them: the axes, scales,
channel names and each frame's time and stage position of the raw run, pymmcore-plus's summary,
and which model@version restored each frame, with which camera model. OME-Zarr outputs are held to
the community's validator (ome-zarr-models); raw runs are real pymmcore-plus acquisitions, on the
virtual microscope and on Micro-Manager's own demo adapters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr_models import open_ome_zarr
from ome_zarr_models.v05.image import Image

from livescope.provenance import ANNOTATION_NAMESPACE, ModelRun, Provenance, sha256_of
from livescope.repository import ModelRepository, shipped_models_root
from livescope.server.offline import run_offline
from livescope.stackio import read_stack
from tests.test_acquire_channels import MM_DEMO_CONFIG, _micro_manager_demo_env, cli, sequence_file


def attributes(store: Path) -> dict:
    return json.loads((store / "zarr.json").read_text())["attributes"]


def valid_ome_zarr_image(store: Path) -> Image:
    image = open_ome_zarr(zarr.open_group(str(store), mode="r"))
    assert isinstance(image, Image)
    return image


def acquire_raw(tmp_path: Path, rig: str) -> Path:
    """A real two-channel, three-plane, two-time-point run, saved by pymmcore-plus's own writer."""
    raw = tmp_path / "raw.ome.zarr"
    if rig == "virtual":
        seq = sequence_file(tmp_path, "Modality", ("Widefield", "Confocal"))
        r = cli("acquire", "--sequence", str(seq), "--size", "48", "--output", str(raw))
    else:
        env = _micro_manager_demo_env()
        seq = sequence_file(tmp_path, "Channel", ("DAPI", "FITC"))
        r = cli("acquire", "--mm-config", str(MM_DEMO_CONFIG), "--sequence", str(seq), "--output", str(raw), env=env)
    assert r.returncode == 0, r.stderr
    return raw


@pytest.mark.parametrize("rig", ["virtual", "micro-manager demo"])
def test_a_denoised_run_keeps_the_raw_metadata_and_names_each_frames_model(tmp_path, rig):
    raw_path = acquire_raw(tmp_path, rig)
    raw = read_stack(raw_path)
    assert raw.info.axes == "TCZYX" and raw.info.channel_names and raw.info.frame_metadata

    out = tmp_path / "run.denoise.ome.zarr"
    summary = run_offline("denoise", raw_path, out, task="denoise")

    valid_ome_zarr_image(out)
    restored = read_stack(out)
    for field in ("axes", "shape", "pixel_size_um", "z_step_um", "channel_names"):
        assert getattr(restored.info, field) == getattr(raw.info, field), field
    assert attributes(out)["pymmcore_plus"] == attributes(raw_path)["pymmcore_plus"]  # the rig's summary
    for raw_frame, frame in zip(raw.info.frame_metadata, restored.info.frame_metadata, strict=True):
        assert frame["delta_t"] == raw_frame["delta_t"]  # each frame's time, from the raw run
        assert frame["livescope_model"] == summary.model  # and the model that restored it

    made = restored.info.provenance
    assert made.operation == "denoise" and made.source == str(raw_path) and made.frame_count == raw.n_frames
    assert [made.model_of(i) for i in range(raw.n_frames)] == [summary.model] * raw.n_frames
    name, number = summary.model.split("@")
    version = ModelRepository([shipped_models_root()]).resolve(name, int(number))
    assert made.model_runs[0].model_sha256 == sha256_of(version.onnx_path)
    assert made.camera is not None and made.camera.source == summary.camera  # estimated: it says so


def test_an_ome_tiff_keeps_channel_names_plane_times_and_positions_and_its_provenance(tmp_path):
    frames = np.random.default_rng(0).poisson(200, (2, 3, 32, 32)).astype(np.uint16) + 100
    raw_path = tmp_path / "raw.ome.tif"
    times = [0.0, 0.1, 0.2, 2.0, 2.1, 2.2]
    tifffile.imwrite(raw_path, frames, ome=True, metadata={
        "axes": "TCYX", "PhysicalSizeX": 0.1, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.1,
        "PhysicalSizeYUnit": "µm", "TimeIncrement": 2.0, "TimeIncrementUnit": "s",
        "Channel": {"Name": ["DAPI", "GFP", "RFP"]},
        "Plane": {"DeltaT": times, "PositionX": [-5.5] * 6, "PositionY": [7.25] * 6}})

    for out in (tmp_path / "run.denoise.ome.tif", tmp_path / "run.denoise.ome.zarr"):
        summary = run_offline("denoise", raw_path, out, task="denoise")
        restored = read_stack(out)
        assert restored.info.axes == "TCYX" and restored.info.channel_names == ("DAPI", "GFP", "RFP")
        assert restored.info.time_step_s == 2.0 and restored.info.pixel_size_um == pytest.approx(0.1)
        assert [f["delta_t"] for f in restored.info.frame_metadata] == pytest.approx(times)
        assert {(f["position_x"], f["position_y"]) for f in restored.info.frame_metadata} == {(-5.5, 7.25)}
        assert restored.info.provenance.model_of(5) == summary.model
    with tifffile.TiffFile(tmp_path / "run.denoise.ome.tif") as tif:
        assert f'Namespace="{ANNOTATION_NAMESPACE}"' in tif.ome_metadata  # the record, where OME readers look


@pytest.mark.parametrize("suffix", [".ome.zarr", ".ome.tiff"])
def test_a_live_restored_run_records_which_model_made_each_frame(server, tmp_path, suffix):
    seq = sequence_file(tmp_path, "Modality", ("Widefield", "Confocal"))
    raw = tmp_path / f"run{suffix}"
    r = cli("acquire", "--sequence", str(seq), "--size", "48", "--server", server.frames,
            "--pipeline", "denoise", "--output", str(raw))
    assert r.returncode == 0, r.stderr
    restored_path = tmp_path / f"run.denoise{suffix}"
    restored = read_stack(restored_path)
    made = restored.info.provenance
    assert made is not None and made.source == str(raw) and made.operation == "denoise"
    assert made.frame_count == restored.n_frames == 12 and made.frames_without_result == ()
    models = {made.model_of(i) for i in range(12)}
    assert len(models) == 1 and models.pop().startswith("denoise@")
    if suffix == ".ome.zarr":
        valid_ome_zarr_image(restored_path)
        assert [f["livescope_model"] for f in restored.info.frame_metadata] == [made.model_of(0)] * 12


def test_model_runs_say_which_model_made_each_frame_and_must_not_overlap():
    made = Provenance(operation="denoise", source="cam1", frame_count=6, frames_without_result=(2,),
                      model_runs=(ModelRun(first_frame=0, frame_count=2, model="denoise@3"),
                                  ModelRun(first_frame=3, frame_count=3, model="denoise@4")))
    assert [made.model_of(i) for i in range(6)] == ["denoise@3", "denoise@3", None, "denoise@4", "denoise@4",
                                                    "denoise@4"]
    with pytest.raises(ValueError, match="overlaps another or lies outside"):
        Provenance(operation="denoise", source="cam1", frame_count=4,
                   model_runs=(ModelRun(first_frame=0, frame_count=3, model="denoise@3"),
                               ModelRun(first_frame=2, frame_count=2, model="denoise@4")))
    with pytest.raises(ValueError, match="outside the 4 frames"):
        Provenance(operation="denoise", source="cam1", frame_count=4,
                   model_runs=(ModelRun(first_frame=2, frame_count=3, model="denoise@3"),))

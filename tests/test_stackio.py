"""Stack I/O: TIFF / OME-TIFF / OME-Zarr in as (T, H, W), out with the input's layout, atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import ome_writers as ow
import pytest
import tifffile

from livescope import stackio
from livescope.stackio import StackError, read_stack, write_stack


def frames_tzyx(dtype=np.uint16) -> np.ndarray:
    return np.arange(2 * 3 * 20 * 30).reshape(2, 3, 20, 30).astype(dtype)


def make_ome_zarr(path: Path, data: np.ndarray, pixel_um: float = 0.1, dz_um: float = 0.5) -> Path:
    """As pymmcore-plus writes it: ome-writers, zarr v3, OME-NGFF 0.5."""
    dims = [ow.Dimension(name="t", count=data.shape[0], type="time"),
            ow.Dimension(name="z", count=data.shape[1], type="space", scale=dz_um, unit="micrometer"),
            ow.Dimension(name="y", count=data.shape[2], type="space", scale=pixel_um, unit="micrometer"),
            ow.Dimension(name="x", count=data.shape[3], type="space", scale=pixel_um, unit="micrometer")]
    stream = ow.create_stream(ow.AcquisitionSettings(root_path=str(path), dimensions=dims,
                                                     dtype=data.dtype.name, format="ome-zarr"))
    for frame in data.reshape(-1, *data.shape[-2:]):
        stream.append(frame)
    stream.close()
    return path


def make_ome_tiff(path: Path, data: np.ndarray, pixel_um: float = 0.1, dz_um: float = 0.5) -> Path:
    tifffile.imwrite(path, data, ome=True, photometric="minisblack",
                     metadata={"axes": "TZYX", "PhysicalSizeX": pixel_um, "PhysicalSizeY": pixel_um,
                               "PhysicalSizeZ": dz_um})
    return path


@pytest.mark.parametrize("maker,name,fmt", [(make_ome_tiff, "in.ome.tif", "ome-tiff"),
                                            (make_ome_zarr, "in.ome.zarr", "ome-zarr")])
def test_ome_stacks_read_as_frames_with_their_layout_and_sizes(tmp_path, maker, name, fmt):
    data = frames_tzyx()
    stack = read_stack(maker(tmp_path / name, data))
    assert stack.frames.shape == (6, 20, 30) and stack.frames.dtype == np.uint16
    np.testing.assert_array_equal(stack.frames, data.reshape(6, 20, 30))
    info = stack.info
    assert (info.format, info.axes, info.shape, info.dtype) == (fmt, "TZYX", (2, 3, 20, 30), "uint16")
    assert info.pixel_size_um == pytest.approx(0.1) and info.z_step_um == pytest.approx(0.5)


@pytest.mark.parametrize("out_name", ["out.ome.tif", "out.tiff", "out.ome.zarr", "out.zarr"])
@pytest.mark.parametrize("in_name", ["in.ome.tif", "in.ome.zarr"])
def test_written_stack_keeps_the_input_layout_and_pixel_size(tmp_path, in_name, out_name):
    maker = make_ome_tiff if "tif" in in_name else make_ome_zarr
    stack = read_stack(maker(tmp_path / in_name, frames_tzyx()))
    restored = stack.frames.astype(np.float32) * 0.5
    write_stack(tmp_path / out_name, restored, stack)
    back = read_stack(tmp_path / out_name)
    assert back.frames.dtype == np.float32
    np.testing.assert_array_equal(back.frames, restored)
    assert (back.info.axes, back.info.shape) == ("TZYX", (2, 3, 20, 30))
    assert back.info.pixel_size_um == pytest.approx(0.1) and back.info.z_step_um == pytest.approx(0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([in_name, out_name])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_plain_tiffs_of_every_supported_dtype(tmp_path, dtype):
    tifffile.imwrite(tmp_path / "one.tif", np.full((16, 24), 7, dtype))
    one = read_stack(tmp_path / "one.tif")
    assert one.frames.shape == (1, 16, 24) and one.frames.dtype == dtype
    assert (one.info.format, one.info.pixel_size_um) == ("tiff", None)
    tifffile.imwrite(tmp_path / "many.tif", np.zeros((2, 5, 16, 24), dtype))
    assert read_stack(tmp_path / "many.tif").frames.shape == (10, 16, 24)


def test_imagej_tiff_pixel_size_and_spacing(tmp_path):
    tifffile.imwrite(tmp_path / "ij.tif", np.zeros((4, 10, 12), np.uint16), imagej=True,
                     resolution=(1 / 0.2, 1 / 0.2), metadata={"unit": "um", "spacing": 0.5, "axes": "ZYX"})
    info = read_stack(tmp_path / "ij.tif").info
    assert info.axes == "ZYX" and info.pixel_size_um == pytest.approx(0.2)
    assert info.z_step_um == pytest.approx(0.5)


def test_ome_zarr_0_4_on_zarr_v2(tmp_path):
    import tensorstore as ts

    root = tmp_path / "v2.ome.zarr"
    root.mkdir()
    (root / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (root / ".zattrs").write_text(json.dumps({"multiscales": [{
        "version": "0.4", "axes": [{"name": "z", "type": "space", "unit": "micrometer"},
                                   {"name": "y", "type": "space", "unit": "nanometer"},
                                   {"name": "x", "type": "space", "unit": "nanometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [2.0, 65.0, 65.0]}]}]}]}))
    data = np.arange(3 * 8 * 9, dtype=np.uint16).reshape(3, 8, 9)
    arr = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(root / "0")}},
                  create=True, dtype=ts.uint16, shape=data.shape).result()
    arr.write(data).result()
    stack = read_stack(root)
    np.testing.assert_array_equal(stack.frames, data)
    assert stack.info.axes == "ZYX" and stack.info.pixel_size_um == pytest.approx(0.065)
    assert stack.info.z_step_um == pytest.approx(2.0)


def test_bad_inputs_are_one_line_errors(tmp_path):
    cases = {}
    cases["no such file"] = tmp_path / "missing.tif"
    (tmp_path / "image.png").write_bytes(b"\x89PNG....")
    cases["unsupported format"] = tmp_path / "image.png"
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    cases["cannot read as TIFF"] = tmp_path / "junk.tif"
    tifffile.imwrite(tmp_path / "line.tif", np.zeros(10, np.uint16))
    cases["needs at least Y and X|do not end in Y, X"] = tmp_path / "line.tif"
    tifffile.imwrite(tmp_path / "int32.tif", np.zeros((4, 4), np.int32))
    cases["dtype int32 is not supported"] = tmp_path / "int32.tif"
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    cases["colour"] = tmp_path / "rgb.tif"
    (tmp_path / "empty.zarr").mkdir()
    cases["cannot read zarr metadata"] = tmp_path / "empty.zarr"
    for expected, path in cases.items():
        with pytest.raises(StackError, match=expected) as e:
            read_stack(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value)


def _say_lzw(path) -> None:
    """Set the file's Compression tag to LZW (5), as a rig that compresses its TIFFs writes it."""
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["Compression"]
        offset, order = tag.valueoffset, tif.byteorder
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write((5).to_bytes(2, "little" if order == "<" else "big"))


def test_a_compressed_tiff_without_its_codecs_says_what_to_install(tmp_path):
    # the plain install leaves out imagecodecs (80 MB), which tifffile needs for LZW, JPEG, zstd...:
    # read in a process where it cannot be imported, as on such an install
    import subprocess
    import sys

    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, np.zeros((2, 16, 16), np.uint16))
    _say_lzw(path)
    run = ("import sys; sys.modules['imagecodecs'] = None\n"
           "from livescope.stackio import StackError, read_stack\n"
           "try:\n    read_stack(sys.argv[1])\nexcept StackError as e:\n    print(e)")
    r = subprocess.run([sys.executable, "-c", run, str(path)], capture_output=True, text=True, timeout=60, check=False)
    said = r.stdout.strip()
    assert "compressed in a way that needs the imagecodecs package" in said and "pip install imagecodecs" in said
    assert "\n" not in said and r.returncode == 0, r.stderr


def test_an_existing_output_is_refused_unless_overwrite(tmp_path):
    frames = np.ones((2, 8, 8), np.float32)
    for name in ("out.ome.tif", "out.ome.zarr"):
        write_stack(tmp_path / name, frames)
        with pytest.raises(StackError, match="already exists"):
            write_stack(tmp_path / name, frames * 2)
        np.testing.assert_array_equal(read_stack(tmp_path / name).frames, frames)
        write_stack(tmp_path / name, frames * 2, overwrite=True)
        np.testing.assert_array_equal(read_stack(tmp_path / name).frames, frames * 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ome.tif", "out.ome.zarr"]


@pytest.mark.parametrize("name", ["out.ome.tif", "out.ome.zarr"])
def test_a_failed_write_leaves_no_output_and_keeps_the_old_one(tmp_path, monkeypatch, name):
    frames = np.ones((3, 8, 8), np.float32)
    real = stackio._write_ome_zarr if "zarr" in name else stackio._write_ome_tiff

    def fail_after_writing(tmp, data, *args):
        real(tmp, data, *args)
        raise OSError("disk full")

    monkeypatch.setattr(stackio, "_write_ome_zarr" if "zarr" in name else "_write_ome_tiff",
                        fail_after_writing)
    with pytest.raises(StackError, match="disk full.*nothing was written"):
        write_stack(tmp_path / name, frames)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    write_stack(tmp_path / name, frames)
    monkeypatch.setattr(stackio, "_write_ome_zarr" if "zarr" in name else "_write_ome_tiff",
                        fail_after_writing)
    with pytest.raises(StackError):
        write_stack(tmp_path / name, frames * 5, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    np.testing.assert_array_equal(read_stack(tmp_path / name).frames, frames)


def test_bad_outputs_are_refused(tmp_path):
    with pytest.raises(StackError, match="unsupported format"):
        write_stack(tmp_path / "out.png", np.zeros((1, 4, 4), np.float32))
    with pytest.raises(StackError, match="no such folder"):
        write_stack(tmp_path / "nowhere" / "out.tif", np.zeros((1, 4, 4), np.float32))
    with pytest.raises(StackError, match="cannot write dtype float64"):
        write_stack(tmp_path / "out.tif", np.zeros((1, 4, 4)))
    with pytest.raises(StackError, match=r"must be \(T, H, W\)"):
        write_stack(tmp_path / "out.tif", np.zeros((4, 4), np.float32))


def test_frames_that_do_not_fit_the_input_layout_are_written_as_t(tmp_path):
    stack = read_stack(make_ome_tiff(tmp_path / "in.ome.tif", frames_tzyx()))
    write_stack(tmp_path / "out.ome.tif", np.zeros((4, 20, 30), np.float32), stack)
    back = read_stack(tmp_path / "out.ome.tif").info
    assert (back.axes, back.shape) == ("TYX", (4, 20, 30)) and back.pixel_size_um == pytest.approx(0.1)

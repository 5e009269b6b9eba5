"""Offline restoration: stack in, model from the repository, stack out in the input's layout."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from livescope.camera_estimate import photon_scale
from livescope.modelcard import ModelCard
from livescope.models.denoise.data import VirtualDenoiseData, virtual_frames
from livescope.models.identity import identity_card
from livescope.server.offline import (
    OfflineError,
    restore_stack,
    run_offline,
    to_model_dtype,
)
from livescope.stackio import StackError, read_stack
from tests.test_stackio import make_ome_tiff, make_ome_zarr


def noisy(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    clean = 95 + 300 * (1 + np.sin(xx / 7.0) * np.cos(yy / 11.0))
    return rng.poisson(np.broadcast_to(clean, shape)).astype(np.uint16)


@pytest.mark.parametrize("maker,name", [(make_ome_tiff, "in.ome.tif"), (make_ome_zarr, "in.ome.zarr")])
def test_identity_writes_the_input_as_float32_in_its_layout(tmp_path, maker, name):
    data = noisy((2, 3, 24, 40))
    maker(tmp_path / name, data)
    out = tmp_path / f"out{name[2:]}"
    seen = []
    summary = run_offline("identity", tmp_path / name, out, batch=4, threads=1,
                          progress=lambda done, total: seen.append((done, total)))
    back = read_stack(out)
    assert back.frames.dtype == np.float32
    np.testing.assert_array_equal(back.frames, data.reshape(6, 24, 40).astype(np.float32))
    assert (back.info.axes, back.info.shape) == ("TZYX", (2, 3, 24, 40))
    assert back.info.pixel_size_um == pytest.approx(0.1)
    assert seen == [(4, 6), (6, 6)]
    assert (summary.model, summary.frames, summary.frame_shape) == ("identity@1", 6, (24, 40))
    assert "identity@1" in summary.line() and str(out) in summary.line()


@pytest.mark.parametrize("in_name,out_name", [("in.tif", "out.ome.tif"), ("in.ome.zarr", "out.ome.zarr")])
def test_denoise_keeps_shape_and_intensity_units(tmp_path, in_name, out_name):
    virtual = virtual_frames(VirtualDenoiseData(modalities=("widefield",), specimens=("cells",),
                                                signal_photons_per_ms=(2.0,), frames_per_condition=3,
                                                sensor_shape_px=(60, 52), seed=4))
    data = virtual.noisy_adu[None]
    if in_name.endswith(".tif"):
        tifffile.imwrite(tmp_path / in_name, data[0], photometric="minisblack")
    else:
        make_ome_zarr(tmp_path / in_name, data)
    summary = run_offline("denoise@2", tmp_path / in_name, tmp_path / out_name,
                          threads=2, task="denoise")
    out = read_stack(tmp_path / out_name).frames
    assert out.shape == (3, 60, 52) and out.dtype == np.float32 and np.isfinite(out).all()
    # ADU in, ADU out: the mean level is kept and the frames come closer to the noise-free image
    assert out.mean() == pytest.approx(data.mean(), rel=0.01)
    rmse = lambda a: float(np.sqrt(np.mean((a - virtual.clean_adu) ** 2)))  # noqa: E731
    assert rmse(out) < 0.5 * rmse(data[0].astype(float))
    assert summary.model == "denoise@2" and summary.tile_px is None
    assert summary.warnings == ()  # the virtual microscope's camera: what the model was trained on


def test_a_stack_unlike_the_training_data_is_denoised_with_a_warning_naming_the_difference(tmp_path):
    eight_bit = np.random.default_rng(1).poisson(12.0, (2, 48, 48)).astype(np.uint8)  # baseline ~0
    tifffile.imwrite(tmp_path / "in.tif", eight_bit)
    summary = run_offline("denoise@2", tmp_path / "in.tif", tmp_path / "out.tif", task="denoise")  # one camera's
    (warning,) = summary.warnings
    assert "darkest 1%" in warning and "95 ADU" in warning and "livescope train denoise --data" in warning
    assert (tmp_path / "out.tif").exists()  # a warning, not a refusal


@pytest.mark.parametrize("version, tile_px", [(2, 128), (3, 176)])
def test_large_frames_are_tiled_and_agree_with_whole_frame_runs(version, tile_px):
    from livescope.repository import ModelRepository, shipped_models_root
    from livescope.server.models import LoadedModel
    from livescope.server.providers import RuntimeOptions

    model = LoadedModel.load(ModelRepository([shipped_models_root()]).resolve("denoise", version),
                             RuntimeOptions(provider="cpu", intra_op_threads=2))
    frames = noisy((2, 200, 152))
    scale = photon_scale(frames)  # a camera-agnostic model's frames go in photons, tiled or whole
    tiled = restore_stack(model, frames, batch=3, tile_px=tile_px, scale=scale)
    whole = model.run(frames if model.card.normalisation.kind != "photons" else scale.to_photons(frames))
    whole = whole if model.card.normalisation.kind != "photons" else scale.to_adu(whole)
    assert np.abs(tiled - whole).max() <= 1e-5 * float(whole.max() - whole.min())


def test_running_out_of_memory_retries_with_smaller_tiles(caplog):
    sizes = []

    class SmallDevice:
        card = ModelCard.model_validate(
            {**identity_card().model_dump(), "tiling": {"size_multiple_px": 4, "halo_px": 8}})

        def run(self, x: np.ndarray) -> np.ndarray:
            sizes.append(x.shape[1])
            if x.shape[1] * x.shape[2] > 100 * 100:
                raise RuntimeError("CUDA failure 2: out of memory")
            return x

    frames = noisy((2, 300, 200))
    out = restore_stack(SmallDevice(), frames, batch=2)
    np.testing.assert_array_equal(out, frames.astype(np.float32))
    assert sizes[0] == 300 and max(sizes[-1:]) <= 100
    assert "out of memory" in caplog.text


def test_other_failures_are_not_retried():
    class Broken:
        card = identity_card()

        def run(self, x: np.ndarray) -> np.ndarray:
            raise RuntimeError("unsupported operator")

    with pytest.raises(RuntimeError, match="unsupported operator"):
        restore_stack(Broken(), noisy((1, 32, 32)))


def test_float_stacks_are_rounded_to_adu_and_clipping_is_counted():
    x, clipped = to_model_dtype(np.array([[[-3.0, 1.4, 1.6, 70000.0]]], np.float32), "uint16")
    assert x.dtype == np.uint16 and x.tolist() == [[[0, 1, 2, 65535]]] and clipped == 2
    same, n = to_model_dtype(np.zeros((1, 2, 2), np.uint16), "uint16")
    assert n == 0 and same.dtype == np.uint16


def test_user_mistakes_are_one_line_errors(tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", noisy((2, 16, 16)))
    (tmp_path / "taken.tif").write_bytes(b"x")
    cases = [
        (OfflineError, "no model named 'nosuch'", ("nosuch", tmp_path / "in.tif", tmp_path / "o.tif")),
        (OfflineError, r"denoise@9 does not exist", ("denoise@9", tmp_path / "in.tif", tmp_path / "o.tif")),
        (OfflineError, "not a stage name", ("Denoise!", tmp_path / "in.tif", tmp_path / "o.tif")),
        (StackError, "no such file", ("identity", tmp_path / "missing.tif", tmp_path / "o.tif")),
        (StackError, "already exists", ("identity", tmp_path / "in.tif", tmp_path / "taken.tif")),
        (StackError, "unsupported format", ("identity", tmp_path / "in.tif", tmp_path / "o.png")),
    ]
    for error, message, args in cases:
        with pytest.raises(error, match=message) as e:
            run_offline(*args, threads=1)
        assert "\n" not in str(e.value)
    with pytest.raises(OfflineError, match="is a denoise model, not a refocus model"):
        run_offline("denoise", tmp_path / "in.tif", tmp_path / "o.tif", task="refocus")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "taken.tif"]


def test_models_from_a_user_folder(tmp_path):
    from livescope.models.identity import write_identity

    write_identity(tmp_path / "models", version=7)
    tifffile.imwrite(tmp_path / "in.tif", noisy((2, 16, 16)))
    summary = run_offline("identity", tmp_path / "in.tif", tmp_path / "out.tif",
                          model_dirs=[tmp_path / "models"], threads=1)
    assert summary.model == "identity@7"


def test_a_float_stack_through_a_uint16_model_reports_clipped_pixels(tmp_path):
    frames = np.array([[[-5.0, 1.4], [70000.0, 3.0]]] * 2, np.float32)
    tifffile.imwrite(tmp_path / "in.tif", frames)
    summary = run_offline("identity", tmp_path / "in.tif", tmp_path / "out.tif", threads=1)
    assert summary.clipped_pixels == 4 and "4 input pixels clipped" in summary.line()
    np.testing.assert_array_equal(read_stack(tmp_path / "out.tif").frames[0], [[0, 1], [65535, 3]])

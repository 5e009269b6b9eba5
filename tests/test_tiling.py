"""Tiling: any frame size, tiles joined without seams, batched, sized from a memory budget."""

from __future__ import annotations

import numpy as np
import pytest

from livescope.repository import ModelRepository, shipped_models_root
from livescope.server.models import LoadedModel
from livescope.server.providers import RuntimeOptions
from livescope.server.tiling import (
    plan_tiles,
    run_tiled,
    smaller_tile,
    tile_for_memory,
)


def box3(frames: np.ndarray) -> np.ndarray:
    """A 3x3 mean with zero padding: a 'network' with a receptive-field radius of 1 px."""
    x = np.pad(frames.astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    h, w = frames.shape[1:]
    return sum(x[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9.0


@pytest.fixture(scope="module")
def denoise() -> LoadedModel:
    return LoadedModel.load(ModelRepository([shipped_models_root()]).resolve("denoise", 2),
                            RuntimeOptions(provider="cpu", intra_op_threads=2))


def noisy_frames(h: int, w: int, n: int = 2) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    clean = 95 + 400 * (1 + np.sin(xx / 9.0) * np.cos(yy / 13.0))
    return rng.poisson(np.stack([np.roll(clean, 17 * i, axis=1) for i in range(n)])).astype(np.uint16)


@pytest.mark.parametrize("shape", [(300, 257), (128, 128), (129, 500), (37, 41), (1000, 130)])
@pytest.mark.parametrize("tile,halo,m", [(128, 32, 4), (64, 8, 1), (96, 12, 8)])
def test_cores_cover_every_pixel_once_and_windows_keep_the_halo(shape, tile, halo, m):
    plan = plan_tiles(*shape, tile_px=tile, halo_px=halo, size_multiple_px=m)
    halo = -(-halo // m) * m
    for spans, length, padded in ((plan.rows, shape[0], plan.padded_height),
                                  (plan.cols, shape[1], plan.padded_width)):
        assert padded % m == 0 and padded - length < m
        covered = np.zeros(padded, int)
        for s in spans:
            covered[s.core_start:s.core_stop] += 1
            assert s.start % m == 0 and s.stop - s.start == min(tile, padded)
            assert s.start <= s.core_start and s.core_stop <= s.stop
            assert s.core_start - s.start >= halo or s.start == 0
            assert s.stop - s.core_stop >= halo or s.stop == padded
        assert (covered == 1).all()


@pytest.mark.parametrize("shape", [(300, 257), (64, 64), (5, 700), (1, 1)])
def test_tiled_equals_whole_frame_for_a_local_filter(shape):
    frames = np.random.default_rng(1).integers(0, 4096, (3, *shape), dtype=np.uint16)
    tiled = run_tiled(box3, frames, tile_px=32, halo_px=1, size_multiple_px=1, batch_tiles=5)
    assert tiled.shape == frames.shape
    np.testing.assert_allclose(tiled, box3(frames), rtol=0, atol=1e-9)


def test_denoise_tiled_agrees_with_whole_frame(denoise):
    """denoise@2 is a depth-2 UNet whose receptive-field radius is its card's halo (32 px).
    Windows start on multiples of 4, so each kept pixel sees exactly its whole-frame input:
    only float rounding may differ. Tolerance: 1e-5 of the output's dynamic range (float32
    has a relative precision of 6e-8; ~15 layers of sums of up to 9 x 64 terms stay far below
    that); on CPU the measured difference is 0."""
    frames = noisy_frames(300, 257)
    whole = denoise.run(frames)
    tiled = run_tiled(denoise.run, frames, tile_px=128, halo_px=denoise.card.tiling.halo_px,
                      size_multiple_px=denoise.card.tiling.size_multiple_px, batch_tiles=4)
    assert tiled.dtype == np.float32 and tiled.shape == frames.shape
    dynamic_range = float(whole.max() - whole.min())
    assert dynamic_range > 100
    assert np.abs(tiled - whole).max() <= 1e-5 * dynamic_range


def test_a_halo_smaller_than_the_receptive_field_shows_seams(denoise):
    """The agreement above is not trivial: a halo of 8 px leaves visible seams."""
    frames = noisy_frames(300, 257, n=1)
    whole = denoise.run(frames)
    tiled = run_tiled(denoise.run, frames, tile_px=128, halo_px=8, size_multiple_px=4)
    assert np.abs(tiled - whole).max() > 1e-3 * float(whole.max() - whole.min())


def test_tiles_are_batched_and_all_of_one_shape():
    calls: list[tuple[int, ...]] = []

    def run(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape)
        return x.astype(np.float32)

    frames = np.random.default_rng(2).integers(0, 255, (2, 300, 257), dtype=np.uint8)
    out = run_tiled(run, frames, tile_px=128, halo_px=32, size_multiple_px=4, batch_tiles=4)
    np.testing.assert_array_equal(out, frames)
    plan = plan_tiles(300, 257, tile_px=128, halo_px=32, size_multiple_px=4)
    assert sum(c[0] for c in calls) == 2 * plan.n_tiles
    assert len(calls) == -(-2 * plan.n_tiles // 4)
    assert {c[1:] for c in calls} == {(128, 128)}


def test_small_frames_run_whole_several_per_call():
    calls: list[tuple[int, ...]] = []

    def run(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape)
        return x.astype(np.float32) + 1

    frames = np.zeros((5, 30, 45), np.uint16)
    out = run_tiled(run, frames, tile_px=512, halo_px=32, size_multiple_px=4, batch_tiles=4)
    assert out.shape == (5, 30, 45) and (out == 1).all()
    assert calls == [(4, 32, 48), (1, 32, 48)]  # padded to the size multiple


def test_fixed_size_model_sees_only_its_size():
    def run(x: np.ndarray) -> np.ndarray:
        assert x.shape[1:] == (64, 64)
        return box3(x)

    for shape in ((20, 30), (150, 64), (64, 200)):
        frames = np.random.default_rng(3).random((2, *shape)).astype(np.float32)
        out = run_tiled(run, frames, tile_px=64, halo_px=4, size_multiple_px=4, fixed_size=True)
        assert out.shape == frames.shape
        # away from the bottom/right edges (where the padding differs) it is the filter itself
        np.testing.assert_allclose(out[:, :-2, :-2], box3(frames)[:, :-2, :-2], atol=1e-6)


def test_a_tile_with_no_room_for_a_core_is_refused():
    with pytest.raises(ValueError, match="no core"):
        plan_tiles(500, 500, tile_px=64, halo_px=32, size_multiple_px=4)


def test_tile_size_from_a_memory_budget():
    tile = tile_for_memory(64 * 2**20, bytes_per_pixel=200.0, halo_px=32, size_multiple_px=4,
                           batch_tiles=2)
    assert tile % 4 == 0 and 2 * tile * tile * 200 <= 64 * 2**20
    assert 2 * (tile + 4) ** 2 * 200 > 64 * 2**20
    assert tile_for_memory(2**40, bytes_per_pixel=200, halo_px=32, max_tile_px=1024) == 1024
    with pytest.raises(ValueError, match="holds no"):
        tile_for_memory(2**20, bytes_per_pixel=1000, halo_px=32)


def test_smaller_tile_halves_the_pixels_until_no_core_is_left():
    sizes, tile = [], 1024
    while (tile := smaller_tile(tile, halo_px=32, size_multiple_px=4)) is not None:
        sizes.append(tile)
    assert sizes[0] == 724 and all(a > b for a, b in zip(sizes, sizes[1:]))
    assert sizes[-1] - 64 >= 4 and smaller_tile(sizes[-1], halo_px=32, size_multiple_px=4) is None


def test_windows_of_several_frames_are_tiled_like_single_frames():
    """(N, C, H, W) in, (N, C', H, W) out: a window per item, as localisation models take."""
    rng = np.random.default_rng(3)
    windows = rng.random((2, 3, 70, 90)).astype(np.float32)

    def two_maps(x: np.ndarray) -> np.ndarray:  # mean over the window, and its 3x3 box blur
        mean = x.mean(axis=1)
        return np.stack([mean, box3(mean)], axis=1)

    tiled = run_tiled(two_maps, windows, tile_px=32, halo_px=1, size_multiple_px=1, batch_tiles=3)
    assert tiled.shape == (2, 2, 70, 90)
    np.testing.assert_allclose(tiled, two_maps(windows), rtol=0, atol=1e-6)

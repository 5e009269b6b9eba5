"""Super-resolution renders of emitter tables: histogram, Gaussian, and the live running render."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from pydantic import ValidationError

from livescope.emitters import EmitterTable
from livescope.render import RenderGrid, RunningRender, gaussian, histogram, render

GRID = RenderGrid(width_nm=1000.0, height_nm=800.0, pixel_nm=10.0)


def emitters(x, y, uncertainty_nm=15.0, frame=1) -> EmitterTable:
    return EmitterTable.from_columns(frame=np.asarray(frame), x_nm=np.asarray(x, float),
                                     y_nm=np.asarray(y, float),
                                     x_uncertainty_nm=np.asarray(uncertainty_nm, float),
                                     y_uncertainty_nm=np.asarray(uncertainty_nm, float))


def scattered(n: int, seed: int, margin_nm: float = 0.0, grid: RenderGrid = GRID) -> EmitterTable:
    rng = np.random.default_rng(seed)
    return emitters(rng.uniform(margin_nm, grid.width_nm - margin_nm, n),
                    rng.uniform(margin_nm, grid.height_nm - margin_nm, n), rng.uniform(5.0, 40.0, n))


def test_the_grid_covers_the_field_rows_by_columns():
    assert GRID.shape == (80, 100)
    assert RenderGrid(width_nm=1005.0, height_nm=800.0, pixel_nm=10.0).shape == (80, 101)
    with pytest.raises(ValidationError):
        RenderGrid(width_nm=0.0, height_nm=800.0)


def test_an_emitter_at_half_a_render_pixel_is_in_column_0_row_0():
    r = histogram(emitters([5.0], [5.0]), GRID)
    assert r.image[0, 0] == 1.0 and r.image.sum() == 1.0


def test_x_runs_along_columns_and_a_pixel_spans_its_lower_edge_to_below_its_upper_edge():
    r = histogram(emitters([30.0, 39.999], [10.0, 10.0]), GRID)
    assert r.image[1, 3] == 2.0


def test_the_histogram_holds_every_emitter_inside_and_counts_the_rest():
    table = EmitterTable.concatenate([scattered(500, 0),
                                      emitters([-1.0, 1000.0, 500.0, np.nan], [400.0, 400.0, 800.0, 1.0])])
    r = histogram(table, GRID)
    assert r.image.dtype == np.float32 and r.image.shape == GRID.shape
    assert r.image.sum() == r.emitters_inside == 500
    assert r.emitters_outside == 4


def test_the_gaussian_render_integrates_to_the_number_of_emitters():
    r = gaussian(scattered(500, 1, margin_nm=150.0), GRID)  # far enough from the edges to lose nothing
    assert r.image.dtype == np.float32
    assert float(r.image.sum(dtype=np.float64)) == pytest.approx(500.0, rel=1e-5)


def test_a_gaussian_is_centred_on_its_emitter_with_its_uncertainty_as_width():
    r = gaussian(emitters([505.0], [405.0], 30.0), GRID).image.astype(np.float64)
    rows, cols = np.indices(r.shape)
    cx, cy = ((cols + 0.5) * r).sum() * 10.0, ((rows + 0.5) * r).sum() * 10.0
    assert (cx, cy) == pytest.approx((505.0, 405.0), abs=0.01)
    sd_x = np.sqrt((((cols + 0.5) * 10.0 - cx) ** 2 * r).sum())
    assert sd_x == pytest.approx(30.0, rel=0.03)  # sampled over +-3 sigma: a little narrower


def test_an_exact_localisation_is_drawn_at_least_half_a_render_pixel_wide():
    r = gaussian(emitters([505.0], [405.0], 0.0), GRID).image
    assert r.sum() == pytest.approx(1.0, rel=1e-6)
    assert r.max() < 0.7  # not a single pixel
    assert gaussian(emitters([505.0], [405.0], 0.0), GRID, min_sigma_nm=1.0).image.max() == pytest.approx(1.0)


def test_the_part_of_a_gaussian_beyond_the_edge_is_lost_but_the_emitter_counts_as_inside():
    r = gaussian(emitters([1.0], [400.0], 20.0), GRID)
    assert r.emitters_inside == 1
    assert 0.3 < r.image.sum() < 0.7


def test_a_running_render_equals_one_render_of_all_its_tables():
    parts = [scattered(300, seed) for seed in range(5)]
    parts.append(emitters([-50.0], [10.0]))
    for method in ("histogram", "gaussian"):
        running = RunningRender(GRID, method)
        for part in parts:
            running.add(part)
        once = render(EmitterTable.concatenate(parts), GRID, method)
        np.testing.assert_allclose(running.image(), once.image, rtol=1e-6, atol=1e-7)
        assert running.image().dtype == np.float32
        assert (running.emitters_inside, running.emitters_outside) == (1500, 1)
        assert running.emitters_added == 1501


def test_a_running_render_gives_a_copy_and_can_start_again():
    running = RunningRender(GRID, "histogram")
    running.add(emitters([5.0], [5.0]))
    image = running.image()
    image[:] = 7.0
    assert running.image().sum() == 1.0
    running.reset()
    assert running.image().sum() == 0.0 and running.emitters_added == 0


def test_an_empty_table_renders_nothing():
    for method in ("histogram", "gaussian"):
        r = render(EmitterTable.empty(), GRID, method)
        assert r.image.sum() == 0.0 and r.emitters_inside == r.emitters_outside == 0


def test_a_hundred_thousand_emitters_render_into_2048_squared_in_the_memory_of_a_few_images():
    # Speed is bench/render.py's to measure (this machine is shared); the test pins the cost's shape.
    grid = RenderGrid(width_nm=20480.0, height_nm=20480.0, pixel_nm=10.0)
    table = scattered(100_000, 7, grid=grid)
    image_bytes = 2048 * 2048 * 8  # the float64 accumulator
    tracemalloc.start()
    r = gaussian(table, grid)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 * image_bytes
    assert r.image.shape == (2048, 2048) and r.emitters_inside == 100_000


def test_adding_a_live_streams_frames_one_by_one_is_cheap_and_equals_one_render():
    grid = RenderGrid(width_nm=20480.0, height_nm=20480.0, pixel_nm=10.0)
    frames = [scattered(10, seed, grid=grid) for seed in range(500)]
    running = RunningRender(grid, "gaussian")
    tracemalloc.start()
    for frame in frames:
        running.add(frame)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2048 * 2048 * 8 / 20  # no copy of the 2048 x 2048 image per frame (speed: bench/render.py)
    once = gaussian(EmitterTable.concatenate(frames), grid)
    np.testing.assert_allclose(running.image(), once.image, rtol=1e-6, atol=1e-7)


def test_a_render_too_large_for_memory_is_refused_with_the_finest_pixel_that_fits():
    with pytest.raises(ValueError, match=r"51200 x 51200 px .*at least 45 nm"):
        RenderGrid(width_nm=512_000.0, height_nm=512_000.0, pixel_nm=10.0)
    assert RenderGrid(width_nm=512_000.0, height_nm=512_000.0, pixel_nm=45.0).shape == (11378, 11378)

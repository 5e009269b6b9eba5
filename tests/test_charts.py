"""The inline SVG line charts of reports and training curves: every finite point is drawn inside the
plot area, whatever the sign of the values (a Gaussian negative log-likelihood goes below zero)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from livescope.charts import line_chart

WIDTH, HEIGHT = 620, 220


def plotted_points(svg: str) -> list[tuple[float, float]]:
    points = []
    for polyline in re.findall(r'points="([^"]*)"', svg):
        points += [tuple(float(v) for v in p.split(",")) for p in polyline.split()]
    return points


def axis_labels(svg: str) -> list[str]:
    return re.findall(r'text-anchor="end">([^<]*)</text>', svg)


@pytest.mark.parametrize("values", [
    [0.5, 0.3, 0.2, 0.1],  # a loss falling towards zero
    [-0.4, -1.2, -2.0, -2.2],  # a negative log-likelihood: all below zero
    [1.5, 0.2, -0.9, -2.2],  # crossing zero
    [3.0, 3.0, 3.0],  # flat
])
def test_every_point_lies_inside_the_plot_area(values: list[float]) -> None:
    steps = np.arange(1, len(values) + 1) * 100.0
    svg = line_chart({"training": (steps, np.array(values)), "held-out": (steps, np.array(values) + 0.05)},
                     "step", "loss", width=WIDTH, height=HEIGHT)
    points = plotted_points(svg)
    assert len(points) == 2 * len(values)
    for x, y in points:
        assert 0 <= x <= WIDTH and 0 <= y <= HEIGHT, (x, y)


def test_a_lower_value_is_drawn_lower_even_below_zero() -> None:
    svg = line_chart({"loss": (np.array([1.0, 2.0]), np.array([-1.0, -2.0]))}, "step", "loss")
    (_, y_first), (_, y_second) = plotted_points(svg)
    assert y_second > y_first  # SVG's y grows downwards


def test_the_value_axis_spans_zero_and_the_lowest_value() -> None:
    svg = line_chart({"loss": (np.array([1.0, 2.0, 3.0]), np.array([-0.5, -2.22, 0.8]))}, "step", "loss")
    labels = axis_labels(svg)
    assert "-2.22" in labels and "0.8" in labels


def test_missing_values_are_skipped_not_drawn() -> None:
    svg = line_chart({"loss": (np.array([1.0, 2.0, 3.0]), np.array([0.3, np.nan, 0.1]))}, "step", "loss")
    assert len(plotted_points(svg)) == 2

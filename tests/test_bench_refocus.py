"""bench/refocus_quality.py: the delta-z grid, pooled scoring (as `psnr_db` on the stacked frames),
the target checks, the other rig's optics, and one run of part 1 with a 1-step model (its scores
mean nothing; the run shows the report's shape and the figure)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from livescope.models.metrics import psnr_db
from livescope.models.refocus.data import ZStack
from tests.bench_scripts import load_bench_script


rq = load_bench_script("refocus_quality.py")


def _stack(rng: np.random.Generator, planes: int = 9, side: int = 32, step: float = 0.25) -> ZStack:
    clean = (100 + 50 * rng.random((planes, side, side))).astype(np.float32)
    noisy = np.clip(np.rint(clean + rng.normal(0, 5, clean.shape)), 0, 65535).astype(np.uint16)
    return ZStack(noisy, clean, step * np.arange(planes), 0.108, "synthetic")


def test_dz_grid_is_symmetric_with_a_plain_zero() -> None:
    grid = rq.dz_grid(-2.0, 2.0, 0.25)
    assert len(grid) == 17 and grid[0] == -2.0 and grid[-1] == 2.0
    assert 0.0 in grid and not any(math.copysign(1, g) < 0 for g in grid if g == 0)
    assert list(rq.dz_grid(-0.6, 1.0, 0.5)) == [-0.5, 0.0, 0.5, 1.0]


def test_pooled_scores_equal_psnr_db_on_the_stacked_pairs() -> None:
    rng = np.random.default_rng(0)
    stacks = [_stack(rng), _stack(rng)]
    grid = rq.dz_grid(-0.5, 0.5, 0.25)
    shift = lambda frames, dz: frames.astype(np.float32) + 1.0  # noqa: E731
    tables = rq.evaluate({"shifted": (shift, (0.0, 0.5))}, stacks, ["a", "b"], grid)
    rows = {row["dz_um"]: row for row in tables["per_dz"]}
    assert sorted(rows) == [-0.5, -0.25, 0.0, 0.25, 0.5]
    k = 2  # dz = +0.5 µm: pairs (i, i + 2) of both stacks, pooled
    ins = np.concatenate([s.planes_adu[:-k] for s in stacks]).astype(np.float32)
    truths = np.concatenate([s.clean_adu[k:] for s in stacks])
    assert rows[0.5]["pairs"] == len(truths)
    assert rows[0.5]["psnr_db_unchanged"] == pytest.approx(psnr_db(ins, truths), abs=1e-3)
    assert rows[0.5]["psnr_db_shifted"] == pytest.approx(psnr_db(ins + 1.0, truths), abs=1e-3)
    assert rows[0.5]["gain_db_shifted"] == pytest.approx(
        rows[0.5]["psnr_db_shifted"] - rows[0.5]["psnr_db_unchanged"], abs=2e-3)
    assert "psnr_db_shifted" not in rows[-0.5]  # outside that method's delta-z range
    assert {row["abs_dz_um"] for row in tables["per_abs_dz"]} == {0.0, 0.25, 0.5}
    assert rows[-0.5]["pairs"] + rows[0.5]["pairs"] == next(
        r["pairs"] for r in tables["per_abs_dz"] if r["abs_dz_um"] == 0.5)
    assert set(tables["per_specimen"]) == {"a", "b"}


def test_target_checks_need_3_db_on_both_signs_and_a_gain_everywhere() -> None:
    def row(dz: float, gain: float) -> dict:
        return {"dz_um": dz, "psnr_db_m": 20.0 + gain, "psnr_db_unchanged": 20.0, "gain_db_m": gain}

    good = rq.target_checks([row(-1.0, 3.5), row(0.0, 0.5), row(1.0, 3.0)], "m")
    assert good["met"] and good["gain_at_1_um_at_least_3_db"] and good["better_than_unchanged_at_every_dz"]
    one_sign = rq.target_checks([row(-1.0, 2.0), row(0.0, 0.5), row(1.0, 4.0)], "m")
    assert not one_sign["met"] and one_sign["better_than_unchanged_at_every_dz"]
    worse_at_0 = rq.target_checks([row(-1.0, 4.0), row(0.0, -0.1), row(1.0, 4.0)], "m")
    assert not worse_at_0["met"] and worse_at_0["dz_um_not_better"] == [0.0]


def test_the_other_rig_has_its_own_objective() -> None:
    spec = rq.OtherRigData(specimens=("cells",), fields_per_specimen=1, sensor_shape_px=(32, 32),
                           z_range_um=(-0.5, 0.5), spherical_waves=0.15)
    rig = spec.rig("cells")
    assert (rig.na, rig.immersion_index, rig.spherical_waves) == (1.2, 1.333, 0.15)
    assert "NA 1.2 n 1.333" in spec.describe()
    with pytest.raises(ValueError):
        rq.OtherRigData(na=1.4, immersion_index=1.333).rig("cells")


def test_part_one_runs_on_a_model_and_writes_report_and_figure(tmp_path, capsys) -> None:
    from livescope.models.refocus.train import RefocusTrainConfig, train_and_publish_refocuser

    rng = np.random.default_rng(1)
    stacks = [_stack(rng, planes=13, side=64, step=0.5) for _ in range(2)]
    train_and_publish_refocuser(
        tmp_path / "models", name="refocus-test", stacks=stacks[:1], held_out=stacks[1:],
        config=RefocusTrainConfig(steps=1, dz_max_um=1.0), baseline_adu=100.0, data_description="synthetic",
        command="test")
    figure = tmp_path / "refocus.png"
    drawn = importlib.util.find_spec("matplotlib") is not None  # the bench extra; CI installs train, dev
    # named by its version: a 1-step model is a candidate (the quality gate), never picked by its name alone
    report = rq.main(["--models", str(tmp_path / "models"), "--model", "refocus-test@1", "--quick",
                      "--no-calibration", "--timing-repeats", "1", *(["--figure", str(figure)] if drawn else [])])
    assert '"benchmark": "refocus_quality"' in capsys.readouterr().out
    part = report["shipped"]
    assert part["model"] == "refocus-test@1" and part["card_dz_range_um"] == [-1.0, 1.0]
    assert [row["dz_um"] for row in part["per_dz"]] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert set(part["per_specimen"]) == {"filaments", "beads", "cells"}
    assert {"gain_db_at_minus_1_um", "gain_db_at_plus_1_um", "met"} <= part["targets"].keys()
    assert report["inference"][0]["median_ms"] > 0 and "calibration" not in report
    assert not drawn or (figure.is_file() and figure.stat().st_size > 10_000)

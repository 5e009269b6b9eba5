"""Refocusing training data: what the z-stacks, the pairs drawn from them, the files read as them
and their registration promise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
from scipy.ndimage import fourier_shift

from livescope.acquire.virtual import VirtualScene
from livescope.models.refocus.data import RefocusDataError, ZStack, sample_pairs, split_fields
from livescope.models.refocus.registration import register_stack, register_stacks
from livescope.models.refocus.user_data import read_stacks
from livescope.models.refocus.virtual import VirtualRefocusData, virtual_stacks
from livescope.models.virtual_fields import snap_at_signal
from livescope.stackio import StackInfo, write_stack

# Beads on the coverslip (one z-slab: fast), planes 1 µm apart about focus.
FLAT_BEADS = dict(specimens=("beads",), specimen_depth_um=0.0, fields_per_specimen=1, sensor_shape_px=(48, 48),
                  z_range_um=(-1.0, 1.0), z_step_um=1.0, signal_photons_per_ms=(50.0,))


def index_stack(n_planes: int = 7, z_step_um: float = 0.5, shape: tuple[int, int] = (24, 20),
                clean: bool = False, pattern: bool = False) -> ZStack:
    """A synthetic stack whose plane k is the constant k (noisy) and 1000 + k (clean); with
    ``pattern``, plane k is a fixed random image plus 1000 k."""
    k = np.arange(n_planes, dtype=np.float64)[:, None, None]
    base = np.random.default_rng(0).integers(0, 500, shape) if pattern else 0
    planes = (k * (1000 if pattern else 1) + base + np.zeros(shape)).astype(np.uint16)
    clean_adu = (1000 + k + np.zeros(shape)).astype(np.float32) if clean else None
    return ZStack(planes, clean_adu, z_step_um * np.arange(n_planes), 0.1, "synthetic")


def drifted(stack: ZStack, total_px: tuple[float, float]) -> tuple[ZStack, np.ndarray]:
    """``stack`` with its content moved linearly across the planes, by ``total_px`` (dy, dx)
    from first to last; and the shifts that undo it, relative to the middle plane."""
    z = stack.n_planes
    moved = np.linspace(-0.5, 0.5, z)[:, None] * np.asarray(total_px)[None, :]

    def move(plane: np.ndarray, by: np.ndarray) -> np.ndarray:
        return np.fft.ifft2(fourier_shift(np.fft.fft2(plane.astype(np.float64)), by)).real

    planes = np.stack([np.clip(np.rint(move(p, m)), 0, 65535) for p, m in zip(stack.planes_adu, moved)])
    clean = np.stack([move(p, m) for p, m in zip(stack.clean_adu, moved)]).astype(np.float32)
    undo = -(moved - moved[z // 2])
    return ZStack(planes.astype(np.uint16), clean, stack.z_um, stack.pixel_size_um, "drifted"), undo


@pytest.fixture(scope="module")
def flat_filaments() -> ZStack:
    """A structure-rich field (filaments on the coverslip, bright), 13 planes +-1.5 µm."""
    spec = VirtualRefocusData(specimens=("filaments",), specimen_depth_um=0.0, fields_per_specimen=1,
                              sensor_shape_px=(96, 96), z_range_um=(-1.5, 1.5), signal_photons_per_ms=(50.0,),
                              seed=1)
    return virtual_stacks(spec)[0]


# -- virtual stacks ---------------------------------------------------------------------------------


def test_virtual_stacks_have_the_asked_planes_at_the_asked_focus_and_are_seeded():
    spec = VirtualRefocusData(specimens=("beads", "cells"), specimen_depth_um=1.0, fields_per_specimen=2,
                              sensor_shape_px=(32, 40), z_range_um=(-0.5, 0.5), z_step_um=0.25,
                              signal_photons_per_ms=(5.0, 20.0))
    stacks = virtual_stacks(spec)
    assert len(stacks) == 4
    for stack, focus in zip(stacks, (0.5, 0.5, 0.0, 0.0)):  # mid-specimen; cells lie flat at z = 0
        assert stack.planes_adu.shape == stack.clean_adu.shape == (5, 32, 40)
        assert stack.planes_adu.dtype == np.uint16 and stack.clean_adu.dtype == np.float32
        assert np.allclose(stack.z_um, focus + np.array([-0.5, -0.25, 0.0, 0.25, 0.5]))
        assert stack.z_step_um == pytest.approx(0.25)
        assert stack.pixel_size_um == pytest.approx(6.5 / 60)
    assert len({s.source for s in stacks}) == 4  # every field is its own
    again = virtual_stacks(spec)
    assert all(np.array_equal(a.planes_adu, b.planes_adu) for a, b in zip(stacks, again))
    other = virtual_stacks(spec.model_copy(update={"seed": 1}))
    assert not np.array_equal(stacks[0].planes_adu, other[0].planes_adu)


def test_the_spec_describes_itself_in_one_line_with_the_optics_and_refuses_single_molecules():
    spec = VirtualRefocusData(spherical_waves=0.15)
    line = spec.describe()
    assert "\n" not in line
    for part in ("filaments 4 um deep", "cells flat", "25 planes", "step 0.25 um", "spherical 0.15 waves rms",
                 "NA 1.4"):
        assert part in line, part
    assert spec.rig("beads").spherical_waves == 0.15 and spec.rig("beads").specimen_depth_um == 4.0
    assert spec.rig("cells").specimen_depth_um == 0.0  # nuclei are flat: no empty z-slabs to render
    rig_default = VirtualRefocusData().rig("beads").spherical_waves
    assert f"spherical {rig_default:g} waves rms" in VirtualRefocusData().describe()
    with pytest.raises(ValueError):
        VirtualRefocusData(specimens=("smlm",))  # changes every frame: no z-stack of one specimen
    with pytest.raises(ValueError):
        VirtualRefocusData(z_range_um=(0.0, 0.25), z_step_um=0.25)  # two planes


def test_snapping_at_a_signal_level_is_the_rigs_own_snap_at_that_level():
    spec = VirtualRefocusData(**FLAT_BEADS)
    unit = VirtualScene(spec.rig("beads", signal_photons_per_ms=1.0, seed=4))
    direct = VirtualScene(spec.rig("beads", signal_photons_per_ms=30.0, seed=4))
    noisy, clean = snap_at_signal(unit, 1.0, 2.0, 0.3, 10.0, 30.0, np.random.default_rng(7))
    noisy_direct, clean_direct = direct.snap(1.0, 2.0, 0.3, 10.0, np.random.default_rng(7))
    assert np.allclose(clean, clean_direct, rtol=1e-5)
    assert np.mean(noisy == noisy_direct) > 0.999  # the same draws (float rounding aside)


def test_a_bead_is_sharpest_in_its_own_plane():
    spec = VirtualRefocusData(**{**FLAT_BEADS, "z_range_um": (-1.5, 1.5), "z_step_um": 0.5}, spherical_waves=0.0)
    stack = virtual_stacks(spec)[0]
    peak = stack.clean_adu.max(axis=(1, 2)) - np.median(stack.clean_adu)
    focus = int(np.argmin(np.abs(stack.z_um)))  # the beads lie at z = 0
    assert np.argmax(peak) == focus
    assert np.all(np.diff(peak[:focus + 1]) > 0) and np.all(np.diff(peak[focus:]) < 0)


def test_spherical_aberration_tells_above_focus_from_below_and_without_it_they_agree():
    def above_vs_below(spherical_waves: float) -> tuple[float, float]:
        stack = virtual_stacks(VirtualRefocusData(**FLAT_BEADS, spherical_waves=spherical_waves))[0]
        below, above = stack.clean_adu[0], stack.clean_adu[2]  # z = -1 and +1 µm
        noise = float((stack.planes_adu - stack.clean_adu).std())
        return float(np.sqrt(np.mean((above - below) ** 2))), noise

    difference, noise = above_vs_below(0.15)
    assert difference > 2 * noise  # one frame's noise: the asymmetry shows in a single frame
    difference, noise = above_vs_below(0.0)
    assert difference < 0.01 * noise


# -- training pairs ---------------------------------------------------------------------------------


def test_a_pair_is_an_input_plane_with_its_dz_map_and_the_target_plane_of_the_same_crop():
    stack = index_stack(n_planes=7, z_step_um=0.5)
    inputs, targets = sample_pairs([stack], 400, 8, 1.0, np.random.default_rng(0), target="noisy")
    assert inputs.shape == (400, 2, 8, 8) and targets.shape == (400, 1, 8, 8)
    assert inputs.dtype == targets.dtype == np.float32
    i = inputs[:, 0, 0, 0]
    j = targets[:, 0, 0, 0]
    dz = inputs[:, 1, 0, 0]
    for b in range(400):  # every map is constant
        assert np.all(inputs[b, 0] == i[b]) and np.all(inputs[b, 1] == dz[b]) and np.all(targets[b, 0] == j[b])
    assert np.allclose(dz, 0.5 * (j - i))  # dz = z_target - z_input
    assert np.all(np.abs(dz) <= 1.0)
    # Noisy targets: never the input frame itself (it would teach copying the noise).
    assert set(np.round(dz, 3)) == {-1.0, -0.5, 0.5, 1.0}


def test_clean_targets_come_from_the_noise_free_planes_with_dz_uniform_and_the_identity_included():
    stack = index_stack(n_planes=9, z_step_um=0.25, clean=True)
    inputs, targets = sample_pairs([stack], 2000, 8, 0.5, np.random.default_rng(1), target="clean")
    i, j, dz = inputs[:, 0, 0, 0], targets[:, 0, 0, 0] - 1000, inputs[:, 1, 0, 0]
    assert np.allclose(dz, 0.25 * (j - i))
    values, counts = np.unique(np.round(dz, 3), return_counts=True)
    assert list(values) == [-0.5, -0.25, 0.0, 0.25, 0.5]
    assert counts.min() > 0.8 * 2000 / 5  # uniform over the allowed offsets
    noisy_inputs, noisy_targets = sample_pairs([stack], 50, 8, 0.5, np.random.default_rng(1), target="noisy")
    assert np.all(noisy_targets < 1000)  # the noisy planes, not the clean ones


def test_input_and_target_share_the_crop_flip_and_rotation():
    stack = index_stack(n_planes=5, z_step_um=0.5, shape=(40, 40), pattern=True)
    inputs, targets = sample_pairs([stack], 200, 16, 2.0, np.random.default_rng(2), target="noisy")
    difference = targets[:, 0] - inputs[:, 0]  # plane k is the same image + 1000 k
    step = difference[:, :1, :1]
    assert np.all(difference == step)
    assert np.allclose(step[:, 0, 0], 1000 * inputs[:, 1, 0, 0] / 0.5)
    # crops and orientations vary: the patches are not all one
    assert len({inputs[b, 0].tobytes() for b in range(200)}) > 50


def test_pairs_refuse_patches_larger_than_the_frames_and_a_dz_range_with_no_pair():
    stack = index_stack(shape=(24, 20))
    with pytest.raises(ValueError, match="smaller than the 32 px patch"):
        sample_pairs([stack], 4, 32, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="no plane pairs"):
        sample_pairs([stack], 4, 8, 0.2, np.random.default_rng(0), target="noisy")  # planes 0.5 µm apart


# -- held-out fields --------------------------------------------------------------------------------


def test_split_fields_holds_out_whole_fields_and_keeps_a_fields_stacks_together():
    singles = [ZStack(s.planes_adu, None, s.z_um, 0.1, f"field {k}") for k, s in enumerate([index_stack()] * 8)]
    timelapse = [ZStack(s.planes_adu, None, s.z_um, 0.1, f"t {t}", field_id="position 0")
                 for t, s in enumerate([index_stack()] * 3)]
    stacks = singles + timelapse  # 9 fields
    train, held = split_fields(stacks, 0.25, np.random.default_rng(0))
    assert len(train) + len(held) == len(stacks)
    assert {id(s) for s in train}.isdisjoint({id(s) for s in held})
    fields_held = {s.field_id or s.source for s in held}
    assert len(fields_held) == 2  # round(0.25 x 9)
    assert sum(s.field_id == "position 0" for s in held) in (0, 3)  # together or not at all
    again = split_fields(stacks, 0.25, np.random.default_rng(0))
    assert [s.source for s in again[1]] == [s.source for s in held]
    assert len(split_fields(singles[:2], 0.01, np.random.default_rng(0))[1]) == 1  # at least one
    assert len(split_fields(singles[:2], 0.9, np.random.default_rng(0))[0]) == 1  # never all
    assert split_fields(singles[:1], 0.5, np.random.default_rng(0))[1] == []  # one field: nothing to hold out


# -- reading files ----------------------------------------------------------------------------------


def ome_tiff(path, data: np.ndarray, axes: str, **sizes: float) -> str:
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata={"axes": axes, **sizes})
    return str(path)


def test_an_ome_tiff_z_stack_is_read_with_its_plane_spacing_and_pixel_size(tmp_path):
    data = np.arange(5 * 16 * 12, dtype=np.uint16).reshape(5, 16, 12)
    path = ome_tiff(tmp_path / "z.ome.tif", data, "ZYX", PhysicalSizeZ=0.3, PhysicalSizeX=0.065)
    (stack,) = read_stacks([path])
    assert np.array_equal(stack.planes_adu, data) and stack.clean_adu is None
    assert np.allclose(stack.z_um, [0.0, 0.3, 0.6, 0.9, 1.2])
    assert stack.pixel_size_um == pytest.approx(0.065)
    assert "z.ome.tif" in stack.source


def test_an_ome_zarr_z_stack_is_read_with_its_z_scale(tmp_path):
    data = np.arange(6 * 8 * 8, dtype=np.uint16).reshape(6, 8, 8)
    layout = StackInfo(path="made here", format="ome-zarr", axes="ZYX", shape=data.shape, dtype="uint16",
                       pixel_size_um=0.1, z_step_um=0.4)
    path = write_stack(tmp_path / "z.ome.zarr", data, layout)
    (stack,) = read_stacks([path])
    assert np.array_equal(stack.planes_adu, data) and np.allclose(stack.z_um, 0.4 * np.arange(6))


def test_a_stack_without_z_spacing_is_refused_unless_the_step_is_given(tmp_path):
    data = np.ones((4, 16, 16), np.uint16) * np.arange(4, dtype=np.uint16)[:, None, None]
    path = ome_tiff(tmp_path / "nospacing.ome.tif", data, "ZYX")
    with pytest.raises(RefocusDataError) as refused:
        read_stacks([path])
    message = str(refused.value)
    assert "\n" not in message and "nospacing.ome.tif" in message and "--z-step" in message
    (stack,) = read_stacks([path], z_step_um=0.2)
    assert np.allclose(stack.z_um, [0.0, 0.2, 0.4, 0.6])
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, data, photometric="minisblack")  # no metadata: the leading axis is z
    assert read_stacks([plain], z_step_um=0.5)[0].z_step_um == pytest.approx(0.5)


def test_several_positions_are_several_stacks_and_time_points_stay_one_field(tmp_path):
    data = np.arange(2 * 4 * 8 * 8, dtype=np.uint16).reshape(2, 4, 8, 8)
    positions = read_stacks([ome_tiff(tmp_path / "p.ome.tif", data, "QZYX", PhysicalSizeZ=0.5)])
    assert len(positions) == 2 and np.array_equal(positions[1].planes_adu, data[1])
    assert positions[0].field_id is None and positions[0].source != positions[1].source
    times = read_stacks([ome_tiff(tmp_path / "t.ome.tif", data, "TZYX", PhysicalSizeZ=0.5)])
    assert len(times) == 2 and times[0].field_id == times[1].field_id is not None
    with tifffile.TiffWriter(tmp_path / "series.ome.tif", ome=True) as tif:  # one series per position
        for p in range(3):
            tif.write(data[0] + p, metadata={"axes": "ZYX", "PhysicalSizeZ": 0.5})
    series = read_stacks([tmp_path / "series.ome.tif"])
    assert [int(s.planes_adu[0, 0, 0]) for s in series] == [0, 1, 2]


def test_a_float_stack_of_camera_counts_is_read_as_counts(tmp_path):
    data = np.random.default_rng(0).uniform(100, 4000, (4, 8, 8)).astype(np.float32)
    (stack,) = read_stacks([ome_tiff(tmp_path / "f.ome.tif", data, "ZYX")], z_step_um=0.25)
    assert stack.planes_adu.dtype == np.uint16 and np.array_equal(stack.planes_adu, np.rint(data))


@pytest.mark.parametrize("name, data, axes, complaint", [
    ("two.ome.tif", np.ones((2, 8, 8), np.uint16), "ZYX", "2 plane(s)"),
    ("flat.ome.tif", np.ones((8, 8), np.uint16), "YX", "not a z-stack"),
    ("five.ome.tif", np.ones((2, 2, 3, 8, 8), np.uint16), "TQZYX", "not a z-stack"),
    ("big.ome.tif", np.full((4, 8, 8), 70000.0, np.float32), "ZYX", "outside camera counts"),
    ("negative.ome.tif", np.full((4, 8, 8), -5.0, np.float32), "ZYX", "outside camera counts"),
    ("unit.ome.tif", np.random.default_rng(0).random((4, 8, 8)).astype(np.float32), "ZYX", "normalised"),
    ("channels.ome.tif", np.ones((4, 2, 8, 8), np.uint16), "ZCYX", "colour"),
])
def test_what_cannot_be_a_z_stack_is_refused_in_one_line(tmp_path, name, data, axes, complaint):
    path = ome_tiff(tmp_path / name, data, axes, PhysicalSizeZ=0.5)
    with pytest.raises(RefocusDataError) as refused:
        read_stacks([path])
    assert complaint in str(refused.value) and "\n" not in str(refused.value)


def test_a_colour_image_is_refused(tmp_path):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((4, 8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(RefocusDataError, match="colour"):
        read_stacks([path], z_step_um=0.5)


# -- registration -----------------------------------------------------------------------------------


def test_registration_finds_a_virtual_stack_aligned_and_leaves_it_as_it_is(flat_filaments):
    registered, report = register_stack(flat_filaments)
    assert report.ok and not report.applied
    assert np.abs(report.shifts_px).max() < 0.5
    assert registered is flat_filaments
    assert report.pairs_used > report.pairs_measured / 2


def test_registration_recovers_a_known_drift_and_undoes_it(flat_filaments):
    stack, undo = drifted(flat_filaments, (3.0, -4.0))
    registered, report = register_stack(stack)
    assert report.ok and report.applied
    assert np.abs(report.shifts_px - undo).max() < 0.3
    crop = report.crop_px
    assert crop == math.ceil(np.abs(report.shifts_px).max())  # no plane lacks data inside
    assert registered.planes_adu.shape == (13, 96 - 2 * crop, 96 - 2 * crop)
    original = flat_filaments.clean_adu[:, crop:-crop, crop:-crop]
    error = np.abs(registered.clean_adu - original)[:, 2:-2, 2:-2]  # the Fourier shift's edge aside
    assert error.max() < 0.1 * (original.max() - original.min())
    assert "shifted" in report.summary()


def test_a_drift_over_a_tenth_of_the_frame_is_refused_not_used(flat_filaments):
    stack, _ = drifted(flat_filaments, (0.0, 24.0))  # 12 px either side of the middle, frame 96 px
    registered, report = register_stack(stack)
    assert not report.ok and not report.applied and "over 10%" in report.problem
    assert registered is stack
    kept, reports = register_stacks([flat_filaments, stack])
    assert kept == [flat_filaments] and [r.ok for r in reports] == [True, False]
    assert "REFUSED" in reports[1].summary()


def test_a_stack_without_structure_is_refused():
    noise = np.random.default_rng(0).poisson(100, (7, 48, 48)).astype(np.uint16)
    registered, report = register_stack(ZStack(noise, None, 0.25 * np.arange(7), 0.1, "noise"))
    assert not report.ok and "structure" in report.problem

"""Registration of calibration pairs (`livescope.acquire.calibration.registration`), on real snaps of the
virtual microscope (pymmcore-plus, `Modality` presets Confocal / STED, 96 px fields).

Measured (this rig, 108 nm pixels): confocal/confocal stage offsets recovered to 0.06 px;
confocal/STED to 0.28 px at worst (the virtual STED image is undersampled at 108 nm pixels:
STED/STED offsets show the same 0.25 px); affine maps to < 0.8 px at the field's corners.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from livescope.acquire.calibration.registration import (
    REGISTRATION_FILE,
    PairRegistration,
    RegistrationError,
    RegistrationReport,
    RegistrationSettings,
    apply_registration,
    register_pair,
    register_pairs,
)
from livescope.acquire.microscope import VirtualMicroscope
from livescope.acquire.virtual import VirtualRigConfig

SIZE_PX = 96
FIELDS_UM = (120.0, 150.0)  # stage x of fields with filaments running several ways
RIG = VirtualRigConfig(sensor_shape_px=(SIZE_PX, SIZE_PX), signal_photons_per_ms=10.0)


@pytest.fixture(scope="module")
def core() -> VirtualMicroscope:
    return VirtualMicroscope(RIG)


def snap(core: VirtualMicroscope, preset: str, x_um: float, y_um: float = 0.0) -> np.ndarray:
    core.setXYPosition(x_um, y_um)
    core.setConfig("Modality", preset)
    core.snapImage()
    return core.getImage()


def offset_pair(core, high_preset: str, field_um: float, shift_px: tuple[float, float]):
    """Low (Confocal) at the field, high with the stage moved so that ``shift_px`` (dy, dx)
    carries the high image back onto the low one."""
    p = core.getPixelSizeUm()
    return snap(core, "Confocal", field_um), snap(core, high_preset, field_um + shift_px[1] * p, shift_px[0] * p)


@pytest.mark.parametrize("field_um", FIELDS_UM)
def test_known_sub_pixel_stage_offsets_between_two_confocal_snaps_are_recovered_to_a_tenth_of_a_pixel(
        core, field_um):
    for shift in [(0.37, -0.81), (-2.6, 1.45)]:
        reg = register_pair(*offset_pair(core, "Confocal", field_um, shift))
        assert reg.passed, reg.reason
        assert np.hypot(*np.subtract(reg.shift_px, shift)) < 0.1


@pytest.mark.parametrize("field_um", FIELDS_UM)
def test_a_confocal_sted_pair_offset_by_the_stage_is_recovered_to_three_tenths_of_a_pixel(core, field_um):
    for shift in [(0.0, 0.0), (0.37, -0.81), (3.3, 2.1)]:
        low, high = offset_pair(core, "STED", field_um, shift)
        reg = register_pair(low, high, position=3, repeat=1)
        assert (reg.position, reg.repeat, reg.passed, reg.reason) == (3, 1, True, None)
        assert np.hypot(*np.subtract(reg.shift_px, shift)) < 0.3
        assert reg.ncc_after > 0.95 and reg.ncc_after >= reg.ncc_before - 1e-6 and reg.residual_rms < 0.3


def test_the_rigs_drift_between_the_low_and_high_snap_is_recovered_from_its_ground_truth():
    rig = VirtualMicroscope(RIG.model_copy(update={"drift_um_per_frame": (0.05, -0.03, 0.0)}))
    low = snap(rig, "Confocal", FIELDS_UM[1])
    low_drift = rig.virtual_camera.truth_of(low).drift_um
    high = snap(rig, "STED", FIELDS_UM[1])
    dx_um, dy_um, _ = np.subtract(rig.virtual_camera.truth_of(high).drift_um, low_drift)
    # The sample moved by the drift, so the high image shows it moved: carrying it back is minus that.
    expected = np.array([-dy_um, -dx_um]) / rig.getPixelSizeUm()
    reg = register_pair(low, high)
    assert reg.passed and np.hypot(*(np.asarray(reg.shift_px) - expected)) < 0.3


def test_apply_registration_resamples_high_onto_lows_grid_with_nan_where_it_has_no_data(core):
    low, high = offset_pair(core, "Confocal", FIELDS_UM[0], (2.0, -3.0))
    reg = register_pair(low, high)
    out = apply_registration(high, reg)
    assert out.dtype == np.float32 and out.shape == low.shape
    assert np.isnan(out[:, -2:]).all() and np.isnan(out[:1]).all() and np.isfinite(out[3:, :-4]).all()
    inside = np.isfinite(out)
    assert np.corrcoef(out[inside], low[inside])[0, 1] > 0.9
    assert np.isfinite(apply_registration(high, reg, fill=0.0)).all()


def test_a_small_rotation_and_scale_is_recovered_with_affine_and_not_by_a_translation(core):
    theta, scale = np.deg2rad(1.5), 1.015
    lin = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    centre = (SIZE_PX - 1) / 2 * np.ones(2)
    offset = centre - lin @ centre + np.array([0.8, -1.3])
    truth = np.hstack([lin, offset[:, None]])  # high (r, c, 1) -> low, as the report states it
    corners = np.array([[0, 0, 1], [0, SIZE_PX - 1, 1], [SIZE_PX - 1, 0, 1], [SIZE_PX - 1, SIZE_PX - 1, 1]]).T
    for field_um in FIELDS_UM:
        low, high = snap(core, "Confocal", field_um), snap(core, "STED", field_um).astype(np.float64)
        high = ndimage.affine_transform(high, lin, offset=offset, order=3, mode="nearest")
        reg = register_pair(low, high, RegistrationSettings(affine=True))
        assert reg.passed, reg.reason
        found = np.asarray(reg.affine).reshape(2, 3)
        assert np.hypot(*((found - truth) @ corners)).max() < 1.0
        translated = register_pair(low, high)
        assert translated.ncc_after < reg.ncc_after - 0.02 and translated.residual_rms > reg.residual_rms


def test_unregistrable_pairs_fail_with_the_reason_never_silently(core):
    low, high = snap(core, "Confocal", FIELDS_UM[0]), snap(core, "STED", FIELDS_UM[0])
    rng = np.random.default_rng(1)
    dark = rng.poisson(5, low.shape).astype(np.uint16) + 100
    cases = {
        "empty": (low, dark, "the high image is empty"),
        "noise": (rng.normal(100, 5, low.shape), rng.normal(100, 5, low.shape), "the low image is empty"),
        "unrelated": (low, snap(core, "STED", FIELDS_UM[1]), "do not match"),
        "too far": (*offset_pair(core, "STED", FIELDS_UM[0], (0.0, 9.0)), "exceeds the maximum 5 px"),
        "saturated": (low, np.minimum((high - 100.0) * 40 + 100, 4095).astype(np.uint16), "saturated"),
    }
    settings = RegistrationSettings(max_shift_px=5.0)
    for name, (a, b, reason) in cases.items():
        reg = register_pair(a, b, settings)
        assert not reg.passed and reason in reg.reason, (name, reg.reason)


def test_a_single_straight_structure_is_an_unstable_estimate():
    field = np.zeros((SIZE_PX, SIZE_PX))
    field[:, 40:43] = 100.0  # one vertical line: the shift along it is undetermined
    rng = np.random.default_rng(2)
    low = ndimage.gaussian_filter(field, 2.0) + rng.normal(100, 1, field.shape)
    high = ndimage.gaussian_filter(np.roll(field, 5, axis=0), 1.0) + rng.normal(100, 1, field.shape)
    reg = register_pair(low, high)
    assert not reg.passed and "unstable" in reg.reason


def test_bad_input_is_a_one_line_error_naming_the_problem():
    img = np.ones((32, 32))
    with pytest.raises(RegistrationError, match=r"the low image is 32x32 px but the high one 32x40"):
        register_pair(img, np.ones((32, 40)))
    with pytest.raises(RegistrationError, match=r"the high image must be 2-D \(H, W\), got shape \(2, 32, 32\)"):
        register_pair(img, np.ones((2, 32, 32)))
    with pytest.raises(RegistrationError, match="NaN"):
        register_pair(img, np.full((32, 32), np.nan))


class Pair:
    def __init__(self, position, repeat, low, high):
        self.position, self.repeat, self.low_adu, self.high_adu = position, repeat, low, high


def test_a_report_is_saved_atomically_and_loads_back_equal(core, tmp_path):
    low, high = offset_pair(core, "STED", FIELDS_UM[0], (1.0, 0.5))
    pairs = [Pair(0, 0, low, high), Pair(1, 0, low, np.ones((8, 8)))]
    report = register_pairs(pairs, RegistrationSettings(max_shift_px=8.0), session_id="abc")
    assert [p.passed for p in report.pairs] == [True, False] and "16 px or more" in report.failed[0].reason
    file = report.save(tmp_path)
    assert file == tmp_path / REGISTRATION_FILE and [f.name for f in tmp_path.iterdir()] == [REGISTRATION_FILE]
    loaded = RegistrationReport.load(tmp_path)
    assert loaded == report and loaded.get(1, 0).passed is False and loaded.get(2, 0) is None
    assert loaded.settings.max_shift_px == 8.0


def test_a_damaged_or_foreign_report_is_refused_with_a_clear_message(tmp_path):
    with pytest.raises(RegistrationError, match="no registration report"):
        RegistrationReport.load(tmp_path)
    (tmp_path / REGISTRATION_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(RegistrationError, match="is not a livescope pair registration report"):
        RegistrationReport.load(tmp_path)
    with pytest.raises(ValueError, match="passes without a reason, or fails with one"):
        PairRegistration(position=0, repeat=0, shift_px=(0, 0), ncc_before=0, ncc_after=0, residual_rms=0,
                         passed=False)

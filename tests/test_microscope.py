"""Opening the microscope (a Micro-Manager config or the virtual one) and loading sequences,
on real pymmcore-plus and useq-schema."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import useq

from livescope.acquire.microscope import MicroscopeError, open_microscope
from livescope.acquire.sequence import SequenceError, load_sequence
from livescope.acquire.virtual import VirtualRigConfig

RIG = VirtualRigConfig(sensor_shape_px=(96, 128), field_um=40.0)


@pytest.fixture
def microscope():
    core = open_microscope(rig=RIG)
    yield core
    core.unloadAllDevices()


class FrameCollector:
    """An MDA output handler that keeps what it is given."""

    def __init__(self) -> None:
        self.frames: list[tuple[useq.MDAEvent, np.ndarray, dict]] = []

    def frameReady(self, img: np.ndarray, event: useq.MDAEvent, meta: dict) -> None:
        self.frames.append((event, img.copy(), meta))


# -- the virtual microscope -----------------------------------------------------------------------


def test_the_virtual_microscope_has_its_devices_in_their_roles_and_the_rigs_pixel_size(microscope):
    assert microscope.getCameraDevice() == "Camera"
    assert microscope.getFocusDevice() == "Z"
    assert microscope.getXYStageDevice() == "XY"
    assert microscope.getShutterDevice() == "Shutter"
    assert microscope.getPixelSizeUm() == pytest.approx(6.5 / 60.0)
    assert microscope.getExposure() == RIG.exposure_ms
    assert (microscope.getImageHeight(), microscope.getImageWidth()) == RIG.sensor_shape_px
    assert set(microscope.getAvailableConfigs("Modality")) == {"Widefield", "Confocal", "STED"}
    assert microscope.getCurrentConfig("Modality") == "Widefield"
    assert float(microscope.getProperty("LightPath", "NumericalAperture")) == RIG.na


def test_an_mda_over_time_and_z_delivers_every_frame_with_its_event_index(microscope):
    sequence = useq.MDASequence(time_plan={"interval": 0, "loops": 3}, z_plan={"range": 2.0, "step": 1.0})
    collector = FrameCollector()
    microscope.mda.run(sequence, output=[collector])

    assert [event.index for event, _, _ in collector.frames] == [e.index for e in sequence]
    assert [event.z_pos for event, _, _ in collector.frames] == [-1.0, 0.0, 1.0] * 3
    for _, img, meta in collector.frames:
        assert img.dtype == np.uint16 and img.shape == RIG.sensor_shape_px
        assert meta["pixel_size_um"] == pytest.approx(RIG.pixel_size_um)


def _signal(truth: np.ndarray) -> np.ndarray:
    """A clean frame less baseline and background, in ADU."""
    background_adu = RIG.background_photons_per_ms * RIG.exposure_ms * RIG.qe / RIG.e_per_adu
    return truth.astype(np.float64) - RIG.baseline_adu - background_adu


def _sharpness(signal: np.ndarray) -> float:
    """Fraction of the signal's power above 1/4 of the sampling frequency."""
    spectrum = np.abs(np.fft.rfft2(signal)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(signal.shape[0]), np.fft.rfftfreq(signal.shape[1]), indexing="ij")
    return float(spectrum[np.hypot(fy, fx) > 0.25].sum() / spectrum.sum())


def test_an_mda_over_positions_z_and_modality_moves_with_the_stage_blurs_with_defocus_and_sharpens_with_sted():
    # A 12 µm specimen: the field of view (10 x 14 µm) sees most of it.
    microscope = open_microscope(rig=RIG.model_copy(update={"field_um": 12.0}))
    p = RIG.pixel_size_um
    sequence = useq.MDASequence(
        stage_positions=[(0.0, 0.0, 0.0), (8 * p, -3 * p, 0.0)],
        z_plan={"range": 2.0, "step": 1.0},
        channels=[{"group": "Modality", "config": c} for c in ("Widefield", "Confocal", "STED")],
        axis_order="pcz",
    )
    truths: dict[tuple[int, str, float], np.ndarray] = {}

    class Truths:
        def frameReady(self, img, event, meta):
            # Frames arrive after the camera moved on: find each one's own truth by its pixels.
            truth = microscope.virtual_camera.truth_of(img)
            assert truth.defocus_um == event.z_pos and truth.modality == event.channel.config.lower()
            truths[event.index["p"], event.channel.config, event.z_pos] = truth.clean_adu

    microscope.mda.run(sequence, output=[Truths()])
    microscope.unloadAllDevices()
    assert len(truths) == 2 * 3 * 3

    for modality in ("Widefield", "Confocal", "STED"):
        for z in (-1.0, 0.0, 1.0):
            # The second position is 8 px right and 3 px up: the image moved left and down.
            before, after = truths[0, modality, z], truths[1, modality, z]
            np.testing.assert_allclose(after[3:, :-8], before[:-3, 8:], atol=1e-3 * np.ptp(before))
        in_focus, defocused = _signal(truths[0, modality, 0.0]), _signal(truths[0, modality, 1.0])
        assert _sharpness(defocused) < _sharpness(in_focus) / 5

    sharpness = [_sharpness(_signal(truths[0, m, 0.0])) for m in ("Widefield", "Confocal", "STED")]
    assert sharpness == sorted(sharpness) and sharpness[2] > 2 * sharpness[0]
    # Widefield keeps a defocused specimen's light; the pinhole sections it away. (STED keeps more
    # than confocal, relative to its in-focus signal: its doughnut spreads out of focus.)
    kept = {m: _signal(truths[0, m, 1.0]).sum() / _signal(truths[0, m, 0.0]).sum()
            for m in ("Widefield", "Confocal", "STED")}
    assert kept["Widefield"] > 0.95 and kept["Confocal"] < 0.3 and kept["STED"] < 0.8


def test_the_sample_drifts_between_frames_by_the_configured_amount():
    p = RIG.pixel_size_um
    rig = RIG.model_copy(update={"drift_um_per_frame": (2 * p, p, 0.0)})
    core = open_microscope(rig=rig)
    truths, drifts = [], []
    for _ in range(3):
        core.snap()
        truths.append(core.virtual_camera.last_ground_truth)
        drifts.append(core.virtual_camera.last_drift_um)
    core.unloadAllDevices()
    assert drifts[0] == (0.0, 0.0, 0.0) and drifts[2] == pytest.approx((4 * p, 2 * p, 0.0))
    # The sample moved right and down: so did its image.
    np.testing.assert_allclose(truths[2][2:, 4:], truths[0][:-2, :-4], atol=1e-3 * np.ptp(truths[0]))


def test_the_virtual_microscope_starts_in_the_rigs_modality():
    core = open_microscope(rig=RIG.model_copy(update={"modality": "sted"}))
    assert core.getCurrentConfig("Modality") == "STED"
    core.unloadAllDevices()


def test_ome_tiff_written_by_pymmcore_plus_records_pixel_size_and_optics(microscope, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    out = tmp_path / "stack.ome.tiff"
    microscope.mda.run(useq.MDASequence(z_plan={"range": 1.0, "step": 1.0}), output=str(out))
    with tifffile.TiffFile(out) as tif:
        ome = tif.ome_metadata
    assert f'PhysicalSizeX="{RIG.pixel_size_um}"' in ome and 'PhysicalSizeZ="1.0"' in ome
    assert '{"name": "NumericalAperture", "value": 1.4}' in ome


def test_a_sequence_made_from_flags_runs_its_frames_at_its_exposure(microscope):
    collector = FrameCollector()
    microscope.mda.run(load_sequence(frames=4, exposure_ms=3.0), output=[collector])

    assert [event.index for event, _, _ in collector.frames] == [{"t": t} for t in range(4)]
    assert all(meta["exposure_ms"] == 3.0 for _, _, meta in collector.frames)


# -- a real rig's config --------------------------------------------------------------------------


def test_a_missing_micro_manager_config_is_a_one_line_error_naming_it(tmp_path):
    missing = tmp_path / "rig.cfg"
    with pytest.raises(MicroscopeError) as error:
        open_microscope(missing)
    assert str(error.value) == f"Micro-Manager config not found: {missing}"


@pytest.mark.parametrize("text", [
    "Device,Camera,NoSuchAdapter,NoSuchCamera\nProperty,Core,Initialize,1\n",  # unknown adapter
    "Device,Camera\n",  # wrong number of fields
])
def test_a_config_that_does_not_load_is_a_one_line_error_with_the_reason_and_a_hint(tmp_path, text):
    config = tmp_path / "rig.cfg"
    config.write_text(text)
    with pytest.raises(MicroscopeError) as error:
        open_microscope(config)
    message = str(error.value)
    assert "\n" not in message
    assert str(config) in message and "Line 1" in message and "mmcore install" in message


def test_a_process_that_opened_a_rig_exits_cleanly(tmp_path):
    # MMCore aborts the interpreter at exit if a loaded core is torn down too late.
    config = tmp_path / "empty.cfg"
    config.write_text("Property,Core,Initialize,1\n")
    script = ("import sys; from livescope.acquire.microscope import open_microscope; "
              "core = open_microscope(sys.argv[1]); print(core.getLoadedDevices())")
    done = subprocess.run([sys.executable, "-c", script, str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Core" in done.stdout


# -- sequences ------------------------------------------------------------------------------------


def test_a_sequence_file_in_yaml_or_json_loads_as_written(tmp_path):
    written = useq.MDASequence(time_plan={"interval": 0.5, "loops": 2}, z_plan={"range": 1.0, "step": 0.5})
    (tmp_path / "seq.yaml").write_text(written.yaml())
    (tmp_path / "seq.json").write_text(written.model_dump_json())
    for name in ("seq.yaml", "seq.json"):
        loaded = load_sequence(tmp_path / name)
        assert [e.index for e in loaded] == [e.index for e in written]
        assert loaded.time_plan == written.time_plan


@pytest.mark.parametrize(("text", "problem"), [
    ("time_plan: [1, 2\n", "not valid YAML: line 2"),
    ("z_plna: {range: 2, step: 1}\n", "unknown field(s) 'z_plna'"),
    ("z_plan: {range: 2, step: fine}\n", "z_plan.step: Input should be a valid number"),
    ("- just\n- a list\n", "valid dictionary"),
    ("metadata: {note: nothing to acquire}\n", "describes no frames"),
])
def test_a_bad_sequence_file_is_a_one_line_error_naming_the_file_and_the_problem(tmp_path, text, problem):
    path = tmp_path / "seq.yaml"
    path.write_text(text)
    with pytest.raises(SequenceError) as error:
        load_sequence(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and problem in message


def test_missing_or_unknown_kinds_of_sequence_file_are_errors(tmp_path):
    with pytest.raises(SequenceError, match="cannot read sequence"):
        load_sequence(tmp_path / "nothing.yaml")
    (tmp_path / "seq.txt").write_text("")
    with pytest.raises(SequenceError, match=r"unknown file type '\.txt'"):
        load_sequence(tmp_path / "seq.txt")


def test_flags_make_a_time_plan_and_a_setup_exposure_and_default_to_one_frame():
    assert [e.index for e in load_sequence()] == [{"t": 0}]
    sequence = load_sequence(frames=5, interval_s=0.25, exposure_ms=20.0)
    assert sequence.sizes["t"] == 5
    assert sequence.time_plan.interval.total_seconds() == 0.25
    assert sequence.setup.exposure == 20.0


def test_flags_may_add_to_a_sequence_file_but_not_contradict_it(tmp_path):
    path = tmp_path / "zstack.yaml"
    path.write_text(useq.MDASequence(z_plan={"range": 2.0, "step": 1.0}).yaml())
    added = load_sequence(path, frames=2, exposure_ms=5.0)
    assert (added.sizes["t"], added.sizes["z"], added.setup.exposure) == (2, 3, 5.0)

    timed = tmp_path / "timed.yaml"
    # (By hand: useq 0.9.2 writes a setup event as YAML that it cannot read back.)
    timed.write_text("time_plan: {interval: 0, loops: 3}\nsetup: {exposure: 7.0}\n")
    assert load_sequence(timed, frames=3, exposure_ms=7.0).sizes["t"] == 3  # agreeing is fine
    with pytest.raises(SequenceError, match="own time plan"):
        load_sequence(timed, frames=4)
    with pytest.raises(SequenceError, match="own exposure"):
        load_sequence(timed, exposure_ms=8.0)


@pytest.mark.parametrize("flags", [{"frames": 0}, {"interval_s": 1.0}, {"exposure_ms": 0.0}])
def test_flags_out_of_range_are_errors(flags):
    with pytest.raises(SequenceError):
        load_sequence(**flags)


def test_binning_sums_pixels_before_readout_and_scales_the_pixel_size():
    from livescope.acquire.microscope import open_microscope as open_scope
    from livescope.acquire.virtual import VirtualRigConfig as Rig

    core = open_scope(rig=Rig(sensor_shape_px=(128, 96), seed=2, specimen="cells"))
    core.snapImage()
    full = core.getImage().astype(float)
    size = core.getPixelSizeUm()
    core.setProperty("Camera", "Binning", "2")
    core.snapImage()
    binned = core.getImage().astype(float)
    baseline = core.rig.baseline_adu
    assert binned.shape == (64, 48)
    assert abs(core.getPixelSizeUm() - 2 * size) < 1e-12
    # four pixels' charge, one read-out: four times the signal per pixel, same baseline
    assert abs((binned.mean() - baseline) / (full.mean() - baseline) - 4) < 0.3

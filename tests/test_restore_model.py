"""Cross-modality restoration (confocal -> STED): the pairs it learns from, the served graph's
intensity contract, a few training steps, export parity, atomic publication, bad input, and the
shipped model's evidence that it beats the unchanged input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from livescope.modelcard import CARD_FILE, MODEL_FILE, ModelCard
from livescope.models.restore.data import (
    RestoreDataError,
    VirtualRestoreData,
    registration_aligner,
    require_fields,
    sample_patches,
    session_pairs,
    split_fields,
    virtual_pairs,
)
from livescope.models.restore.net import RestoreGraph, restore_unet
from livescope.models.restore.train import RestoreTrainConfig, frc_resolution_px, train_and_publish_restorer
from livescope.repository import INCOMING_PREFIX, ModelVersion, next_version

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "shipped" / "restore" / "1"
BASELINE_ADU = 100.0


@dataclass(frozen=True)
class Pair:
    """What a calibration session gives per pair (the `PairLike` protocol)."""

    position: int
    repeat: int
    low_adu: np.ndarray
    high_adu: np.ndarray


@pytest.fixture(scope="module")
def pairs():
    """Four small fields of nuclei and two of filaments, 64 px at 30 nm."""
    cells = VirtualRestoreData(specimens=("cells",), fields_per_specimen=4, sensor_shape_px=(64, 64),
                               signal_photons_per_ms=(10.0,))
    filaments = cells.model_copy(update={"specimens": ("filaments",), "fields_per_specimen": 2})
    return virtual_pairs(cells) + virtual_pairs(filaments)


# -- the pairs -------------------------------------------------------------------------------------


def test_a_virtual_pair_shows_one_field_sharper_in_sted_at_the_confocal_brightness(pairs):
    for pair in pairs:
        assert pair.low_adu.shape == pair.high_adu.shape == pair.clean_high_adu.shape == (64, 64)
        # the STED image is scaled to the confocal one's brightness: the served output's units
        assert pair.clean_high_adu.mean() - BASELINE_ADU == pytest.approx(pair.low_adu.mean() - BASELINE_ADU, rel=0.05)
    filaments = pairs[-1]
    assert np.corrcoef(filaments.low_adu.ravel(), filaments.clean_high_adu.ravel())[0, 1] > 0.5  # the same field
    # finer detail in STED: the confocal frame agrees with it only at coarser periods
    assert frc_resolution_px([filaments.low_adu], [filaments.clean_high_adu]) > 2 * frc_resolution_px(
        [filaments.high_adu], [filaments.clean_high_adu])


def test_the_virtual_data_says_what_it_is():
    text = VirtualRestoreData().describe()
    assert "confocal/STED" in text and "30 nm" in text and "seed 0" in text


def registration(position: int, shift_px: tuple[float, float], reason: str | None = None):
    """A pair's registration as `livescope.acquire.calibration.registration` reports it."""
    from livescope.acquire.calibration.registration import PairRegistration

    return PairRegistration(position=position, repeat=0, shift_px=shift_px, ncc_before=0.5, ncc_after=0.9,
                            residual_rms=0.2, passed=reason is None, reason=reason)


def test_a_session_pair_is_registered_its_uncovered_border_cut_and_scaled_to_the_low_brightness(pairs):
    from livescope.acquire.calibration.registration import RegistrationReport

    field = pairs[-1]
    low = field.low_adu[4:60, 4:60].astype(np.uint16)  # 56 px of the 64 px field
    # STED as a rig gives it: a quarter of the light, the sample drifted: (+2, -3) px carries it onto low
    high = ((field.clean_high_adu[6:62, 1:57] - BASELINE_ADU) * 0.25 + BASELINE_ADU).astype(np.uint16)
    raw = [Pair(0, 0, low, high)]
    report = RegistrationReport(pairs=(registration(0, (2.0, -3.0)),))
    kept, dropped = session_pairs(raw, baseline_adu=BASELINE_ADU, source="s", align=registration_aligner(report))
    assert dropped == [] and len(kept) == 1
    pair = kept[0]
    assert pair.shape == (54, 53)  # the rows and columns the drift uncovered are cut from both images
    np.testing.assert_array_equal(pair.low_adu, low[2:, :53])
    assert pair.high_adu.mean() == pytest.approx(pair.low_adu.mean(), rel=1e-4)  # at the low brightness
    truth = field.clean_high_adu[6:60, 4:57]
    assert np.corrcoef(pair.high_adu.ravel(), truth.ravel())[0, 1] > 0.99  # back in place
    assert pair.field_id == "s position 0" and pair.clean_high_adu is None


def test_pairs_that_fail_registration_or_show_no_signal_are_left_out_with_a_reason(pairs):
    from livescope.acquire.calibration.registration import RegistrationReport

    field = pairs[0]
    raw = [Pair(i, 0, field.low_adu, field.high_adu) for i in range(3)]
    report = RegistrationReport(pairs=(registration(0, (0.0, 0.0)), registration(1, (0.0, 0.0), "NCC 0.1 < 0.5")))
    kept, dropped = session_pairs(raw, baseline_adu=BASELINE_ADU, source="s", align=registration_aligner(report))
    assert len(kept) == 1
    assert dropped[0] == "s position 1 repeat 0: registration failed (NCC 0.1 < 0.5); left out"
    assert dropped[1] == "s position 2 repeat 0: not in the registration report; left out"
    dark = np.full_like(field.low_adu, BASELINE_ADU)
    _, dropped = session_pairs([Pair(3, 0, field.low_adu, dark)], baseline_adu=BASELINE_ADU, source="s")
    assert "position 3 repeat 0: no signal above the baseline 100 ADU in one of the images" in dropped[0]


def test_pairs_of_two_different_sizes_are_refused_in_one_line(pairs):
    with pytest.raises(RestoreDataError, match=r"position 3 repeat 1: low and high images must be one \(H, W\)"):
        session_pairs([Pair(3, 1, pairs[0].low_adu, pairs[0].low_adu[:32])], baseline_adu=BASELINE_ADU, source="s")


def test_too_few_positions_are_refused_saying_how_many_are_needed(pairs):
    one_field = [p for p in pairs if p.field_id == pairs[0].field_id]
    with pytest.raises(RestoreDataError, match="needs pairs at 2 or more positions"):
        require_fields(one_field, 64)
    with pytest.raises(RestoreDataError, match="smaller than the 96 px training patch"):
        require_fields(pairs, 96)


def test_whole_fields_are_held_out(pairs):
    repeated = pairs + [pairs[0]]  # a second repeat of the first field
    train, held = split_fields(repeated, 1 / 3, np.random.default_rng(0))
    assert len(held) >= 1 and len(train) + len(held) == len(repeated)
    assert not {p.field_id for p in train} & {p.field_id for p in held}


def test_a_batch_crops_and_turns_input_and_target_alike(pairs):
    same = [type(p)(p.low_adu, p.low_adu, None, p.field_id, p.source) for p in pairs]  # target = input
    inputs, targets = sample_patches(same, 8, 32, np.random.default_rng(1), target="clean")
    assert inputs.shape == targets.shape == (8, 1, 32, 32) and inputs.dtype == np.float32
    np.testing.assert_array_equal(inputs, targets)


# -- the served graph ------------------------------------------------------------------------------


def test_the_graph_keeps_the_input_brightness_whatever_the_exposure():
    torch.manual_seed(0)
    graph = RestoreGraph(restore_unet(2, 4), baseline_adu=BASELINE_ADU).eval()
    frame = torch.rand(1, 1, 32, 32) * 50 + BASELINE_ADU + 5
    with torch.no_grad():
        out, brighter = graph(frame), graph((frame - BASELINE_ADU) * 3 + BASELINE_ADU)
    torch.testing.assert_close(brighter - BASELINE_ADU, 3 * (out - BASELINE_ADU), rtol=1e-4, atol=1e-3)


def test_fourier_ring_correlation_finds_the_period_where_a_noisy_blurred_copy_stops_agreeing():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    truth = rng.normal(size=(128, 128))

    def seen(blur_px: float) -> np.ndarray:  # a blur, then noise: detail beyond the blur drowns
        return gaussian_filter(truth, blur_px) + rng.normal(scale=0.02, size=truth.shape)

    assert frc_resolution_px([truth], [truth]) == 2.0  # agrees up to Nyquist
    assert frc_resolution_px([seen(3.0)], [truth]) > 2 * frc_resolution_px([seen(1.0)], [truth]) > 2.0


# -- training, export, publication -----------------------------------------------------------------


def test_a_few_steps_publish_a_version_that_onnxruntime_serves_with_its_card(tmp_path, pairs):
    train, held = split_fields(pairs, 1 / 3, np.random.default_rng(0))
    config = RestoreTrainConfig(steps=3, batch_size=4, base_channels=8, validate_every_steps=2)
    folder, card = train_and_publish_restorer(
        tmp_path, name="restore", pairs=train, held_out=held, config=config, baseline_adu=BASELINE_ADU,
        data_description="six virtual fields", command="test", pixel_size_um=0.03)
    assert folder == tmp_path / "restore" / str(next_version(tmp_path, "restore") - 1)
    assert (folder / MODEL_FILE).stat().st_size > 0 and ModelCard.load(folder / CARD_FILE) == card
    assert card.task == "restore" and card.inputs[0].dtype == "uint16" and card.normalisation.offset_adu == 100
    assert "brightness" in card.description  # the output's intensity units are documented
    assert {"psnr_db_restored", "psnr_db_unchanged", "frc_resolution_nm_restored",
            "frc_resolution_nm_unchanged"} <= card.metrics.keys()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(INCOMING_PREFIX)]

    from livescope.server.models import LoadedModel

    model = LoadedModel.load(ModelVersion(card, folder))  # the server's card-vs-graph checks pass
    frames = np.stack([held[0].low_adu, held[0].low_adu])[:, :60, :52].astype(np.uint16)  # any size: padded
    out = model.run(frames)
    assert out.shape == (2, 60, 52) and out.dtype == np.float32 and np.isfinite(out).all()


def test_a_failed_training_leaves_no_version_behind(tmp_path, pairs):
    one_field = [p for p in pairs if p.field_id == pairs[0].field_id]
    with pytest.raises(RestoreDataError):
        train_and_publish_restorer(tmp_path, name="restore", pairs=one_field, held_out=one_field,
                                   config=RestoreTrainConfig(steps=1), baseline_adu=BASELINE_ADU,
                                   data_description="", command="test")
    assert not (tmp_path / "restore").exists()


# -- the shipped model -----------------------------------------------------------------------------


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="restore@1 is not shipped yet")
def test_the_shipped_restorer_beats_the_unchanged_input_on_its_held_out_fields():
    card = ModelCard.load(SHIPPED / CARD_FILE)
    assert card.task == "restore" and card.provenance.command.startswith("livescope train restore")
    assert card.metrics["psnr_db_restored"] > card.metrics["psnr_db_unchanged"] + 3
    assert card.metrics["frc_resolution_nm_restored"] < 0.6 * card.metrics["frc_resolution_nm_unchanged"]
    assert (SHIPPED / MODEL_FILE).stat().st_size < 5_000_000


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="restore@1 is not shipped yet")
def test_the_shipped_restorer_sharpens_unseen_confocal_frames_through_livescope_restore(tmp_path):
    from livescope.server.offline import run_offline
    from livescope.stackio import read_stack

    unseen = virtual_pairs(VirtualRestoreData(specimens=("filaments",), fields_per_specimen=2,
                                              sensor_shape_px=(96, 96), seed=7))
    path = tmp_path / "confocal.ome.tif"
    tifffile.imwrite(path, np.stack([p.low_adu for p in unseen]).astype(np.uint16), ome=True, metadata={"axes": "TYX"})
    run_offline("restore", path, tmp_path / "sted.ome.tif", task="restore", threads=1)
    restored = read_stack(tmp_path / "sted.ome.tif").frames
    truth = np.stack([p.clean_high_adu for p in unseen])
    low = np.stack([p.low_adu for p in unseen])
    assert np.mean((restored - truth) ** 2) < 0.5 * np.mean((low - truth) ** 2)

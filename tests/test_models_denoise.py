"""The denoiser: N2V2 UNet, Noise2Void training, ONNX export and publishing a model version."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from livescope.modelcard import CARD_FILE, MODEL_FILE, ModelCard
from livescope.models import export
from livescope.models.denoise.data import VirtualDenoiseData, virtual_frames
from livescope.models.denoise.n2v import (
    BlindSpotMasking,
    blind_spot_mask,
    masked_mse,
    neighbourhood_median,
    struct_neighbours,
)
from livescope.models.denoise.train import (
    VALIDATION_PATCHES_IN_LOOP,
    DenoiseTrainConfig,
    HeldOutLoss,
    train_and_publish,
    train_denoise,
)
from livescope.models.intensity import IntensityTransform
from livescope.models.metrics import psnr_db
from livescope.models.unet import InGraphNormalised, UNet, UNetConfig
from livescope.repository import ModelRepository, existing_versions, write_version

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "shipped"
TINY_DATA = VirtualDenoiseData(
    modalities=("widefield", "confocal"),
    specimens=("filaments", "beads"),
    signal_photons_per_ms=(1.0, 8.0),
    frames_per_condition=1,
    sensor_shape_px=(64, 64),
)
TINY_TRAINING = DenoiseTrainConfig(base_channels=8, patch_px=32, batch_size=4, steps=3, seed=1)

# a user's versions number after the shipped ones (which are searched first)
FIRST_USER_VERSION = max(existing_versions(SHIPPED, "denoise")) + 1


def cpu_session(model: Path | bytes) -> ort.InferenceSession:
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, ModelCard]:
    """A version written by a training run of a few steps on a few small virtual frames."""
    repository = tmp_path_factory.mktemp("repository")
    return train_and_publish(repository, data=TINY_DATA, config=TINY_TRAINING, command="test")


# --- the network ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_unet_keeps_the_shape_of_frames_whose_sides_are_multiples_of_2_to_the_depth(depth):
    net = UNet(UNetConfig(depth=depth, base_channels=4)).eval()
    m = 2**depth
    with torch.no_grad():
        for shape in [(1, 1, m, m), (2, 1, 3 * m, 5 * m), (1, 1, 16 * m, 8 * m)]:
            assert net(torch.zeros(shape)).shape == shape


def test_unet_receptive_field_is_within_the_halo_recorded_for_tiling():
    config = UNetConfig(depth=2, base_channels=4)
    x = torch.zeros(1, 1, 128, 128, requires_grad=True)
    UNet(config)(x)[0, 0, 64, 64].backward()
    reached = (x.grad[0, 0] != 0).nonzero()
    assert (reached - 64).abs().max() <= config.halo_px


@pytest.fixture
def one_torch_thread():
    """Step times that do not depend on what else runs on the machine's cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- Noise2Void masking --------------------------------------------------------------------


def test_blind_spots_are_one_per_box_and_replace_only_masked_pixels_by_their_neighbours_median():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 32, 48, generator=g)
    masked, mask = BlindSpotMasking(box_px=8, median_radius_px=2)(x, g)
    assert mask.view(2, 1, 4, 8, 6, 8).sum(dim=(3, 5)).eq(1).all()

    assert torch.equal(masked[~mask], x[~mask])
    assert not torch.equal(masked[mask], x[mask])
    n, _, y, xx = mask.nonzero()[0].tolist()
    if 2 <= y < 30 and 2 <= xx < 46:  # away from the border: the 24 neighbours, centre excluded
        window = x[n, 0, y - 2 : y + 3, xx - 2 : xx + 3].flatten()
        neighbours = torch.cat([window[:12], window[13:]])
        assert masked[n, 0, y, xx] == neighbours.median()
    assert torch.equal(neighbourhood_median(x)[mask], masked[mask])


@pytest.mark.parametrize("axis", ["row", "column"])
def test_struct_n2v_hides_the_masked_pixels_neighbours_along_the_correlated_axis_only(axis):
    g = torch.Generator().manual_seed(2)
    x = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32) + 1000.0
    masked, mask = BlindSpotMasking(box_px=8, struct_axis=axis, struct_span_px=2)(x, g)
    hidden = struct_neighbours(mask, axis, 2)
    for _, _, y, xx in mask.nonzero().tolist():
        for d in (-2, -1, 1, 2):
            yy, xxx = (y, xx + d) if axis == "row" else (y + d, xx)
            if 0 <= yy < 32 and 0 <= xxx < 32 and not mask[0, 0, yy, xxx]:
                assert hidden[0, 0, yy, xxx]
    assert int(hidden.sum()) <= 4 * int(mask.sum())
    untouched = ~mask & ~hidden
    assert torch.equal(masked[untouched], x[untouched])
    # the hidden pixels get values of the same patch, not their own, so they say nothing of the noise
    assert torch.isin(masked[hidden], x.flatten()).all()
    assert (masked[hidden] != x[hidden]).float().mean() > 0.9
    # the centre's fill leaves the correlated line out of the median
    exclude_line = neighbourhood_median(x, 2, exclude=axis)
    assert torch.equal(masked[mask], exclude_line[mask])


def test_struct_n2v_is_configured_with_an_axis_and_a_span_together():
    with pytest.raises(ValueError, match="structN2V"):
        DenoiseTrainConfig(struct_axis="row", steps=1)
    with pytest.raises(ValueError, match="structN2V"):
        DenoiseTrainConfig(struct_span_px=3, steps=1)
    assert DenoiseTrainConfig(struct_axis="row", struct_span_px=3, steps=1).masking.struct_span_px == 3


def test_n2v_loss_sees_only_the_masked_pixels():
    g = torch.Generator().manual_seed(1)
    noisy = torch.randn(1, 1, 16, 16, generator=g)
    mask = blind_spot_mask(noisy.shape, 4, g)
    prediction = torch.zeros_like(noisy, requires_grad=True)
    loss = masked_mse(prediction, noisy, mask)
    loss.backward()
    assert torch.isclose(loss, (noisy[mask] ** 2).mean())
    assert prediction.grad[~mask].eq(0).all() and prediction.grad[mask].ne(0).all()
    changed = torch.where(mask, prediction, prediction + 100.0)
    assert torch.isclose(masked_mse(changed, noisy, mask), loss)


def test_training_is_reproducible_for_a_seed():
    frames = np.random.default_rng(0).poisson(50, (2, 32, 32)).astype(np.uint16) + 100
    config = DenoiseTrainConfig(depth=2, base_channels=4, patch_px=16, batch_size=2, steps=2, seed=3)
    a, b = train_denoise(frames, config), train_denoise(frames, config)
    assert all(torch.equal(p, q) for p, q in zip(a.net.parameters(), b.net.parameters()))
    assert a.steps == 2 and a.transform == b.transform


def test_a_time_budget_is_kept_and_a_slow_start_does_not_cut_training_short(one_torch_thread):
    frames = np.random.default_rng(0).poisson(50, (2, 32, 32)).astype(np.uint16) + 100
    small = dict(depth=2, base_channels=4, patch_px=16, batch_size=2, seed=5, validate_every_steps=25)
    planned_after_warm_up = []

    def slow_warm_up(p):  # as if the machine were busy during the first steps
        if p.step <= 10:
            time.sleep(0.1)
        if p.step == 20:
            planned_after_warm_up.append(p.total_steps)

    budgeted = train_denoise(frames, DenoiseTrainConfig(budget_seconds=3.0, **small), slow_warm_up)
    assert budgeted.stopped_because == "budget"
    assert budgeted.train_seconds < 3.0 + 0.5
    # re-estimating from the recent speed uses the rest of the budget
    assert budgeted.steps > 1.5 * planned_after_warm_up[0]


def test_held_out_loss_keeps_the_best_weights_and_stops_early_when_it_no_longer_improves():
    rng = np.random.default_rng(1)
    frames = (rng.poisson(40, (4, 32, 32)) + 100).astype(np.uint16)  # flat: nothing more to learn
    held_out = (rng.poisson(40, (2, 32, 32)) + 100).astype(np.uint16)
    config = DenoiseTrainConfig(depth=2, base_channels=4, patch_px=16, batch_size=4, seed=2,
                                steps=5000, validate_every_steps=10, patience_validations=3)
    seen = []
    trained = train_denoise(frames, config, seen.append, held_out=held_out)
    assert trained.stopped_because == "early stop" and trained.steps < 5000
    assert trained.best_step is not None and trained.best_step <= trained.steps - 30
    assert seen[-1].best_validation_loss == trained.best_validation_loss
    assert all(p.eta_s is not None for p in seen) and seen[-1].validation_loss is not None
    again = HeldOutLoss(held_out, trained.transform, config, VALIDATION_PATCHES_IN_LOOP)
    assert again(trained.net) == pytest.approx(trained.best_validation_loss, rel=1e-6)


# --- export and publishing -----------------------------------------------------------------


def test_a_tiny_training_run_publishes_an_onnx_with_uint16_input_and_dynamic_n_h_w(published):
    folder, card = published
    assert folder.name == str(FIRST_USER_VERSION) and folder.parent.name == "denoise"
    graph = onnx.load(folder / MODEL_FILE).graph
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.input] == [
        ("raw", onnx.TensorProto.UINT16)
    ]
    assert [(o.name, o.type.tensor_type.elem_type) for o in graph.output] == [
        ("restored", onnx.TensorProto.FLOAT)
    ]
    session = cpu_session(folder / MODEL_FILE)
    m = card.tiling.size_multiple_px
    for shape in [(1, 1, 16 * m, 16 * m), (3, 1, 5 * m, 9 * m)]:
        raw = np.random.default_rng(0).integers(90, 400, shape).astype(np.uint16)
        out = session.run(["restored"], {"raw": raw})[0]
        assert out.shape == shape and out.dtype == np.float32


def test_the_published_card_describes_the_graph_and_where_it_came_from(published):
    folder, card = published
    assert ModelCard.load(folder / CARD_FILE) == card
    assert (card.name, card.version, card.task) == ("denoise", FIRST_USER_VERSION, "denoise")
    assert [(t.name, t.dtype, t.axes) for t in card.inputs] == [("raw", "uint16", "NCYX")]
    assert [(t.name, t.dtype, t.axes) for t in card.outputs] == [("restored", "float32", "NCYX")]
    assert card.normalisation.kind == "in_graph" and card.normalisation.scale > 0
    assert card.tiling.size_multiple_px == 4 and card.tiling.halo_px > 0
    assert card.provenance.seed == 1 and card.provenance.data_hash.startswith("sha256:")
    assert {"psnr_noisy_db_widefield_at_10_photons", "psnr_denoised_db_confocal_at_80_photons"} <= set(
        card.metrics
    )
    assert card.trained_for.modalities == ("widefield", "confocal")
    assert card.trained_for.peak_photons == (10.0, 80.0)
    # the graph and its card, and for a person: the loss curves and held-out examples beside the output
    assert sorted(p.name for p in folder.iterdir()) == sorted([CARD_FILE, MODEL_FILE, "training.svg", "held_out.png"])
    assert [p.name for p in folder.parent.parent.iterdir()] == ["denoise"]  # no leftovers


def test_the_next_version_is_the_largest_existing_one_plus_one(published):
    folder, card = published
    repository = folder.parent.parent
    (repository / "denoise" / "7").mkdir()  # a gap: versions need not be contiguous

    def copy_of_version_1(staging: Path, version: int) -> ModelCard:
        shutil.copy(folder / MODEL_FILE, staging / MODEL_FILE)
        return card.model_copy(update={"version": version})

    written, new_card = write_version(repository, "denoise", copy_of_version_1)
    assert written == repository / "denoise" / "8" and new_card.version == 8
    assert ModelCard.load(written / CARD_FILE).version == 8
    shutil.rmtree(written)
    (repository / "denoise" / "7").rmdir()


def test_an_export_that_disagrees_with_torch_writes_nothing(published, tmp_path):
    folder, card = published
    proto = onnx.load(folder / MODEL_FILE)
    other = UNet(UNetConfig(depth=2, base_channels=8))  # not the weights that were exported
    transform = IntensityTransform(card.normalisation.transform, card.normalisation.offset_adu,
                                   card.normalisation.scale)
    module = InGraphNormalised(other, transform)
    raw = np.full((1, 1, 32, 32), 150, np.uint16)

    def fill(staging: Path, version: int) -> ModelCard:
        export.save(proto, staging / MODEL_FILE)
        export.check_parity(module, proto, raw)
        raise AssertionError("parity should have failed")

    with pytest.raises(export.ExportError, match="disagree"):
        write_version(tmp_path, "denoise", fill)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_module_that_cannot_be_exported_writes_nothing(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, raw):
            raise RuntimeError("broken on purpose")

    def fill(staging: Path, version: int) -> ModelCard:
        export.save(export.to_onnx(Broken(), 4), staging / MODEL_FILE)
        raise AssertionError("export should have failed")

    with pytest.raises(export.ExportError, match="broken on purpose"):
        write_version(tmp_path, "denoise", fill)
    assert [p.name for p in tmp_path.iterdir()] == []


# --- the shipped model ---------------------------------------------------------------------


SHIPPED_DENOISE = SHIPPED / "denoise" / "2"


def test_two_denoisers_are_shipped_and_the_camera_agnostic_one_is_the_default():
    assert sorted(p.name for p in (SHIPPED / "denoise").iterdir()) == ["2", "3"]
    card = ModelCard.load(SHIPPED / "denoise" / "3" / CARD_FILE)
    assert ModelRepository([SHIPPED]).resolve("denoise").ref == "denoise@3" == card.ref
    assert card.normalisation.kind == "photons" and card.gate is not None and card.gate.passed
    assert (SHIPPED / "denoise" / "3" / MODEL_FILE).stat().st_size < 5_000_000
    export.check_contract(onnx.load(SHIPPED / "denoise" / "3" / MODEL_FILE), input_dtype=onnx.TensorProto.FLOAT)
    assert card.trained_for.peak_photons == (1.0, 1000.0) and card.trained_for.psf_sigma_px == (0.7, 4.0)
    assert card.provenance.command == "livescope train denoise --broad --models models/shipped --steps 6000 --seed 0"
    # on its held-out levels it beats the best Gaussian from 3 photons up, and the noisy input everywhere
    for peak in (3, 10, 30, 100, 300, 1000):
        assert card.metrics[f"psnr_denoised_db_at_{peak}_photons"] > card.metrics[f"psnr_gaussian_db_at_{peak}_photons"]
    assert all(card.metrics[f"psnr_denoised_db_at_{p:g}_photons"] > card.metrics[f"psnr_noisy_db_at_{p:g}_photons"]
               for p in (1, 3, 10, 30, 100, 300, 1000))


def test_the_one_camera_denoiser_is_still_shipped_and_its_card_says_what_it_covers():
    card = ModelCard.load(SHIPPED_DENOISE / CARD_FILE)
    assert card.ref == "denoise@2" and card.task == "denoise"
    assert (SHIPPED_DENOISE / MODEL_FILE).stat().st_size < 5_000_000
    export.check_contract(onnx.load(SHIPPED_DENOISE / MODEL_FILE))
    assert card.trained_for.modalities == ("widefield", "confocal")
    assert card.trained_for.peak_photons == (5.0, 500.0)
    assert card.provenance.command == "livescope train denoise --models models/shipped --steps 4000 --seed 0"


@pytest.mark.parametrize("modality,signal", [("widefield", 0.5), ("widefield", 5.0), ("confocal", 1.5)])
def test_the_shipped_denoiser_brings_unseen_virtual_frames_closer_to_clean(modality, signal):
    frames = virtual_frames(
        VirtualDenoiseData(modalities=(modality,), specimens=("filaments", "cells"),
                           signal_photons_per_ms=(signal,), frames_per_condition=1, seed=12345)
    )
    session = cpu_session(SHIPPED_DENOISE / MODEL_FILE)
    restored = np.concatenate([session.run(["restored"], {"raw": f[None, None]})[0][:, 0]
                               for f in frames.noisy_adu])
    assert psnr_db(restored, frames.clean_adu) > psnr_db(frames.noisy_adu, frames.clean_adu) + 6.0

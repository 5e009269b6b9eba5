"""The localisation network, its loss, its export and the server's post-processing of its maps."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from livescope.emitters import LOCALISE_MAP_CHANNELS
from livescope.localise_maps import local_maxima, maps_to_emitters
from livescope.modelcard import CARD_FILE, MODEL_FILE, LocaliseSpec, ModelCard
from livescope.models.localise.data import LocaliseSimulation
from livescope.models.localise.net import LocaliseNet, LocaliseNetConfig, Targets, mixture_loss
from livescope.models.localise.train import LocaliseTrainConfig, train_and_publish_localiser

SPEC = LocaliseSpec(context_frames=3, psf="gaussian")
TINY = LocaliseNetConfig(frame_channels=4, temporal_channels=4)


def test_the_network_maps_a_window_of_frames_to_one_map_per_channel_of_the_last_frame():
    net = LocaliseNet(TINY).eval()
    with torch.no_grad():
        maps = net(torch.rand(2, 3, 24, 32) * 100)
    assert maps.shape == (2, len(LOCALISE_MAP_CHANNELS), 24, 32)
    ch = dict(zip(LOCALISE_MAP_CHANNELS, maps.unbind(1)))
    assert ((ch["p"] > 0) & (ch["p"] < 1)).all() and (ch["dx"].abs() < 1).all()
    assert (ch["x_sigma"] > 0).all() and (ch["photons"] > 0).all() and (ch["dz"] == 0).all()  # 2-D


def test_the_halo_covers_the_receptive_field():
    net = LocaliseNet(TINY)
    x = torch.zeros(1, 3, 96, 96, requires_grad=True)
    net(x)[0, 0, 48, 48].backward()
    reached = (x.grad[0].abs().sum(0) != 0).nonzero()
    assert (reached - 48).abs().max() <= TINY.halo_px


def _maps_with(p: torch.Tensor, dx: float = 0.0, sigma: float = 0.1) -> torch.Tensor:
    maps = torch.zeros(1, len(LOCALISE_MAP_CHANNELS), *p.shape)
    ch = {name: i for i, name in enumerate(LOCALISE_MAP_CHANNELS)}
    maps[0, ch["p"]] = p
    maps[0, ch["dx"]] = dx
    maps[0, ch["photons"]] = 1000.0
    for name in ("x_sigma", "y_sigma"):
        maps[0, ch[name]] = sigma
    maps[0, ch["photons_sigma"]] = 100.0
    maps[0, ch["z_sigma"]] = 50.0
    maps[0, ch["background"]] = 10.0
    return maps


def test_the_mixture_loss_prefers_the_true_position_and_count():
    truth = Targets(x_px=torch.tensor([[5.5]]), y_px=torch.tensor([[3.5]]), z_nm=torch.zeros(1, 1),
                    photons=torch.tensor([[1000.0]]), mask=torch.ones(1, 1, dtype=torch.bool),
                    background=torch.tensor([10.0]))
    right = torch.full((8, 8), 1e-4)
    right[3, 5] = 0.99
    wrong = torch.full((8, 8), 1e-4)
    wrong[3, 2] = 0.99
    too_many = right.clone()
    too_many[6, 6] = 0.99
    loss = lambda p: mixture_loss(_maps_with(p), truth, three_d=False)  # noqa: E731
    assert loss(right)["localisation"] < loss(wrong)["localisation"] - 5
    assert loss(right)["count"] < loss(too_many)["count"]


def test_an_emitter_split_over_two_pixels_is_found_once_at_its_position():
    p = np.zeros((len(LOCALISE_MAP_CHANNELS), 8, 8), np.float32)
    p[0, 3, 4], p[0, 3, 5] = 0.5, 0.45  # one emitter near the border of pixels 4 and 5
    p[2, 3, 4] = 0.45  # dx: its centre is 0.45 px right of pixel 4's centre
    p[6, 3, 4] = p[7, 3, 4] = 0.1
    found = maps_to_emitters(p, pixel_size_nm=100.0, frame=7, spec=SPEC)
    assert len(found) == 1 and found["frame"][0] == 7
    assert found["x_nm"][0] == pytest.approx((4 + 0.5 + 0.45) * 100) and found["y_nm"][0] == pytest.approx(350)
    assert found["probability"][0] == pytest.approx(0.95) and found["x_uncertainty_nm"][0] == pytest.approx(10)


def test_weak_or_empty_maps_give_no_emitters_and_a_plateau_gives_one():
    maps = np.zeros((len(LOCALISE_MAP_CHANNELS), 6, 6), np.float32)
    assert len(maps_to_emitters(maps, 100.0, 1, SPEC)) == 0
    maps[0, 2, 2] = 0.3  # below the threshold even integrated
    assert len(maps_to_emitters(maps, 100.0, 1, SPEC)) == 0
    assert local_maxima(np.full((4, 4), 0.5)).sum() == 1


def test_a_short_training_run_publishes_a_localise_model_with_its_card(tmp_path):
    simulation = LocaliseSimulation(frame_shape_px=(16, 16))
    config = LocaliseTrainConfig(frame_channels=4, temporal_channels=4, batch_size=4, steps=2,
                                 validate_every_steps=1, held_out_samples=8, frame_px=16)
    folder, card = train_and_publish_localiser(tmp_path, name="localise", simulation=simulation,
                                               config=config, command="test")
    assert card.ref == "localise@2" and card.task == "localise" and card.localise.context_frames == 3
    assert ModelCard.load(folder / CARD_FILE) == card
    graph = onnx.load(folder / MODEL_FILE).graph
    assert [i.name for i in graph.input] == ["frames"] and [o.name for o in graph.output] == ["maps"]
    assert card.trained_for.emitter_photons == (300.0, 10_000.0)
    assert "held_out_jaccard" in card.metrics

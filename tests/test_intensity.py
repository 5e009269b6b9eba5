"""The intensity transform between camera counts and network units, inside the served graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from livescope.models.denoise.train import DenoiseTrainConfig, train_denoise
from livescope.models.intensity import IntensityTransform


@pytest.mark.parametrize("kind", ["linear", "sqrt"])
def test_the_transform_maps_the_data_range_to_about_0_1_and_round_trips_exactly(kind):
    rng = np.random.default_rng(0)
    frames = (rng.poisson(np.linspace(2, 800, 64 * 64).reshape(1, 64, 64), (4, 64, 64)) + 100).astype(np.uint16)
    t = IntensityTransform.fit(kind, frames)
    x = torch.from_numpy(frames.astype(np.float32))
    n = t.to_network(x)
    assert float(torch.quantile(n, 0.01)) == pytest.approx(0.0, abs=0.06)
    assert float(torch.quantile(n, 0.998)) == pytest.approx(1.0, abs=0.05)
    assert torch.allclose(t.to_adu(n), x, rtol=1e-5, atol=1e-3)  # below the offset too


def test_sqrt_compresses_a_hundredfold_signal_range_to_about_tenfold():
    t = IntensityTransform("sqrt", offset_adu=100.0, scale=1.0)
    dim, bright = t.to_network(torch.tensor([110.0, 1100.0]))
    assert 8.0 < float(bright / dim) < 14.0


def test_a_sqrt_model_gives_back_the_mean_of_frames_it_has_not_seen():
    """Squaring an estimate of E[sqrt(x)] loses about Var(sqrt(x)) (Jensen); the bias measured on
    the training frames puts it back, so the served output keeps the signal's mean."""
    rng = np.random.default_rng(3)
    frames = (2 * rng.poisson(30, (4, 32, 32)) + 100).astype(np.uint16)  # 2 ADU per electron
    trained = train_denoise(frames, DenoiseTrainConfig(base_channels=4, patch_px=16, batch_size=8,
                                                       steps=60, seed=0, intensity="sqrt"))
    unseen = (2 * rng.poisson(30, (4, 32, 32)) + 100).astype(np.float32)
    with torch.no_grad():
        out = trained.served()(torch.from_numpy(unseen)[:, None])
    assert float(out.mean()) == pytest.approx(160.0, abs=0.5)

"""HART residual diffusion: cosine schedule respacing, loss, seeded sampling."""

import numpy as np
import pytest
import torch

from edgevit.hart.configs import DiffusionConfig
from edgevit.hart.diffusion import ResidualDiffusion, Schedule, cosine_betas, space_timesteps


def test_respaced_schedule_properties():
    betas = cosine_betas(1000)
    assert betas.shape == (1000,) and (betas > 0).all() and betas.max() <= 0.999
    keep = space_timesteps(1000, 8)
    assert keep == [0, 143, 285, 428, 571, 714, 856, 999]
    base, spaced = Schedule(betas), Schedule(betas, keep)
    assert len(spaced) == 8 and list(spaced.timesteps) == keep
    np.testing.assert_allclose(spaced.abar, base.abar[keep], rtol=1e-12)  # same marginals at kept steps
    assert (np.diff(spaced.abar) < 0).all() and (spaced.betas > 0).all() and (spaced.betas < 1).all()
    assert spaced.betas[-1] > base.betas[-2]  # one respaced step spans many base steps


@pytest.mark.parametrize("count", [1, 8, 30, 1000])
def test_space_timesteps_counts(count):
    keep = space_timesteps(1000, count)
    assert len(keep) == count and keep[0] == 0 and (count == 1 or keep[-1] == 999)


def _diffusion() -> ResidualDiffusion:
    torch.manual_seed(0)
    d = ResidualDiffusion(DiffusionConfig(width=32, depth=2, batch_mul=2), channels=4, cond_dim=16)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return d


def test_loss_is_finite_and_trains_the_net():
    d = _diffusion()
    loss = d.loss(torch.randn(6, 4), torch.randn(6, 16), torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert d.net.final_layer.linear.weight.grad.abs().sum() > 0


def test_sampling_is_seeded_and_guidance_zero_matches_unguided():
    d = _diffusion()
    z = torch.randn(5, 16)
    with torch.no_grad():
        a = d.sample(z, None, torch.Generator().manual_seed(7))
        b = d.sample(z, None, torch.Generator().manual_seed(7))
        c = d.sample(z, None, torch.Generator().manual_seed(8))
        g0 = d.sample(torch.cat([z, torch.randn(5, 16)]), 0.0, torch.Generator().manual_seed(7))
        g2 = d.sample(torch.cat([z, torch.randn(5, 16)]), 2.0, torch.Generator().manual_seed(7))
    assert a.shape == (5, 4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(g0, a, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(g2, a)

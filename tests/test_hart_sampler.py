"""HART sampler: seeded reproducibility, guidance ramp, top-k/top-p."""

import pytest
import torch

from edgevit.hart import HartModel, SamplerSettings, generate_classes, get_config
from edgevit.hart.sampler import EagerPrograms, generate, guidance_ramp, sample_tokens


@pytest.fixture(scope="module")
def model() -> HartModel:
    torch.manual_seed(0)
    m = HartModel(get_config("hart-tiny")).eval()
    with torch.no_grad():
        for p in list(m.transformer.parameters()) + list(m.diffusion.parameters()):
            p.add_(torch.randn_like(p) * 0.05)
    return m


def test_same_seed_same_image(model):
    s = SamplerSettings(cfg=2.0, top_k=8, top_p=0.9)
    a = generate_classes(model, [0, 2], seed=11, settings=s)
    b = generate_classes(model, [0, 2], seed=11, settings=s)
    c = generate_classes(model, [0, 2], seed=12, settings=s)
    assert a.images.shape == (2, 3, 16, 16) and a.images.abs().max() <= 1
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
    assert any(not torch.equal(x, y) for x, y in zip(a.tokens, c.tokens, strict=True))


def test_output_is_decode_of_discrete_plus_residual(model):
    g = generate_classes(model, [1], seed=3)
    with torch.no_grad():
        torch.testing.assert_close(g.images, model.tokenizer.decode(g.discrete + g.residual))
        torch.testing.assert_close(g.discrete, model.tokenizer.quantize.indices_to_latent(g.tokens), atol=1e-5, rtol=0)
    assert g.residual.abs().sum() > 0


def test_unguided_generation_runs_without_uncond(model):
    t = model.transformer
    cond = t.condition_from_labels(torch.tensor([3]))
    g = generate(EagerPrograms(model), cond, None, SamplerSettings(cfg=0.0), torch.Generator().manual_seed(0))
    assert [x.shape[1] for x in g.tokens] == [p * p for p in t.patch_nums]


@pytest.mark.parametrize("n_scales", [2, 4, 10, 14])
def test_guidance_ramp_shape(n_scales):
    r = guidance_ramp(4.5, n_scales)
    assert len(r) == n_scales and r[0] == 0.0
    assert all(b >= a for a, b in zip(r, r[1:]))
    assert r[-1] == r[-2] == pytest.approx(4.5 * (n_scales - 2) / (n_scales - 1))
    assert max(r) < 4.5


def test_top_k_and_top_p_restrict_the_support():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 50, 20, generator=g)
    top1 = sample_tokens(logits, top_k=1, generator=g)
    torch.testing.assert_close(top1, logits.argmax(-1))
    tiny_p = sample_tokens(logits, top_p=1e-6, generator=g)
    torch.testing.assert_close(tiny_p, logits.argmax(-1))
    many = logits.repeat(20, 1, 1)  # 40 rows
    top3 = sample_tokens(many, top_k=3, generator=g)
    allowed = many.topk(3, -1).indices
    assert (top3[..., None] == allowed).any(-1).all()
    assert len(top3.unique()) > 1

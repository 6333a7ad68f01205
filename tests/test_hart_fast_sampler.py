"""The eager sampler's reuse of per-step constants and in-place KV cache (EagerPrograms, CachedEmbeddings
for the diffusion MLP and the DiT) gives bit-identical tokens and images to the plain module calls — the
static-shape step that is exported (cache concatenated in and out), uncached level/rotary inputs, the
uncached diffusion MLP and DiT — for the same seeds, including when one programs object is reused across conditions."""

import pytest
import torch

from edgevit.hart import HartModel, SamplerSettings, get_config
from edgevit.hart.configs import with_overrides
from edgevit.hart.diffusion import CachedEmbeddings
from edgevit.hart.dit import DiT, get_dit_config
from edgevit.hart.export import generate_one
from edgevit.hart.sampler import EagerPrograms, generate


class PlainPrograms(EagerPrograms):
    """Every piece as a plain module call: nothing cached, the cache concatenated and restacked per step."""

    def prefix_inputs(self, cond):
        return self.transformer.prefix_inputs(cond)

    def scale_inputs(self, si, latent_in, cond):
        return self.transformer.scale_inputs(si, latent_in, cond)

    def step(self, *args):
        return self.transformer.step(*args)

    def residual(self, z, guidance, generator, temperature):
        return self.model.diffusion.sample(z, guidance, generator, temperature, net=self.model.diffusion.net)


def _perturbed(cfg) -> HartModel:
    torch.manual_seed(0)
    m = HartModel(cfg).eval()
    with torch.no_grad():  # zero-initialised AdaLN / output layers would hide differences
        for p in list(m.transformer.parameters()) + list(m.diffusion.parameters()):
            p.add_(torch.randn_like(p) * 0.05)
    return m


@pytest.fixture(scope="module")
def model() -> HartModel:
    return _perturbed(get_config("hart-tiny"))


def _same(a, b) -> None:
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
    assert torch.equal(a.images, b.images) and torch.equal(a.residual, b.residual)


@pytest.mark.parametrize("settings", [SamplerSettings(cfg=1.5), SamplerSettings(cfg=0.0),
                                      SamplerSettings(cfg=3.0, top_k=(4, 6, 8, 8), top_p=0.9)])
def test_reused_eager_programs_match_plain_calls(model, settings):
    fast = EagerPrograms(model)  # one object for every image: its caches must not leak between them
    for label, seed in [(0, 0), (5, 1), (0, 7), (8, 2)]:  # 8 = the null label
        _same(generate_one(fast, model, label, seed, settings), generate_one(PlainPrograms(model), model, label, seed,
                                                                               settings))
    assert not torch.equal(generate_one(fast, model, 0, 0, settings).images,
                           generate_one(fast, model, 5, 0, settings).images)


def test_text_prefix_positions_are_not_mixed_up():
    m = _perturbed(with_overrides(get_config("hart-tiny"), num_classes=0, context_dim=12, context_tokens=3))
    t, fast = m.transformer, EagerPrograms(m)
    ctx = torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(1))
    null = t.condition_from_context(torch.zeros(2, 3, 12))
    for positions in (None, torch.tensor([[0.0, 1, 2], [0, 1, 5]]), None):
        cond = t.condition_from_context(ctx, positions=positions)
        s = SamplerSettings(cfg=1.5)
        a = generate(fast, cond, null, s, torch.Generator().manual_seed(4))
        b = generate(PlainPrograms(m), cond, null, s, torch.Generator().manual_seed(4))
        _same(a, b)


def test_step_inplace_equals_exported_step(model):
    t = model.transformer
    cond = t.condition_from_labels(torch.tensor([1, 8]))
    cache_a, cache_b, start = t.empty_cache(2), t.empty_cache(2), 0
    consts = t.step_constants(cond.pooled, cond.pooled_head)
    x, cos, sin = t.prefix_inputs(cond)
    with torch.inference_mode():
        for si in range(len(t.patch_nums)):
            ha, la, cache_a = t.step(x, cond.pooled, cond.pooled_head, cos, sin, cache_a, start)
            hb, lb = t.step_inplace(x, consts, cos, sin, cache_b, start)
            assert torch.equal(ha, hb) and torch.equal(la, lb) and torch.equal(cache_a, cache_b)
            start += x.shape[1]
            if si + 1 < len(t.patch_nums):
                lat = torch.randn(2, t.patch_nums[si + 1] ** 2, model.cfg.tokenizer.z_channels)
                x, cos, sin = t.scale_inputs(si + 1, lat, cond)


def test_cached_diffusion_net_and_dit_denoiser_match(model):
    g = torch.Generator().manual_seed(0)
    net, cached = model.diffusion.net, CachedEmbeddings.of(model.diffusion.net)
    c1, c2 = torch.randn(6, 32, generator=g), torch.randn(6, 32, generator=g)
    with torch.inference_mode():
        for c, step in [(c1, 999), (c1, 0), (c2, 999), (c1, 500)]:
            x, tt = torch.randn(6, 8, generator=g), torch.full((6,), step)
            assert torch.equal(cached(x, tt, c), net(x, tt, c))
    torch.manual_seed(0)
    dit = DiT(get_dit_config("dit-tiny")).eval()
    with torch.no_grad():
        for lin in [b.adaLN_modulation[-1] for b in dit.blocks] + [dit.final_modulation[-1], dit.final]:
            lin.weight.normal_(0, 0.1)
    lab = torch.tensor([1, 2])
    fast = dit.sample_latents(lab, torch.Generator().manual_seed(3), cfg=1.5)
    plain = dit.sample_latents(lab, torch.Generator().manual_seed(3), cfg=1.5, eps_fn=dit)
    assert torch.equal(fast, plain) and fast.abs().sum() > 0

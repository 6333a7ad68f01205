"""HART transformer: KV-cache stepping equals the full block-causal forward."""

import pytest
import torch

from edgevit.errors import EdgevitError
from edgevit.hart import HartModel, get_config
from edgevit.hart.configs import TransformerConfig
from edgevit.hart.transformer import HartTransformer


def _random_model(seed: int = 0) -> HartModel:
    torch.manual_seed(seed)
    model = HartModel(get_config("hart-tiny")).eval()
    with torch.no_grad():  # AdaLN / heads start near zero; make every path matter
        for p in model.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _text_transformer() -> HartTransformer:
    torch.manual_seed(1)
    cfg = TransformerConfig(depth=2, embed_dim=32, num_heads=2, ffn_multiple=16, context_dim=12, context_tokens=3,
                            use_context_norm=True, attn_l2_norm=True, use_timestep_embed=False)
    t = HartTransformer(cfg, (1, 2, 4), vocab_size=16, z_channels=8).eval()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return t


def _step_all(t: HartTransformer, cond, inputs, extra_slots: int = 0):
    x, cos, sin = t.prefix_inputs(cond)
    cache, start, logits, hidden = t.empty_cache(inputs.shape[0], t.seq_len + extra_slots), 0, [], []
    offset = 0
    for si in range(len(t.patch_nums)):
        h, lg, cache = t.step(x, cond.pooled, cond.pooled_head, cos, sin, cache, start)
        assert cache.shape[-2] == t.seq_len + extra_slots  # fixed-length cache in and out
        start += x.shape[1]
        logits.append(lg[:, -1:] if si == 0 else lg)
        hidden.append(h)
        if si + 1 < len(t.patch_nums):
            n = t.patch_nums[si + 1] ** 2
            x, cos, sin = t.scale_inputs(si + 1, inputs[:, offset:offset + n], cond)
            offset += n
    return torch.cat(logits, 1), torch.cat(hidden, 1)


@pytest.mark.parametrize("extra_slots", [0, 7])
def test_kv_cache_steps_equal_full_forward_class(extra_slots):
    model = _random_model()
    t = model.transformer
    cond = t.condition_from_labels(torch.tensor([0, 3]))
    inputs = torch.randn(2, sum(p * p for p in t.patch_nums[1:]), 8)
    with torch.no_grad():
        full_logits, full_hidden = t(cond, inputs)
        step_logits, step_hidden = _step_all(t, cond, inputs, extra_slots)
    assert full_logits.shape == (2, sum(p * p for p in t.patch_nums), 32)
    torch.testing.assert_close(step_logits, full_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(step_hidden, full_hidden, atol=1e-5, rtol=1e-4)


def test_kv_cache_steps_equal_full_forward_text_prefix():
    t = _text_transformer()
    cond = t.condition_from_context(torch.randn(2, 3, 12), positions=torch.tensor([[0, 1, 2], [0, 1, 1]]))
    inputs = torch.randn(2, 4 + 16, 8)
    with torch.no_grad():
        full_logits, full_hidden = t(cond, inputs)
        step_logits, step_hidden = _step_all(t, cond, inputs)
    torch.testing.assert_close(step_logits, full_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(step_hidden, full_hidden, atol=1e-5, rtol=1e-4)


def test_block_causal_earlier_scales_ignore_later_inputs():
    t = _random_model().transformer
    cond = t.condition_from_labels(torch.tensor([1]))
    inputs = torch.randn(1, sum(p * p for p in t.patch_nums[1:]), 8)
    changed = inputs.clone()
    changed[:, -t.patch_nums[-1] ** 2:] += 1.0  # perturb only the last scale's inputs
    with torch.no_grad():
        a, _ = t(cond, inputs)
        b, _ = t(cond, changed)
    n_early = sum(p * p for p in t.patch_nums[:-1])
    torch.testing.assert_close(a[:, :n_early], b[:, :n_early])
    assert not torch.allclose(a[:, n_early:], b[:, n_early:])


def test_kv_cache_overflow_is_a_clear_error():
    t = _random_model().transformer
    cond = t.condition_from_labels(torch.tensor([0]))
    x, cos, sin = t.prefix_inputs(cond)
    cache = t.empty_cache(1, max_len=3)
    _, _, cache = t.step(x, cond.pooled, cond.pooled_head, cos, sin, cache, 0)
    x, cos, sin = t.scale_inputs(1, torch.zeros(1, 4, 8), cond)
    with pytest.raises(EdgevitError, match="KV cache overflow"):
        t.step(x, cond.pooled, cond.pooled_head, cos, sin, cache, 1)


def test_wrong_condition_kind_is_a_clear_error():
    with pytest.raises(EdgevitError, match="class-conditioned"):
        _random_model().transformer.condition_from_context(torch.zeros(1, 1, 4))
    with pytest.raises(EdgevitError, match="text-conditioned"):
        _text_transformer().condition_from_labels(torch.tensor([0]))


def test_scale_step_exports_with_the_cache_as_input_and_output():
    from edgevit.hart.transformer import ScaleStep

    t = _random_model().transformer
    cond = t.condition_from_labels(torch.tensor([1, 8]))
    x, cos, sin = t.scale_inputs(2, torch.randn(2, 16, 8), cond)
    cache = torch.randn(t.cfg.depth, 2, 2, t.cfg.num_heads, t.seq_len, t.head_dim)
    args = (x, cond.pooled, cond.pooled_head, cos, sin, cache)
    program = torch.export.export(ScaleStep(t, start=1 + 4).eval(), args)
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("scaled_dot_product" in o or "repeat_interleave" in o for o in ops)
    with torch.no_grad():
        for got, want in zip(program.module()(*args), t.step(*args, start=1 + 4), strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)

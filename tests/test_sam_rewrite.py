"""The prompt decoder's export forms equal the modules they replace (random weights, nonzero biases)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgevit.models.sam_decoder import Attention, LayerNorm2d
from edgevit.sam.rewrite import FoldedTokenAttention, TokenUpscaling


def _randomize(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return module.eval()


def test_folded_attention_equals_projected_attention_for_the_read_queries():
    src = _randomize(Attention(64, 4, downsample=2))
    q, k, v = torch.randn(1, 5, 64), torch.randn(1, 300, 64) * 3, torch.randn(1, 300, 64)
    with torch.inference_mode():
        ref, out = src(q, k, v), FoldedTokenAttention(src)(q, k, v)
    assert float(src.k_proj.bias.abs().max()) > 0.1  # the key bias it drops is not zero
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


def test_token_upscaling_equals_the_nchw_upscaling_and_mask_product():
    c, s, k = 32, 6, 4
    seq = _randomize(nn.Sequential(nn.ConvTranspose2d(c, c // 4, 2, 2), LayerNorm2d(c // 4), nn.GELU(),
                                   nn.ConvTranspose2d(c // 4, c // 8, 2, 2), nn.GELU()))
    image, hyper = torch.randn(1, c, s, s), torch.randn(1, k, c // 8)
    with torch.inference_mode():
        up = seq(image)
        ref = torch.bmm(hyper, up.flatten(2)).reshape(1, k, 4 * s, 4 * s)
        out = TokenUpscaling(seq, s)(image.flatten(2).transpose(1, 2), hyper.transpose(1, 2))
    assert out.shape == (1, k, 4 * s, 4 * s)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_token_upscaling_refuses_other_transposed_convs():
    seq = nn.Sequential(nn.ConvTranspose2d(8, 4, 3, 2, padding=1, output_padding=1), LayerNorm2d(4), nn.GELU(),
                        nn.ConvTranspose2d(4, 2, 2, 2), nn.GELU())
    with pytest.raises(ValueError, match="2x2 stride-2"):
        TokenUpscaling(seq, 4)


def test_export_decoder_leaves_the_eager_decoder_untouched():
    from edgevit.models.sam_decoder import MaskDecoder, PromptDecoder, PromptEncoder
    from edgevit.sam.rewrite import ExportPromptDecoder

    eager = PromptDecoder(PromptEncoder(), MaskDecoder()).eval()
    ExportPromptDecoder(eager, 4)
    assert isinstance(eager.mask_decoder.output_upscaling, nn.Sequential)
    assert type(eager.mask_decoder.transformer.final_attn_token_to_image) is Attention

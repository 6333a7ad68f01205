"""HART tokenizer: multi-scale residual quantization round trips."""

import pytest
import torch
import torch.nn.functional as F

from edgevit.hart import get_config
from edgevit.hart.configs import TokenizerConfig
from edgevit.hart.tokenizer import HybridTokenizer, MultiScaleQuantizer


@pytest.fixture(scope="module")
def tok() -> HybridTokenizer:
    torch.manual_seed(0)
    return HybridTokenizer(get_config("hart-tiny").tokenizer).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_discrete_plus_residual_is_the_latent(tok, images):
    with torch.no_grad():
        f = tok.encode(images)
        q = tok.quantize.quantize(f)
    assert [i.shape for i in q.indices] == [(3, p * p) for p in tok.cfg.patch_nums]
    assert all(i.dtype == torch.int64 and 0 <= i.min() and i.max() < tok.cfg.vocab_size for i in q.indices)
    torch.testing.assert_close(q.discrete + q.residual, f, atol=1e-5, rtol=0)
    assert q.residual.abs().max() > 0  # a 32-entry codebook cannot be exact


def test_tokens_rebuild_the_discrete_latent(tok, images):
    with torch.no_grad():
        q = tok.tokenize(images)
        rebuilt = tok.quantize.indices_to_latent(q.indices)
    torch.testing.assert_close(rebuilt, q.discrete, atol=1e-5, rtol=0)


def test_final_scale_is_nearest_code_per_position(tok, images):
    """The final scale is plain nearest-code VQ of the remaining residual: with a zero vector in the
    codebook it can only shrink the error, and no other code does better at any position."""
    import copy

    t = copy.deepcopy(tok)
    with torch.no_grad():
        t.quantize.embedding.weight[0].zero_()
        f = t.encode(images)
        q = t.quantize.quantize(f)
        last = t.quantize.scale_embedding(len(q.indices) - 1, q.indices[-1])
        before = q.residual + last  # residual before the final scale
        err_after = (before - last).square().sum(1)
        dist_all = (before.permute(0, 2, 3, 1)[..., None, :] - t.quantize.embedding.weight).square().sum(-1)
    assert (err_after <= before.square().sum(1) + 1e-6).all()
    torch.testing.assert_close(err_after, dist_all.min(-1).values, atol=1e-5, rtol=1e-5)


def test_teacher_forcing_inputs_are_downsampled_running_latents(tok, images):
    qz = tok.quantize
    with torch.no_grad():
        q = tok.tokenize(images)
        inp = qz.teacher_forcing_inputs(q.indices)
        first = qz.scale_embedding(0, q.indices[0])
    pns = tok.cfg.patch_nums
    assert inp.shape == (3, sum(p * p for p in pns[1:]), tok.cfg.z_channels)
    expect = F.interpolate(first, size=(pns[1], pns[1]), mode="area").flatten(2).transpose(1, 2)
    torch.testing.assert_close(inp[:, : pns[1] ** 2], expect)


def test_decoder_accepts_continuous_and_discrete_latents(tok, images):
    with torch.no_grad():
        q = tok.tokenize(images)
        a, b = tok.decode(q.discrete), tok.decode(q.discrete + q.residual)
    assert a.shape == b.shape == images.shape
    assert a.abs().max() <= 1 and not torch.equal(a, b)


def test_training_pass_trains_encoder_codebook_and_decoder(tok, images):
    tok.train()
    for continuous in (0.0, 1.0):
        tok.zero_grad()
        rec, vq = tok(images, p_continuous=continuous)
        (F.mse_loss(rec, images) + vq).backward()
        assert tok.encoder.conv_in.weight.grad.abs().sum() > 0
        assert tok.decoder.conv_out.weight.grad.abs().sum() > 0
        assert tok.quantize.embedding.weight.grad.abs().sum() > 0
    tok.eval()


def test_phi_choice_follows_scale_position():
    q = MultiScaleQuantizer(TokenizerConfig(vocab_size=8, z_channels=4, share_quant_resi=4,
                                            patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16)))
    assert q.phi_index[0] == 0 and q.phi_index[-1] == 3
    assert q.phi_index == sorted(q.phi_index) and set(q.phi_index) == {0, 1, 2, 3}


def test_wrong_latent_size_raises(tok):
    with pytest.raises(ValueError, match="patch_nums"):
        tok.quantize.quantize(torch.zeros(1, tok.cfg.z_channels, 4, 4))

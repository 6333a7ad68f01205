"""DiT latent-diffusion baseline: sizing against the student, seeded DDIM sampling, training resumes exactly,
strict save/load with clear errors."""

import pytest
import torch

from edgevit.errors import EdgevitError, UnknownKeyError
from edgevit.hart.configs import get_config
from edgevit.hart.dit import DIT_CONFIGS, DiT, ddim_timesteps, get_dit_config, load_dit, save_dit, sincos_2d
from edgevit.hart.model import HartModel


@pytest.mark.parametrize("name", ["dit-baseline-phone", "dit-baseline-mid", "dit-baseline-watch"])
def test_baseline_matches_the_student_size(name):
    dit = DiT(get_dit_config(name))
    m = HartModel(dit.cfg.hart_config())
    student = sum(p.numel() for part in (m.transformer, m.diffusion) for p in part.parameters())
    assert abs(sum(p.numel() for p in dit.generator_parameters()) / student - 1) < 0.05
    assert dit.cfg.sample_steps == 30 and dit.cfg.hart_config().tokenizer == get_config("hart-teacher-small").tokenizer


@pytest.mark.parametrize("name", DIT_CONFIGS.names())
def test_every_dit_config_builds(name):
    m = DiT(get_dit_config(name))
    x = torch.randn(2, m.channels, m.size, m.size)
    assert m(x, torch.tensor([0, 999]), torch.tensor([0, m.num_classes])).shape == x.shape


def test_unknown_config_and_positions():
    with pytest.raises(UnknownKeyError, match="did you mean"):
        get_dit_config("dit-baseline-phon")
    pos = sincos_2d(4, 8)
    assert pos.shape == (16, 8) and len({tuple(r.tolist()) for r in pos}) == 16  # every position distinct
    steps = ddim_timesteps(1000, 30)
    assert len(set(steps)) == 30 and steps[0] == 0 and steps[-1] == 966  # t = 999 (ᾱ ≈ 0) is never used
    with pytest.raises(EdgevitError, match="cannot use 31 of 30"):
        ddim_timesteps(30, 31)


def test_seeded_sampling_and_guidance():
    torch.manual_seed(0)
    m = DiT(get_dit_config("dit-tiny")).eval()
    with torch.no_grad():  # adaLN-zero init predicts ε = 0; give the output layers weights
        for lin in [b.adaLN_modulation[-1] for b in m.blocks] + [m.final_modulation[-1], m.final]:
            lin.weight.normal_(0, 0.1)
    lab = torch.tensor([1, 2])
    a, b = m.generate(lab, seed=3, cfg=1.5), m.generate(lab, seed=3, cfg=1.5)
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b) and -1 <= a.min() and a.max() <= 1
    assert not torch.equal(a, m.generate(lab, seed=4, cfg=1.5))
    assert not torch.equal(a, m.generate(lab, seed=3, cfg=0.0))
    calls = []
    m.sample_latents(lab, torch.Generator().manual_seed(0), cfg=1.5,
                     eps_fn=lambda x, t, y: calls.append(x.shape[0]) or torch.zeros_like(x))
    assert calls == [4] * m.cfg.sample_steps  # one doubled (cond + uncond) batch per DDIM step


def test_training_resumes_exactly_and_round_trips(tmp_path):
    pytest.importorskip("skimage", reason="scikit-image (bundled photos) is not installed")
    from edgevit.hart.train import train_dit

    torch.manual_seed(0)
    tok = tmp_path / "tokenizer.pt"
    torch.save(HartModel(get_config("hart-tiny")).tokenizer.state_dict(), tok)
    kw = dict(batch=4, per_class=2, ckpt_every=1, log_every=1)
    a = train_dit("dit-tiny", tok, tmp_path / "a", steps=3, **kw)
    train_dit("dit-tiny", tok, tmp_path / "b", steps=1, **kw)
    b = train_dit("dit-tiny", tok, tmp_path / "b", steps=3, **kw)  # resumes at step 1
    ma, mb = load_dit(a), load_dit(tmp_path / "b")
    for (k, va), (_, vb) in zip(ma.state_dict().items(), mb.state_dict().items(), strict=True):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)
    assert float(ma.latent_scale) != 1.0 and any(p.abs().sum() > 0 for p in ma.final.parameters())
    assert torch.equal(load_dit(save_dit(ma, tmp_path / "c.pt")).generate(torch.tensor([0]), 0),
                       ma.generate(torch.tensor([0]), 0))
    (tmp_path / "bad.pt").write_bytes(b.read_bytes()[:100])
    with pytest.raises(EdgevitError, match="not a readable DiT checkpoint"):
        load_dit(tmp_path / "bad.pt")
    with pytest.raises(EdgevitError, match="no DiT baseline checkpoint"):
        load_dit(tmp_path / "missing")

"""HART distillation: KD losses, a resumed run equals an uninterrupted one, the student keeps the teacher's
tokenizer, incompatible students and bad inputs fail with one clear line."""

import pytest
import torch

pytest.importorskip("skimage", reason="scikit-image (bundled photos used as distillation data) is not installed")

from edgevit.errors import EdgevitError  # noqa: E402
from edgevit.hart.checkpoint import load_folder, save_folder  # noqa: E402
from edgevit.hart.configs import get_config, with_overrides  # noqa: E402
from edgevit.hart.distill import Distiller, distill_hart, kd_losses  # noqa: E402
from edgevit.hart.model import HartModel  # noqa: E402
from edgevit.hart.train import photo_crops  # noqa: E402

STUDENT = with_overrides(get_config("hart-tiny"), embed_dim=16, depth=1)
KW = dict(batch=4, per_class=2, ckpt_every=1, log_every=1, hidden_weight=0.5)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    model = HartModel(get_config("hart-tiny")).eval()
    with torch.no_grad():  # give the AdaLN-zero diffusion layers weights so its ε prediction is not all zero
        for name, p in model.diffusion.net.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                p.normal_(0, 0.05)
    return save_folder(model, tmp_path_factory.mktemp("teacher") / "hart")


def test_kd_losses_vanish_for_a_copy_of_the_teacher(teacher):
    t = load_folder(teacher)
    copy = Distiller(load_folder(teacher), t.cfg.transformer.embed_dim)
    x, y = photo_crops(16, "train", per_class=1)
    gen = torch.Generator().manual_seed(0)
    same = kd_losses(t, copy, x, y, gen, temperature=2.0, hidden_weight=0.0)
    assert float(same["kl"].detach()) < 1e-6 and float(same["diffusion"].detach()) < 1e-10
    torch.manual_seed(1)
    other = Distiller(HartModel(STUDENT), t.cfg.transformer.embed_dim)
    other.student.tokenizer.load_state_dict(t.tokenizer.state_dict())
    diff = kd_losses(t, other, x, y, torch.Generator().manual_seed(0), temperature=2.0, hidden_weight=1.0)
    assert float(diff["kl"]) > 1e-3 and float(diff["diffusion"]) > 1e-6 and float(diff["hidden"]) > 0
    diff["loss"].backward()
    assert other.proj.weight.grad is not None and other.student.transformer.head.weight.grad.abs().sum() > 0


def test_resumed_distillation_equals_uninterrupted(teacher, tmp_path):
    a = distill_hart(teacher, STUDENT, "skimage", tmp_path / "a", steps=4, **KW)
    distill_hart(teacher, STUDENT, "skimage", tmp_path / "b", steps=2, **KW)
    b = distill_hart(teacher, STUDENT, "skimage", tmp_path / "b", steps=4, **KW)  # resumes at step 2
    sa, sb = load_folder(a), load_folder(b)
    for (k, va), (_, vb) in zip(sa.state_dict().items(), sb.state_dict().items(), strict=True):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)
    t = load_folder(teacher)
    for k, v in t.tokenizer.state_dict().items():  # shared and frozen
        torch.testing.assert_close(sa.tokenizer.state_dict()[k], v, rtol=0, atol=0)
    assert sa.cfg.transformer.embed_dim == 16
    history = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["history"]
    assert len(history) == 4 and all(r["kl"] > 0 and r["hidden"] > 0 for r in history)
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    assert "proj.weight" in state["model"] and not torch.equal(state["model"]["student.transformer.head.weight"],
                                                               HartModel(STUDENT).state_dict()["transformer.head.weight"])


def test_incompatible_student_and_bad_arguments(teacher, tmp_path, capsys):
    from edgevit.cli import main

    with pytest.raises(EdgevitError, match="incompatible with the teacher's tokenizer"):
        distill_hart(teacher, "hart-student-phone", "skimage", tmp_path / "x", steps=1)
    with pytest.raises(EdgevitError, match="not supported yet"):
        distill_hart(teacher, STUDENT, "imagenet", tmp_path / "x", steps=1)
    assert main(["distill-hart", "--teacher", str(tmp_path / "missing"), "--student", "hart-tiny",
                 "--out", str(tmp_path / "y"), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing" in err
    assert main(["distill-hart", "--teacher", str(teacher), "--student", "hart-tinyy",
                 "--out", str(tmp_path / "y"), "--steps", "1"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_guided_kd_targets_mix_both_teacher_branches_per_scale(teacher):
    """With guidance g the token target is, scale by scale, (1 + t_k)·cond − t_k·uncond (the sampler's mix),
    recomputed here independently from the two teacher-forced branches."""
    import torch.nn.functional as F

    from edgevit.hart.sampler import guidance_ramp

    t = load_folder(teacher)
    copy = Distiller(load_folder(teacher), t.cfg.transformer.embed_dim)
    x, y = photo_crops(16, "train", per_class=1)
    plain = kd_losses(t, copy, x, y, torch.Generator().manual_seed(0), 2.0, 0.0, guidance=0.0)
    guided = kd_losses(t, copy, x, y, torch.Generator().manual_seed(0), 2.0, 0.0, guidance=1.5)
    assert float(plain["kl"]) < 1e-6
    assert float(guided["kl"]) > 1e-4 and float(guided["diffusion"]) > 1e-8  # the copy has only the cond branch
    tt = t.transformer
    with torch.no_grad():
        c = t.teacher_forced(x, tt.condition_from_labels(y), final_tokens="target").logits
        u = t.teacher_forced(x, tt.condition_from_labels(tt.null_labels(len(y))), final_tokens="target").logits
    parts, pos = [], 0
    for pn, w in zip(tt.patch_nums, guidance_ramp(1.5, len(tt.patch_nums))):
        parts.append((1 + w) * c[:, pos:pos + pn * pn] - w * u[:, pos:pos + pn * pn])
        pos += pn * pn
    target = torch.cat(parts, 1).reshape(-1, c.shape[-1])
    expect = F.kl_div(F.log_softmax(c.reshape(-1, c.shape[-1]) / 2, -1), F.log_softmax(target / 2, -1),
                      log_target=True, reduction="batchmean") * 4
    torch.testing.assert_close(guided["kl"].detach(), expect, rtol=1e-5, atol=1e-7)


def test_guidance_distilled_student_samples_with_one_branch(teacher, tmp_path):
    from edgevit.hart.artifacts import config_from_dict
    from edgevit.hart.sampler import EagerPrograms, SamplerSettings, generate

    path = distill_hart(teacher, STUDENT, "skimage", tmp_path / "g", steps=2, guidance=1.5, **KW)
    student = load_folder(path).eval()
    assert student.cfg.guidance_distilled == 1.5
    assert config_from_dict(student.cfg.to_dict()).guidance_distilled == 1.5
    rows = []

    class Spy(EagerPrograms):
        def step(self, x, *args):
            rows.append(x.shape[0])
            return super().step(x, *args)

    t = student.transformer
    lab = torch.tensor([3])
    cond, null = t.condition_from_labels(lab), t.condition_from_labels(t.null_labels(1))
    a = generate(Spy(student), cond, null, SamplerSettings(cfg=1.5), torch.Generator().manual_seed(5))
    b = generate(Spy(student), cond, None, SamplerSettings(cfg=0.0), torch.Generator().manual_seed(5))
    assert set(rows) == {1} and torch.equal(a.images, b.images)
    with pytest.raises(EdgevitError, match="distilled into its weights"):
        generate(Spy(student), cond, null, SamplerSettings(cfg=3.0), torch.Generator().manual_seed(5))
    with pytest.raises(EdgevitError, match="already has guidance distilled"):
        distill_hart(path, STUDENT, "skimage", tmp_path / "g2", steps=1, guidance=1.5, **KW)

"""Teacher-forced knowledge distillation of a HART student (``edgevit distill-hart``).

Per batch (images N×3×H×W in [-1, 1], class labels; the null label replaces a label with the teacher
config's ``cond_drop_rate`` so the student learns the unconditional branch for guidance), both models see
the same teacher-forcing inputs from the shared, frozen tokenizer (the teacher's):

* token KD: T² · KL(softmax(teacher/T) ‖ softmax(student/T)) over every position of every scale;
* diffusion KD: MSE between the students's and the teacher's ε prediction at the same noisy residual
  x_t, the same step t and the same noise, each conditioned on its own hidden states and the same
  final-scale tokens (the tokenizer's);
* optional hidden-state matching: MSE(proj(student hidden), teacher hidden) with a learned linear
  projection (student width -> teacher width; trained, checkpointed, not part of the student).

Guidance distillation (``guidance`` = g > 0; after Meng et al., "On Distillation of Guided Diffusion
Models", applied to both HART heads): the teacher runs the conditional and the unconditional (null label)
branch on the same teacher-forcing inputs, and the student's single conditional branch learns the
*guided* outputs the sampler would mix: per scale k, logits (1 + t_k)·cond − t_k·uncond with t_k from
:func:`edgevit.hart.sampler.guidance_ramp`, and at the final scale ε (1 + t)·ε_cond − t·ε_uncond (the
variance output from the conditional branch, as the sampler takes it). Labels are not dropped. The saved
student records ``guidance_distilled = g``, so the sampler runs it without an unconditional branch:
half the transformer and diffusion work per image.

AdamW + warmup/cosine (the shared loop of :mod:`edgevit.hart.train`); ``OUT/last.pt`` holds student,
projection, optimizer, RNG and step, so re-running the same command resumes exactly; the end writes the
student in the upstream folder layout to ``OUT/hart``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdgevitError
from .configs import HartConfig, get_config
from .model import HartModel
from .sampler import guidance_ramp

DATA_SOURCES = ("skimage",)


class Distiller(nn.Module):
    """The trainable part of a distillation run: the student and the hidden-state projection."""

    def __init__(self, student: HartModel, teacher_width: int):
        super().__init__()
        self.student = student
        self.proj = nn.Linear(student.cfg.transformer.embed_dim, teacher_width)

    @property
    def cfg(self) -> HartConfig:
        return self.student.cfg


def check_compatible(teacher: HartModel, student_cfg: HartConfig) -> None:
    """The student must share the teacher's tokenizer, image size and conditioning."""
    t = teacher.cfg
    if student_cfg.tokenizer != t.tokenizer or student_cfg.image_size != t.image_size:
        raise EdgevitError(f"student config {student_cfg.name!r} is incompatible with the teacher's tokenizer "
                           f"(image {student_cfg.image_size} vs {t.image_size}, patch_nums "
                           f"{list(student_cfg.tokenizer.patch_nums)} vs {list(t.tokenizer.patch_nums)}, vocab "
                           f"{student_cfg.tokenizer.vocab_size} vs {t.tokenizer.vocab_size}); the tokenizer is shared")
    st, tt = student_cfg.transformer, t.transformer
    if (st.num_classes, st.context_dim) != (tt.num_classes, tt.context_dim):
        raise EdgevitError(f"student config {student_cfg.name!r} conditions on {st.num_classes} classes / context "
                           f"{st.context_dim}, the teacher on {tt.num_classes} / {tt.context_dim}")


def scale_weights(patch_nums: tuple[int, ...], ramp: list[float]) -> torch.Tensor:
    """Per-position guidance t (sum pk²,): scale k's value for each of its pk² positions."""
    return torch.cat([torch.full((p * p,), t) for p, t in zip(patch_nums, ramp)])


def kd_losses(teacher: HartModel, distiller: Distiller, images: torch.Tensor, labels: torch.Tensor,
              generator: torch.Generator, temperature: float, hidden_weight: float,
              guidance: float = 0.0) -> dict[str, torch.Tensor]:
    """The distillation losses for one batch (see the module docstring)."""
    student = distiller.student
    drop = teacher.cfg.transformer.cond_drop_rate
    if drop > 0 and guidance == 0:
        hit = torch.rand(labels.shape, generator=generator) < drop
        labels = torch.where(hit, teacher.transformer.null_labels(labels.shape[0]), labels)
    tt = teacher.transformer
    with torch.no_grad():
        tf_t = teacher.teacher_forced(images, tt.condition_from_labels(labels), final_tokens="target")
        target_logits = tf_t.logits
        if guidance > 0:
            tf_u = teacher.teacher_forced(images, tt.condition_from_labels(tt.null_labels(labels.shape[0])),
                                          final_tokens="target")
            ramp = guidance_ramp(guidance, len(tt.patch_nums))
            w = scale_weights(tt.patch_nums, ramp)[None, :, None]
            target_logits = (1 + w) * tf_t.logits - w * tf_u.logits
    tf_s = student.teacher_forced(images, student.transformer.condition_from_labels(labels), final_tokens="target")
    v = tf_s.logits.shape[-1]
    log_p_s = F.log_softmax(tf_s.logits.reshape(-1, v) / temperature, dim=-1)
    log_p_t = F.log_softmax(target_logits.reshape(-1, v) / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2

    s = teacher.diffusion.train_schedule
    x0 = tf_t.residual_target / teacher.cfg.diffusion.vae_scale
    k = torch.randint(0, len(s), (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    xt = s.take("sqrt_abar", k) * x0 + s.take("sqrt_1m_abar", k) * noise
    cz = x0.shape[1]
    with torch.no_grad():
        out_t = teacher.diffusion.net(xt, k, tf_t.diffusion_cond)
        if guidance > 0:  # guided ε, conditional variance output (what the sampler mixes)
            t_last = ramp[-1]
            eps_u = teacher.diffusion.net(xt, k, tf_u.diffusion_cond)[:, :cz]
            out_t = torch.cat([(1 + t_last) * out_t[:, :cz] - t_last * eps_u, out_t[:, cz:]], dim=1)
    out_s = student.diffusion.net(xt, k, tf_s.diffusion_cond)
    diff = F.mse_loss(out_s, out_t) if guidance > 0 else F.mse_loss(out_s[:, :cz], out_t[:, :cz])
    out = {"kl": kl, "diffusion": diff}
    loss = kl + diff
    if hidden_weight > 0:
        hid = F.mse_loss(distiller.proj(tf_s.hidden), tf_t.hidden)
        out["hidden"] = hid
        loss = loss + hidden_weight * hid
    return {"loss": loss, **out}


def distill_hart(teacher: str | Path | HartModel, student: str | HartConfig, data: str, out: str | Path,
                 steps: int = 2000, batch: int = 16, lr: float = 5e-4, temperature: float = 2.0,
                 hidden_weight: float = 0.0, seed: int = 0, per_class: int = 256, ckpt_every: int = 250,
                 log_every: int = 50, guidance: float = 0.0) -> Path:
    """Distill ``teacher`` (checkpoint folder or model) into a fresh ``student`` config on ``data``
    ("skimage": crops of the bundled photos, one class per photo). ``guidance`` > 0 distills classifier-free
    guidance at that scale into the student (module docstring). Resumes from ``out/last.pt``. Returns
    ``out/hart`` (the student, upstream layout)."""
    from .checkpoint import load_folder, save_folder
    from .train import PHOTOS, _batch, _loop, photo_crops

    if data not in DATA_SOURCES:
        raise EdgevitError(f"--data {data!r}: distillation reads {', '.join(DATA_SOURCES)} (crops of the photos "
                           "bundled with scikit-image); other image sets are not supported yet")
    if temperature <= 0:
        raise EdgevitError(f"--temperature must be > 0, got {temperature}")
    if guidance < 0:
        raise EdgevitError(f"--guidance must be >= 0 (0 = off), got {guidance}")
    teacher_model = teacher.eval() if isinstance(teacher, HartModel) else load_folder(teacher).eval()
    teacher_model.requires_grad_(False)
    cfg = get_config(student) if isinstance(student, str) else student
    check_compatible(teacher_model, cfg)
    if guidance > 0:
        if teacher_model.cfg.guidance_distilled > 0:
            raise EdgevitError("the teacher already has guidance distilled in; distill guidance from a teacher "
                               "with an unconditional branch")
        cfg = replace(cfg, guidance_distilled=guidance)
    if cfg.transformer.num_classes != len(PHOTOS):
        raise EdgevitError(f"config {cfg.name}: num_classes {cfg.transformer.num_classes} != {len(PHOTOS)} photo classes")
    torch.manual_seed(seed)
    distiller = Distiller(HartModel(cfg), teacher_model.cfg.transformer.embed_dim)
    distiller.student.tokenizer.load_state_dict(teacher_model.tokenizer.state_dict())
    distiller.student.tokenizer.requires_grad_(False)
    images, labels = photo_crops(cfg.image_size, "train", per_class, seed)
    params = [p for n, p in distiller.named_parameters()
              if not n.startswith("student.tokenizer.") and (hidden_weight > 0 or not n.startswith("proj."))]

    def loss_fn(gen):
        x, y = _batch(images, labels, batch, gen)
        distiller.student.tokenizer.eval()
        return kd_losses(teacher_model, distiller, x, y, gen, temperature, hidden_weight, guidance)

    out = Path(out)
    _loop("distill", distiller, params, loss_fn, out, steps, lr, seed, ckpt_every, log_every, {})
    return save_folder(distiller.student, out / "hart")

"""The HART model: tokenizer + next-scale transformer + residual diffusion MLP, and its
teacher-forced training losses (the same quantities distillation compares)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .configs import HartConfig
from .diffusion import ResidualDiffusion
from .tokenizer import HybridTokenizer
from .transformer import Condition, HartTransformer


@dataclass
class TeacherForced:
    """Outputs of :meth:`HartModel.teacher_forced` for a batch of B.

    logits: B×(sum pk²)×V per-scale token logits; targets: B×(sum pk²) int64; hidden: B×L×C;
    diffusion_cond: B·n×C conditions of the final-scale tokens (n = P²); residual_target: B·n×Cz
    (residual before the final discrete scale minus the code vectors of ``final_tokens``);
    final_tokens: B×n the discrete tokens the diffusion is conditioned on.
    """

    logits: torch.Tensor
    targets: torch.Tensor
    hidden: torch.Tensor
    diffusion_cond: torch.Tensor
    residual_target: torch.Tensor
    final_tokens: torch.Tensor


class HartModel(nn.Module):
    def __init__(self, cfg: HartConfig):
        super().__init__()
        self.cfg = cfg
        tok = cfg.tokenizer
        self.tokenizer = HybridTokenizer(tok)
        self.transformer = HartTransformer(cfg.transformer, tok.patch_nums, tok.vocab_size, tok.z_channels)
        self.diffusion = ResidualDiffusion(cfg.diffusion, tok.z_channels, cfg.transformer.embed_dim)

    @property
    def model_id(self) -> str:
        return self.cfg.name

    def components(self) -> dict[str, nn.Module]:
        return {"tokenizer": self.tokenizer, "transformer": self.transformer, "diffusion": self.diffusion}

    def diffusion_condition(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Final-scale hidden states B×n×C and discrete tokens B×n -> conditions B·n×C."""
        emb = self.tokenizer.quantize.embedding(tokens)
        z = self.transformer.decoder_norm(hidden + self.transformer.word_embed(emb))
        return z.reshape(-1, z.shape[-1])

    def teacher_forced(self, images: torch.Tensor, cond: Condition, generator: torch.Generator | None = None,
                       final_tokens: str = "sampled") -> TeacherForced:
        """Teacher-forced pass on images N×3×H×W in [-1, 1]. The tokenizer runs without gradients.
        ``final_tokens``: "sampled" (from the final-scale logits, top-p 0.96, as upstream trains) or
        "target" (the tokenizer's own tokens)."""
        with torch.no_grad():
            q = self.tokenizer.tokenize(images)
            inputs = self.tokenizer.quantize.teacher_forcing_inputs(q.indices)
            last_contrib = self.tokenizer.quantize.scale_embedding(len(q.indices) - 1, q.indices[-1])
            before_last = (q.residual + last_contrib).flatten(2).transpose(1, 2)  # B×n×Cz
        logits, hidden = self.transformer(cond, inputs)
        n = q.indices[-1].shape[1]
        if final_tokens == "sampled":
            from .sampler import sample_tokens

            with torch.no_grad():
                tokens = sample_tokens(logits[:, -n:].detach(), top_k=0, top_p=0.96, generator=generator)
        else:
            tokens = q.indices[-1]
        z = self.diffusion_condition(hidden[:, -n:], tokens)
        target = before_last - self.tokenizer.quantize.embedding(tokens)
        return TeacherForced(logits, torch.cat(q.indices, 1), hidden, z, target.reshape(-1, target.shape[-1]), tokens)

    def losses(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None,
               cond_drop: float | None = None) -> dict[str, torch.Tensor]:
        """Class-conditional training losses: token cross-entropy over all scales and the residual
        diffusion loss. Labels are replaced by the null label with probability ``cond_drop``
        (default: the config's ``cond_drop_rate``) so classifier-free guidance works."""
        drop = self.cfg.transformer.cond_drop_rate if cond_drop is None else cond_drop
        if drop > 0:
            hit = torch.rand(labels.shape, generator=generator) < drop
            labels = torch.where(hit, self.transformer.null_labels(labels.shape[0]), labels)
        tf = self.teacher_forced(images, self.transformer.condition_from_labels(labels), generator)
        ce = F.cross_entropy(tf.logits.reshape(-1, tf.logits.shape[-1]), tf.targets.reshape(-1))
        diff = self.diffusion.loss(tf.residual_target, tf.diffusion_cond, generator)
        return {"loss": ce + diff, "ce": ce, "diffusion": diff}

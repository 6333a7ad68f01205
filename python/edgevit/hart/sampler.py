"""Seeded HART sampling: next-scale AR with classifier-free guidance, top-k/top-p, and the final
scale's single pass (discrete tokens + diffusion residual), output = decode(discrete + residual).

The host loop works over a :class:`Programs` object — plain callables — so the same loop drives the
eager model (:class:`EagerPrograms`) and, later, exported programs (transformer step with the KV
cache as explicit input/output, diffusion MLP, decoder). All randomness comes from one
``torch.Generator`` seeded by the caller, in a fixed order (tokens scale by scale, then the
diffusion's initial noise and per-step noise), so a seed reproduces an image exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import EdgevitError
from .diffusion import CachedEmbeddings
from .model import HartModel
from .transformer import Condition, StepConstants


def guidance_ramp(cfg: float, n_scales: int) -> list[float]:
    """Guidance strength t per scale: t_k = cfg · k/(S-1) for k < S-1 (0 at the first scale). The final
    scale reuses the previous scale's ratio, t = cfg · (S-2)/(S-1), as upstream HART's final-stage
    pass does. Logits are mixed as (1 + t)·cond - t·uncond."""
    if n_scales < 2:
        return [0.0] * n_scales
    ramp = [cfg * k / (n_scales - 1) for k in range(n_scales - 1)]
    return ramp + [cfg * (n_scales - 2) / (n_scales - 1)]


def sample_tokens(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample one token per position. logits: B×l×V -> B×l int64. top_k > 0 keeps the k largest
    logits; top_p > 0 keeps the smallest set of tokens whose probability sums to >= top_p."""
    b, n, v = logits.shape
    logits = logits.float()
    if 0 < top_k < v:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p > 0:
        sorted_logits, order = logits.sort(dim=-1)
        drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[..., -1] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(-1).reshape(-1, v)
    return torch.multinomial(probs, 1, generator=generator).reshape(b, n)


@dataclass(frozen=True)
class SamplerSettings:
    """cfg: guidance scale (0 = off); top_k: one value or one per scale; top_p; temperature of the
    diffusion noise."""

    cfg: float = 4.5
    top_k: int | Sequence[int] = 0
    top_p: float = 0.0
    temperature: float = 1.0

    def top_k_at(self, si: int) -> int:
        return self.top_k if isinstance(self.top_k, int) else int(self.top_k[si])


class Programs(Protocol):
    """What the host loop needs. Shapes: B (doubled under CFG), C model width, Cz latent channels.
    ``guidance_distilled`` > 0: the model's conditional branch already samples the guided distribution of
    that scale (:func:`resolve_guidance`)."""

    patch_nums: tuple[int, ...]
    guidance_distilled: float

    def prefix_inputs(self, cond: Condition) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...
    def scale_inputs(self, si: int, latent_in: torch.Tensor, cond: Condition) -> tuple[torch.Tensor, ...]: ...
    def empty_cache(self, batch: int) -> torch.Tensor: ...
    def step(self, x, pooled, pooled_head, cos, sin, cache, start: int) -> tuple[torch.Tensor, ...]: ...
    def code_vectors(self, idx: torch.Tensor) -> torch.Tensor: ...
    def upsample_scale(self, si: int, h: torch.Tensor) -> torch.Tensor: ...
    def next_input(self, acc: torch.Tensor, si: int) -> torch.Tensor: ...
    def diffusion_condition(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor: ...
    def residual(self, z: torch.Tensor, guidance: float | None, generator, temperature: float) -> torch.Tensor: ...
    def decode(self, latent: torch.Tensor) -> torch.Tensor: ...


class EagerPrograms:
    """:class:`Programs` over an eager :class:`HartModel` whose weights stay frozen while this object is
    used (build a new one after training): what does not depend on the sample — level embeddings and
    rotary tables per scale, the AdaLN modulations and qkv biases of one generation, the diffusion MLP's
    step embeddings — is computed once and reused, and :meth:`step` writes the KV cache in place
    (:meth:`HartTransformer.step_inplace`). Bit-identical to the plain module calls for the same seed."""

    def __init__(self, model: HartModel):
        self.model = model
        t, q = model.transformer, model.tokenizer.quantize
        self.transformer, self.patch_nums = t, t.patch_nums
        self.guidance_distilled = model.cfg.guidance_distilled
        self.empty_cache = t.empty_cache
        self.code_vectors = q.embedding
        self.upsample_scale, self.next_input = q.upsample_scale, q.next_input
        self.diffusion_condition = model.diffusion_condition
        self.decode = model.tokenizer.decode
        self.net = CachedEmbeddings.of(model.diffusion.net)
        self._memo: dict[tuple, object] = {}
        self._consts: tuple[torch.Tensor, torch.Tensor, StepConstants] | None = None

    def _cached(self, key: tuple, fn):
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def prefix_inputs(self, cond: Condition):
        t, pos = self.transformer, cond.positions
        k = cond.tokens.shape[1]
        lvl = self._cached(("level", 0, k), lambda: t.level_embedding(0, k))
        cos, sin = self._cached(("prefix", tuple(pos.shape), pos.numpy().tobytes()), lambda: t.prefix_rope(pos))
        return cond.tokens + lvl, cos, sin

    def scale_inputs(self, si: int, latent_in: torch.Tensor, cond: Condition):
        t, pos, n = self.transformer, cond.positions, latent_in.shape[1]
        lvl = self._cached(("level", si, n), lambda: t.level_embedding(si, n))
        last = pos[:, -1]
        cos, sin = self._cached(("scale", si, last.numpy().tobytes()), lambda: t.scale_rope(si, pos))
        return t.word_embed(latent_in) + lvl, cos, sin

    def step(self, x, pooled, pooled_head, cos, sin, cache, start: int):
        """Same contract as :meth:`HartTransformer.step`, but ``cache`` is updated in place (and returned)."""
        c = self._consts
        if c is None or c[0] is not pooled or c[1] is not pooled_head:  # once per generation
            c = self._consts = (pooled, pooled_head, self.transformer.step_constants(pooled, pooled_head))
        hidden, logits = self.transformer.step_inplace(x, c[2], cos, sin, cache, start)
        return hidden, logits, cache

    def residual(self, z, guidance, generator, temperature):
        return self.model.diffusion.sample(z, guidance, generator, temperature, net=self.net)


@dataclass
class Generated:
    """images: B×3×H×W in [-1, 1]; tokens: per-scale B×pk² int64; discrete, residual: B×Cz×P×P."""

    images: torch.Tensor
    tokens: list[torch.Tensor]
    discrete: torch.Tensor
    residual: torch.Tensor


def generate(programs: Programs, cond: Condition, uncond: Condition | None, settings: SamplerSettings,
             generator: torch.Generator) -> Generated:
    """Generate one image per row of ``cond``. With ``settings.cfg`` != 0, ``uncond`` (same batch)
    is run alongside (batch 2B) and logits/ε are guided by :func:`guidance_ramp`. Runs under
    ``torch.inference_mode``; the returned tensors are ordinary (usable with autograd)."""
    with torch.inference_mode():
        g = _generate(programs, cond, uncond, settings, generator)
    return Generated(g.images.clone(), [t.clone() for t in g.tokens], g.discrete.clone(), g.residual.clone())


def resolve_guidance(guidance_distilled: float, cfg: float) -> float:
    """The guidance scale the host loop applies: ``cfg`` for an ordinary model; 0 for a model with guidance
    distilled in (asking for its own scale, or 0, runs its single conditional branch). Any other scale
    raises: the distilled model has no unconditional branch to mix."""
    if guidance_distilled <= 0:
        return cfg
    if cfg not in (0.0, guidance_distilled):
        raise EdgevitError(f"this HART model has classifier-free guidance {guidance_distilled:g} distilled into its "
                           f"weights; sample it with cfg {guidance_distilled:g} (or 0), not {cfg:g}")
    return 0.0


def _generate(programs: Programs, cond: Condition, uncond: Condition | None, settings: SamplerSettings,
              generator: torch.Generator) -> Generated:
    pns = programs.patch_nums
    cfg = resolve_guidance(getattr(programs, "guidance_distilled", 0.0), settings.cfg)
    guided = cfg != 0.0
    if guided and uncond is None:
        raise ValueError("classifier-free guidance needs an unconditional condition")
    full = cond.cat(uncond) if guided else cond
    b = cond.tokens.shape[0]
    ramp = guidance_ramp(cfg, len(pns)) if guided else [0.0] * len(pns)
    x, cos, sin = programs.prefix_inputs(full)
    cache = programs.empty_cache(full.tokens.shape[0])
    start, acc, tokens = 0, None, []
    for si, pn in enumerate(pns):
        hidden, logits, cache = programs.step(x, full.pooled, full.pooled_head, cos, sin, cache, start)
        start += x.shape[1]
        if si == 0:  # the last prefix token predicts the 1×1 scale
            hidden, logits = hidden[:, -1:], logits[:, -1:]
        t = ramp[si]
        if guided:
            logits = (1 + t) * logits[:b] - t * logits[b:]
        idx = sample_tokens(logits, settings.top_k_at(si), settings.top_p, generator)
        tokens.append(idx)
        h = programs.code_vectors(idx).transpose(1, 2).reshape(b, -1, pn, pn)
        if si < len(pns) - 1:
            contrib = programs.upsample_scale(si, h)
            acc = contrib if acc is None else acc + contrib
            nxt = programs.next_input(acc, si + 1)
            x, cos, sin = programs.scale_inputs(si + 1, torch.cat([nxt, nxt]) if guided else nxt, full)
        else:  # final scale: discrete tokens + diffusion residual in one pass
            z = programs.diffusion_condition(hidden, torch.cat([idx, idx]) if guided else idx)
            res = programs.residual(z, t if guided else None, generator, settings.temperature)
            residual = res.reshape(b, pn * pn, -1).transpose(1, 2).reshape(b, -1, pn, pn)
            discrete = h if acc is None else acc + h
    return Generated(programs.decode(discrete + residual), tokens, discrete, residual)


def generate_classes(model: HartModel, labels: Sequence[int], seed: int,
                     settings: SamplerSettings = SamplerSettings()) -> Generated:
    """Class-conditional generation with the eager model, seeded."""
    t = model.transformer
    lab = torch.tensor(list(labels), dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    cond = t.condition_from_labels(lab)
    uncond = t.condition_from_labels(t.null_labels(len(lab)))
    return generate(EagerPrograms(model), cond, uncond, settings, gen)

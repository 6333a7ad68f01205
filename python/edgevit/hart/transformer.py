"""Next-scale autoregressive transformer (HART/VAR style, llama flavour).

Sequence layout: K prefix tokens (the condition: one class token, or K text-embedding tokens from a
pluggable text encoder), then the tokens of scales 1..S-1 (pk² each, row-major). The hidden state of
the last prefix token predicts scale 0 (1×1); the tokens of scale k (the running discrete latent,
area-downsampled to pk×pk) predict scale k. So ``logits[:, K-1:]`` cover all sum(pk²) tokens.
Attention is block-causal across scales: a token sees every token of its own and coarser scales
(the prefix counts as level 0). Prefix tokens get 1-D rotary positions, image tokens 2-D rotary
positions on the final grid (offset by the last prefix position), and every token a level
embedding (a timestep embedder over the level index, or a table).

Blocks: AdaLN (6 modulations from the pooled condition), RMSNorm, attention with q/v biases and
scale 0.25/sqrt(head_dim), SwiGLU. Attention is plain matmul/softmax with an additive mask.

Three forms: :meth:`HartTransformer.forward` (teacher forcing, the whole sequence under the
block-causal mask), :meth:`HartTransformer.step` (one scale, KV cache as an explicit fixed-length
tensor in and out: the static-shape program that is exported) and :meth:`HartTransformer.step_inplace`
(the eager sampler's step: AdaLN modulations computed once per generation, keys/values written into
the cache in place instead of concatenated) — bit-identical outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdgevitError
from .configs import TransformerConfig
from .layers import RMSNorm, TimestepEmbedder, apply_rope, rope_1d, rope_2d, scale_positions

NEG = -1e9  # additive mask value (finite, so quantized/exported graphs need no -inf)


@dataclass
class Condition:
    """Embedded condition for a batch of B.

    tokens: B×K×C prefix tokens; positions: B×K float 1-D rotary positions of the prefix;
    pooled: B×C AdaLN condition of the blocks; pooled_head: B×C AdaLN condition of the head.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    pooled: torch.Tensor
    pooled_head: torch.Tensor

    def cat(self, other: Condition) -> Condition:
        """Batch concatenation (conditional first, unconditional second for CFG)."""
        return Condition(*(torch.cat([a, b]) for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[torch.Tensor, ...]:
        return self.tokens, self.positions, self.pooled, self.pooled_head


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, l2_norm: bool):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv_proj = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)
        self.l2_norm = l2_norm
        if l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())
        self.scale = 1.0 if l2_norm else 0.25 / math.sqrt(self.head_dim)

    def qkv_bias(self) -> torch.Tensor:
        """The 3C bias of the fused projection: [q_bias, 0, v_bias]."""
        return torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor | None = None):
        """x: B×l×C -> q, k, v: B×H×l×d (rotary applied to q and k). ``bias``: :meth:`qkv_bias`, precomputed."""
        b, n, c = x.shape
        bias = self.qkv_bias() if bias is None else bias
        q, k, v = F.linear(x, self.qkv_proj.weight, bias).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.l2_norm:
            q = F.normalize(q, dim=-1) * self.scale_mul_1H11.clamp(max=math.log(100.0)).exp()
            k = F.normalize(k, dim=-1)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """q: B×H×l×d, k, v: B×H×m×d, mask: additive, broadcastable to B×H×l×m, or None -> B×l×C."""
        s = (q * self.scale) @ k.transpose(-2, -1)
        w = torch.softmax(s if mask is None else s + mask, dim=-1)
        b, h, n, d = q.shape
        return self.proj((w @ v).transpose(1, 2).reshape(b, n, h * d))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class AdaLNBlock(nn.Module):
    """x += γ1·attn(norm(x)(1+s1)+b1); x += γ2·ffn(norm(x)(1+s2)+b2); (γ1, γ2, s1, s2, b1, b2) =
    Linear(SiLU(cond))."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        c, m = cfg.embed_dim, cfg.ffn_multiple
        self.norm = RMSNorm(c, cfg.norm_eps)
        self.attn = Attention(c, cfg.num_heads, cfg.attn_l2_norm)
        self.ffn = SwiGLU(c, int(c * cfg.mlp_ratio * 2 / 3 + m - 1) // m * m)
        self.ada_lin = nn.Linear(c, 6 * c)

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """cond: B×C -> (γ1, γ2, s1, s2, b1, b2), each B×1×C."""
        return self.ada_lin(F.silu(cond)).view(-1, 1, 6, cond.shape[-1]).unbind(2)

    def forward(self, x, cond, cos, sin, mask, cache: torch.Tensor | None = None, start: int = 0,
                bias: torch.Tensor | None = None):
        """x: B×l×C, cond: B×C, cos/sin: B×l×d, mask: additive l×m. Without ``cache``: m = l.
        With ``cache`` (2×B×H×Lmax×d, keys then values): this chunk's keys/values are written at
        [start, start + l) and the chunk attends over all Lmax slots (m = Lmax); returns (x, cache).
        ``bias``: the fused qkv bias as a constant (see :class:`ScaleStep`), default computed here."""
        g1, g2, s1, s2, b1, b2 = self.modulation(cond)
        q, k, v = self.attn.project(self.norm(x) * (1 + s1) + b1, cos, sin, bias)
        if cache is not None:
            end = start + x.shape[1]
            k = torch.cat([cache[0, :, :, :start], k, cache[0, :, :, end:]], dim=2)
            v = torch.cat([cache[1, :, :, :start], v, cache[1, :, :, end:]], dim=2)
            cache = torch.stack([k, v])
        x = x + self.attn.attend(q, k, v, mask) * g1
        x = x + self.ffn(self.norm(x) * (1 + s2) + b2) * g2
        return x, cache

    def step_inplace(self, x, mod: tuple[torch.Tensor, ...], cos, sin, mask, cache: torch.Tensor, start: int,
                     bias: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with a cache, for eager sampling: ``mod`` = (γ1, γ2, 1 + s1, 1 + s2, b1, b2)
        precomputed, ``bias`` = :meth:`Attention.qkv_bias`; keys/values are written into ``cache``
        (2×B×H×Lmax×d) at [start, start + l) in place; the chunk attends over all Lmax slots under ``mask``
        (l×Lmax, as in :meth:`forward`: the same shapes, so the same floating-point results)."""
        g1, g2, s1p, s2p, b1, b2 = mod
        q, k, v = self.attn.project(self.norm(x) * s1p + b1, cos, sin, bias)
        end = start + x.shape[1]
        cache[0, :, :, start:end] = k
        cache[1, :, :, start:end] = v
        x = x + self.attn.attend(q, cache[0], cache[1], mask) * g1
        return x + self.ffn(self.norm(x) * s2p + b2) * g2


class HeadNorm(nn.Module):
    """AdaLN before the classifier head: norm(x)(1+s)+b, (s, b) = Linear(SiLU(cond))."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(dim, eps)
        self.ada_lin = nn.Linear(dim, 2 * dim)

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cond: B×C -> (1 + scale, shift), each B×1×C."""
        scale, shift = self.ada_lin(F.silu(cond)).view(-1, 1, 2, cond.shape[-1]).unbind(2)
        return 1 + scale, shift

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale1, shift = self.modulation(cond)
        return self.norm(x) * scale1 + shift


class HartTransformer(nn.Module):
    def __init__(self, cfg: TransformerConfig, patch_nums: tuple[int, ...], vocab_size: int, z_channels: int):
        super().__init__()
        self.cfg, self.patch_nums = cfg, tuple(patch_nums)
        c = cfg.embed_dim
        self.head_dim = c // cfg.num_heads
        self.word_embed = nn.Linear(z_channels, c)
        if cfg.num_classes > 0:
            self.class_embed = nn.Embedding(cfg.num_classes + 1, c)
            self.prefix_len = 1
        else:
            self.context_norm = RMSNorm(cfg.context_dim, cfg.norm_eps, cfg.context_norm_scale) if cfg.use_context_norm else nn.Identity()
            self.context_embed = nn.Linear(cfg.context_dim, c)
            self.prefix_len = cfg.context_tokens
        self.lvl_embed = TimestepEmbedder(c) if cfg.use_timestep_embed else nn.Embedding(len(self.patch_nums), c)
        self.blocks = nn.ModuleList(AdaLNBlock(cfg) for _ in range(cfg.depth))
        self.head_nm = HeadNorm(c, cfg.norm_eps)
        self.head = nn.Linear(c, vocab_size)
        self.decoder_norm = RMSNorm(c, cfg.norm_eps)

    # --- conditioning ---------------------------------------------------------------------------
    def condition_from_labels(self, labels: torch.Tensor) -> Condition:
        """labels: int64 B (``num_classes`` = null label for CFG)."""
        if self.cfg.num_classes <= 0:
            raise EdgevitError("this transformer is text-conditioned; pass text embeddings, not class labels")
        tok = self.class_embed(labels)
        return Condition(tok[:, None], torch.zeros(labels.shape[0], 1, device=tok.device), tok, tok)

    def null_labels(self, batch: int) -> torch.Tensor:
        return torch.full((batch,), self.cfg.num_classes, dtype=torch.long)

    def condition_from_context(self, context: torch.Tensor, mask: torch.Tensor | None = None,
                               positions: torch.Tensor | None = None) -> Condition:
        """Text embeddings from any text encoder as prefix. context: B×K×context_dim, mask: B×K
        (1 = real token; used for average pooling only), positions: B×K (default 0..K-1)."""
        if self.cfg.context_dim <= 0:
            raise EdgevitError("this transformer is class-conditioned; pass class labels, not text embeddings")
        b, k, _ = context.shape
        if k != self.prefix_len:
            raise EdgevitError(f"text context has {k} tokens; this model takes exactly {self.prefix_len}")
        tok = self.context_embed(self.context_norm(context))
        pos = torch.arange(k, dtype=torch.float32).expand(b, k) if positions is None else positions.float()
        pooled = tok.max(1).values
        return Condition(tok, pos, pooled, pooled)

    # --- sequence pieces (host side) ------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        """K + sum_{k>=1} pk²: the KV cache length one generation needs."""
        return self.prefix_len + sum(p * p for p in self.patch_nums[1:])

    def level_embedding(self, level: int, n: int) -> torch.Tensor:
        idx = torch.full((n,), level, dtype=torch.long)
        return self.lvl_embed(idx.float() if self.cfg.use_timestep_embed else idx)

    def prefix_rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix positions B×K -> cos, sin B×K×d."""
        return rope_1d(positions, self.head_dim, self.cfg.rope_theta)

    def scale_rope(self, si: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary tables of scale ``si``'s tokens after prefix positions B×K -> cos, sin B×pk²×d."""
        n = self.patch_nums[si] ** 2
        pos = scale_positions(self.patch_nums, si)[None] + positions[:, -1:, None]
        return rope_2d(pos.expand(positions.shape[0], n, 2), self.head_dim, self.cfg.rope_theta)

    def prefix_inputs(self, cond: Condition):
        """Step-0 inputs: x B×K×C, cos, sin B×K×d."""
        x = cond.tokens + self.level_embedding(0, cond.tokens.shape[1])
        return (x, *self.prefix_rope(cond.positions))

    def scale_inputs(self, si: int, latent_in: torch.Tensor, cond: Condition):
        """Scale-``si`` (>= 1) inputs from the downsampled running latent B×pk²×Cz: x B×pk²×C, cos, sin."""
        x = self.word_embed(latent_in) + self.level_embedding(si, latent_in.shape[1])
        return (x, *self.scale_rope(si, cond.positions))

    def logits(self, hidden: torch.Tensor, cond: Condition) -> torch.Tensor:
        return self.head(self.head_nm(hidden, cond.pooled_head))

    # --- full (teacher-forced) forward ----------------------------------------------------------
    def block_causal_mask(self) -> torch.Tensor:
        """Additive L×L mask: 0 where key level <= query level, NEG elsewhere."""
        lv = torch.cat([torch.zeros(self.prefix_len, dtype=torch.long)]
                       + [torch.full((p * p,), i, dtype=torch.long) for i, p in enumerate(self.patch_nums) if i > 0])
        return torch.where(lv[None, :] <= lv[:, None], 0.0, NEG)

    def forward(self, cond: Condition, scale_inputs: torch.Tensor):
        """Teacher forcing. scale_inputs: B×(sum_{k>=1} pk²)×Cz (see
        ``MultiScaleQuantizer.teacher_forcing_inputs``). Returns (logits B×(sum pk²)×V, hidden B×L×C)."""
        x0, c0, s0 = self.prefix_inputs(cond)
        xs, coss, sins = [x0], [c0], [s0]
        offset = 0
        for si in range(1, len(self.patch_nums)):
            n = self.patch_nums[si] ** 2
            x, c, s = self.scale_inputs(si, scale_inputs[:, offset:offset + n], cond)
            xs.append(x), coss.append(c), sins.append(s)
            offset += n
        x, cos, sin = torch.cat(xs, 1), torch.cat(coss, 1), torch.cat(sins, 1)
        mask = self.block_causal_mask()
        for blk in self.blocks:
            x, _ = blk(x, cond.pooled, cos, sin, mask)
        return self.logits(x[:, self.prefix_len - 1:], cond), x

    # --- KV-cache step ----------------------------------------------------------------------------
    def empty_cache(self, batch: int, max_len: int | None = None) -> torch.Tensor:
        """Zero KV cache depth×2×B×H×Lmax×d (Lmax defaults to :attr:`seq_len`)."""
        n = self.seq_len if max_len is None else max_len
        return torch.zeros(len(self.blocks), 2, batch, self.cfg.num_heads, n, self.head_dim)

    def step(self, x, pooled, pooled_head, cos, sin, cache: torch.Tensor, start: int,
             biases: list[torch.Tensor] | None = None):
        """One scale with the KV cache as explicit input/output.

        x: B×l×C inputs (from :meth:`prefix_inputs` / :meth:`scale_inputs`), pooled, pooled_head: B×C,
        cos, sin: B×l×d, cache: depth×2×B×H×Lmax×d, start: slots already filled; ``biases``: per block
        :meth:`Attention.qkv_bias` precomputed (same values). Returns (hidden B×l×C, logits B×l×V, new
        cache). Raises EdgevitError on cache overflow.
        """
        mask = self.cache_mask(start, x.shape[1], cache.shape[-2])
        layers = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk(x, pooled, cos, sin, mask, cache=cache[i], start=start,
                        bias=None if biases is None else biases[i])
            layers.append(kv)
        return x, self.head(self.head_nm(x, pooled_head)), torch.stack(layers)

    def cache_mask(self, start: int, n: int, cap: int) -> torch.Tensor:
        """Additive n×cap mask letting ``n`` new tokens after ``start`` cached ones attend to slots
        [0, start + n); raises EdgevitError when they exceed the ``cap`` slots."""
        if start + n > cap:
            raise EdgevitError(f"KV cache overflow: {start} cached + {n} new tokens > capacity {cap}; "
                               f"allocate at least {self.seq_len} slots")
        return torch.where(torch.arange(cap)[None, :] < start + n, 0.0, NEG).expand(n, cap)

    def step_constants(self, pooled: torch.Tensor, pooled_head: torch.Tensor) -> StepConstants:
        """What :meth:`step_inplace` reuses at every scale of one generation (frozen weights)."""
        mods = []
        for blk in self.blocks:
            g1, g2, s1, s2, b1, b2 = blk.modulation(pooled)
            mods.append((g1, g2, 1 + s1, 1 + s2, b1, b2))
        return StepConstants(mods, [blk.attn.qkv_bias() for blk in self.blocks], self.head_nm.modulation(pooled_head))

    def step_inplace(self, x, consts: StepConstants, cos, sin, cache: torch.Tensor, start: int):
        """:meth:`step` for eager sampling, bit-identical to it: the modulations come from
        :meth:`step_constants` and keys/values are written into ``cache`` in place (no concatenation and
        restacking of the whole cache). Returns (hidden B×l×C, logits B×l×V); ``cache`` now holds slots
        [0, start + l)."""
        mask = self.cache_mask(start, x.shape[1], cache.shape[-2])
        for i, blk in enumerate(self.blocks):
            x = blk.step_inplace(x, consts.blocks[i], cos, sin, mask, cache[i], start, consts.biases[i])
        scale1, shift = consts.head
        return x, self.head(self.head_nm.norm(x) * scale1 + shift)


@dataclass
class StepConstants:
    """Per-generation constants of :meth:`HartTransformer.step_inplace`: per block (γ1, γ2, 1 + s1, 1 + s2,
    b1, b2) (B×1×C each) and the fused qkv bias (3C); the head's (1 + scale, shift)."""

    blocks: list[tuple[torch.Tensor, ...]]
    biases: list[torch.Tensor]
    head: tuple[torch.Tensor, torch.Tensor]


class ScaleStep(nn.Module):
    """:meth:`HartTransformer.step` at a fixed cache offset ``start`` as a module with tensor-only
    inputs/outputs — the static-shape program exported per scale (plain matmul/softmax, no SDPA).
    The fused qkv biases are buffers, so the exported projections have a constant bias (a bias
    concatenated in the graph kept XNNPACK from taking the qkv linears: they ran on ExecuTorch's
    portable addmm)."""

    def __init__(self, transformer: HartTransformer, start: int):
        super().__init__()
        self.transformer, self.start = transformer, start
        for i, blk in enumerate(transformer.blocks):
            self.register_buffer(f"qkv_bias_{i}", blk.attn.qkv_bias().detach().clone(), persistent=False)

    def forward(self, x, pooled, pooled_head, cos, sin, cache):
        biases = [getattr(self, f"qkv_bias_{i}") for i in range(len(self.transformer.blocks))]
        return self.transformer.step(x, pooled, pooled_head, cos, sin, cache, self.start, biases)

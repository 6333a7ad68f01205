"""Hybrid tokenizer: CNN encoder/decoder and multi-scale residual vector quantization (VAR style).

Images are float32 N×3×H×W RGB in [-1, 1]. The encoder maps them to a latent ``f`` N×Cz×h×w
(h = w = ``patch_nums[-1]``). Quantization walks the ``patch_nums`` schedule from coarse to fine:
at scale k the running residual is area-downsampled to pk×pk, each position takes its nearest
codebook entry, the entries are bicubic-upsampled to h×w, passed through a shared residual conv
("phi", picked by the scale's position in [0, 1]) and subtracted from the residual. The last scale
is already at h×w and, as in HART's hybrid tokenizer at inference, is neither resampled nor passed
through phi. What remains, ``f - sum of discrete scales``, is the continuous residual that the
diffusion MLP models; ``discrete + residual == f`` by construction. The decoder decodes any latent,
continuous or discrete.

Parameter names follow the upstream taming/VAR layout so upstream tokenizer weights load through
the small key map in :mod:`edgevit.hart.checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .configs import TokenizerConfig


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv3×3 twice, with a 1×1 shortcut when the channel count changes."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = _group_norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _group_norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection (qkv as one 1×1 conv)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).unbind(1)
        attn = torch.softmax(q.transpose(1, 2) @ k * c**-0.5, dim=-1)  # N×HW(query)×HW(key)
        out = (v @ attn.transpose(1, 2)).reshape(n, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], resample: nn.Module | None, name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        if resample is not None:
            self.add_module(name, resample)
        self.resample_name = name if resample is not None else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, blk in enumerate(self.block):
            h = blk(h)
            if len(self.attn):
                h = self.attn[i](h)
        return getattr(self, self.resample_name)(h) if self.resample_name else h


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int, attn: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups) if attn else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """N×3×H×W in [-1, 1] -> N×Cz×H/d×W/d, d = 2**(len(ch_mult) - 1)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        g, ch, mult = cfg.norm_groups, cfg.ch, cfg.ch_mult
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = ch
        for lvl, m in enumerate(mult):
            cout, last = ch * m, lvl == len(mult) - 1
            blocks = [ResnetBlock(cin if i == 0 else cout, cout, g) for i in range(cfg.num_res_blocks)]
            attns = [AttnBlock(cout, g) for _ in blocks] if (last and cfg.using_sa) else []
            self.down.append(_Level(blocks, attns, None if last else Downsample(cout), "downsample"))
            cin = cout
        self.mid = _Mid(cin, g, cfg.using_mid_sa)
        self.norm_out = _group_norm(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """N×Cz×h×w latent -> N×3×(h·d)×(w·d) image (unclamped; [-1, 1] after training)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        g, ch, mult = cfg.norm_groups, cfg.ch, cfg.ch_mult
        cin = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _Mid(cin, g, cfg.using_mid_sa)
        levels: list[nn.Module] = []
        for lvl in reversed(range(len(mult))):
            cout = ch * mult[lvl]
            blocks = [ResnetBlock(cin if i == 0 else cout, cout, g) for i in range(cfg.num_res_blocks + 1)]
            attns = [AttnBlock(cout, g) for _ in blocks] if (lvl == len(mult) - 1 and cfg.using_sa) else []
            levels.insert(0, _Level(blocks, attns, Upsample(cout) if lvl else None, "upsample"))
            cin = cout
        self.up = nn.ModuleList(levels)  # index = resolution level (0 = full size), run last to first
        self.norm_out = _group_norm(cin, g)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Phi(nn.Conv2d):
    """Residual conv: ``(1 - r) h + r conv3x3(h)``."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, 3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


@dataclass
class Quantized:
    """Result of :meth:`MultiScaleQuantizer.quantize` for a latent f (N×C×h×w).

    indices: per scale k, int64 N×pk² (row-major); discrete: sum of the discrete scales N×C×h×w;
    residual: f - discrete; vq_loss: scalar (commitment + codebook terms averaged over scales).
    """

    indices: list[torch.Tensor]
    discrete: torch.Tensor
    residual: torch.Tensor
    vq_loss: torch.Tensor


class MultiScaleQuantizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.patch_nums = tuple(cfg.patch_nums)
        self.beta = cfg.beta
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        n_phi = cfg.share_quant_resi or len(self.patch_nums)
        self.phi = nn.ModuleList(Phi(cfg.z_channels, cfg.quant_resi) for _ in range(n_phi))
        # Each scale uses the phi whose tick is nearest to its position si / (S - 1) in [0, 1].
        k = n_phi
        ticks = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4 else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
        s = len(self.patch_nums)
        self.phi_index = [int(np.argmin(np.abs(ticks - si / max(s - 1, 1)))) for si in range(s)]

    @property
    def final_size(self) -> int:
        return self.patch_nums[-1]

    def scale_embedding(self, si: int, idx: torch.Tensor) -> torch.Tensor:
        """Contribution of scale ``si`` tokens ``idx`` (N×pk²) to the latent, N×C×h×w."""
        pn, n = self.patch_nums[si], idx.shape[0]
        h = self.embedding(idx).transpose(1, 2).reshape(n, -1, pn, pn)
        return self.upsample_scale(si, h)

    def upsample_scale(self, si: int, h: torch.Tensor) -> torch.Tensor:
        """N×C×pk×pk code vectors -> their latent contribution N×C×h×w (bicubic up + phi; the last
        scale is returned unchanged)."""
        if si == len(self.patch_nums) - 1:
            return h
        size = self.final_size
        return self.phi[self.phi_index[si]](F.interpolate(h, size=(size, size), mode="bicubic"))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Codebook index of each row of ``z`` (M×C) by squared L2 distance, int64 M."""
        w = self.embedding.weight
        d = z.square().sum(1, keepdim=True) + w.square().sum(1) - 2 * z @ w.T
        return d.argmin(1)

    def quantize(self, f: torch.Tensor) -> Quantized:
        n, c, h, w = f.shape
        if h != self.final_size or w != self.final_size:
            raise ValueError(f"latent is {h}x{w}; the patch_nums schedule ends at {self.final_size}")
        f_ng = f.detach()
        rest, discrete = f_ng.clone(), torch.zeros_like(f_ng)
        indices, loss = [], f.new_zeros(())
        for si, pn in enumerate(self.patch_nums):
            z = F.interpolate(rest, size=(pn, pn), mode="area") if pn != h else rest
            idx = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, c)).reshape(n, pn * pn)
            contrib = self.scale_embedding(si, idx)
            discrete = discrete + contrib
            rest = rest - contrib.detach()
            indices.append(idx)
            loss = loss + F.mse_loss(discrete.detach(), f) * self.beta + F.mse_loss(discrete, f_ng)
        return Quantized(indices, discrete, f - discrete.detach(), loss / len(self.patch_nums))

    def indices_to_latent(self, indices: list[torch.Tensor]) -> torch.Tensor:
        """Sum of the discrete scales given per-scale tokens (N×pk² each) -> N×C×h×w."""
        out = None
        for si, idx in enumerate(indices):
            contrib = self.scale_embedding(si, idx)
            out = contrib if out is None else out + contrib
        return out

    def teacher_forcing_inputs(self, indices: list[torch.Tensor]) -> torch.Tensor:
        """Transformer inputs for scales 1..S-1: the running discrete latent after scales < k,
        area-downsampled to pk×pk, concatenated: N×(sum_{k>=1} pk²)×C."""
        acc, inputs = None, []
        for si in range(len(self.patch_nums) - 1):
            contrib = self.scale_embedding(si, indices[si])
            acc = contrib if acc is None else acc + contrib
            inputs.append(self.next_input(acc, si + 1))
        return torch.cat(inputs, dim=1)

    def next_input(self, acc: torch.Tensor, si: int) -> torch.Tensor:
        """Running latent N×C×h×w -> scale-``si`` transformer input N×pk²×C (area downsampling)."""
        pn = self.patch_nums[si]
        small = F.interpolate(acc, size=(pn, pn), mode="area") if pn != acc.shape[-1] else acc
        return small.flatten(2).transpose(1, 2)


class HybridTokenizer(nn.Module):
    """Encoder + quant_conv -> multi-scale quantizer; post_quant_conv + decoder."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        ks = cfg.quant_conv_ks
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, padding=ks // 2)
        self.quantize = MultiScaleQuantizer(cfg)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, padding=ks // 2)
        self.decoder = Decoder(cfg)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """N×3×H×W in [-1, 1] -> continuous latent N×Cz×h×w."""
        return self.quant_conv(self.encoder(images))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Any latent N×Cz×h×w (continuous, discrete, or discrete + residual) -> image N×3×H×W,
        clamped to [-1, 1]."""
        return self.decoder(self.post_quant_conv(latent)).clamp(-1, 1)

    def tokenize(self, images: torch.Tensor) -> Quantized:
        """Images -> per-scale indices, discrete latent and continuous residual (for teacher forcing)."""
        return self.quantize.quantize(self.encode(images))

    def forward(self, images: torch.Tensor, p_continuous: float = 0.5, generator: torch.Generator | None = None):
        """Training pass: returns (reconstruction N×3×H×W unclamped, vq_loss). With probability
        ``p_continuous`` the decoder sees the continuous latent, otherwise the discrete one
        (straight-through to the encoder either way), so it learns to decode both."""
        f = self.encode(images)
        q = self.quantize.quantize(f)
        continuous = bool(torch.rand((), generator=generator) < p_continuous)
        latent = f if continuous else (q.discrete - f).detach() + f
        return self.decoder(self.post_quant_conv(latent)), q.vq_loss

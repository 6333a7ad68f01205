"""Small building blocks shared by the HART transformer and the residual diffusion MLP:
RMSNorm, sinusoidal timestep features and their MLP embedder, rotary position tables."""

from __future__ import annotations

import math

import torch
from torch import nn

FREQ_DIM = 256  # sinusoidal feature size of the timestep embedders (upstream value)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x², -1) + eps) * weight`` over the last dimension (computed in float32)."""

    def __init__(self, dim: int, eps: float = 1e-6, scale: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), float(scale)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def timestep_features(t: torch.Tensor, dim: int = FREQ_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) steps ``t`` (N,) -> N×dim: [cos(t·f), sin(t·f)],
    f_i = max_period^(-i / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


class TimestepEmbedder(nn.Module):
    """Sinusoidal features -> Linear -> SiLU -> Linear (N,) -> N×hidden. Used for diffusion steps and,
    in the transformer, for scale levels (so level embeddings interpolate between integer levels)."""

    def __init__(self, hidden: int, freq_dim: int = FREQ_DIM):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t, self.freq_dim).to(self.mlp[0].weight.dtype))


# --- rotary positions ---------------------------------------------------------------------------
def rope_1d(pos: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D rotary tables for prefix tokens. pos: B×l positions -> cos, sin B×l×head_dim, laid out
    [p·f, p·f] with f_i = theta^(-2i/head_dim), i < head_dim/2."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=pos.device) / head_dim)
    f = pos.float()[..., None] * inv
    emb = torch.cat([f, f], dim=-1)
    return emb.cos(), emb.sin()


def rope_2d(pos: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D rotary tables for image tokens. pos: B×l×2 (row, col) -> cos, sin B×l×head_dim, laid out
    [r·f, r·f, c·f, c·f] with f_i = theta^(-4i/head_dim), i < head_dim/4 (upstream HART layout; with
    the rotate-half pairing of :func:`apply_rope` each pair mixes a row angle and a column angle)."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 4, dtype=torch.float32, device=pos.device) / head_dim)
    fr = pos[..., 0:1].float() * inv
    fc = pos[..., 1:2].float() * inv
    emb = torch.cat([fr, fr, fc, fc], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: B×H×l×d; cos, sin: B×l×d. ``x·cos + rotate_half(x)·sin`` with rotate_half([a, b]) = [-b, a]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def scale_positions(patch_nums: tuple[int, ...], si: int) -> torch.Tensor:
    """(row, col) of the pk² tokens of scale ``si`` (row-major), in units of the final grid:
    (i·P/pk, j·P/pk) with P = patch_nums[-1]. Returns pk²×2 float32."""
    pn, big = patch_nums[si], patch_nums[-1]
    ij = torch.stack(torch.meshgrid(torch.arange(pn), torch.arange(pn), indexing="ij"), dim=-1).float()
    return (ij / pn * big).reshape(-1, 2)

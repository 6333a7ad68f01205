"""SAM's ViT-B image encoder (Kirillov et al., 2023), our own implementation, for latency comparison only.

Architecture as published: 16×16 patches of a 1024×1024 input → 64×64 tokens of width 768, absolute
position embedding, 12 pre-norm blocks with 12 heads (windowed 14×14 attention with zero padding, global
attention in blocks 3, 6, 9, 12), decomposed relative position bias, MLP ratio 4, then a neck of 1×1 and
3×3 convs to 256 channels with channel LayerNorms. Attention is plain matmul + softmax, as upstream.
Random weights: only the cost matters here (~89.7M parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelNorm(nn.Module):
    def __init__(self, c: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x - x.mean(1, keepdim=True)
        d = d / torch.sqrt(d.pow(2).mean(1, keepdim=True) + self.eps)
        return d * self.weight[:, None, None] + self.bias[:, None, None]


class Attention(nn.Module):
    """Multi-head attention over an h×w token grid with decomposed relative position bias."""

    def __init__(self, dim: int, heads: int, size: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.randn(2 * size - 1, dim // heads) * 0.02)
        self.rel_pos_w = nn.Parameter(torch.randn(2 * size - 1, dim // heads) * 0.02)
        idx = torch.arange(size)
        self.register_buffer("rel_index", idx[:, None] - idx[None, :] + size - 1, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4).reshape(3, b * self.heads, h * w, -1)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.matmul(q * self.scale, k.transpose(-2, -1))
        rq = q.reshape(b * self.heads, h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", rq, self.rel_pos_h[self.rel_index])
        rel_w = torch.einsum("bhwc,wkc->bhwk", rq, self.rel_pos_w[self.rel_index])
        attn = (attn.view(-1, h, w, h, w) + rel_h[..., None] + rel_w[:, :, :, None, :]).view(-1, h * w, h * w)
        out = torch.matmul(attn.softmax(dim=-1), v)
        out = out.view(b, self.heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, c)
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, grid: int):
        super().__init__()
        self.window = window
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, window if window else grid)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.window:
            b, h, w, c = y.shape
            s = self.window
            ph, pw = (s - h % s) % s, (s - w % s) % s
            y = F.pad(y, (0, 0, 0, pw, 0, ph))
            hp, wp = h + ph, w + pw
            y = y.view(b, hp // s, s, wp // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s, s, c)
            y = self.attn(y)
            y = y.view(b, hp // s, wp // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)[:, :h, :w]
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class SamViTB(nn.Module):
    """1×3×1024×1024 → 1×256×64×64."""

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, window: int = 14,
                 global_blocks: tuple[int, ...] = (2, 5, 8, 11), img: int = 1024, patch: int = 16):
        super().__init__()
        grid = img // patch
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, 0 if i in global_blocks else window, grid) for i in range(depth))
        self.neck = nn.Sequential(nn.Conv2d(dim, 256, 1, bias=False), ChannelNorm(256),
                                  nn.Conv2d(256, 256, 3, padding=1, bias=False), ChannelNorm(256))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).permute(0, 2, 3, 1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))

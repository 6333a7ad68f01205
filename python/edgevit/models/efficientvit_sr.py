"""EfficientViT super-resolution (our design; the EfficientViT paper reports SR results but never released
the network). On the low-resolution (LR) input grid: a 3×3 conv stem; ``levels`` 3×3 stride-2 convs down to
the trunk grid (half the LR resolution for s/m, a quarter for t), where the EfficientViT blocks (multi-scale
ReLU linear attention + depthwise-conv FFN) run on a quarter (a sixteenth) of the pixels; back up by a 1×1 conv
+ fixed bicubic ×2**levels, added to the stem features;
``fuse`` 3×3 convs; a 3×3 conv + pixel shuffle to the output resolution; plus a global
bicubic skip, so the network only learns the residual. Norm-free (batch statistics of small crops hurt
SR), biases everywhere.

ReLU, not EfficientViT's hardswish: without norms the activations stay small (std ~0.1 for inputs in
[0, 1]), where hswish(x) = x(x + 3)/6 is almost linear, so a hswish network is nearly a linear filter
over bicubic; its training loss plateaued after ~300 steps (measured: Set5 ×2 35.24 dB after 600 and
35.25 after 2000 steps, 36.06 with ReLU after 600 steps, same data and seed).

Attention runs in fixed ``window``×``window`` windows of the trunk grid (aligned to the image
origin): the receptive field is bounded (:func:`receptive_margin`), so tiled inference is exact, and the
cost is linear in the image size. ``model(x)``: x float32 N×3×h×w RGB in [0, 1] → N×3×(s·h)×(s·w) in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import KeyMap
from .layers import ActName, make_act
from .linear_attention import bmm_relu_linear_attention
from .registry import register_model
from .sr_common import BicubicSkip, SRContract, pad_to_multiple

IDENTITY_KEYS = KeyMap()  # trained here: our names are the checkpoint's names


@dataclass(frozen=True)
class SRConfig:
    stem: int  # channels at the LR resolution
    width: int  # channels of the half-resolution EfficientViT trunk
    depth: int  # EfficientViT blocks
    dim: int = 16  # attention head dim
    expand: float = 2.0  # FFN expansion
    window: int = 8  # attention window (trunk pixels)
    act: ActName = "relu"  # hswish is near-linear at these activation scales (|x| ~ 0.1); see the module doc
    fuse: int = 1  # 3×3 conv + act layers at the LR resolution after the two branches meet
    levels: int = 1  # 3×3 stride-2 convs before the blocks: the trunk runs at LR / 2**levels

    @property
    def size_multiple(self) -> int:
        """LR pixels per trunk window: inputs are padded to a multiple of it, tiles aligned to it."""
        return 2**self.levels * self.window


class WindowLiteMLA(nn.Module):
    """LiteMLA (ReLU linear attention, multi-scale 5×5 aggregation) attending inside fixed windows.

    Same parameters and names as :class:`edgevit.models.layers.LiteMLA` (``qkv``, ``aggreg``, ``proj``) but
    norm-free with a biased projection. Per window and head, with φ = ReLU over the window's tokens::

        out_n = Σ_m v_m (φ(k_m)ᵀ φ(q_n)) / (Σ_m φ(k_m)ᵀ φ(q_n) + eps)

    computed by :func:`edgevit.models.linear_attention.bmm_relu_linear_attention` over (windows·heads), in
    float32. Each branch (the qkv conv, each aggregation) attends separately. Input H, W must be multiples of
    ``window``.
    """

    def __init__(self, channels: int, dim: int, window: int, scales: tuple[int, ...] = (5,), eps: float = 1e-15):
        super().__init__()
        heads = channels // dim
        total = heads * dim
        self.dim, self.window, self.eps = dim, window, eps
        self.qkv = nn.Conv2d(channels, 3 * total, 1, bias=True)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(3 * total, 3 * total, s, padding=s // 2, groups=3 * total, bias=False),
                nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False),
            )
            for s in scales
        )
        self.proj = nn.Conv2d(total * (1 + len(scales)), channels, 1, bias=True)

    def attend(self, t: torch.Tensor) -> torch.Tensor:
        """t: B×(heads·3·dim)×H×W → B×(heads·dim)×H×W, attention within each window."""
        b, c, h, w = t.shape
        d, win = self.dim, self.window
        heads, nh, nw = c // (3 * d), h // win, w // win
        t = t.reshape(b * heads, 3 * d, nh, win, nw, win).permute(0, 2, 4, 1, 3, 5)
        t = t.reshape(b * heads * nh * nw, 3 * d, win * win)  # (windows·heads)×3d×tokens
        out = bmm_relu_linear_attention(t, d, self.eps)
        out = out.reshape(b * heads, nh, nw, d, win, win).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(b, heads * d, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        heads = [self.attend(qkv), *(self.attend(agg(qkv)) for agg in self.aggreg)]
        return self.proj(torch.cat(heads, dim=1).to(x.dtype))


class FFN(nn.Module):
    """Norm-free inverted bottleneck: 1×1 expand + act → depthwise 3×3 + act → 1×1 project."""

    def __init__(self, channels: int, expand: float, act: ActName):
        super().__init__()
        mid = round(channels * expand)
        self.inverted_conv = nn.Sequential(nn.Conv2d(channels, mid, 1), make_act(act))
        self.depth_conv = nn.Sequential(nn.Conv2d(mid, mid, 3, padding=1, groups=mid), make_act(act))
        self.point_conv = nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class SRBlock(nn.Module):
    """EfficientViT block without norms: ``x + attention(x)`` then ``x + ffn(x)``."""

    def __init__(self, cfg: SRConfig):
        super().__init__()
        self.context_module = WindowLiteMLA(cfg.width, cfg.dim, cfg.window)
        self.local_module = FFN(cfg.width, cfg.expand, cfg.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.context_module(x)
        return x + self.local_module(x)


def receptive_margin(cfg: SRConfig) -> int:
    """LR pixels on each side that an output pixel can depend on (an upper bound).

    With f = 2**levels (LR pixels per trunk pixel): stem 3×3: 1; the 3×3 stride-2 down convs: 2, 4, ..., f;
    per block, ×f in LR pixels: 5×5 aggregation 2, the rest of the window (window - 1), FFN 3×3 1; the
    bicubic ×f up (2 trunk-resolution taps): 2f + 1; fuse and upsampler 3×3 convs: 1 each. The bicubic skip
    (2) is parallel and smaller.
    """
    f = 2**cfg.levels
    return 1 + (2 * f - 2) + f * cfg.depth * (cfg.window + 2) + (2 * f + 1) + cfg.fuse + 1


class EfficientViTSR(nn.Module):
    """N×3×h×w in [0, 1] → N×3×(s·h)×(s·w) in [0, 1] (clamped in eval mode; unclamped while training)."""

    def __init__(self, cfg: SRConfig, scale: int):
        super().__init__()
        self.cfg, self.scale = cfg, scale
        f = 2**cfg.levels
        self.multiple = cfg.size_multiple
        self.stem = nn.Sequential(nn.Conv2d(3, cfg.stem, 3, padding=1), make_act(cfg.act))
        downs = [nn.Conv2d(cfg.stem, cfg.width, 3, stride=2, padding=1)]
        downs += [m for _ in range(cfg.levels - 1)
                  for m in (make_act(cfg.act), nn.Conv2d(cfg.width, cfg.width, 3, stride=2, padding=1))]
        self.down = downs[0] if cfg.levels == 1 else nn.Sequential(*downs)  # levels 1: the trained s/m names
        self.blocks = nn.Sequential(*(SRBlock(cfg) for _ in range(cfg.depth)))
        self.up = nn.Conv2d(cfg.width, cfg.stem, 1)
        self.up_resample = BicubicSkip(f, cfg.stem)  # smooth ×f (no f×f-block pattern from a pixel shuffle)
        self.fuse = nn.Sequential(*(m for _ in range(cfg.fuse)
                                    for m in (nn.Conv2d(cfg.stem, cfg.stem, 3, padding=1), make_act(cfg.act))))
        # 3×3 at both scales: a 1×1 at ×4 (each output pixel a linear map of one LR pixel's features) cost
        # 0.3 dB on Set5 ×4 (measured, 400 steps)
        self.upsampler = nn.Conv2d(cfg.stem, 3 * scale * scale, 3, padding=1)
        self.skip = BicubicSkip(scale)
        with torch.no_grad():  # start close to plain bicubic
            self.upsampler.weight.mul_(0.1)
            self.upsampler.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        xp = pad_to_multiple(x, self.multiple)
        f = self.stem(xp)
        f = f + self.up_resample(self.up(self.blocks(self.down(f))))
        y = F.pixel_shuffle(self.upsampler(self.fuse(f)), self.scale) + self.skip(xp)
        y = y[:, :, : self.scale * h, : self.scale * w]
        return y if self.training else y.clamp(0.0, 1.0)


# t: the trunk at a quarter of the LR resolution: the latency-matched variant (benchmarks/sr_design_screen.py;
# its cards have the numbers). ×2: six 16-channel fuse convs; ×4: two 24-channel ones (the 16×6 stack did not
# train at ×4 on the shared budget: Set5 28.63 dB, 0.2 over bicubic).
VARIANTS = {"s": SRConfig(stem=24, width=32, depth=2, fuse=3), "m": SRConfig(stem=32, width=64, depth=3, fuse=3),
            "t": SRConfig(stem=16, width=32, depth=2, fuse=6, levels=2)}
SCALE_VARIANTS = {("t", 4): SRConfig(stem=24, width=32, depth=2, fuse=2, levels=2)}  # per-scale exceptions


def variant_config(variant: str, scale: int) -> SRConfig:
    return SCALE_VARIANTS.get((variant, scale), VARIANTS[variant])


TILES = {"s": 256, "m": 320, "t": 512}  # input tile size per variant (LR pixels): twice the margin at least


def _contract(variant: str, scale: int) -> SRContract:
    cfg = variant_config(variant, scale)
    mult = cfg.size_multiple
    margin = -(-receptive_margin(cfg) // mult) * mult  # rounded up to whole windows (keeps windows aligned)
    return SRContract(scale=scale, tile=TILES[variant], margin=margin, size_multiple=mult)

def _register(variant: str, scale: int) -> None:
    @register_model(f"efficientvit-sr-{variant}-x{scale}", family="efficientvit-sr",
                    contract=_contract(variant, scale), key_map=IDENTITY_KEYS)
    def build() -> EfficientViTSR:
        return EfficientViTSR(variant_config(variant, scale), scale)


for _v in VARIANTS:
    for _s in (2, 4):
        _register(_v, _s)

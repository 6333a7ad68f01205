"""EfficientViT building blocks.

Module attribute names follow the upstream EfficientViT state-dict layout (``conv``/``norm`` inside a
conv unit, ``main``/``shortcut`` inside a residual, ``op_list`` inside a sequence, ...), so upstream
checkpoints load through an identity key mapping. All tensors are NCHW float32 unless stated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

ActName = Literal["relu", "relu6", "hswish", "gelu", "silu"]


@dataclass(frozen=True)
class Style:
    """Normalisation and activation of one model family.

    B-series: hardswish, BatchNorm eps 1e-5. L-series: tanh-approximated GELU, BatchNorm eps 1e-7.
    """

    act: ActName
    bn_eps: float


def make_act(name: ActName | None) -> nn.Module | None:
    if name is None:
        return None
    if name == "gelu":
        return nn.GELU(approximate="tanh")
    return {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish, "silu": nn.SiLU}[name]()


class ConvUnit(nn.Module):
    """Conv2d ("same" padding for odd kernels) → optional BatchNorm → optional activation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        bn_eps: float | None = 1e-5,
        act: ActName | None = None,
    ):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"kernel size must be odd, got {kernel}")
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(cout, eps=bn_eps) if bn_eps is not None else None
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class Chain(nn.Module):
    """Apply modules in order (upstream name of the list: ``op_list``)."""

    def __init__(self, ops: Sequence[nn.Module]):
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class Residual(nn.Module):
    """``main(x) + x`` when ``skip`` is set, else ``main(x)`` (used for stride-2 / width-changing blocks)."""

    def __init__(self, main: nn.Module, skip: bool):
        super().__init__()
        self.main = main
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + x if self.skip else self.main(x)


def _norms(fewer_norm: bool, n: int, eps: float) -> list[float | None]:
    """Per-conv BN eps: with ``fewer_norm`` only the last conv is normalised (the others get a bias)."""
    return [None] * (n - 1) + [eps] if fewer_norm else [eps] * n


class DSConv(nn.Module):
    """Depthwise 3×3 (+act) → pointwise 1×1 (no act)."""

    def __init__(
        self, cin: int, cout: int, stride: int, expand: float, style: Style, fewer_norm: bool = False
    ):
        super().__init__()
        if expand != 1:
            raise ValueError(f"DSConv has no expansion, got expand={expand}")
        n = _norms(fewer_norm, 2, style.bn_eps)
        self.depth_conv = ConvUnit(cin, cin, 3, stride, groups=cin, bias=n[0] is None, bn_eps=n[0], act=style.act)
        self.point_conv = ConvUnit(cin, cout, 1, bn_eps=n[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class MBConv(nn.Module):
    """Inverted bottleneck: 1×1 expand (+act) → depthwise 3×3 (+act) → 1×1 project."""

    def __init__(
        self, cin: int, cout: int, stride: int, expand: float, style: Style, fewer_norm: bool = False
    ):
        super().__init__()
        mid = round(cin * expand)
        n = _norms(fewer_norm, 3, style.bn_eps)
        self.inverted_conv = ConvUnit(cin, mid, 1, bias=n[0] is None, bn_eps=n[0], act=style.act)
        self.depth_conv = ConvUnit(mid, mid, 3, stride, groups=mid, bias=n[1] is None, bn_eps=n[1], act=style.act)
        self.point_conv = ConvUnit(mid, cout, 1, bn_eps=n[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class FusedMBConv(nn.Module):
    """Full 3×3 expand (+act) → 1×1 project."""

    def __init__(
        self, cin: int, cout: int, stride: int, expand: float, style: Style, fewer_norm: bool = False
    ):
        super().__init__()
        mid = round(cin * expand)
        n = _norms(fewer_norm, 2, style.bn_eps)
        self.spatial_conv = ConvUnit(cin, mid, 3, stride, bias=n[0] is None, bn_eps=n[0], act=style.act)
        self.point_conv = ConvUnit(mid, cout, 1, bn_eps=n[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.spatial_conv(x))


class ResBlock(nn.Module):
    """Two full 3×3 convs, activation after the first."""

    def __init__(self, cin: int, cout: int, stride: int, expand: float, style: Style, fewer_norm: bool = False):
        super().__init__()
        mid = round(cin * expand)
        n = _norms(fewer_norm, 2, style.bn_eps)
        self.conv1 = ConvUnit(cin, mid, 3, stride, bias=n[0] is None, bn_eps=n[0], act=style.act)
        self.conv2 = ConvUnit(mid, cout, 3, bn_eps=n[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class LiteMLA(nn.Module):
    """Lightweight multi-scale linear attention (ReLU kernel).

    ``qkv`` (1×1 conv) produces per-head interleaved [q | k | v] groups of ``dim`` channels; each scale in
    ``scales`` adds a depthwise k×k + grouped 1×1 aggregation of those tokens, giving
    ``heads * (1 + len(scales))`` attention heads. Per head, with φ = ReLU and N = H·W tokens::

        out_n = Σ_m v_m (φ(k_m)ᵀ φ(q_n)) / (Σ_m φ(k_m)ᵀ φ(q_n) + eps)

    computed in float32 whatever the input dtype. For N ≤ dim the N×N (quadratic) order of the same
    formula is used, as upstream does; the two are equal up to rounding.
    """

    def __init__(self, channels: int, dim: int, scales: Sequence[int], style: Style, eps: float = 1e-15):
        super().__init__()
        heads = channels // dim
        total = heads * dim
        self.dim = dim
        self.eps = eps
        self.qkv = ConvUnit(channels, 3 * total, 1, bn_eps=None)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(3 * total, 3 * total, s, padding=s // 2, groups=3 * total, bias=False),
                nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False),
            )
            for s in scales
        )
        self.proj = ConvUnit(total * (1 + len(scales)), channels, 1, bn_eps=style.bn_eps)

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv: B×(heads·3·dim)×H×W → B×(heads·dim)×H×W, float32."""
        b, _, h, w = qkv.shape
        d = self.dim
        t = qkv.float().reshape(b, -1, 3 * d, h * w)
        q, k, v = F.relu(t[:, :, :d]), F.relu(t[:, :, d : 2 * d]), t[:, :, 2 * d :]
        if h * w > d:
            kv = torch.matmul(F.pad(v, (0, 0, 0, 1), value=1.0), k.transpose(-1, -2))  # B×H'×(d+1)×d
            out = torch.matmul(kv, q)  # B×H'×(d+1)×N
            out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
        else:
            att = torch.matmul(k.transpose(-1, -2), q)  # B×H'×N×N, [key, query]
            att = att / (att.sum(dim=2, keepdim=True) + self.eps)
            out = torch.matmul(v, att)
        return out.reshape(b, -1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        qkv = torch.cat([qkv, *(agg(qkv) for agg in self.aggreg)], dim=1)
        return self.proj(self.attend(qkv).to(x.dtype))


class EfficientViTBlock(nn.Module):
    """LiteMLA context module then an MBConv local module (bias, norm only on the projection), both residual."""

    def __init__(self, channels: int, dim: int, expand: float, style: Style, scales: Sequence[int] = (5,)):
        super().__init__()
        self.context_module = Residual(LiteMLA(channels, dim, scales, style), skip=True)
        self.local_module = Residual(MBConv(channels, channels, 1, expand, style, fewer_norm=True), skip=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


LOCAL_BLOCKS: dict[str, type[nn.Module]] = {"ds": DSConv, "mb": MBConv, "fmb": FusedMBConv, "res": ResBlock}


@dataclass(frozen=True)
class LargeBackboneCfg:
    """EfficientViT large backbone: per-stage width, depth, block kind, expansion, fewer-norm flag.

    Block kinds: "res", "fmb", "mb" (local) or "att" / "att@3" (EfficientViT blocks, LiteMLA
    aggregation scale 5 or 3). Stage 0 is a stride-2 conv stem; each later stage starts with a
    stride-2 block (MBConv for attention stages) with expansion ``4 × expand``.
    """

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    blocks: tuple[str, ...] = ("res", "fmb", "fmb", "mb", "att")
    expands: tuple[float, ...] = (1, 4, 4, 4, 6)
    fewer_norm: tuple[bool, ...] = (False, False, False, True, True)
    dim: int = 32


class LargeBackbone(nn.Module):
    """EfficientViT-L/XL backbone (segmentation L1/L2, SAM L0–XL1); returns ``{"stage0": ..., "stageK": ...}`` (stride 2^(i+1))."""

    def __init__(self, cfg: LargeBackboneCfg, style: Style):
        super().__init__()
        w, d = cfg.widths, cfg.depths
        stem: list[nn.Module] = [ConvUnit(3, w[0], 3, 2, bn_eps=style.bn_eps, act=style.act)]
        stem += [Residual(LOCAL_BLOCKS[cfg.blocks[0]](w[0], w[0], 1, cfg.expands[0], style, cfg.fewer_norm[0]),
                          skip=True) for _ in range(d[0])]
        stages, cin = [Chain(stem)], w[0]
        for sid in range(1, len(w)):
            kind, expand, fewer = cfg.blocks[sid], cfg.expands[sid], cfg.fewer_norm[sid]
            attention = kind.startswith("att")
            down = LOCAL_BLOCKS["mb" if attention else kind]
            blocks: list[nn.Module] = [Residual(down(cin, w[sid], 2, expand * 4, style, fewer_norm=fewer), skip=False)]
            cin = w[sid]
            for _ in range(d[sid]):
                if attention:
                    scales = (3,) if kind == "att@3" else (5,)
                    blocks.append(EfficientViTBlock(cin, cfg.dim, expand, style, scales))
                else:
                    blocks.append(Residual(LOCAL_BLOCKS[kind](cin, cin, 1, expand, style, fewer_norm=fewer), skip=True))
            stages.append(Chain(blocks))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats: dict[str, torch.Tensor] = {}
        for i, stage in enumerate(self.stages):
            x = feats[f"stage{i}"] = stage(x)
        return feats

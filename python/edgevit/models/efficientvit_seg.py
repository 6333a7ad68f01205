"""EfficientViT semantic segmentation (Cai et al., ICCV 2023): B0–B3 and L1–L2, Cityscapes and ADE20K.

Architecture facts follow the published models; module names follow the upstream state-dict layout so
upstream checkpoints (``backbone.*``, ``head.*``) load with the identity mapping declared below.
``model(x)``: x float32 N×3×H×W (ImageNet-normalised RGB, H, W multiples of 32) → logits N×C×H/8×W/8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import processing
from .checkpoint import KeyMap
from .contract import SegContract
from .registry import register_model
from .layers import (LOCAL_BLOCKS, Chain, ConvUnit, EfficientViTBlock, FusedMBConv, LargeBackbone, LargeBackboneCfg,
                     MBConv, Residual, Style)

B_STYLE = Style(act="hswish", bn_eps=1e-5)
L_STYLE = Style(act="gelu", bn_eps=1e-7)

# Upstream checkpoints use our names already; only a DataParallel "module." prefix is stripped.
UPSTREAM_KEYS = KeyMap(rules=((r"^module\.", ""),))


@dataclass(frozen=True)
class BackboneCfg:
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    dim: int  # LiteMLA head dim
    large: bool  # L-series layout (ResBlock stem, fused stages) vs B-series (DSConv stem)


@dataclass(frozen=True)
class HeadCfg:
    width: int
    depth: int
    expand: float
    block: str  # "mb" or "fmb"
    final_expand: int | None


class BackboneB(nn.Module):
    """B-series: conv stem + DSConv, two MBConv stages, two EfficientViT stages. Returns stage0..stage4."""

    def __init__(self, cfg: BackboneCfg, style: Style, expand: float = 4):
        super().__init__()
        w, d = cfg.widths, cfg.depths
        stem = [ConvUnit(3, w[0], 3, 2, bn_eps=style.bn_eps, act=style.act)]
        stem += [Residual(LOCAL_BLOCKS["ds"](w[0], w[0], 1, 1, style), skip=True) for _ in range(d[0])]
        self.input_stem = Chain(stem)
        stages, cin = [], w[0]
        for width, depth in zip(w[1:3], d[1:3]):
            blocks = []
            for i in range(depth):
                stride = 2 if i == 0 else 1
                blocks.append(Residual(MBConv(cin, width, stride, expand, style), skip=stride == 1))
                cin = width
            stages.append(Chain(blocks))
        for width, depth in zip(w[3:], d[3:]):
            blocks = [Residual(MBConv(cin, width, 2, expand, style, fewer_norm=True), skip=False)]
            blocks += [EfficientViTBlock(width, cfg.dim, expand, style) for _ in range(depth)]
            stages.append(Chain(blocks))
            cin = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = {"stage0": self.input_stem(x)}
        for i, stage in enumerate(self.stages, 1):
            feats[f"stage{i}"] = stage(feats[f"stage{i - 1}"])
        return feats


def backbone_l(cfg: BackboneCfg, style: Style) -> LargeBackbone:
    """L-series: conv stem + ResBlock, FusedMBConv stages 1–2, MBConv stage 3, EfficientViT stage 4."""
    return LargeBackbone(LargeBackboneCfg(cfg.widths, cfg.depths, dim=cfg.dim), style)


class Upsample(nn.Module):
    """Bicubic upsampling by an integer factor (align_corners=False), computed in float32."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.interpolate(x.float(), scale_factor=self.factor, mode="bicubic", align_corners=False)
        return y.to(x.dtype)


class SegHead(nn.Module):
    """Projects stage4/3/2 (strides 32/16/8) to ``width`` channels at stride 8, sums them, refines with
    ``depth`` residual (Fused)MBConvs, then an optional expansion conv and the classifier conv."""

    FEATURES = (("stage4", 32), ("stage3", 16), ("stage2", 8))

    def __init__(self, cfg: HeadCfg, in_widths: tuple[int, int, int], num_classes: int, style: Style):
        super().__init__()
        ops: list[nn.Module] = []
        for (_, stride), cin in zip(self.FEATURES, in_widths):
            proj = ConvUnit(cin, cfg.width, 1, bn_eps=style.bn_eps)
            ops.append(proj if stride == 8 else Chain([proj, Upsample(stride // 8)]))
        self.input_ops = nn.ModuleList(ops)
        block = MBConv if cfg.block == "mb" else FusedMBConv
        self.middle = Chain([Residual(block(cfg.width, cfg.width, 1, cfg.expand, style), skip=True)
                             for _ in range(cfg.depth)])
        out: list[nn.Module] = []
        width = cfg.width
        if cfg.final_expand is not None:
            out.append(ConvUnit(width, width * cfg.final_expand, 1, bn_eps=style.bn_eps, act=style.act))
            width *= cfg.final_expand
        out.append(ConvUnit(width, num_classes, 1, bias=True, bn_eps=None))
        self.output_ops = nn.ModuleList([Chain(out)])

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        x = None
        for (name, _), op in zip(self.FEATURES, self.input_ops):
            y = op(feats[name])
            x = y if x is None else x + y
        return self.output_ops[0](self.middle(x))


class EfficientViTSeg(nn.Module):
    def __init__(self, backbone: nn.Module, head: SegHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float32 N×3×H×W (normalised RGB, H, W multiples of 32) → logits N×C×H/8×W/8."""
        return self.head(self.backbone(x))


def build(backbone: BackboneCfg, head: HeadCfg, num_classes: int) -> EfficientViTSeg:
    style = L_STYLE if backbone.large else B_STYLE
    net = backbone_l(backbone, style) if backbone.large else BackboneB(backbone, style)
    w = backbone.widths
    return EfficientViTSeg(net, SegHead(head, (w[4], w[3], w[2]), num_classes, style))


B0 = BackboneCfg((8, 16, 32, 64, 128), (1, 2, 2, 2, 2), dim=16, large=False)
B1 = BackboneCfg((16, 32, 64, 128, 256), (1, 2, 3, 3, 4), dim=16, large=False)
B2 = BackboneCfg((24, 48, 96, 192, 384), (1, 3, 4, 4, 6), dim=32, large=False)
B3 = BackboneCfg((32, 64, 128, 256, 512), (1, 4, 6, 6, 9), dim=32, large=False)
L1 = BackboneCfg((32, 64, 128, 256, 512), (1, 1, 1, 6, 6), dim=32, large=True)
L2 = BackboneCfg((32, 64, 128, 256, 512), (1, 2, 2, 8, 8), dim=32, large=True)

CITYSCAPES = SegContract("cityscapes", processing.FixedSize(1024, 2048), eval_size=(1024, 2048))
ADE20K = SegContract("ade20k", processing.ShortSide(512, 32), eval_size=(512, 512))
VOC = SegContract("voc", processing.ShortSide(512, 32), eval_size=(512, 512))


def _seg(model_id: str, contract: SegContract):
    return register_model(model_id, family="efficientvit-seg", contract=contract, key_map=UPSTREAM_KEYS,
                          args=lambda c: (c.num_classes,))


# B-series heads refine with MBConvs; Cityscapes heads add a ×4 expansion conv before the classifier.
@_seg("efficientvit-seg-b0-cityscapes", CITYSCAPES)
def seg_b0_cityscapes(num_classes: int) -> EfficientViTSeg:
    return build(B0, HeadCfg(32, 1, 4, "mb", 4), num_classes)


@_seg("efficientvit-seg-b1-cityscapes", CITYSCAPES)
def seg_b1_cityscapes(num_classes: int) -> EfficientViTSeg:
    return build(B1, HeadCfg(64, 3, 4, "mb", 4), num_classes)


@_seg("efficientvit-seg-b2-cityscapes", CITYSCAPES)
def seg_b2_cityscapes(num_classes: int) -> EfficientViTSeg:
    return build(B2, HeadCfg(96, 3, 4, "mb", 4), num_classes)


@_seg("efficientvit-seg-b3-cityscapes", CITYSCAPES)
def seg_b3_cityscapes(num_classes: int) -> EfficientViTSeg:
    return build(B3, HeadCfg(128, 3, 4, "mb", 4), num_classes)


@_seg("efficientvit-seg-b1-ade20k", ADE20K)
def seg_b1_ade20k(num_classes: int) -> EfficientViTSeg:
    return build(B1, HeadCfg(64, 3, 4, "mb", None), num_classes)


@_seg("efficientvit-seg-b2-ade20k", ADE20K)
def seg_b2_ade20k(num_classes: int) -> EfficientViTSeg:
    return build(B2, HeadCfg(96, 3, 4, "mb", None), num_classes)


@_seg("efficientvit-seg-b3-ade20k", ADE20K)
def seg_b3_ade20k(num_classes: int) -> EfficientViTSeg:
    return build(B3, HeadCfg(128, 3, 4, "mb", None), num_classes)


# L-series heads refine with FusedMBConvs.
@_seg("efficientvit-seg-l1-cityscapes", CITYSCAPES)
def seg_l1_cityscapes(num_classes: int) -> EfficientViTSeg:
    return build(L1, HeadCfg(256, 3, 1, "fmb", None), num_classes)


@_seg("efficientvit-seg-l2-cityscapes", CITYSCAPES)
def seg_l2_cityscapes(num_classes: int) -> EfficientViTSeg:
    return build(L2, HeadCfg(256, 5, 1, "fmb", None), num_classes)


@_seg("efficientvit-seg-l1-ade20k", ADE20K)
def seg_l1_ade20k(num_classes: int) -> EfficientViTSeg:
    return build(L1, HeadCfg(128, 3, 4, "fmb", 8), num_classes)


@_seg("efficientvit-seg-l2-ade20k", ADE20K)
def seg_l2_ade20k(num_classes: int) -> EfficientViTSeg:
    return build(L2, HeadCfg(128, 3, 4, "fmb", 8), num_classes)


# Not an upstream release: the B0 architecture with a 21-class head, fine-tuned by ``edgevit finetune``
# on real VOC photos so that quantization fidelity can be shown on a network that has learned something.
@_seg("efficientvit-seg-b0-voc", VOC)
def seg_b0_voc(num_classes: int) -> EfficientViTSeg:
    return build(B0, HeadCfg(32, 1, 4, "mb", 4), num_classes)

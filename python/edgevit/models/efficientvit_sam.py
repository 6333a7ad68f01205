"""EfficientViT-SAM (Zhang, Cai, Han 2024): EfficientViT image encoders with SAM's prompt encoder and
mask decoder. Ids ``efficientvit-sam-{l0,l1,l2}`` (encoder input 512) and ``-{xl0,xl1}`` (1024).

Module names follow the upstream state-dict layout (``image_encoder.backbone.*``,
``image_encoder.neck.*``, ``image_encoder.norm.*``, ``prompt_encoder.*``, ``mask_decoder.*``), so
upstream checkpoints load strictly through the identity mapping declared below.

Contract (:class:`SamContract`):

* ``model.image_encoder(x)``: x float32 N×3×S×S (S = 512 or 1024; RGB on the 0..255 scale normalised
  with SAM's mean/std, longest side resized to S, zero-padded bottom-right) → embeddings N×256×64×64.
* ``model.prompt_decoder(embeddings, coords, labels, mask_input, has_mask_input)`` (static shapes, see
  :class:`~edgevit.models.sam_decoder.PromptDecoder`) → mask logits N×4×256×256 and IoU N×4.
* ``model.prompt_encoder`` / ``model.mask_decoder``: the upstream-style calls with variable prompts.

Norm eps is 1e-6 everywhere (upstream sets it on the whole model when building EfficientViT-SAM).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import KeyMap
from .contract import TensorSpec
from .layers import Chain, ConvUnit, FusedMBConv, LargeBackbone, LargeBackboneCfg, Residual, Style
from .registry import register_model
from .sam_decoder import (EMBED_DIM, EMBED_SIZE, MASK_SIZE, NUM_MASK_TOKENS, PROMPT_FRAME, MaskDecoder,
                          PromptDecoder, PromptEncoder)

SAM_STYLE = Style(act="gelu", bn_eps=1e-6)
SAM_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB, 0..255 scale
SAM_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
MAX_POINTS = 16  # prompt slots of the static decoder, box corners and padding included
UPSTREAM_KEYS = KeyMap(rules=((r"^module\.", ""),))


@dataclass(frozen=True)
class SamContract:
    """Promptable segmentation, split into an image encoder (run once per image) and a prompt decoder.

    Encoder input ``image``: float32 N×3×S×S, RGB, ``(x - mean) / std`` with x in 0..255, the image's
    longest side resized to S (bilinear, antialiased like PIL), zero padding bottom-right after
    normalisation. Output ``embeddings`` N×256×64×64.
    Decoder: ``max_points`` prompt slots; coordinates in the frame where the longest side is
    ``prompt_frame`` (1024) whatever S is; outputs 4 low-res 256×256 mask logits (index 0 single-mask,
    1..3 multimask) and their IoU predictions. Masks: logits bilinearly upsampled to 1024, cropped to the
    resized image, bilinearly resized to the original size, threshold 0 (see ``edgevit.processing``).
    """

    image_size: int
    mean: tuple[float, float, float] = SAM_MEAN
    std: tuple[float, float, float] = SAM_STD
    prompt_frame: int = PROMPT_FRAME
    max_points: int = MAX_POINTS
    embed_dim: int = EMBED_DIM
    embed_size: int = EMBED_SIZE
    mask_size: int = MASK_SIZE
    task: str = field(default="promptable-segmentation", init=False)

    @property
    def eval_size(self) -> tuple[int, int]:
        """Encoder input size (the published MACs are counted at it)."""
        return self.image_size, self.image_size

    @property
    def encoder_inputs(self) -> tuple[TensorSpec, ...]:
        s = self.image_size
        return (TensorSpec("image", ("N", 3, s, s), "float32", "NCHW",
                           "RGB 0..255, (x - mean)/std, longest side resized, zero-padded bottom-right"),)

    @property
    def encoder_outputs(self) -> tuple[TensorSpec, ...]:
        e = self.embed_size
        return (TensorSpec("embeddings", ("N", self.embed_dim, e, e), "float32", "NCHW"),)

    @property
    def decoder_inputs(self) -> tuple[TensorSpec, ...]:
        e, p, m = self.embed_size, self.max_points, self.mask_size
        return (
            TensorSpec("embeddings", ("N", self.embed_dim, e, e), "float32", "NCHW", "image encoder output"),
            TensorSpec("coords", ("N", p, 2), "float32", "NPC", f"(x, y) in the {self.prompt_frame}-longest-side frame"),
            TensorSpec("labels", ("N", p), "float32", "NP", "1 fg, 0 bg, 2/3 box corners, -1 padding"),
            TensorSpec("mask_input", ("N", 1, m, m), "float32", "NCHW", "previous low-res logits (or zeros)"),
            TensorSpec("has_mask_input", ("N",), "float32", "N", "1: use mask_input, 0: ignore it"),
        )

    @property
    def context_outputs(self) -> tuple[TensorSpec, ...]:
        """The artifact pipeline's per-image decoder state (``context`` component: embeddings → this)."""
        e, k = self.embed_size, 3 * (self.embed_dim // 2)
        return (TensorSpec("image_context", ("N", e * e, k), "float32", "NTC",
                           "image-token projections of the decoder's first block (token->image keys | values | "
                           "image->token queries) without a mask input: biases, dense PE and no-mask embedding "
                           "included"),)

    @property
    def decoder_artifact_inputs(self) -> tuple[TensorSpec, ...]:
        """The exported decoder's inputs: :attr:`decoder_inputs` with ``image_context`` after ``embeddings``."""
        emb, *prompts = self.decoder_inputs
        return (emb, *self.context_outputs, *prompts)

    @property
    def decoder_outputs(self) -> tuple[TensorSpec, ...]:
        m, k = self.mask_size, NUM_MASK_TOKENS
        return (TensorSpec("masks", ("N", k, m, m), "float32", "NCHW", "logits; 0: single-mask, 1..3: multimask"),
                TensorSpec("iou", ("N", k), "float32", "NK", "predicted IoU per mask"))

    def to_dict(self) -> dict:
        """JSON-ready description (model info and artifact manifests)."""
        specs = lambda ts: [asdict(t) for t in ts]  # noqa: E731
        return {
            "task": self.task,
            "encoder": {"inputs": specs(self.encoder_inputs), "outputs": specs(self.encoder_outputs)},
            "decoder": {"inputs": specs(self.decoder_inputs), "outputs": specs(self.decoder_outputs)},
            "artifacts": {"context": {"inputs": specs(self.encoder_outputs), "outputs": specs(self.context_outputs)},
                          "decoder": {"inputs": specs(self.decoder_artifact_inputs),
                                      "outputs": specs(self.decoder_outputs)}},
            "normalization": {"scale": 1.0, "mean": list(self.mean), "std": list(self.std), "color": "RGB"},
            "resize": {"kind": "LongestSide", "size": self.image_size, "interpolation": "bilinear-antialias",
                       "pad": "zeros bottom-right, after normalization"},
            "prompt_frame": self.prompt_frame, "max_points": self.max_points,
            "mask_postprocess": "bilinear to prompt_frame, crop, bilinear to original size, threshold 0",
        }


class ResizeTo(nn.Module):
    """Bicubic resize to ``size`` × ``size`` (align_corners=False) in float32; identity when already there."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        y = F.interpolate(x.float(), size=(self.size, self.size), mode="bicubic", align_corners=False)
        return y.to(x.dtype)


class SamNeck(nn.Module):
    """Projects three backbone stages to ``width`` channels at 64×64 (bicubic), sums them, refines with
    ``depth`` residual FusedMBConvs and projects to 256 channels (1×1 conv with bias)."""

    def __init__(self, features: tuple[str, ...], in_widths: tuple[int, ...], depth: int, expand: float,
                 width: int = 256, style: Style = SAM_STYLE):
        super().__init__()
        self.features = features
        self.input_ops = nn.ModuleList(
            Chain([ConvUnit(c, width, 1, bn_eps=style.bn_eps), ResizeTo(EMBED_SIZE)]) for c in in_widths)
        self.middle = Chain([Residual(FusedMBConv(width, width, 1, expand, style), skip=True) for _ in range(depth)])
        self.output_ops = nn.ModuleList([Chain([ConvUnit(width, EMBED_DIM, 1, bias=True, bn_eps=None)])])

    def merge(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of the projected, resized input branches: N×width×64×64."""
        x = None
        for name, op in zip(self.features, self.input_ops):
            y = op(feats[name])
            x = y if x is None else x + y
        return x

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.output_ops[0](self.middle(self.merge(feats)))


class LayerNorm2dEViT(nn.LayerNorm):
    """EfficientViT's channel LayerNorm on NCHW (``weight``/``bias`` over C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x - x.mean(dim=1, keepdim=True)
        d = d / torch.sqrt(d.square().mean(dim=1, keepdim=True) + self.eps)
        return d * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class SamImageEncoder(nn.Module):
    """Backbone → neck → channel LayerNorm: N×3×S×S → N×256×64×64."""

    def __init__(self, backbone: LargeBackbone, neck: SamNeck):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.norm = LayerNorm2dEViT(EMBED_DIM, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.neck(self.backbone(x)))


class EfficientViTSam(nn.Module):
    """Image encoder + SAM prompt encoder + mask decoder (see the module docstring for the contract)."""

    def __init__(self, image_encoder: SamImageEncoder):
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = PromptEncoder()
        self.mask_decoder = MaskDecoder()

    @property
    def prompt_decoder(self) -> PromptDecoder:
        """The static-shape decoder over this model's prompt encoder and mask decoder (shared weights)."""
        return PromptDecoder(self.prompt_encoder, self.mask_decoder).train(self.training)


L_NECK = (("stage4", "stage3", "stage2"), (512, 256, 128))
XL_NECK = (("stage5", "stage4", "stage3"), (1024, 512, 256))
XL_BLOCKS = dict(blocks=("res", "fmb", "fmb", "fmb", "att@3", "att@3"), expands=(1, 4, 4, 4, 4, 6),
                 fewer_norm=(False, False, False, False, True, True))


def build(cfg: LargeBackboneCfg, neck: tuple[tuple[str, ...], tuple[int, ...]], depth: int, expand: float) -> EfficientViTSam:
    return EfficientViTSam(SamImageEncoder(LargeBackbone(cfg, SAM_STYLE), SamNeck(*neck, depth=depth, expand=expand)))


def _sam(model_id: str, image_size: int):
    return register_model(model_id, family="efficientvit-sam", contract=SamContract(image_size), key_map=UPSTREAM_KEYS)


@_sam("efficientvit-sam-l0", 512)
def sam_l0() -> EfficientViTSam:
    return build(LargeBackboneCfg((32, 64, 128, 256, 512), (1, 1, 1, 4, 4)), L_NECK, 4, 1)


@_sam("efficientvit-sam-l1", 512)
def sam_l1() -> EfficientViTSam:
    return build(LargeBackboneCfg((32, 64, 128, 256, 512), (1, 1, 1, 6, 6)), L_NECK, 8, 1)


@_sam("efficientvit-sam-l2", 512)
def sam_l2() -> EfficientViTSam:
    return build(LargeBackboneCfg((32, 64, 128, 256, 512), (1, 2, 2, 8, 8)), L_NECK, 12, 1)


@_sam("efficientvit-sam-xl0", 1024)
def sam_xl0() -> EfficientViTSam:
    return build(LargeBackboneCfg((32, 64, 128, 256, 512, 1024), (0, 1, 1, 2, 3, 3), **XL_BLOCKS), XL_NECK, 6, 4)


@_sam("efficientvit-sam-xl1", 1024)
def sam_xl1() -> EfficientViTSam:
    return build(LargeBackboneCfg((32, 64, 128, 256, 512, 1024), (1, 2, 2, 4, 6, 6), **XL_BLOCKS), XL_NECK, 12, 4)

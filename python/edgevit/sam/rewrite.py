"""Export-friendly forms of the EfficientViT-SAM encoder and prompt decoder (same weights, same function).

Every substitution is exact in real arithmetic; :func:`friendly_encoder` and :func:`friendly_decoder` record
them (:class:`~edgevit.lowering.rewrite.Substitution`) with the max abs difference of the whole output
against the eager module, measured on a real input. What they fix (ExecuTorch/XNNPACK on CPU):

* Encoder: the neck's bicubic ``ResizeTo`` (gather/clamp/index ops, outside XNNPACK) → two constant
  matrix products (:class:`~edgevit.lowering.rewrite.MatmulBicubicUpsample`); LiteMLA → ``BmmLiteMLA``
  (:func:`~edgevit.lowering.rewrite.export_friendly`); the channel LayerNorm's ``mean`` over C → a 1×1
  convolution with constant weights 1/C. For dynamic int8 activations (.pte) also an identity depthwise
  conv after the neck's sum (:class:`NhwcIdentity`), float with the bicubic products
  (:func:`encoder_float_regions`).
* Decoder: attention's 4-D ``matmul`` (exported as ``expand_copy`` + ``bmm``, ``expand_copy`` not delegated)
  → 3-D ``bmm`` over batch·heads; ``nn.LayerNorm`` / channel LayerNorm (``native_layer_norm`` and
  ``mean`` stay outside XNNPACK) → products with a constant 1/C vector; label comparisons (``eq``,
  ``amax``, bool casts) → ``relu(1 - |label - value|)`` (exact for the integer labels the contract allows);
  the dense position encoding and the slot-count triangle → constant buffers; the output upscaling's 2×2
  stride-2 ``ConvTranspose2d`` pair → linears on the channels-last image tokens with the mask product before
  the only permute (:class:`TokenUpscaling`); the final token→image attention → keys folded into the five
  read queries (:class:`FoldedTokenAttention`); batch-1 ``expand`` /
  ``unsqueeze`` / ``stack`` / ``select`` → reshapes, slices and ``cat``. The decoder is specialised to
  batch 1 (the artifact's static shape).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..lowering.float_region import FloatRegion
from ..lowering.rewrite import (MatmulBicubicUpsample, Substitution, export_friendly,
                                input_sizes, set_module)
from ..models.efficientvit_sam import LayerNorm2dEViT, ResizeTo, SamNeck
from ..models.sam_decoder import MASKED, Attention, LayerNorm2d, PromptDecoder


class ConvChannelNorm(nn.Module):
    """LayerNorm over the channels of N×C×H×W with the means as 1×1 convolutions (weights 1/C)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, eps: float):
        super().__init__()
        self.weight, self.bias, self.eps = weight, bias, eps
        c = weight.numel()
        self.register_buffer("avg", torch.full((1, c, 1, 1), 1.0 / c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x - F.conv2d(x, self.avg)
        d = d / torch.sqrt(F.conv2d(d * d, self.avg) + self.eps)
        return d * self.weight.reshape(1, -1, 1, 1) + self.bias.reshape(1, -1, 1, 1)


class NhwcIdentity(nn.Module):
    """x ↦ x for N×C×H×W as a depthwise 1×1 convolution with unit weights (exact in float32).

    ExecuTorch 1.5's channels-last pass mis-rewrites a dynamically quantized conv whose input comes from a
    layout-sensitive op (:mod:`edgevit.lowering.executorch`; upstream fix pytorch/executorch#21637); the SAM
    neck's first refining conv reads the sum of the bicubic-resized branches (``F.linear`` products). With
    this conv in between, kept float, the dynamic-int8 encoder runs (without it: "Propagating input shapes
    failed" at the first run): the conv's output is already channels-last, so the pass returns before its
    dynamic-quant conversion (whose unbounded walk back through first arguments is the bug). The program's
    correctness is measured, not assumed: the export gate compares its masks with the float model's (L0:
    99.23-99.42) and the tests bound its embedding SQNR. Not needed once the pinned ExecuTorch carries the
    upstream fix."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, groups=self.weight.shape[0])


class DynamicSafeNeck(SamNeck):
    """A :class:`~edgevit.models.efficientvit_sam.SamNeck` (same submodules and names) with :class:`NhwcIdentity`
    (``nhwc``) between the sum of its input branches and its refining convs."""

    def __init__(self, neck: SamNeck):
        nn.Module.__init__(self)  # adopt ``neck``'s built submodules instead of building new ones
        self.features = neck.features
        self.input_ops, self.middle, self.output_ops = neck.input_ops, neck.middle, neck.output_ops
        self.nhwc = NhwcIdentity(neck.output_ops[0].op_list[0].conv.in_channels)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.output_ops[0](self.middle(self.nhwc(self.merge(feats))))


class LinearLayerNorm(nn.Module):
    """A LayerNorm over the last dim with the means as ``F.linear`` with a constant 1/C row (weights of ``src``:
    an ``nn.LayerNorm``, or a channel :class:`~edgevit.models.sam_decoder.LayerNorm2d` applied to channels-last
    rows)."""

    def __init__(self, src: nn.LayerNorm | LayerNorm2d):
        super().__init__()
        self.weight, self.bias, self.eps = src.weight, src.bias, src.eps
        c = src.weight.numel()
        self.register_buffer("avg", torch.full((1, c), 1.0 / c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x - F.linear(x, self.avg)
        return d / torch.sqrt(F.linear(d * d, self.avg) + self.eps) * self.weight + self.bias


class AttentionSoftmax(nn.Module):
    """``softmax(logits · scale + key_bias)`` over the keys: logits (B·h)×Nq×Nk, key_bias B×Nk (0 or
    ``MASKED``) or None. A module of its own so that int8 export can keep it float (:func:`decoder_float_regions`)."""

    def __init__(self, heads: int, scale: float):
        super().__init__()
        self.heads, self.scale = heads, scale

    def forward(self, logits: torch.Tensor, key_bias: torch.Tensor | None) -> torch.Tensor:
        logits = logits * self.scale
        if key_bias is not None:
            bh, nq, nk = logits.shape
            b = bh // self.heads
            logits = (logits.reshape(b, self.heads, nq, nk) + key_bias.reshape(b, 1, 1, nk)).reshape(-1, nq, nk)
        return torch.softmax(logits, dim=-1)


class BmmAttention(nn.Module):
    """:class:`~edgevit.models.sam_decoder.Attention` with 3-D ``bmm`` over batch·heads (same weights)."""

    def __init__(self, src: Attention):
        super().__init__()
        self.heads = src.heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = src.q_proj, src.k_proj, src.v_proj, src.out_proj
        self.softmax = AttentionSoftmax(src.heads, 1.0 / math.sqrt(src.q_proj.out_features // src.heads))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).permute(0, 2, 1, 3).reshape(b * self.heads, n, -1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.attend(self.q_proj(q), self.k_proj(k), self.v_proj(v), key_bias)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Attention on already projected q B×Nq×I, k/v B×Nk×I → B×Nq×C (output projection applied)."""
        b, nq, _ = q.shape
        q, k, v = self._split(q), self._split(k), self._split(v)
        out = torch.bmm(self.softmax(torch.bmm(q, k.transpose(1, 2)), key_bias), v)  # (B·h)×Nq×d
        out = out.reshape(b, self.heads, nq, -1).permute(0, 2, 1, 3).reshape(b, nq, -1)
        return self.out_proj(out)


class FoldedTokenAttention(nn.Module):
    """The final token→image attention for the few query tokens the heads read, without projecting the image.

    Per head h and query n, the key projection folds into the query: ``q·(W_k x + b_k) = (W_kᵀ q)·x + q·b_k``,
    and ``q·b_k`` is the same for every key, so the softmax drops it; the value projection moves after the
    weighted sum because the weights sum to 1: ``Σ p (W_v x + b_v) = W_v (Σ p x) + b_v``. Image-side work
    falls from two N×C×I projections to two products with (heads·Nq) columns (L0, Nq = 5: 268 → 84 MMAC).
    Same weights (``q_proj``, ``out_proj`` kept; ``k_proj`` / ``v_proj`` weights as per-head buffers)."""

    def __init__(self, src: Attention | BmmAttention):
        super().__init__()
        self.heads = src.heads
        inner = src.q_proj.out_features
        d = inner // self.heads
        self.q_proj, self.out_proj = src.q_proj, src.out_proj
        with torch.no_grad():
            self.register_buffer("k_weight_t", src.k_proj.weight.reshape(self.heads, d, -1).transpose(1, 2)
                                 .contiguous())  # h×C×d
            self.register_buffer("v_weight_t", src.v_proj.weight.reshape(self.heads, d, -1).transpose(1, 2)
                                 .contiguous())  # h×C×d
            self.register_buffer("v_bias", src.v_proj.bias.reshape(self.heads, 1, d).clone())
        self.softmax = AttentionSoftmax(self.heads, 1.0 / math.sqrt(d))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q 1×Nq×C (queries + PE), k 1×N×C (image tokens + PE), v 1×N×C (image tokens) → 1×Nq×C."""
        h, nq = self.heads, q.shape[1]
        q = self.q_proj(q).reshape(nq, h, -1).permute(1, 2, 0)  # h×d×Nq
        # built C-major: a product with a transposed runtime operand became a FULLY_CONNECTED with a runtime
        # weight in LiteRT, which its XNNPACK delegate does not take
        folded = torch.bmm(self.k_weight_t, q).permute(1, 0, 2).reshape(1, -1, h * nq)  # 1×C×(h·Nq)
        logits = torch.bmm(k, folded).transpose(1, 2)  # 1×(h·Nq)×N
        weighted = torch.bmm(self.softmax(logits, None), v).reshape(h, nq, -1)  # h×Nq×C
        out = torch.bmm(weighted, self.v_weight_t) + self.v_bias  # h×Nq×d
        return self.out_proj(out.transpose(0, 1).reshape(1, nq, -1))


class TokenUpscaling(nn.Module):
    """SAM's output upscaling (2×2 stride-2 ``ConvTranspose2d`` → channel LayerNorm → GELU → 2×2 stride-2
    ``ConvTranspose2d`` → GELU) and the hypernetwork mask product, computed on the image tokens in their
    channels-last order: each transposed conv is a linear from a pixel's channels to its 2×2 sub-pixels'
    channels (same sums), the norm and GELUs act per sub-pixel row, and only the K-channel mask is permuted
    to N×K×H×W at the end (no transpose, pixel shuffle or NCHW copy of the 4-8 MB feature maps).

    keys 1×(s·s)×C (image tokens, row-major 64×64) and hyper_t 1×C₂×K (the K hypernetwork outputs as columns)
    → mask logits 1×K×4s×4s."""

    def __init__(self, src: nn.Sequential, size: int):
        super().__init__()
        up1, norm, act1, up2, act2 = src
        for conv in (up1, up2):
            if not (isinstance(conv, nn.ConvTranspose2d) and conv.kernel_size == conv.stride == (2, 2)
                    and conv.padding == (0, 0) and conv.output_padding == (0, 0) and conv.groups == 1):
                raise ValueError(f"TokenUpscaling needs 2x2 stride-2 transposed convs, got {conv}")
        self.size, self.approximate = size, (act1.approximate, act2.approximate)
        self.c1, self.c2 = up1.out_channels, up2.out_channels
        self.up1, self.up2 = nn.Linear(up1.in_channels, 4 * self.c1), nn.Linear(self.c1, 4 * self.c2)
        with torch.no_grad():
            for lin, conv in ((self.up1, up1), (self.up2, up2)):  # rows ordered (sub-row a, sub-column b, channel)
                lin.weight.copy_(conv.weight.permute(2, 3, 1, 0).reshape(lin.out_features, -1))
                lin.bias.copy_(conv.bias.repeat(4))
        self.norm = LinearLayerNorm(norm)

    def forward(self, keys: torch.Tensor, hyper_t: torch.Tensor) -> torch.Tensor:
        n, k, s = keys.shape[1], hyper_t.shape[2], self.size
        x = F.gelu(self.norm(self.up1(keys).reshape(1, 4 * n, self.c1)), approximate=self.approximate[0])
        x = F.gelu(self.up2(x).reshape(1, 16 * n, self.c2), approximate=self.approximate[1])
        masks = torch.bmm(x, hyper_t).reshape(16 * n, k).transpose(0, 1)  # K×(y, x, a, b, a', b')
        # output row 4y + 2a + a', column 4x + 2b + b'
        masks = masks.reshape(k * s, s, 2, 2, 2, 2).permute(0, 2, 4, 1, 3, 5)
        return masks.reshape(1, k, 4 * s, 4 * s)


def _one_minus(x: torch.Tensor) -> torch.Tensor:
    """``1 - x`` written ``-x + 1.0`` (same float result): ``scalar - tensor`` exports a scalar tensor constant
    whose dtype copy ExecuTorch runs outside the XNNPACK delegate."""
    return torch.neg(x) + 1.0


def _indicator(x: torch.Tensor, value: float | torch.Tensor) -> torch.Tensor:
    """1 where ``x == value``, 0 at other integers (``x`` holds integers)."""
    return F.relu(_one_minus((x - value).abs()))


class SparsePrompt(nn.Module):
    """Prompt slots → sparse tokens and attention key bias, for batch 1 in XNNPACK-delegable ops.

    coords 1×P×2 (1024 frame), labels 1×P (float: -1 pad, 0 bg, 1 fg, 2/3 box corners) →
    (tokens 1×P×C, key bias 1×P: 0 attended, ``MASKED`` masked)."""

    def __init__(self, pe: nn.Module, slots: int):
        super().__init__()
        with torch.no_grad():
            self.register_buffer("gauss_t", pe.pe_layer.positional_encoding_gaussian_matrix.t().contiguous())
            self.register_buffer("label_values", torch.arange(-1.0, 4.0))  # -1 pad, 0 bg, 1 fg, 2/3 corners
            table = torch.cat([pe.not_a_point_embed.weight] + [e.weight for e in pe.point_embeddings])  # 5×C
            self.register_buffer("label_table_t", table.t().contiguous())
            self.register_buffer("triangle_t", torch.triu(torch.ones(slots, slots)).t().contiguous())
            self.register_buffer("ones_row", torch.ones(1, slots))

    def forward(self, coords: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = labels.shape[1]
        onehot = _indicator(labels.reshape(1, p, 1), self.label_values)  # 1×P×5
        pad = onehot[:, :, 0:1]
        # float constants only (an int ``2`` became an int64 tensor constant that int8 observers cannot take)
        proj = 2 * math.pi * F.linear(2.0 * ((coords + 0.5) / 1024.0) - 1.0, self.gauss_t)
        point_pe = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
        sparse = point_pe * _one_minus(pad) + F.linear(onehot, self.label_table_t)  # 1×P×C
        pad = pad.reshape(1, p)
        first_pad = pad * _indicator(F.linear(pad, self.triangle_t), 1.0)  # cumulative count == 1
        corners = F.linear(onehot[:, :, 3:4].reshape(1, p), self.ones_row)  # count of label-3 slots, >= 0
        no_box = F.relu(_one_minus(corners))  # = 1 - min(count, 1); clamp is RELU_0_TO_1, outside LiteRT's XNNPACK
        return sparse, _one_minus(_one_minus(pad) + first_pad * no_box) * MASKED


def _block0_projections(md: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """The three linears of the first two-way block that read only the image tokens (keys + PE or keys):
    token→image keys and values, image→token queries."""
    b0 = md.transformer.layers[0]
    return (b0.cross_attn_token_to_image.k_proj, b0.cross_attn_token_to_image.v_proj,
            b0.cross_attn_image_to_token.q_proj)


class ImageContext(nn.Module):
    """embeddings 1×256×64×64 → image_context 1×4096×384: the first two-way block's token→image keys and values
    and image→token queries of the image tokens *without a mask input* (image tokens = embeddings + the no-mask
    embedding, plus the dense PE where the block adds it; biases included). They depend only on the image, so the
    artifact pipeline computes them once per image instead of once per prompt (0.40 of the decoder's 1.96 GMAC);
    :class:`ExportPromptDecoder` adds a mask input's contribution by linearity."""

    def __init__(self, src: PromptDecoder):
        super().__init__()
        pe, md = src.prompt_encoder, src.mask_decoder
        with torch.no_grad():
            lins = _block0_projections(md)
            self.register_buffer("weight", torch.cat([lin.weight for lin in lins]).contiguous().clone())  # 384×256
            pe_tokens = pe.get_dense_pe().flatten(2).transpose(1, 2)  # 1×4096×256
            no_mask = pe.no_mask_embed.weight.reshape(1, 1, -1)
            n = pe_tokens.shape[1]
            const = [F.linear(no_mask + (pe_tokens if with_pe else 0), lin.weight, lin.bias).expand(1, n, -1)
                     for lin, with_pe in zip(lins, (True, False, True))]
            self.register_buffer("const", torch.cat(const, dim=-1).contiguous())  # 1×4096×384

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        _, c, h, w = embeddings.shape
        return F.linear(embeddings.reshape(1, c, h * w).transpose(1, 2), self.weight) + self.const


class ExportPromptDecoder(nn.Module):
    """:class:`~edgevit.models.sam_decoder.PromptDecoder` for batch 1 in XNNPACK-delegable ops, taking the
    :class:`ImageContext` of its embeddings as a second input (same outputs).

    A mask input changes the image tokens by flag·(dense(mask) − no_mask) with dense(mask) = C·h + c (the mask
    embedding's final 1×1 conv on its 16-channel features h), so each block-0 projection W gains
    flag·(W·C·h + W·(c − no_mask)): one 17 → 384 linear of [flag·h, flag] added to ``image_context``. The rest
    of block 0 is :class:`~edgevit.models.sam_decoder.TwoWayBlock`'s forward on those projections."""

    def __init__(self, src: PromptDecoder, slots: int):
        super().__init__()
        pe, md = src.prompt_encoder, copy.deepcopy(src.mask_decoder)  # its attention/upscaling get swapped
        self.prompt_encoder, self.mask_decoder = pe, md
        self.sparse_prompt = SparsePrompt(pe, slots)
        last = pe.mask_downscaling[-1]  # 1×1 conv: 16 → 256
        with torch.no_grad():
            self.register_buffer("dense_pe", pe.get_dense_pe().contiguous().clone())
            self.register_buffer("out_bias", torch.zeros(1, 1 + md.mask_tokens.weight.shape[0]))
            w = torch.cat([lin.weight for lin in _block0_projections(md)])  # 384×256
            shift = last.bias - pe.no_mask_embed.weight.reshape(-1)
            self.register_buffer("mask_proj", torch.cat([w @ last.weight.flatten(1), (w @ shift)[:, None]], 1))
        self.mask_features = nn.Sequential(*list(pe.mask_downscaling)[:-1])  # h: 1×16×64×64
        self.mask_head = last
        t = md.transformer
        t.final_attn_token_to_image = FoldedTokenAttention(t.final_attn_token_to_image)
        md.output_upscaling = TokenUpscaling(md.output_upscaling, self.dense_pe.shape[-1])

    def forward(self, embeddings: torch.Tensor, image_context: torch.Tensor, coords: torch.Tensor,
                labels: torch.Tensor, mask_input: torch.Tensor,
                has_mask_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pe = self.prompt_encoder
        sparse, bias = self.sparse_prompt(coords, labels)
        flag = has_mask_input.reshape(1, 1, 1, 1)
        h = self.mask_features(mask_input)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = flag * self.mask_head(h) + _one_minus(flag) * no_mask
        _, ch, hh, ww = h.shape
        flagged = torch.cat([h, torch.ones_like(h[:, :1])], dim=1) * flag  # [flag·h, flag]: 1×17×64×64
        ctx = image_context + F.linear(flagged.reshape(1, ch + 1, hh * ww).transpose(1, 2), self.mask_proj)
        n = ctx.shape[-1] // 3
        return self._predict(embeddings, sparse, dense, bias, [ctx[:, :, i * n:(i + 1) * n] for i in range(3)])

    def _block0(self, queries: torch.Tensor, keys: torch.Tensor, key_pe: torch.Tensor, tokens: torch.Tensor,
                bias: torch.Tensor, proj: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """TwoWayBlock.forward of the first block (skip_first_pe) with its image-token projections given."""
        b0 = self.mask_decoder.transformer.layers[0]
        queries = b0.norm1(b0.self_attn(queries, queries, queries, bias))
        t2i = b0.cross_attn_token_to_image
        queries = b0.norm2(queries + t2i.attend(t2i.q_proj(queries + tokens), proj[0], proj[1], None))
        queries = b0.norm3(queries + b0.mlp(queries))
        i2t = b0.cross_attn_image_to_token
        q = queries + tokens
        keys = b0.norm4(keys + i2t.attend(proj[2], i2t.k_proj(q), i2t.v_proj(queries), bias))
        return queries, keys

    def _predict(self, image: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                 sparse_bias: torch.Tensor, proj: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        md = self.mask_decoder
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        k = out_tokens.shape[0] - 1
        tokens = torch.cat([out_tokens.reshape(1, k + 1, -1), sparse], dim=1)
        bias = torch.cat([self.out_bias, sparse_bias], dim=1)
        src = image + dense
        keys = src.flatten(2).transpose(1, 2)
        key_pe = self.dense_pe.flatten(2).transpose(1, 2)
        t = md.transformer
        queries, keys = self._block0(tokens, keys, key_pe, tokens, bias, proj)
        # index, not t.layers[1:]: a sliced ModuleList renames the module paths that float regions select
        for i in range(1, len(t.layers)):
            queries, keys = t.layers[i](queries, keys, tokens, key_pe, bias)
        heads_in = k + 1  # the IoU and mask tokens: the only outputs of the final attention that are read
        queries = queries[:, :heads_in]
        hs = t.norm_final_attn(queries + t.final_attn_token_to_image(queries + tokens[:, :heads_in], keys + key_pe,
                                                                     keys))
        hyper_t = torch.cat([mlp(hs[:, 1 + i : 2 + i]).reshape(1, -1, 1)
                             for i, mlp in enumerate(md.output_hypernetworks_mlps)], dim=2)  # 1×C₂×K
        masks = md.output_upscaling(keys, hyper_t)
        return masks, md.iou_prediction_head(hs[:, 0:1]).reshape(1, k)


def _swap(root: nn.Module, kind: type[nn.Module], make) -> list[str]:
    names = [n for n, m in root.named_modules() if type(m) is kind]
    for name in names:
        set_module(root, name, make(root.get_submodule(name)))
    return names


def _max_diff(a, b) -> float:
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def friendly_encoder(encoder: nn.Module, example: torch.Tensor, activations: str = "static"
                     ) -> tuple[nn.Module, list[Substitution]]:
    """A copy of the image encoder for ``example``'s shape (float32 1×3×S×S real image) and its record;
    ``activations="dynamic"`` (int8 .pte) adds :class:`NhwcIdentity` to the neck."""
    new = copy.deepcopy(encoder).eval()
    subs: list[Substitution] = []
    if activations == "dynamic":
        new.neck = DynamicSafeNeck(new.neck)
        subs.append(Substitution("neck", "SamNeck", "DynamicSafeNeck: + an identity depthwise 1x1 conv (float) "
                                 "after the branch sum, for ExecuTorch's dynamic-int8 layout pass"))
    for name, (h, w) in input_sizes(new, example, ResizeTo).items():
        s = new.get_submodule(name).size
        if (h, w) == (s, s):
            set_module(new, name, nn.Identity())
            subs.append(Substitution(name, f"ResizeTo({s}) on a {h}x{w} input (no-op)", "nn.Identity"))
        else:
            set_module(new, name, MatmulBicubicUpsample((h, w), (s, s)))
            subs.append(Substitution(name, f"F.interpolate bicubic {h}x{w} -> {s}x{s}",
                                     "two constant F.linear products with the same bicubic weights"))
    for name in _swap(new, LayerNorm2dEViT, lambda m: ConvChannelNorm(m.weight, m.bias, m.eps)):
        subs.append(Substitution(name, "channel LayerNorm with mean over C", "means as 1x1 convs with weights 1/C"))
    new, more = export_friendly(new, example)
    subs += more
    with torch.inference_mode():
        diff = _max_diff(encoder.eval()(example), new(example))
    for s in subs:
        s.max_abs_diff = diff
    return new, subs


def friendly_decoder(decoder: PromptDecoder, example: tuple[torch.Tensor, ...]
                     ) -> tuple[nn.Module, nn.Module, list[Substitution]]:
    """(:class:`ExportPromptDecoder`, :class:`ImageContext`) over a copy of ``decoder`` (batch 1, ``example``'s
    slot count; ``example`` = the eager decoder's inputs) and their record. The pair computes
    ``decoder(*example)`` as ``new(emb, context(emb), *rest)``."""
    src = copy.deepcopy(decoder).eval()
    subs = [Substitution(n, "Attention with 4-D matmul", "3-D bmm over batch x heads")
            for n in _swap(src, Attention, BmmAttention)]
    subs += [Substitution(n, "nn.LayerNorm (native_layer_norm)", "means as F.linear with a constant 1/C row")
             for n in _swap(src, nn.LayerNorm, LinearLayerNorm)]
    subs += [Substitution(f"prompt_encoder.{n}", "channel LayerNorm with mean over C", "means as 1x1 convs with "
                          "weights 1/C") for n in _swap(src.prompt_encoder, LayerNorm2d,
                                                         lambda m: ConvChannelNorm(m.weight, m.bias, m.eps))]
    new = ExportPromptDecoder(src, example[2].shape[1]).eval()
    context = ImageContext(src).eval()
    subs.append(Substitution("", "PromptDecoder.forward (label comparisons, runtime PE/triangle, expand/stack)",
                             "ExportPromptDecoder: indicator arithmetic, constant buffers, reshape/slice/cat"))
    subs.append(Substitution("mask_decoder.transformer.final_attn_token_to_image", "final token->image attention "
                             "for every token, keys and values projected (4096 x 256 -> 128, twice)",
                             "FoldedTokenAttention: only the IoU and mask tokens (the ones read), key and value "
                             "projections folded into the query side"))
    subs.append(Substitution("mask_decoder.output_upscaling", "2x2 stride-2 ConvTranspose2d pair with channel "
                             "LayerNorm/GELU on NCHW, then the hypernetwork bmm",
                             "TokenUpscaling: linears to sub-pixel channels on the channels-last tokens, only "
                             "the 4-channel mask permuted to NCHW"))
    subs.append(Substitution("mask_decoder.transformer.layers.0", "image-token projections of block 0 "
                             "(token->image k/v, image->token q) per prompt",
                             "ImageContext once per image (the 'context' artifact, PE and no-mask embedding "
                             "folded in) + a mask input's term by linearity"))
    with torch.inference_mode():
        diff = _max_diff(decoder.eval()(*example), new(example[0], context(example[0]), *example[1:]))
    for s in subs:
        s.max_abs_diff = diff
    return new, context, subs


ENCODER_DYNAMIC_FLOAT_WHY = ("dynamic int8 (.pte): the bicubic resize products are interpolation, not learned "
                             "weights, and a dynamically quantized linear on their 4-D input did not compile in "
                             "XNNPACK; the identity conv after the neck's sum exists only to be float (NhwcIdentity)")


ENCODER_ONNX_FLOAT_WHY = ("static int8 ONNX: the neck's bicubic resize products (constant matmuls, 0.2% of L0's MACs) "
                          "carried 1.2 dB of the embeddings' int8 noise (L0 seed 0, 8 grabcut instances: 35.8 → "
                          "37.0 dB, mask mIoU vs float 99.27 → 99.39; benchmarks/sam_gate_sensitivity.py --format onnx)")


def encoder_float_regions(encoder: nn.Module, format: str) -> list[FloatRegion]:
    """What an int8 export of a :func:`friendly_encoder` copy keeps float32 by design: with dynamic activations
    (.pte, the copy holds a :class:`NhwcIdentity`) the neck's bicubic resize products and that identity; as
    static int8 ONNX the resize products. Empty otherwise (.pte / .tflite static int8 quantizes them)."""
    found = [(n, isinstance(m, NhwcIdentity)) for n, m in encoder.named_modules()
             if isinstance(m, MatmulBicubicUpsample | NhwcIdentity)]
    if any(identity for _, identity in found):
        return [FloatRegion("neck-resize-and-layout-identity", tuple(n for n, _ in found),
                            why=ENCODER_DYNAMIC_FLOAT_WHY)]
    if format == "onnx" and found:
        return [FloatRegion("neck-resize", tuple(n for n, _ in found), why=ENCODER_ONNX_FLOAT_WHY)]
    return []


DECODER_FLOAT_WHY = ("the attention key bias is 0 or MASKED (-1e4): an int8 range covering it has ~40-logit "
                     "steps, which flattens every masked softmax; the prompt arithmetic (indicators, sin/cos "
                     "position encoding) builds that bias and the tokens from exact small integers")


DECODER_DYNAMIC_FLOAT_WHY = ("dynamic int8 (.pte): the output upscaling's linears write the per-pixel features that "
                             "the mask logits are read from; int8 there cost mask agreement for 2 ms (L0 seed 0, "
                             "fp32 encoder, 8 grabcut instances: 99.33 with them int8, 99.79 float; decoder 20.2 vs "
                             "22.1 ms, 2 threads; benchmarks/sam_decoder_int8.py); the mask-input features (two small strided convs, 0.02 GMAC) stay "
                             "float with them (not tried quantized); the two-way transformer's image-side linears, "
                             "most of the decoder's MACs, are quantized")


DECODER_TOKEN_SIDE_WHY = ("dynamic int8 (.pte): these linears see only the prompt/output tokens (under 1% of the "
                          "decoder's MACs) and carry the mask tokens straight into the hypernetworks; int8 there "
                          "cost mask agreement (L0 pipeline with the dynamic int8 encoder: 98.71 with them int8)")


def decoder_float_regions(decoder: nn.Module, activations: str = "static") -> list[FloatRegion]:
    """The parts of an :class:`ExportPromptDecoder` that an int8 export keeps float32 by design: the prompt
    slot arithmetic (:class:`SparsePrompt`) and every attention softmax with its scale and key bias; with
    dynamic activations also the mask-input features, the output upscaling and the token-side linears."""
    softmaxes = tuple(n for n, m in decoder.named_modules() if isinstance(m, AttentionSoftmax))
    prompt = tuple(n for n, m in decoder.named_modules() if isinstance(m, SparsePrompt))
    regions = [FloatRegion("prompt-arithmetic-and-attention-softmax", prompt + softmaxes, why=DECODER_FLOAT_WHY)]
    if activations == "dynamic":
        names = ("mask_features", "mask_decoder.output_upscaling")
        regions.append(FloatRegion("upscaling-and-mask-input-features", names, why=DECODER_DYNAMIC_FLOAT_WHY))
        regions.append(FloatRegion("prompt-token-side", _token_side_linears(decoder), why=DECODER_TOKEN_SIDE_WHY))
    return regions


def _token_side_linears(decoder: nn.Module) -> tuple[str, ...]:
    """Modules of an :class:`ExportPromptDecoder` that only ever see the ~21 prompt/output tokens: self-attention,
    token MLPs, the token-side projections of the cross-attentions, hypernetworks and IoU head."""
    md = "mask_decoder"
    final = f"{md}.transformer.final_attn_token_to_image"
    names = [f"{md}.output_hypernetworks_mlps", f"{md}.iou_prediction_head", f"{final}.q_proj", f"{final}.out_proj"]
    for i in range(len(decoder.mask_decoder.transformer.layers)):
        b = f"{md}.transformer.layers.{i}"
        names += [f"{b}.self_attn", f"{b}.mlp", f"{b}.cross_attn_token_to_image.q_proj",
                  f"{b}.cross_attn_token_to_image.out_proj", f"{b}.cross_attn_image_to_token.k_proj",
                  f"{b}.cross_attn_image_to_token.v_proj"]
    return tuple(names)

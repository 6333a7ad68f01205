"""SAM's prompt encoder and mask decoder (Kirillov et al., 2023), as used by EfficientViT-SAM.

Module and attribute names follow the upstream ``segment_anything`` state-dict layout
(``prompt_encoder.*``, ``mask_decoder.*``), so upstream checkpoints load through an identity key map.
Attention is written as plain matmul + softmax (no ``scaled_dot_product_attention``, no
``repeat_interleave``) so that device runtimes delegate it.

Two entry points share the weights:

* :meth:`PromptEncoder.forward` + :meth:`MaskDecoder.forward`: upstream semantics with a variable
  number of prompt tokens (eager reference).
* :class:`PromptDecoder`: static shapes for export — a fixed number of point slots padded with label
  -1 and a ``has_mask_input`` flag. Padding slots beyond the one "not-a-point" token that upstream
  appends are masked out of attention, so its result does not depend on the padding count and equals
  the upstream call exactly (up to float rounding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EMBED_DIM = 256
EMBED_SIZE = 64  # image embedding is EMBED_DIM × 64 × 64
PROMPT_FRAME = 1024  # point/box coordinates are in the frame whose longest side is 1024
MASK_SIZE = 256  # low-res mask logits / mask input are 256 × 256
NUM_MASK_TOKENS = 4  # index 0: single-mask output; 1..3: the three multimask outputs
MASKED = -1.0e4  # attention logit bias of a masked key (exp underflows to 0 in fp32 and fp16)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW tensor (SAM's, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        d = x - u
        x = d / torch.sqrt(d.pow(2).mean(1, keepdim=True) + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class RandomFourierPE(nn.Module):
    """Position encoding with random Gaussian frequencies (buffer ``positional_encoding_gaussian_matrix``)."""

    def __init__(self, num_feats: int = EMBED_DIM // 2):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def encode(self, xy: torch.Tensor) -> torch.Tensor:
        """xy: ...×2 in [0, 1] (x, y) → ...×(2·num_feats): [sin, cos] of 2π·((2·xy - 1) @ G)."""
        proj = (2 * xy - 1) @ self.positional_encoding_gaussian_matrix
        proj = 2 * math.pi * proj
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def dense(self, size: int = EMBED_SIZE) -> torch.Tensor:
        """1×C×size×size encoding of the embedding grid's cell centres (contiguous: the permuted view's
        channels-last strides, kept as an exported constant, were read as contiguous by ExecuTorch)."""
        c = (torch.arange(size, dtype=torch.float32, device=self.positional_encoding_gaussian_matrix.device) + 0.5) / size
        xy = torch.stack(torch.broadcast_tensors(c[None, :], c[:, None]), dim=-1)  # [y, x] -> (x, y)
        return self.encode(xy).permute(2, 0, 1)[None].contiguous()

    def points(self, coords: torch.Tensor) -> torch.Tensor:
        """coords: N×P×2 (x, y) pixel positions in the 1024 frame (already shifted by +0.5) → N×P×C."""
        return self.encode(coords.float() / PROMPT_FRAME)


class PromptEncoder(nn.Module):
    """Embeds points, box corners (sparse tokens) and a low-res mask (dense embedding)."""

    def __init__(self, dim: int = EMBED_DIM, mask_chans: int = 16):
        super().__init__()
        self.pe_layer = RandomFourierPE(dim // 2)
        # 0: background point, 1: foreground point, 2: box top-left, 3: box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_chans // 4, 2, 2), LayerNorm2d(mask_chans // 4), nn.GELU(),
            nn.Conv2d(mask_chans // 4, mask_chans, 2, 2), LayerNorm2d(mask_chans), nn.GELU(),
            nn.Conv2d(mask_chans, dim, 1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    def get_dense_pe(self) -> torch.Tensor:
        """1×256×64×64 position encoding of the image embedding."""
        return self.pe_layer.dense(EMBED_SIZE)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """coords N×P×2 (1024 frame), labels N×P (-1 pad, 0 bg, 1 fg, 2/3 box corners) → N×P×256.

        Branch-free: a padding token is exactly ``not_a_point_embed``; the others add their label's embedding.
        """
        pe = self.pe_layer.points(coords + 0.5)
        labels = labels.float()[..., None]
        pad = (labels == -1).float()
        pe = pe * (1 - pad) + self.not_a_point_embed.weight * pad
        for i, emb in enumerate(self.point_embeddings):
            pe = pe + emb.weight * (labels == i).float()
        return pe

    def forward(self, points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None,
                masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Upstream semantics: sparse N×T×256 (points, one padding token when there is no box, then box
        corners; boxes N×4 xyxy) and dense N×256×64×64 (mask N×1×256×256 or the no-mask embedding)."""
        given = [t for t in (points[0] if points is not None else None, boxes, masks) if t is not None]
        n = given[0].shape[0] if given else 1
        dev = self.no_mask_embed.weight.device
        coords = torch.zeros(n, 0, 2, device=dev)
        labels = torch.zeros(n, 0, device=dev)
        if points is not None:
            coords, labels = points[0].float(), points[1].float()
            if boxes is None:
                coords = torch.cat([coords, torch.zeros(n, 1, 2, device=dev)], dim=1)
                labels = torch.cat([labels, -torch.ones(n, 1, device=dev)], dim=1)
        if boxes is not None:
            coords = torch.cat([coords, boxes.float().reshape(n, 2, 2)], dim=1)
            labels = torch.cat([labels, torch.tensor([[2.0, 3.0]], device=dev).expand(n, 2)], dim=1)
        sparse = self.embed_points(coords, labels)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, EMBED_SIZE, EMBED_SIZE)
        return sparse, dense


class Attention(nn.Module):
    """Multi-head attention with optional down-projection (``downsample`` divides the inner width)."""

    def __init__(self, dim: int, heads: int, downsample: int = 1):
        super().__init__()
        inner = dim // downsample
        self.heads = heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)  # B×h×n×d

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """q B×Nq×C, k/v B×Nk×C, key_bias B×Nk (0 or MASKED) → B×Nq×C."""
        q, k, v = self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        logits = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
        if key_bias is not None:
            logits = logits + key_bias[:, None, None, :]
        out = torch.matmul(torch.softmax(logits, dim=-1), v)
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.relu(self.lin1(x)))


class TwoWayBlock(nn.Module):
    """Token self-attention, token→image cross-attention, MLP, image→token cross-attention (post-norm)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, skip_first_pe: bool, eps: float):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.cross_attn_token_to_image = Attention(dim, heads, 2)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLPBlock(dim, mlp_dim)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.norm4 = nn.LayerNorm(dim, eps=eps)
        self.cross_attn_image_to_token = Attention(dim, heads, 2)
        self.skip_first_pe = skip_first_pe

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor,
                token_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_pe:
            queries = self.self_attn(queries, queries, queries, token_bias)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries, token_bias)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries, token_bias))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Depth-2 two-way transformer between prompt tokens and the 64×64 image embedding."""

    def __init__(self, depth: int = 2, dim: int = EMBED_DIM, heads: int = 8, mlp_dim: int = 2048,
                 eps: float = 1e-6):
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(dim, heads, mlp_dim, i == 0, eps) for i in range(depth))
        self.final_attn_token_to_image = Attention(dim, heads, 2)
        self.norm_final_attn = nn.LayerNorm(dim, eps=eps)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor,
                token_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """image N×C×h×w, image_pe 1×C×h×w, tokens N×T×C → (tokens N×T×C, image tokens N×hw×C)."""
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe, token_bias)
        q, k = queries + tokens, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class MLP(nn.Module):
    """``layers``: Linear stack with ReLU between (SAM's hypernetwork / IoU head)."""

    def __init__(self, cin: int, hidden: int, cout: int, depth: int):
        super().__init__()
        dims = [cin] + [hidden] * (depth - 1) + [cout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MaskDecoder(nn.Module):
    """Two-way transformer + upscaling + per-mask-token hypernetworks and the IoU head."""

    def __init__(self, dim: int = EMBED_DIM, eps: float = 1e-6):
        super().__init__()
        self.transformer = TwoWayTransformer(eps=eps)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(NUM_MASK_TOKENS, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, 2, 2), LayerNorm2d(dim // 4), nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, 2, 2), nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(NUM_MASK_TOKENS))
        self.iou_prediction_head = MLP(dim, 256, NUM_MASK_TOKENS, 3)

    def predict_all(self, image: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                    sparse_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """image N×256×64×64, image_pe 1×256×64×64, sparse N×P×256 (key bias N×P), dense N×256×64×64
        → (mask logits N×4×256×256, IoU N×4); index 0 is the single-mask output."""
        n = sparse.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens[None].expand(n, -1, -1), sparse], dim=1)
        bias = None
        if sparse_bias is not None:
            bias = torch.cat([torch.zeros(n, out_tokens.shape[0], dtype=sparse_bias.dtype,
                                          device=sparse_bias.device), sparse_bias], dim=1)
        src = image + dense
        b, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens, bias)
        up = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        b, c, h, w = up.shape
        masks = torch.matmul(hyper, up.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, self.iou_prediction_head(hs[:, 0])

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor, multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Upstream semantics: 3 masks (multimask) or the single-mask output; N×K×256×256 and N×K."""
        masks, iou = self.predict_all(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou[:, sl]


class PromptDecoder(nn.Module):
    """Static-shape prompt decoder: the graph exported next to the image encoder.

    Inputs (float32): ``embeddings`` N×256×64×64; ``coords`` N×P×2 (x, y) in the 1024-longest-side frame;
    ``labels`` N×P (1 fg, 0 bg, 2/3 box corners, -1 padding); ``mask_input`` N×1×256×256 logits;
    ``has_mask_input`` N (1: use ``mask_input``, 0: ignore it).
    Outputs: mask logits N×4×256×256 and IoU predictions N×4 — index 0 is the single-mask output,
    1..3 the multimask outputs. P is fixed by the caller (the predictor uses ``SamContract.max_points``).

    Upstream appends one padding ("not a point") token when no box is given; here the first -1 slot plays
    that role when no box corner is present, and every other -1 slot is masked out of attention.
    """

    def __init__(self, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder):
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    def forward(self, embeddings: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor,
                mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = labels.float()
        pe = self.prompt_encoder
        sparse = pe.embed_points(coords, labels)
        pad = (labels == -1).float()
        p = labels.shape[1]
        upper = torch.triu(torch.ones(p, p, device=labels.device))  # cumsum as a matmul
        first_pad = pad * (torch.matmul(pad, upper) == 1).float()
        no_box = 1 - (labels == 2).float().amax(dim=1, keepdim=True)
        attended = (1 - pad) + first_pad * no_box
        bias = (1 - attended) * MASKED
        flag = has_mask_input.float().reshape(-1, 1, 1, 1)
        dense = flag * pe.mask_downscaling(mask_input) + (1 - flag) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return self.mask_decoder.predict_all(embeddings, pe.get_dense_pe(), sparse, dense, bias)

"""A DiT-style latent diffusion baseline in the HART tokenizer's continuous latent space.

The baseline models the same latent the HART decoder decodes (``tokenizer.encode(image)``, N×Cz×P×P,
multiplied by a fixed ``latent_scale`` = 1 / its standard deviation over the training crops) with a
class-conditional diffusion transformer (DiT: patch size 1, so one token per latent position, fixed
2-D sin-cos positions, adaLN-Zero blocks of LayerNorm + multi-head attention + GELU MLP, a label
embedding with a null label for classifier-free guidance, the sinusoidal step embedder of
:mod:`edgevit.hart.layers`). Training: ε-prediction MSE on the cosine schedule of ``train_steps`` (1000)
steps, labels dropped with ``cond_drop_rate``. Sampling: deterministic DDIM (η = 0) over ``sample_steps``
(30) evenly spaced steps (:func:`ddim_timesteps`) with x̂0 clipped to ±``x0_clip``, guidance ε = (1 + g)·ε_cond − g·ε_uncond (HART's convention), image =
``tokenizer.decode(x / latent_scale)``. The tokenizer is the HART teacher's, frozen and stored with the
baseline so one file is a complete generator.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdgevitError
from ..registry import Registry
from .configs import HartConfig, get_config
from .diffusion import CachedEmbeddings, cosine_betas
from .layers import TimestepEmbedder
from .tokenizer import HybridTokenizer


@dataclass(frozen=True)
class DiTConfig:
    """``hart``: the HART config whose tokenizer (latent space) and classes the baseline shares. ``x0_clip``:
    DDIM clips its x̂0 estimate to ±x0_clip in scaled latent units (6 ≈ the largest |value| over 128 training
    crops of the trained tokenizer); without it the first steps (ᾱ ≈ 0 at t = T-1 of the cosine schedule)
    amplify ε errors by 1/√ᾱ and samples diverge."""

    name: str
    hart: str
    dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    train_steps: int = 1000
    sample_steps: int = 30
    cond_drop_rate: float = 0.1
    x0_clip: float = 6.0

    def hart_config(self) -> HartConfig:
        return get_config(self.hart)

    def to_dict(self) -> dict:
        return asdict(self)


DIT_CONFIGS: Registry[DiTConfig] = Registry("DiT baseline config")
DIT_CONFIGS.add("dit-tiny", DiTConfig("dit-tiny", "hart-tiny", dim=32, depth=2, num_heads=2, sample_steps=4))
# 8 blocks of width 128: 2.43M trainable parameters, the size of hart-student-phone's transformer +
# diffusion MLP (2.38M); the tokenizer (shared by all three generators) is not counted.
DIT_CONFIGS.add("dit-baseline-phone", DiTConfig("dit-baseline-phone", "hart-student-phone", dim=128, depth=8,
                                                num_heads=4))
# 7 blocks of width 112: 1.66M, the size of hart-student-mid's transformer + diffusion MLP (1.67M).
DIT_CONFIGS.add("dit-baseline-mid", DiTConfig("dit-baseline-mid", "hart-student-mid", dim=112, depth=7, num_heads=4))
# 6 blocks of width 132: 1.99M, the size of hart-student-mid5 (1.99M).
DIT_CONFIGS.add("dit-baseline-mid5", DiTConfig("dit-baseline-mid5", "hart-student-mid5", dim=132, depth=6,
                                               num_heads=4))
# 5 blocks of width 96: 0.89M, the size of hart-student-watch's transformer + diffusion MLP (0.93M).
DIT_CONFIGS.add("dit-baseline-watch", DiTConfig("dit-baseline-watch", "hart-student-watch", dim=96, depth=5,
                                                num_heads=4))


def get_dit_config(name: str) -> DiTConfig:
    return DIT_CONFIGS.get(name)


def sincos_2d(size: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions for a size×size grid, row-major: (size²)×dim (dim % 4 == 0); half the
    channels encode the row, half the column."""
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    parts = []
    for pos in (ys.reshape(-1), xs.reshape(-1)):
        a = pos[:, None] * freqs[None]
        parts += [a.sin(), a.cos()]
    return torch.cat(parts, 1).float()


def ddim_timesteps(train_steps: int, count: int) -> list[int]:
    """DDIM's "leading" spacing: ``[i · T // count for i < count]`` (0 .. T - T/count). The last training step
    is not used: at t = T-1 the cosine schedule's ᾱ ≈ 2e-9, so its x̂0 = (x − √(1−ᾱ)ε̂)/√ᾱ multiplies ε̂'s error
    by ~2e4 (measured: samples with 2-3× the data's latent std when it is included)."""
    if not 1 <= count <= train_steps:
        raise EdgevitError(f"DDIM: cannot use {count} of {train_steps} steps")
    return [i * train_steps // count for i in range(count)]


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """adaLN-Zero block: x B×L×D, y B×D (step + label embedding) -> B×L×D."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s1, c1, g1, s2, c2, g2 = self.adaLN_modulation(y).chunk(6, dim=-1)
        b, n, d = x.shape
        q, k, v = self.qkv(_modulate(self.norm1(x), s1, c1)).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + g1[:, None] * self.proj(a)
        return x + g2[:, None] * self.mlp(_modulate(self.norm2(x), s2, c2))


class DiT(nn.Module):
    """Class-conditional latent DiT plus its (frozen) tokenizer.

    ``forward(x, t, labels)``: x B×Cz×P×P scaled noisy latent, t B original step indices (int64), labels B
    (``num_classes`` = null label) -> ε B×Cz×P×P.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        hart = cfg.hart_config()
        tok = hart.tokenizer
        if cfg.dim % 4 or cfg.dim % cfg.num_heads:
            raise EdgevitError(f"DiT config {cfg.name!r}: dim {cfg.dim} must be a multiple of 4 and of num_heads")
        self.num_classes, self.channels, self.size = hart.transformer.num_classes, tok.z_channels, tok.patch_nums[-1]
        if self.num_classes <= 0:
            raise EdgevitError(f"DiT config {cfg.name!r}: HART config {hart.name!r} is not class-conditional")
        self.tokenizer = HybridTokenizer(tok)
        self.x_embed = nn.Linear(self.channels, cfg.dim)
        self.register_buffer("pos_embed", sincos_2d(self.size, cfg.dim), persistent=False)
        self.y_embed = nn.Embedding(self.num_classes + 1, cfg.dim)
        self.t_embed = TimestepEmbedder(cfg.dim)
        self.blocks = nn.ModuleList(DiTBlock(cfg.dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm_final = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim))
        self.final = nn.Linear(cfg.dim, self.channels)
        self.register_buffer("latent_scale", torch.ones(()))
        betas = cosine_betas(cfg.train_steps)
        self.abar = np.cumprod(1.0 - betas)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear) and not any(m is p for p in self.tokenizer.modules()):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # Labels at N(0, 1) (norm ≈ √dim, the scale the trained step embedding reaches), not DiT's 0.02: with
        # 0.02 the label changed ε by ~2% after 600 steps here and the samples ignored their class (measured).
        nn.init.normal_(self.y_embed.weight, std=1.0)
        for lin in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for lin in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_modulation[-1], self.final]:
            nn.init.zeros_(lin.weight), nn.init.zeros_(lin.bias)

    def generator_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters (everything but the shared tokenizer)."""
        return [p for n, p in self.named_parameters() if not n.startswith("tokenizer.")]

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.embedded(x, self.t_embed(t) + self.y_embed(labels))

    def embedded(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` after the step + label embedding y (B×dim)."""
        b = x.shape[0]
        h = self.x_embed(x.flatten(2).transpose(1, 2)) + self.pos_embed
        for blk in self.blocks:
            h = blk(h, y)
        shift, scale = self.final_modulation(y).chunk(2, dim=-1)
        out = self.final(_modulate(self.norm_final(h), shift, scale))
        return out.transpose(1, 2).reshape(b, self.channels, self.size, self.size)

    @torch.no_grad()
    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images N×3×H×W in [-1, 1] -> scaled continuous latents N×Cz×P×P."""
        return self.tokenizer.encode(images) * self.latent_scale

    def loss(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """ε-MSE at uniform random steps; labels dropped to the null label with ``cond_drop_rate``."""
        x0 = self.latents(images)
        b = x0.shape[0]
        hit = torch.rand(b, generator=generator) < self.cfg.cond_drop_rate
        labels = torch.where(hit, torch.full_like(labels, self.num_classes), labels)
        t = torch.randint(0, self.cfg.train_steps, (b,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        abar = torch.from_numpy(self.abar).float()[t][:, None, None, None]
        xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        mse = F.mse_loss(self(xt, t, labels), noise)
        return {"loss": mse, "mse": mse}

    def denoiser(self) -> CachedEmbeddings:
        """``self(x, t, labels)`` for sampling with frozen weights, the step and label embeddings reused."""
        return CachedEmbeddings(self.t_embed, self.y_embed, self.embedded)

    def sample_latents(self, labels: torch.Tensor, generator: torch.Generator, cfg: float = 0.0,
                       steps: int | None = None, eps_fn=None) -> torch.Tensor:
        """DDIM (η = 0) from N(0, I) -> unscaled latents N×Cz×P×P. ``eps_fn(x, t, labels)`` replaces
        :meth:`denoiser` (e.g. a timed wrapper); with ``cfg`` != 0 it is called on the doubled batch. Runs
        under ``torch.inference_mode``; returns an ordinary tensor."""
        with torch.inference_mode():
            x = self._ddim(labels, generator, cfg, steps, eps_fn or self.denoiser())
        return x.clone()

    def _ddim(self, labels, generator, cfg, steps, eps_fn) -> torch.Tensor:
        keep = ddim_timesteps(self.cfg.train_steps, steps or self.cfg.sample_steps)
        n = labels.shape[0]
        x = torch.randn((n, self.channels, self.size, self.size), generator=generator)
        both = torch.cat([labels, torch.full_like(labels, self.num_classes)])  # conditional, then null labels
        for i in reversed(range(len(keep))):
            t = keep[i]
            a, a_prev = float(self.abar[t]), float(self.abar[keep[i - 1]]) if i > 0 else 1.0
            tt = torch.full((2 * n if cfg else n,), t, dtype=torch.long)
            if cfg:
                e = eps_fn(torch.cat([x, x]), tt, both)
                eps = (1 + cfg) * e[:n] - cfg * e[n:]
            else:
                eps = eps_fn(x, tt, labels)
            x0 = ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-self.cfg.x0_clip, self.cfg.x0_clip)
            eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)  # consistent with the clipped x̂0
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
        return x / self.latent_scale

    def generate(self, labels: torch.Tensor, seed: int, cfg: float = 0.0) -> torch.Tensor:
        """Seeded class-conditional images N×3×H×W in [-1, 1]."""
        gen = torch.Generator().manual_seed(seed)
        latent = self.sample_latents(labels, gen, cfg)
        with torch.inference_mode():
            images = self.tokenizer.decode(latent)
        return images.clone()


def save_dit(model: DiT, path: str | Path) -> Path:
    """One file: {"format": "edgevit-dit", "config": DiTConfig dict, "state_dict": ...} (written atomically)."""
    from ..io import atomic_write

    path = Path(path)
    with atomic_write(path) as f:
        torch.save({"format": "edgevit-dit", "config": model.cfg.to_dict(), "state_dict": model.state_dict()}, f)
    return path


def load_dit(path: str | Path) -> DiT:
    """Load a file written by :func:`save_dit` (or a training folder holding ``dit.pt``), strictly."""
    path = Path(path)
    path = path / "dit.pt" if path.is_dir() else path
    if not path.is_file():
        raise EdgevitError(f"{path}: no DiT baseline checkpoint (train one with `python -m edgevit.hart.train dit`)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise EdgevitError(f"{path}: not a readable DiT checkpoint ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != "edgevit-dit":
        raise EdgevitError(f"{path}: not an edgevit DiT checkpoint (missing format 'edgevit-dit')")
    model = DiT(DiTConfig(**data["config"]))
    missing, unexpected = model.load_state_dict(data["state_dict"], strict=False)
    if missing or unexpected:
        raise EdgevitError(f"{path}: DiT weights do not match config {data['config']['name']!r} "
                           f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    return model.eval()

"""Named HART configurations (tokenizer + AR transformer + residual diffusion MLP).

``get_config(name)`` returns a :class:`HartConfig`; unknown names raise with "did you mean".
``describe(name)`` builds the model with random weights and reports parameters and MACs per image
(one generation at batch 1, classifier-free guidance off; with CFG the transformer and diffusion MACs
double). The sizes of the released upstream model are only reachable through its ``config.json``
(see :mod:`edgevit.hart.checkpoint`), not through this registry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..errors import EdgevitError
from ..registry import Registry


@dataclass(frozen=True)
class TokenizerConfig:
    """CNN encoder/decoder (GroupNorm + SiLU ResNet blocks) and multi-scale residual VQ.

    The latent grid is ``image_size / 2**(len(ch_mult) - 1)`` and must equal ``patch_nums[-1]``.
    ``share_quant_resi``: number of shared residual convs ("phi"); 0 = one per scale.
    ``quant_resi``: phi mixing ratio r (phi(h) = (1 - r) h + r conv(h)).
    """

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    using_sa: bool = True
    using_mid_sa: bool = True
    norm_groups: int = 32
    quant_conv_ks: int = 3
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    beta: float = 0.25
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class TransformerConfig:
    """Next-scale AR transformer (llama-style: RMSNorm, SwiGLU, 2-D rotary positions, AdaLN).

    Conditioning: ``num_classes > 0`` gives a class-label prefix of one token (null class =
    ``num_classes`` for CFG); otherwise ``context_dim`` text-embedding prefix tokens (up to
    ``context_tokens``) from a pluggable text encoder. ``ffn_multiple``: SwiGLU hidden size is
    ``int(2/3 * mlp_ratio * dim + ffn_multiple - 1) // ffn_multiple * ffn_multiple`` (upstream: 256).
    """

    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    ffn_multiple: int = 256
    norm_eps: float = 1e-6
    attn_l2_norm: bool = False
    use_timestep_embed: bool = True
    num_classes: int = 0
    context_dim: int = 0
    context_tokens: int = 1
    use_context_norm: bool = False
    context_norm_scale: float = 1.0
    rope_theta: float = 10000.0
    cond_drop_rate: float = 0.1


@dataclass(frozen=True)
class DiffusionConfig:
    """Residual diffusion MLP (AdaLN ResBlocks), cosine schedule of ``train_steps`` respaced to
    ``sample_steps``; predicts epsilon plus a learned-range variance (2 × latent channels out)."""

    width: int = 1024
    depth: int = 6
    train_steps: int = 1000
    sample_steps: int = 8
    vae_scale: float = 0.6
    batch_mul: int = 4


@dataclass(frozen=True)
class HartConfig:
    name: str
    image_size: int
    tokenizer: TokenizerConfig
    transformer: TransformerConfig
    diffusion: DiffusionConfig
    notes: str = ""
    # > 0: classifier-free guidance at this scale (with its ramp over scales) is distilled into the
    # conditional branch, so the sampler runs one branch (batch B, not 2B); see edgevit.hart.distill
    guidance_distilled: float = 0.0

    def __post_init__(self) -> None:
        tok = self.tokenizer
        if self.image_size % tok.downsample or self.image_size // tok.downsample != tok.patch_nums[-1]:
            raise EdgevitError(
                f"HART config {self.name!r}: image_size {self.image_size} / downsample {tok.downsample} "
                f"must equal the last patch_num {tok.patch_nums[-1]}"
            )
        t = self.transformer
        if t.embed_dim % t.num_heads or (t.embed_dim // t.num_heads) % 4:
            raise EdgevitError(
                f"HART config {self.name!r}: embed_dim {t.embed_dim} / num_heads {t.num_heads} must be a "
                "multiple of 4 (2-D rotary positions use a quarter of each head per axis and frequency)"
            )
        if self.guidance_distilled < 0:
            raise EdgevitError(f"HART config {self.name!r}: guidance_distilled must be >= 0")
        if (t.num_classes > 0) == (t.context_dim > 0):
            raise EdgevitError(f"HART config {self.name!r}: set exactly one of num_classes or context_dim")

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS: Registry[HartConfig] = Registry("HART config")


def _add(cfg: HartConfig) -> HartConfig:
    return CONFIGS.add(cfg.name, cfg)


# Shared 64x64 tokenizer for the small proof: 8x8 latent, six scales.
_TOKENIZER_64 = TokenizerConfig(
    vocab_size=512, z_channels=16, ch=16, ch_mult=(1, 2, 2, 4), num_res_blocks=1, using_sa=False,
    norm_groups=8, patch_nums=(1, 2, 3, 4, 6, 8),
)
_CLASSES = 8

_add(HartConfig(
    name="hart-tiny", image_size=16,
    tokenizer=TokenizerConfig(vocab_size=32, z_channels=8, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                              norm_groups=4, share_quant_resi=4, patch_nums=(1, 2, 4, 8)),
    transformer=TransformerConfig(depth=2, embed_dim=32, num_heads=2, ffn_multiple=16, num_classes=8),
    diffusion=DiffusionConfig(width=32, depth=2),
    notes="for tests",
))
_add(HartConfig(
    name="hart-teacher-small", image_size=64, tokenizer=_TOKENIZER_64,
    transformer=TransformerConfig(depth=8, embed_dim=256, num_heads=8, ffn_multiple=64, num_classes=_CLASSES),
    diffusion=DiffusionConfig(width=256, depth=3),
    notes="class-conditional teacher trained here at 64x64",
))
_add(HartConfig(
    name="hart-student-phone", image_size=64, tokenizer=_TOKENIZER_64,
    transformer=TransformerConfig(depth=6, embed_dim=128, num_heads=4, ffn_multiple=64, num_classes=_CLASSES),
    diffusion=DiffusionConfig(width=128, depth=3),
    notes="student, <= 1/4 of the teacher's transformer parameters",
))
_add(HartConfig(
    name="hart-student-mid", image_size=64, tokenizer=_TOKENIZER_64,
    transformer=TransformerConfig(depth=4, embed_dim=128, num_heads=4, ffn_multiple=64, num_classes=_CLASSES),
    diffusion=DiffusionConfig(width=128, depth=2),
    notes="student between phone and watch: the phone's width at 4 blocks",
))
_add(HartConfig(
    name="hart-student-mid5", image_size=64, tokenizer=_TOKENIZER_64,
    transformer=TransformerConfig(depth=5, embed_dim=128, num_heads=4, ffn_multiple=64, num_classes=_CLASSES),
    diffusion=DiffusionConfig(width=128, depth=2),
    notes="hart-student-mid with a fifth block",
))
_add(HartConfig(
    name="hart-student-watch", image_size=64, tokenizer=_TOKENIZER_64,
    transformer=TransformerConfig(depth=4, embed_dim=96, num_heads=3, ffn_multiple=32, num_classes=_CLASSES),
    diffusion=DiffusionConfig(width=96, depth=2),
    notes="smallest student",
))


def get_config(name: str) -> HartConfig:
    return CONFIGS.get(name)


def list_configs(pattern: str = "*") -> list[str]:
    return CONFIGS.names(pattern)


def with_overrides(cfg: HartConfig, **transformer: object) -> HartConfig:
    """``cfg`` with some transformer fields replaced (e.g. a student width)."""
    return replace(cfg, transformer=replace(cfg.transformer, **transformer))


def describe(name: str) -> dict[str, int | str]:
    """Parameters per component and MACs per generated image (batch 1, no CFG) of config ``name``."""
    import torch

    from .model import HartModel
    from .profile import generation_macs

    torch.manual_seed(0)
    model = HartModel(get_config(name)).eval()
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in model.components().items()}
    macs = generation_macs(model)
    return {"name": name, **{f"params_{k}": v for k, v in params.items()}, **{f"macs_{k}": v for k, v in macs.items()}}


def print_table(names: list[str] | None = None) -> str:
    """A markdown table of :func:`describe` for ``names`` (default: all)."""
    rows = [describe(n) for n in (names or list_configs())]
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    text = "\n".join(out)
    print(text)
    return text


def _fmt(v: object) -> str:
    if isinstance(v, int):
        return f"{v / 1e6:.3f}M" if v < 1e9 else f"{v / 1e9:.3f}G"
    return str(v)

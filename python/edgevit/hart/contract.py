"""The HART generation contract: what a runtime needs to drive the three programs with the host loop
of :mod:`edgevit.hart.sampler` (copied into artifact manifests by the exporter, later)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..models.contract import TensorSpec
from .configs import HartConfig


@dataclass(frozen=True)
class GenContract:
    """Class- or text-conditional image generation by next-scale prediction + residual diffusion.

    Programs (B: batch, doubled under CFG; l: tokens of the current scale; C: width; d: head dim;
    Cz: latent channels; Lmax: KV capacity): ``step`` (one scale, KV cache in and out), ``diffusion``
    (one denoising call of the residual MLP on N final-scale tokens), ``decoder`` (latent -> image in
    [-1, 1]; the host maps it to uint8 with ``processing.signed_to_image``).
    """

    image_size: int
    patch_nums: tuple[int, ...]
    vocab_size: int
    z_channels: int
    width: int
    depth: int
    heads: int
    prefix_len: int
    kv_capacity: int
    num_classes: int
    context_dim: int
    sample_steps: int
    vae_scale: float
    task: str = field(default="image-generation", init=False)

    @classmethod
    def from_config(cls, cfg: HartConfig) -> GenContract:
        t, tok = cfg.transformer, cfg.tokenizer
        return cls(cfg.image_size, tuple(tok.patch_nums), tok.vocab_size, tok.z_channels, t.embed_dim, t.depth,
                   t.num_heads, 1 if t.num_classes > 0 else t.context_tokens,
                   (1 if t.num_classes > 0 else t.context_tokens) + sum(p * p for p in tok.patch_nums[1:]),
                   t.num_classes, t.context_dim, cfg.diffusion.sample_steps, cfg.diffusion.vae_scale)

    def programs(self) -> dict[str, dict[str, tuple[TensorSpec, ...]]]:
        d, hd = self.depth, self.width // self.heads
        cache = TensorSpec("cache", (d, 2, "B", self.heads, self.kv_capacity, hd), "float32", "layer,kv,B,H,L,d",
                           "keys and values of all filled slots; slots >= start + l are ignored")
        side = self.patch_nums[-1]
        return {
            "step": {
                "inputs": (TensorSpec("x", ("B", "l", self.width), "float32", "B,l,C", "embedded scale tokens"),
                           TensorSpec("pooled", ("B", self.width), "float32", "B,C", "AdaLN condition"),
                           TensorSpec("pooled_head", ("B", self.width), "float32", "B,C", "head AdaLN condition"),
                           TensorSpec("cos", ("B", "l", hd), "float32", "B,l,d", "rotary table"),
                           TensorSpec("sin", ("B", "l", hd), "float32", "B,l,d", "rotary table"), cache),
                "outputs": (TensorSpec("hidden", ("B", "l", self.width), "float32", "B,l,C"),
                            TensorSpec("logits", ("B", "l", self.vocab_size), "float32", "B,l,V"),
                            TensorSpec("new_cache", cache.shape, "float32", cache.layout,
                                       "the cache with this scale's keys/values written at [start, start + l)")),
            },
            "diffusion": {
                "inputs": (TensorSpec("x", ("N", self.z_channels), "float32", "N,Cz", "noisy residual / vae_scale"),
                           TensorSpec("t", ("N",), "float32", "N", "original diffusion step index (integer-valued)"),
                           TensorSpec("c", ("N", self.width), "float32", "N,C", "token condition")),
                "outputs": (TensorSpec("out", ("N", 2 * self.z_channels), "float32", "N,2Cz", "epsilon, variance value"),),
            },
            "decoder": {
                "inputs": (TensorSpec("latent", ("B", self.z_channels, side, side), "float32", "NCHW"),),
                "outputs": (TensorSpec("image", ("B", 3, self.image_size, self.image_size), "float32", "NCHW",
                                       "RGB in [-1, 1]"),),
            },
        }

    def to_dict(self) -> dict:
        out = asdict(self)
        out["programs"] = {name: {io: [asdict(s) for s in specs] for io, specs in p.items()}
                           for name, p in self.programs().items()}
        return out

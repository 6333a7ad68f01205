"""MACs of one HART generation, per stage (batch 1, classifier-free guidance off).

Counted with PyTorch's FLOP counter on the real stage callables (matmuls and convolutions; one MAC =
two FLOPs): the transformer's KV-cache steps (one per scale), the diffusion MLP (``sample_steps``
calls on the P² final-scale tokens) and the decoder. With CFG the transformer and diffusion MACs
double; the decoder's do not.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .model import HartModel


def _macs(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return counter.get_total_flops() // 2


def generation_macs(model: HartModel) -> dict[str, int]:
    """{"transformer", "diffusion", "decoder", "total"} MACs per generated image."""
    t, cfg = model.transformer, model.cfg
    pns = t.patch_nums
    if cfg.transformer.num_classes > 0:
        cond = t.condition_from_labels(torch.zeros(1, dtype=torch.long))
    else:
        cond = t.condition_from_context(torch.zeros(1, t.prefix_len, cfg.transformer.context_dim))
    z_ch = cfg.tokenizer.z_channels

    def run_transformer() -> None:
        cache, start = t.empty_cache(1), 0
        x, cos, sin = t.prefix_inputs(cond)
        for si in range(len(pns)):
            _, _, cache = t.step(x, cond.pooled, cond.pooled_head, cos, sin, cache, start)
            start += x.shape[1]
            if si + 1 < len(pns):
                x, cos, sin = t.scale_inputs(si + 1, torch.zeros(1, pns[si + 1] ** 2, z_ch), cond)

    n = pns[-1] ** 2

    def run_diffusion() -> None:
        z = torch.zeros(n, cfg.transformer.embed_dim)
        for k in range(cfg.diffusion.sample_steps):
            model.diffusion.net(torch.zeros(n, z_ch), torch.full((n,), k), z)

    macs = {
        "transformer": _macs(run_transformer),
        "diffusion": _macs(run_diffusion),
        "decoder": _macs(lambda: model.tokenizer.decode(torch.zeros(1, z_ch, pns[-1], pns[-1]))),
    }
    macs["total"] = sum(macs.values())
    return macs
